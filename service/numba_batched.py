"""LRURec's serving step for a batch of users: BLAS matrix products, compiled element-wise parts.

:func:`service.numba_kernels.step_kernel` does a step in one loop nest, the fastest way for a
few users. From about 8 users on, numpy's BLAS products (``[b, d] @ [d, 2n]`` and the like)
run 2-3.5x faster than those loops (measured at b = 64 on this 2-core VM), so this step calls
them between small compiled kernels for the embedding LayerNorm, the λ rotation, the
LayerNorms and the GELU. Same weights, same order of operations per layer, tested against the
fused kernel and :meth:`model.LRURec.step` (tests/service/test_numba_runtime.py).
"""

from typing import Any

import numpy as np
from numpy.typing import NDArray

from service.numba_kernels import (
    embed_kernel,
    gelu_kernel,
    layer_norm_kernel,
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
    *weights_and_eps: Any,
) -> int:
    """:func:`service.numba_kernels.step_kernel`'s contract, through BLAS: one event per user,
    ``items [b]``, ``states [b, L, 2, n]`` → ``hidden_out [b, d]``, ``states_out [b, L, 2, n]``
    (written in place); after ``table`` the same weights and ``eps``.

    Returns:
        -1, or the first row whose item is outside ``table`` (then nothing is stepped).
    """
    (
        embedding_norm_weight, embedding_norm_bias, rotations, input_bias, u_weight_t,
        c_weight_t, c_bias, lru_norm_weight, lru_norm_bias, ffn_in_weight_t, ffn_in_bias,
        ffn_out_weight_t, ffn_out_bias, ffn_norm_weight, ffn_norm_bias, eps,
    ) = weights_and_eps  # fmt: skip
    x, batch = hidden_out, len(items)  # the running activations end as the hidden vectors
    failed = embed_kernel(items, table, embedding_norm_weight, embedding_norm_bias, eps, x)
    if failed >= 0:
        return int(failed)
    h = np.empty((batch, 2 * rotations.shape[3]), dtype=np.float32)  # (Re h; Im h) per user
    for layer in range(len(rotations)):
        rotate_kernel(states, layer, rotations[layer], input_bias[layer], h)
        h += x @ u_weight_t[layer]
        states_out[:, layer] = h.reshape(batch, 2, -1)
        residual = h @ c_weight_t[layer]  # Re(C h), then + c + x
        residual += c_bias[layer]
        residual += x
        layer_norm_kernel(residual, lru_norm_weight[layer], lru_norm_bias[layer], eps, x)
        inner = x @ ffn_in_weight_t[layer]
        inner += ffn_in_bias[layer]
        gelu_kernel(inner)
        residual = inner @ ffn_out_weight_t[layer]
        residual += ffn_out_bias[layer]
        residual += x
        layer_norm_kernel(residual, ffn_norm_weight[layer], ffn_norm_bias[layer], eps, x)
    return -1
