"""LRURec's serving step with the per-layer constants folded once: the fast path of ``step``.

The readable step (:meth:`model.layers.LRULayer.step`) recomputes
λ = exp(-exp(ν_log) + i·exp(θ_log)) and γ on every call and multiplies the real and imaginary
parts separately. At batch 1 every tensor op costs microseconds of dispatch, which dominates the
arithmetic, so here they are folded once per weight version into (glossary in
:mod:`model.shapes`; ``n`` = d_state):

    W_u = [γ⊙B_re; γ⊙B_im]  ``[2n, d]``, b_u = [γ⊙b_re; γ⊙b_im]  one matmul gives u as [re; im]
    D_same = [Re λ; Re λ], D_cross = [-Im λ; Im λ]  ``[2, n]``    λ⊙h = D_same⊙h + D_cross⊙swap(h)
    W_c = [C_re, -C_im]  ``[d, 2n]``                              Re(C h) in one matmul

which works directly on the serving layout ``state[:, k] = [Re h; Im h]`` (``[b, 2, n]``). One
block is then 12 tensor ops instead of about 25. It computes the same function as the reference
step up to float rounding (pinned by tests/model/test_folded.py). The embedding table, the output
bias c, the LayerNorms and the feed-forward are used live, so only the folded tensors can go stale;
:class:`FoldedCache` rebuilds them whenever a parameter they derive from changes.
"""

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

    u_weight: Tensor
    u_bias: Tensor
    decay_same: Tensor
    decay_cross: Tensor
    c_weight: Tensor


def fold_layer(block: LRUBlock) -> FoldedLayer:
    """Fold one block's λ, γ, B and C into :class:`FoldedLayer` (no autograd)."""
    lru = block.lru
    with torch.no_grad():
        gamma = torch.exp(lru.gamma_log).unsqueeze(-1)  # [n, 1]
        decay_re, decay_im = lru.decay()
        return FoldedLayer(
            u_weight=torch.cat([lru.B_re * gamma, lru.B_im * gamma]),  # [2n, d]
            u_bias=torch.cat([lru.b_re * gamma[:, 0], lru.b_im * gamma[:, 0]]),  # [2n]
            decay_same=torch.stack([decay_re, decay_re]),  # [2, n]
            decay_cross=torch.stack([-decay_im, decay_im]),  # [2, n]
            c_weight=torch.cat([lru.C_re, -lru.C_im], dim=1),  # [d, 2n]
        )


def _layer_norm(x: Tensor, norm: nn.LayerNorm) -> Tensor:
    # The aten op directly: F.layer_norm's Python wrapper costs about a microsecond per call.
    return torch.layer_norm(x, norm.normalized_shape, norm.weight, norm.bias, norm.eps)


def folded_step(
    model: "LRURec",
    layers: list[FoldedLayer],
    items: Items,
    state: State,
    table: Tensor | None = None,
) -> tuple[Hidden, State]:
    """One event per user, inference only (no dropout); same contract as ``LRURec.step``.

    Args:
        model: the LRURec whose live parameters (norms, feed-forward, c) are used.
        layers: ``fold_layer`` of each block, in order.
        items: ``LongTensor[b]``.
        state: ``[b, n_layers, 2, n]``.
        table: item embedding ``[v, d]`` to use instead of ``model.embedding.weight``.

    Returns:
        ``(hidden [b, d], new_state [b, n_layers, 2, n])``.
    """
    table = model.embedding.weight if table is None else table
    x = _layer_norm(torch.embedding(table, items), model.embedding_norm)  # [b, d]
    n = layers[0].decay_same.shape[1]  # a Python int: constant reshapes export without Shape ops
    new_layers = []
    for k, (block, folded) in enumerate(zip(model.blocks, layers, strict=True)):
        assert isinstance(block, LRUBlock)
        h = state[:, k]  # [b, 2, n]: (Re h, Im h)
        u = F.linear(x, folded.u_weight, folded.u_bias).view(-1, 2, n)  # [b, 2, n]
        h = torch.addcmul(torch.addcmul(u, h, folded.decay_same), h.flip(1), folded.decay_cross)
        new_layers.append(h)
        y = F.linear(h.reshape(-1, 2 * n), folded.c_weight, block.lru.c_re)  # [b, d]
        x = _layer_norm(y + x, block.lru.norm)
        ffn = block.ffn
        z = F.linear(
            F.gelu(F.linear(x, ffn.w_1.weight, ffn.w_1.bias)), ffn.w_2.weight, ffn.w_2.bias
        )
        x = _layer_norm(z + x, ffn.norm)
    return x, torch.stack(new_layers, dim=1)


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
        self._layers: list[FoldedLayer] = []

    def _current_key(self) -> tuple[int, ...]:
        return (self._sources[0].data_ptr(), *[p._version for p in self._sources])

    def layers(self) -> list[FoldedLayer]:
        """Up-to-date folded constants, one per block."""
        key = self._current_key()
        if key != self._key:
            self._layers = [
                fold_layer(block) for block in self._model.blocks if isinstance(block, LRUBlock)
            ]
            self._key = key
        return self._layers
