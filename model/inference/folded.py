"""LRURec's fast inference form: the serving step with the per-layer constants folded once.

The readable step (:meth:`model.lrurec.LRURec.step`) recomputes
λ = exp(-exp(ν_log) + i·exp(θ_log)) and γ on every call and multiplies the real and imaginary
parts separately. At batch 1 every tensor op costs microseconds of dispatch (and every ONNX node
thousands of instructions), which dominates the arithmetic, so here they are folded once
(glossary in :mod:`model.shapes`; ``n`` = d_state):

    R = [[Re λ, -Im λ], [Im λ, Re λ]]  ``[2, 2, n]``    λ ⊙ h as Σ_l R[i, l] ⊙ h[l] on (Re h, Im h)
    W_uᵀ = [γ⊙B_re; γ⊙B_im]ᵀ  ``[d, 2n]``, b_u = [γ⊙b_re; γ⊙b_im]  ``[2, n]``  u = x W_uᵀ + b_u
    W_c = [C_re, -C_im]  ``[d, 2n]``                                        Re(C h) in one matmul

which works directly on the serving layout ``state[:, k] = [Re h; Im h]`` (``[b, 2, n]``). The
old state's λ ⊙ h + b_u does not depend on the new event, so it is computed for every layer at
once (one multiply, one sum, one add); each layer then adds ``x W_uᵀ`` in one ``addmm``. A block
is 9 tensor ops instead of about 25. It computes the same function as the reference step up to
float rounding (pinned by tests/model/test_folded.py); the ONNX export traces
:func:`folded_step` (:mod:`model.inference.export`) and :class:`FoldedLRURec` serves it in torch.
"""

import threading
from contextlib import AbstractContextManager, nullcontext
from types import TracebackType
from typing import NamedTuple, Self

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from model.config import LRURecConfig
from model.layers import LRUBlock
from model.lrurec import LRURec
from model.shapes import Hidden, Items, Scores, State


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


def fold(model: LRURec) -> Folded:
    """Fold every block of ``model``."""
    layers = [fold_layer(block) for block in model.blocks if isinstance(block, LRUBlock)]
    rotations = torch.stack([layer.rotation for layer in layers])
    return Folded(layers, rotations, torch.stack([layer.u_bias for layer in layers]))


def _layer_norm(x: Tensor, norm: nn.LayerNorm) -> Tensor:
    # The aten op directly: F.layer_norm's Python wrapper costs about a microsecond per call.
    return torch.layer_norm(x, norm.normalized_shape, norm.weight, norm.bias, norm.eps)


def folded_step(
    model: LRURec,
    folded: Folded,
    items: Items,
    state: State,
    table: Tensor | None = None,
) -> tuple[Hidden, State]:
    """One event per user, inference only (no dropout); same contract as ``LRURec.step``.

    Only tensor ops, no global switches, so that ONNX export can trace it; call it without
    autograd (``torch.no_grad`` or ``torch.inference_mode``), as :meth:`FoldedLRURec.step` does.

    Args:
        model: the LRURec whose live parameters (norms, feed-forward, c) are used.
        folded: ``fold(model)``.
        items: ``LongTensor[b]``.
        state: ``[b, n_layers, 2, n]``.
        table: item embedding ``[v, d]`` to use instead of ``model.embedding.weight``.

    Returns:
        ``(hidden [b, d], new_state [b, n_layers, 2, n])``.
    """
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


_mkldnn = torch.backends.mkldnn


class _OneDnnOff:
    """oneDNN off while any thread is inside; then as it was.

    With oneDNN on, ``F.gelu`` on one row goes through a oneDNN primitive that cost about 45 µs a
    call inside the step (torch.profiler), against a few µs for ATen's own kernel; the folded
    step is about 20% faster at batch 1 without it (193 against 246 µs CPU on a 2-core AMD EPYC
    VM, benchmarks/bench_onednn_scope.py). The switch
    is the documented, process-wide ``torch.backends.mkldnn.enabled``, so the first thread in
    saves and clears it and the last one out restores it (a save/restore per caller, as
    ``torch.backends.mkldnn.flags`` does, lets overlapping threads leave it off). Another
    thread's ops in that window also run without oneDNN: their speed changes, and their results
    within float rounding.

    ``flags(enabled=False)`` is not used: it also rewrites the deterministic and fp32-precision
    settings on exit, costs about 9 µs to enter and leave, and made the step 24 µs slower than
    this toggle did (217 against 193 µs CPU, same benchmark).
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._inside = 0
        self._saved = True

    def __enter__(self) -> None:
        with self._lock:
            if self._inside == 0:
                self._saved = bool(_mkldnn.enabled)
                _mkldnn.enabled = False  # type: ignore[assignment]  # typed as its descriptor
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
                _mkldnn.enabled = self._saved  # type: ignore[assignment]


_onednn_off = _OneDnnOff()


def _without_autograd() -> AbstractContextManager[object]:
    # torch.no_grad() costs about 2 µs to enter and leave; serving callers already run without
    # autograd, so they skip it.
    return torch.no_grad() if torch.is_grad_enabled() else nullcontext()


class FoldedLRURec:
    """An eval-mode LRURec with λ, γ, B and C folded once: the fast torch form for serving.

    :meth:`step` has the contract of :meth:`LRURec.step` and computes the same function up to
    float rounding, without autograd and without dropout; ``prefill``, ``score`` and ``config``
    are the model's. The folded constants are a snapshot of the model's weights when
    :meth:`from_model` ran (the other weights are read live): after changing the weights
    (training, ``load_state_dict``, ``.to(...)``), build it again.

    ``step`` turns oneDNN off while it runs (:class:`_OneDnnOff`); that scope and its lock cost
    about 6 µs a call at batch 1 (benchmarks/bench_onednn_scope.py), which matters against a
    step of a few tens of µs. A process that does not need oneDNN can instead set
    ``torch.backends.mkldnn.enabled = False`` once at start-up; ``step`` then skips the scope.
    """

    def __init__(self, model: LRURec, folded: Folded) -> None:
        self._model = model
        self._folded = folded

    @classmethod
    def from_model(cls, model: LRURec) -> Self:
        """Fold ``model`` (an :class:`LRURec` in eval mode; raises ``ValueError`` otherwise)."""
        if not isinstance(model, LRURec):
            raise ValueError(f"FoldedLRURec folds an LRURec, got {type(model).__name__}")
        if model.training:
            raise ValueError("FoldedLRURec needs the model in eval mode: call model.eval() first")
        return cls(model, fold(model))

    @property
    def model(self) -> LRURec:
        """The LRURec whose live weights (embedding, norms, feed-forward, c) are used."""
        return self._model

    @property
    def folded(self) -> Folded:
        """The folded constants (a snapshot; see the class docstring)."""
        return self._folded

    @property
    def config(self) -> LRURecConfig:
        return self._model.config

    @property
    def state_shape(self) -> tuple[int, ...]:
        """Per-user state shape: ``(n_layers, 2, d_state)``."""
        return self._model.state_shape

    def init_state(self, batch_size: int) -> State:
        """Zero state for ``batch_size`` users with no events: ``[b, *state_shape]``."""
        return self._model.init_state(batch_size)

    def step(self, items: Items, state: State) -> tuple[Hidden, State]:
        """Advance each user's state by one event (:func:`folded_step`).

        Args:
            items: ``LongTensor[b]``, one item per user (non-zero).
            state: ``[b, *state_shape]``; not modified.

        Returns:
            ``(hidden [b, d], new_state [b, *state_shape])``.
        """
        with _without_autograd():
            if not _mkldnn.enabled:  # off for the whole process: nothing to scope
                return folded_step(self._model, self._folded, items, state)
            with _onednn_off:
                return folded_step(self._model, self._folded, items, state)

    def prefill(self, items: Items) -> tuple[Hidden, State]:
        """:meth:`LRURec.prefill` without autograd: ``[b, t]`` → ``(hidden [b, d], state)``."""
        with _without_autograd():
            return self._model.prefill(items)

    def score(self, hidden: Hidden) -> Scores:
        """:meth:`LRURec.score` without autograd: ``[..., d] → [..., v]``."""
        with _without_autograd():
            return self._model.score(hidden)

    def cold_start_hidden(self) -> Hidden:
        """:meth:`LRURec.cold_start_hidden` without autograd, ``[d]`` (computed once at start-up:
        the reference step is fast enough)."""
        with _without_autograd():
            return self._model.cold_start_hidden()
