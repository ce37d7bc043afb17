"""Compiled (numba) kernels of LRURec's serving step and exact top-k: the ``numba`` backend.

At batch 1 a step is about 130K multiply-adds and a ranking of 3,416 items about 220K: far less
work than the per-operator dispatch of PyTorch eager (≈ 15 ops per block, µs each) or
onnxruntime (≈ 4K instructions per node, 26 nodes). Here the whole step is one compiled loop
nest, and scoring + exclusion + top-k another, so a call costs about its arithmetic.

Layouts (all float32, C-contiguous; glossary in :mod:`model.shapes`, ``n`` = d_state, ``L`` =
layers): every weight matrix is stored ``[inputs, outputs]`` so a matrix-vector product is one
contiguous ``out += x[j] * row_j`` per input, which vectorises without horizontal sums. The
folded constants are those of :mod:`model.folded` (λ as a 2×2 rotation per state channel, γ
folded into B, ``[C_re, -C_im]``); the GELU is the exact erf form. Compiled with ``fastmath``
limited to reassociation, contraction and signed zeros, so infinities (masked items) keep their
meaning. The slow reference these are tested against is :meth:`model.LRURec.step` and
``torch.topk`` (tests/service/test_numba_runtime.py).
"""

import math

import numpy as np
from numba import njit
from numpy.typing import NDArray

Floats = NDArray[np.float32]
Indices = NDArray[np.int64]

FAST_MATH = {"contract", "reassoc", "nsz"}
"""No ``nnan``/``ninf``: excluded items are scored -inf and must compare as such."""

INV_SQRT2 = 0.7071067811865476


@njit(fastmath=FAST_MATH, inline="always")
def _layer_norm(x: Floats, weight: Floats, bias: Floats, eps: float, out: Floats) -> None:
    width = x.shape[0]
    mean = 0.0
    for j in range(width):
        mean += x[j]
    mean /= width
    variance = 0.0
    for j in range(width):
        centred = x[j] - mean
        variance += centred * centred
    scale = 1.0 / math.sqrt(variance / width + eps)
    for j in range(width):
        out[j] = (x[j] - mean) * scale * weight[j] + bias[j]


@njit(fastmath=FAST_MATH, inline="always")
def _add_product(weight_t: Floats, x: Floats, out: Floats) -> None:
    """``out += x @ weight_t`` with ``weight_t`` ``[inputs, outputs]``: one axpy per input."""
    for j in range(weight_t.shape[0]):
        xj = x[j]
        row = weight_t[j]
        for r in range(weight_t.shape[1]):
            out[r] += xj * row[r]


@njit(fastmath=FAST_MATH, nogil=True)
def step_kernel(
    items: Indices,
    states: Floats,
    hidden_out: Floats,
    states_out: Floats,
    table_t: Floats,
    embedding_norm_weight: Floats,
    embedding_norm_bias: Floats,
    rotations: Floats,
    input_bias: Floats,
    u_weight_t: Floats,
    c_weight_t: Floats,
    c_bias: Floats,
    lru_norm_weight: Floats,
    lru_norm_bias: Floats,
    ffn_in_weight_t: Floats,
    ffn_in_bias: Floats,
    ffn_out_weight_t: Floats,
    ffn_out_bias: Floats,
    ffn_norm_weight: Floats,
    ffn_norm_bias: Floats,
    eps: float,
) -> int:
    """One event per user: ``items [b]``, ``states [b, L, 2, n]`` → ``hidden_out [b, d]``,
    ``states_out [b, L, 2, n]`` (written in place).

    ``table_t`` is the item embedding transposed, ``[d, v]``, shared with :func:`top_k_kernel`
    (one copy of the table; the step reads one strided column of it).

    Returns:
        -1, or the first user whose item is not a column of ``table_t`` (nothing written from
        there on: unchecked, it would read outside the table).
    """
    width = table_t.shape[0]
    n_layers = rotations.shape[0]
    n = rotations.shape[3]
    x = np.empty(width, np.float32)
    residual = np.empty(width, np.float32)
    inner = np.empty(ffn_in_weight_t.shape[2], np.float32)
    for user in range(items.shape[0]):
        if items[user] < 0 or items[user] >= table_t.shape[1]:
            return user
        _layer_norm(table_t[:, items[user]], embedding_norm_weight, embedding_norm_bias, eps, x)
        for k in range(n_layers):
            old = states[user, k]
            new = states_out[user, k]
            rotation, carried = rotations[k], input_bias[k]
            for j in range(n):  # λ ⊙ h + γ ⊙ b as a rotation of (Re h, Im h)
                real, imag = old[0, j], old[1, j]
                new[0, j] = rotation[0, 0, j] * real + rotation[0, 1, j] * imag + carried[0, j]
                new[1, j] = rotation[1, 0, j] * real + rotation[1, 1, j] * imag + carried[1, j]
            h = new.reshape(2 * n)
            _add_product(u_weight_t[k], x, h)  # + γ ⊙ B x
            residual[:] = c_bias[k]
            _add_product(c_weight_t[k], h, residual)  # Re(C h) + c
            for j in range(width):
                residual[j] += x[j]
            _layer_norm(residual, lru_norm_weight[k], lru_norm_bias[k], eps, x)
            inner[:] = ffn_in_bias[k]
            _add_product(ffn_in_weight_t[k], x, inner)
            for j in range(inner.shape[0]):
                value = inner[j]
                inner[j] = 0.5 * value * (1.0 + math.erf(value * INV_SQRT2))
            residual[:] = ffn_out_bias[k]
            _add_product(ffn_out_weight_t[k], inner, residual)
            for j in range(width):
                residual[j] += x[j]
            _layer_norm(residual, ffn_norm_weight[k], ffn_norm_bias[k], eps, x)
        hidden_out[user] = x
    return -1


@njit(fastmath=FAST_MATH, nogil=True)
def top_k_kernel(
    hidden: Floats,
    table_t: Floats,
    bias: Floats,
    exclude: Indices,
    exclude_starts: Indices,
    k: int,
    top_items: Indices,
    top_scores: Floats,
    counts: Indices,
) -> int:
    """Exact top-``k`` of ``hidden [b, d] @ table + bias`` per user, column 0 and excluded items
    left out, best first; ties keep the lower index first (as ONNX TopK).

    ``exclude`` holds every user's excluded indices back to back; user ``u``'s are
    ``exclude[exclude_starts[u]:exclude_starts[u + 1]]``. Writes ``top_items [b, k]``,
    ``top_scores [b, k]`` and ``counts [b]`` (fewer than ``k`` when fewer items are left).

    Returns:
        -1, or the first user with an excluded index outside ``[0, v)`` (not ranked).
    """
    n_columns = table_t.shape[1]
    scores = np.empty(n_columns, np.float32)
    for user in range(hidden.shape[0]):
        scores[:] = bias
        _add_product(table_t, hidden[user], scores)
        scores[0] = -np.inf
        for position in range(exclude_starts[user], exclude_starts[user + 1]):
            if exclude[position] < 0 or exclude[position] >= n_columns:
                return user
            scores[exclude[position]] = -np.inf
        best_scores = top_scores[user]
        best_items = top_items[user]
        filled = 0
        for item in range(n_columns):
            score = scores[item]
            if score == -np.inf:
                continue
            if filled == k:
                if not score > best_scores[k - 1]:
                    continue
                slot = k - 1
            else:
                slot = filled
                filled += 1
            while slot > 0 and best_scores[slot - 1] < score:  # insertion, stable for ties
                best_scores[slot] = best_scores[slot - 1]
                best_items[slot] = best_items[slot - 1]
                slot -= 1
            best_scores[slot] = score
            best_items[slot] = item
        counts[user] = filled
    return -1
