"""LRURec's serving step with the per-layer constants folded once: the fast path of ``step``.

The readable step (:meth:`model.layers.LRULayer.step`) recomputes
λ = exp(-exp(ν_log) + i·exp(θ_log)) and γ on every call and multiplies the real and imaginary
parts separately. At batch 1 every tensor op costs microseconds of dispatch (and every ONNX node
thousands of instructions), which dominates the arithmetic, so here they are folded once per
weight version into (glossary in :mod:`model.shapes`; ``n`` = d_state):

    R = [[Re λ, -Im λ], [Im λ, Re λ]]  ``[2, 2, n]``    λ ⊙ h as Σ_l R[i, l] ⊙ h[l] on (Re h, Im h)
    W_uᵀ = [γ⊙B_re; γ⊙B_im]ᵀ  ``[d, 2n]``, b_u = [γ⊙b_re; γ⊙b_im]  ``[2, n]``  u = x W_uᵀ + b_u
    W_c = [C_re, -C_im]  ``[d, 2n]``                                        Re(C h) in one matmul

which works directly on the serving layout ``state[:, k] = [Re h; Im h]`` (``[b, 2, n]``). The
old state's λ ⊙ h + b_u does not depend on the new event, so it is computed for every layer at
once (one multiply, one sum, one add); each layer then adds ``x W_uᵀ`` in one ``addmm``. A block
is 9 tensor ops instead of about 25. It computes the same function as the reference step up to
float rounding (pinned by tests/model/test_folded.py), and the ONNX export traces it
(:mod:`model.export`). The embedding table, the output bias c, the LayerNorms and the
feed-forward are used live, so only the folded tensors can go stale; :class:`FoldedCache`
rebuilds them whenever a parameter they derive from changes.
"""

import threading
from types import TracebackType
from typing import TYPE_CHECKING, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from model.layers import LRUBlock
from model.shapes import Hidden, Items, State

if TYPE_CHECKING:
    from model.lrurec import LRURec

FOLDED_SOURCES = (
    "nu_log",
    "theta_log",
    "gamma_log",
    "B_re",
    "B_im",
    "b_re",
    "b_im",
    "C_re",
    "C_im",
)
"""LRU parameters the folded constants derive from; everything else is read live."""


class FoldedLayer(NamedTuple):
    """Folded constants of one LRU layer (shapes in the module docstring)."""

    rotation: Tensor
    u_weight_t: Tensor
    u_bias: Tensor
    c_weight: Tensor


class Folded(NamedTuple):
    """Folded constants of every layer, with the rotations and input biases stacked."""

    layers: list[FoldedLayer]
    rotations: Tensor
    """``[n_layers, 2, 2, n]``."""
    input_bias: Tensor
    """``[n_layers, 2, n]``."""


def fold_layer(block: LRUBlock) -> FoldedLayer:
    """Fold one block's λ, γ, B and C into :class:`FoldedLayer` (no autograd)."""
    lru = block.lru
    with torch.no_grad():
        gamma = torch.exp(lru.gamma_log).unsqueeze(-1)  # [n, 1]
        re, im = lru.decay()
        return FoldedLayer(
            rotation=torch.stack([torch.stack([re, -im]), torch.stack([im, re])]),  # [2, 2, n]
            u_weight_t=torch.cat([lru.B_re * gamma, lru.B_im * gamma]).t().contiguous(),
            u_bias=torch.stack([lru.b_re * gamma[:, 0], lru.b_im * gamma[:, 0]]),  # [2, n]
            c_weight=torch.cat([lru.C_re, -lru.C_im], dim=1),  # [d, 2n]
        )


def fold(model: "LRURec") -> Folded:
    """Fold every block of ``model``."""
    layers = [fold_layer(block) for block in model.blocks if isinstance(block, LRUBlock)]
    rotations = torch.stack([layer.rotation for layer in layers])
    return Folded(layers, rotations, torch.stack([layer.u_bias for layer in layers]))


class _OneDnnOff:
    """oneDNN (``torch.backends.mkldnn``) off while any thread is inside; then as it was.

    With oneDNN on, ``F.gelu`` on one row goes through a oneDNN primitive that cost about 45 µs a
    call inside the step here (torch.profiler), against a few µs for ATen's own kernel; the
    folded step was about 25% faster at batch 1 without it (A/B in benchmarks/RESULTS.md).
    oneDNN is a process-wide switch, so it is turned off only while a step runs: the first
    thread in saves the setting and the last one out restores it. Another thread's ops in that
    window also run without oneDNN, which changes their speed, not their results.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._inside = 0
        self._saved = True

    def __enter__(self) -> None:
        with self._lock:
            if self._inside == 0:
                self._saved = torch._C._get_mkldnn_enabled()
                torch._C._set_mkldnn_enabled(False)
            self._inside += 1

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        with self._lock:
            self._inside -= 1
            if self._inside == 0:
                torch._C._set_mkldnn_enabled(self._saved)


without_onednn = _OneDnnOff()


def _layer_norm(x: Tensor, norm: nn.LayerNorm) -> Tensor:
    # The aten op directly: F.layer_norm's Python wrapper costs about a microsecond per call.
    return torch.layer_norm(x, norm.normalized_shape, norm.weight, norm.bias, norm.eps)


def folded_step(
    model: "LRURec",
    folded: Folded,
    items: Items,
    state: State,
    table: Tensor | None = None,
) -> tuple[Hidden, State]:
    """One event per user, inference only (no dropout); same contract as ``LRURec.step``.

    Args:
        model: the LRURec whose live parameters (norms, feed-forward, c) are used.
        folded: ``fold(model)``.
        items: ``LongTensor[b]``.
        state: ``[b, n_layers, 2, n]``.
        table: item embedding ``[v, d]`` to use instead of ``model.embedding.weight``.

    Returns:
        ``(hidden [b, d], new_state [b, n_layers, 2, n])``.
    """
    with without_onednn:
        return _folded_step(model, folded, items, state, table)


def _folded_step(
    model: "LRURec", folded: Folded, items: Items, state: State, table: Tensor | None
) -> tuple[Hidden, State]:
    table = model.embedding.weight if table is None else table
    x = _layer_norm(torch.embedding(table, items), model.embedding_norm)  # [b, d]
    # Python ints from the config: constant reshapes, which export without Shape ops.
    n_layers, n = model.config.n_layers, model.config.d_state
    # λ ⊙ h + b_u of every layer: [b, k, 1, 2, n] * [k, 2, 2, n], summed over l → [b, k, 2, n].
    carried = (state.view(-1, n_layers, 1, 2, n) * folded.rotations).sum(dim=3)
    carried = (carried + folded.input_bias).view(-1, n_layers * 2 * n)
    new_layers = []
    for block, layer, carry in zip(
        model.blocks, folded.layers, torch.split(carried, 2 * n, dim=1), strict=True
    ):
        assert isinstance(block, LRUBlock)
        h = torch.addmm(carry, x, layer.u_weight_t)  # [b, 2n] = (Re h'; Im h')
        new_layers.append(h)
        y = F.linear(h, layer.c_weight, block.lru.c_re)  # [b, d]
        x = _layer_norm(y + x, block.lru.norm)
        ffn = block.ffn
        z = F.linear(
            F.gelu(F.linear(x, ffn.w_1.weight, ffn.w_1.bias)), ffn.w_2.weight, ffn.w_2.bias
        )
        x = _layer_norm(z + x, ffn.norm)
    return x, torch.cat(new_layers, dim=1).view(-1, n_layers, 2, n)


class FoldedCache:
    """The folded constants of a model, rebuilt when a source parameter changes.

    A change is detected through each source tensor's version counter (bumped by every in-place
    update: optimiser steps, ``load_state_dict``, ``param.add_``) and the storage address of the
    first one (``.to(device/dtype)`` moves them all), which costs a few microseconds per call.
    Assigning ``param.data`` by hand bumps neither and is not supported while serving.
    """

    def __init__(self, model: "LRURec") -> None:
        self._model = model
        self._sources = [
            parameter
            for name, parameter in model.blocks.named_parameters()
            if name.rsplit(".", 1)[-1] in FOLDED_SOURCES
        ]
        self._key: tuple[int, ...] = ()
        self._folded: Folded | None = None

    def _current_key(self) -> tuple[int, ...]:
        return (self._sources[0].data_ptr(), *[p._version for p in self._sources])

    def get(self) -> Folded:
        """Up-to-date folded constants."""
        key = self._current_key()
        if self._folded is None or key != self._key:
            self._folded = fold(self._model)
            self._key = key
        return self._folded
