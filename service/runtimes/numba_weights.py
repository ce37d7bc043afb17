"""The numba step's weights: taken from an LRURec model, packed into one buffer for the kernels.

:func:`kernel_weights` snapshots them in the kernels' layouts, from the same folded constants the
torch backend (FoldedLRURec) and the ONNX export use (:mod:`model.inference.folded`);
:func:`pack_weights` puts them in one cache-line-aligned buffer with its layout, which the fused
kernels take as two arguments instead of fifteen (``service.runtimes.numba_kernels._unpacked`` makes
the views inside); :func:`unpack_weights` makes the same views in numpy, for the BLAS batched step.
"""

import math
from collections.abc import Sequence
from typing import Final

import numpy as np
import torch
from numpy.typing import NDArray

from model import LRURec
from model.inference.folded import fold
from model.layers import LRUBlock

Floats = NDArray[np.float32]
Indices = NDArray[np.int64]


def float32_array(tensor: torch.Tensor) -> Floats:
    """``tensor`` as a C-contiguous float32 array on the CPU (a copy where needed)."""
    return np.ascontiguousarray(tensor.detach().cpu().to(torch.float32).numpy())


def _stacked(tensors: Sequence[torch.Tensor]) -> Floats:
    return float32_array(torch.stack([tensor.detach() for tensor in tensors]))


def kernel_weights(model: LRURec) -> tuple[Floats, ...]:
    """The step's weights after the item table, in :data:`WEIGHT_NDIMS`' order (what
    :func:`pack_weights` packs)."""
    folded = fold(model)
    blocks = [block for block in model.blocks if isinstance(block, LRUBlock)]
    return (
        float32_array(model.embedding_norm.weight),
        float32_array(model.embedding_norm.bias),
        float32_array(folded.rotations),
        float32_array(folded.input_bias),
        _stacked([layer.u_weight_t for layer in folded.layers]),  # [L, d, 2n]
        _stacked([layer.c_weight.t() for layer in folded.layers]),  # [L, 2n, d]
        _stacked([block.lru.c_re for block in blocks]),
        _stacked([block.lru.norm.weight for block in blocks]),
        _stacked([block.lru.norm.bias for block in blocks]),
        _stacked([block.ffn.w_1.weight.t() for block in blocks]),  # [L, d, 4d]
        _stacked([block.ffn.w_1.bias for block in blocks]),
        _stacked([block.ffn.w_2.weight.t() for block in blocks]),  # [L, 4d, d]
        _stacked([block.ffn.w_2.bias for block in blocks]),
        _stacked([block.ffn.norm.weight for block in blocks]),
        _stacked([block.ffn.norm.bias for block in blocks]),
    )


WEIGHT_NDIMS: Final = (1, 1, 4, 3, 3, 3, 2, 2, 2, 3, 2, 3, 2, 2, 2)
"""Dimensions of the step's weights, in :func:`kernel_weights`' order:

- the embedding LayerNorm's weight and bias ``[d]``;
- λ's rotations ``[L, 2, 2, n]``, γ ⊙ b ``[L, 2, n]``, γ ⊙ B ``[L, d, 2n]``, ``[C_re, -C_im]``
  ``[L, 2n, d]``;
- per layer (``[L, ...]``): the LRU's output bias, its LayerNorm's weight and bias, the FFN's
  ``[d, f]`` weight and its bias, its ``[f, d]`` weight and its bias, and its LayerNorm's weight
  and bias.
"""
MAX_NDIM = 4
"""The most dimensions of any weight: ``layout`` has room for this many."""
ALIGN = 64
"""Bytes of a cache line, where each packed weight starts (:func:`pack_weights`)."""


def pack_weights(weights: Sequence[Floats]) -> tuple[Floats, Indices]:
    """The step's weights (:data:`WEIGHT_NDIMS`' order) as one buffer and its layout.

    A kernel call unboxes each array argument (≈ 0.1 µs apiece here), so the fused kernels
    take the fifteen weights as one: ``layout [15, 5]`` holds each weight's offset in the
    buffer and its shape, padded with 1s. Each weight starts on a cache line (:data:`ALIGN`),
    as separately allocated arrays do: vector loads that straddle two lines made the step
    ≈ 17 % slower (13.8 against 11.8 µs).
    """
    if tuple(weight.ndim for weight in weights) != WEIGHT_NDIMS:
        ndims = [weight.ndim for weight in weights]
        raise ValueError(f"weights of {ndims} dimensions; expected {WEIGHT_NDIMS}")
    if any(weight.dtype != np.float32 for weight in weights):  # would be cast silently
        raise ValueError(f"weights of {[str(weight.dtype) for weight in weights]}; not float32")
    layout = np.ones((len(weights), 1 + MAX_NDIM), dtype=np.int64)
    floats_per_line = ALIGN // 4
    offset = 0
    for row, weight in enumerate(weights):
        layout[row, 0] = offset
        layout[row, 1 : 1 + weight.ndim] = weight.shape
        offset += -(-weight.size // floats_per_line) * floats_per_line
    packed = aligned_zeros(offset)
    for (start, *_), weight in zip(layout.tolist(), weights, strict=True):
        packed[start : start + weight.size] = np.ravel(weight)
    return packed, layout


def aligned_zeros(size: int) -> Floats:
    """``size`` float32 zeros starting on a cache line (:data:`ALIGN` bytes)."""
    raw = np.zeros(size + ALIGN // 4, dtype=np.float32)
    skip = (-raw.ctypes.data % ALIGN) // 4
    return raw[skip : skip + size]


def unpack_weights(packed: Floats, layout: Indices) -> tuple[Floats, ...]:
    """:func:`pack_weights`' inverse: views of ``packed``, one per weight."""
    return tuple(
        packed[start : start + math.prod(shape[:ndim])].reshape(shape[:ndim])
        for (start, *shape), ndim in zip(layout.tolist(), WEIGHT_NDIMS, strict=True)
    )
