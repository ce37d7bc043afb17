"""LRURec's serving step for a batch of users: BLAS matrix products, compiled element-wise parts.

:func:`service.runtimes.numba_kernels.step_kernel` does a step in one loop nest, the fastest way for
a few users. From about 8 users on, numpy's BLAS products (``[b, d] @ [d, 2n]`` and the like) run
2-3.5x faster than those loops (measured at b = 64 on this 2-core VM), so this step calls them
between small compiled kernels for the embedding LayerNorm, the λ rotation, the LayerNorms and the
GELU (each adding the bias and residual that precede it). Same weights and operations per layer,
summed in another order, so results agree to float32 rounding; tested against the fused kernel and
:meth:`model.LRURec.step` (tests/service/test_numba_runtime.py).
"""

from collections.abc import Sequence

import numpy as np
from numpy.typing import NDArray

from service.runtimes.numba_kernels import (
    embed_kernel,
    gelu_kernel,
    residual_norm_kernel,
    rotate_kernel,
)

Floats = NDArray[np.float32]
Indices = NDArray[np.int64]


def batched_step(
    items: Indices,
    states: Floats,
    hidden_out: Floats,
    states_out: Floats,
    table: Floats,
    weights: Sequence[Floats],
    eps: float,
) -> int:
    """:func:`service.runtimes.numba_kernels.step_kernel`'s contract, through BLAS: one event per
    user,
    ``items [b]``, ``states [b, L, 2, n]`` → ``hidden_out [b, d]``, ``states_out [b, L, 2, n]``
    (written in place; unlike the fused kernel's, it must be another array than ``states``);
    after ``table`` the weights unpacked (:func:`service.runtimes.numba_weights.unpack_weights`),
    then
    ``eps``.

    Returns:
        -1, or the first row whose item is outside ``table`` (then nothing is stepped).
    """
    (
        embedding_norm_weight, embedding_norm_bias, rotations, input_bias, u_weight_t,
        c_weight_t, c_bias, lru_norm_weight, lru_norm_bias, ffn_in_weight_t, ffn_in_bias,
        ffn_out_weight_t, ffn_out_bias, ffn_norm_weight, ffn_norm_bias,
    ) = weights  # fmt: skip
    x, batch = hidden_out, len(items)  # the running activations end as the hidden vectors
    failed = embed_kernel(items, table, embedding_norm_weight, embedding_norm_bias, eps, x)
    if failed >= 0:
        return int(failed)
    # Products land in preallocated blocks; the kernels add biases and residuals while
    # normalising, instead of a numpy pass over [b, ...] for each addition.
    width, state_width = x.shape[1], 2 * rotations.shape[3]
    projected = np.empty((batch, state_width), dtype=np.float32)  # γ ⊙ B x
    block = np.empty((batch, width), dtype=np.float32)
    inner = np.empty((batch, ffn_in_weight_t.shape[2]), dtype=np.float32)
    for layer in range(len(rotations)):
        np.matmul(x, u_weight_t[layer], out=projected)
        rotate_kernel(states, layer, rotations[layer], input_bias[layer], projected, states_out)
        h = states_out[:, layer].reshape(batch, state_width)  # (Re h; Im h) per user, a view
        np.matmul(h, c_weight_t[layer], out=block)  # Re(C h); + c + x below
        residual_norm_kernel(
            block, c_bias[layer], x, lru_norm_weight[layer], lru_norm_bias[layer], eps, x
        )
        np.matmul(x, ffn_in_weight_t[layer], out=inner)
        gelu_kernel(inner, ffn_in_bias[layer])
        np.matmul(inner, ffn_out_weight_t[layer], out=block)
        residual_norm_kernel(
            block, ffn_out_bias[layer], x, ffn_norm_weight[layer], ffn_norm_bias[layer], eps, x
        )
    return -1
