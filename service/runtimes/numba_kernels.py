"""Compiled (numba) kernels of LRURec's serving step and exact top-k: the ``numba`` backend.

At batch 1 a step is about 130K multiply-adds and a ranking of 3,416 items about 220K: far less
work than the per-operator dispatch of PyTorch eager (≈ 15 ops per block, µs each) or
onnxruntime (≈ 4K instructions per node, 26 nodes). Here the whole step is one compiled loop
nest, and scoring + exclusion + top-k another, so a call costs about its arithmetic.

Layouts (all float32, C-contiguous; glossary in :mod:`model.shapes`, ``n`` = d_state, ``L`` =
layers): every weight matrix is stored ``[inputs, outputs]`` so a matrix-vector product is one
contiguous ``out += x[j] * row_j`` per input, which vectorises without horizontal sums. The folded
constants are those of :mod:`model.inference.folded` (λ as a 2×2 rotation per state channel, γ
folded into B, ``[C_re, -C_im]``); the GELU is the erf form, with a float32 erf (:func:`_erf`).
Compiled with ``fastmath`` limited to reassociation, contraction and signed zeros, so infinities
(masked items) keep their meaning. The slow reference these are tested against is
:meth:`model.LRURec.step` and ``torch.topk`` (tests/service/test_backend_parity.py,
tests/service/test_numba_runtime.py).
"""

import math
from collections.abc import Callable
from typing import Any, Final, TypeAlias

import numpy as np
from numba import njit
from numba.core.dispatcher import Dispatcher
from numpy.typing import NDArray

Floats = NDArray[np.float32]
Indices = NDArray[np.int64]

FAST_MATH = {"contract", "reassoc", "nsz"}
"""No ``nnan``/``ninf``: excluded items are scored -inf and must compare as such."""
ERROR_MODEL: Final = "numpy"
"""Every kernel and helper's. numpy's error model: a float division by zero gives inf/NaN as in
numpy instead of numba's default check-and-raise, whose branch kept every loop with a division
from vectorising (the GELU's erf: 64 × 256 values in ≈ 70 µs scalar, ≈ 10 µs vectorised)."""


Kernel: TypeAlias = "Dispatcher[Callable[..., int]]"  # generic only in numba's stubs
"""A compiled kernel: arrays in, a status code out; ``.signatures`` lists what it compiled."""


def kernel(function: Callable[..., int]) -> Kernel:
    """Compile ``function`` as a kernel: ``fastmath`` as above, GIL released, and its machine
    code cached on disk where numba finds a writable place (next to this file, or
    ``NUMBA_CACHE_DIR``), so a worker starts in about a second instead of compiling for 5-20 s.
    """
    try:
        compiled: Kernel = njit(
            fastmath=FAST_MATH, error_model=ERROR_MODEL, nogil=True, cache=True
        )(function)
    except RuntimeError:  # no writable cache location (e.g. a read-only image): compile per start
        compiled = njit(fastmath=FAST_MATH, error_model=ERROR_MODEL, nogil=True)(function)
    return compiled


INV_SQRT2 = np.float32(0.7071067811865476)
ERF_CLAMP = np.float32(4.0)
"""|z| beyond which float32 erf(z) is ±1 to within 1e-7 (the approximation's range)."""
# Odd-over-even rational approximation of erf on [-4, 4] (monomial coefficients, highest degree
# first; the form used by Eigen and XLA for float32): at most 1e-6 absolute error in the GELU,
# against ≈ 5 ns per element for libm's double-precision erf, which does not vectorise.
ERF_NUMERATOR = (
    -2.72614225801306e-10, 2.77068142495902e-08, -2.10102402082508e-06,
    -5.69250639462346e-05, -7.34990630326855e-04, -2.95459980854025e-03,
    -1.60960333262415e-02,
)  # fmt: skip
ERF_DENOMINATOR = (
    -1.45660718464996e-05, -2.13374055278905e-04, -1.68282697438203e-03,
    -7.37332916720468e-03, -1.42647390514189e-02,
)  # fmt: skip


@njit(fastmath=FAST_MATH, error_model=ERROR_MODEL, inline="always")
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


@njit(fastmath=FAST_MATH, error_model=ERROR_MODEL, inline="always")
def _erf(z: np.float32) -> np.float32:
    """float32 erf by :data:`ERF_NUMERATOR` / :data:`ERF_DENOMINATOR`; vectorises in a loop."""
    z = min(max(z, -ERF_CLAMP), ERF_CLAMP)
    z2 = z * z
    numerator = np.float32(ERF_NUMERATOR[0])
    for coefficient in ERF_NUMERATOR[1:]:
        numerator = numerator * z2 + np.float32(coefficient)
    denominator = np.float32(ERF_DENOMINATOR[0])
    for coefficient in ERF_DENOMINATOR[1:]:
        denominator = denominator * z2 + np.float32(coefficient)
    return z * numerator / denominator


@njit(fastmath=FAST_MATH, error_model=ERROR_MODEL, inline="always")
def _sum_into(a: Floats, b: Floats, out: Floats) -> None:
    """``out = a + b`` without the temporary array numba makes for the expression."""
    for j in range(out.shape[0]):
        out[j] = a[j] + b[j]


@njit(fastmath=FAST_MATH, error_model=ERROR_MODEL, inline="always")
def _add_products(weight_t: Floats, x: Floats, out: Floats) -> None:
    """``out += x @ weight_t`` for a batch, ``x [b, inputs]``, ``out [b, outputs]``: each
    weight row is used for every user while it is in cache, four rows per pass over ``out``
    (a pass per row was bound by loading and storing ``out``: 1.5 against 1.0 µs for one
    user's 256 × 64 here)."""
    inputs, outputs = weight_t.shape
    whole = inputs - inputs % 4
    for j in range(0, whole, 4):
        row0, row1, row2, row3 = weight_t[j], weight_t[j + 1], weight_t[j + 2], weight_t[j + 3]
        for user in range(x.shape[0]):
            x0, x1, x2, x3 = x[user, j], x[user, j + 1], x[user, j + 2], x[user, j + 3]
            target = out[user]
            for r in range(outputs):
                target[r] += x0 * row0[r] + x1 * row1[r] + x2 * row2[r] + x3 * row3[r]
    for j in range(whole, inputs):
        row = weight_t[j]
        for user in range(x.shape[0]):
            xj = x[user, j]
            target = out[user]
            for r in range(outputs):
                target[r] += xj * row[r]


@njit(fastmath=FAST_MATH, error_model=ERROR_MODEL, inline="always")
def _embed(
    items: Indices, table: Floats, weight: Floats, bias: Floats, eps: float, out: Floats
) -> int:
    """``out [b, d]`` = LayerNorm of each item's row of ``table``. Returns -1, or the first
    row whose item is outside the table (nothing read for it: numba does not check)."""
    for user in range(items.shape[0]):
        if items[user] < 0 or items[user] >= table.shape[0]:
            return user
        _layer_norm(table[items[user]], weight, bias, eps, out[user])
    return -1


@njit(fastmath=FAST_MATH, error_model=ERROR_MODEL, inline="always")
def _rotate_part(old: Floats, rotation: Floats, carried: Floats, part: int, out: Floats) -> None:
    """``out [n]`` = the real (``part`` 0) or imaginary (1) half of λ ⊙ h + γ ⊙ b for one
    user's ``old [2, n]`` state, λ as a rotation of (Re h, Im h), ``carried`` = γ ⊙ b.

    One half per loop: a loop storing to two arrays needs more run-time alias checks than
    LLVM allows and stays scalar (≈ 4x slower, measured at b = 64).
    """
    real, imag = old[0], old[1]
    to_real, to_imag, carry = rotation[part, 0], rotation[part, 1], carried[part]
    for j in range(out.shape[0]):
        out[j] = to_real[j] * real[j] + to_imag[j] * imag[j] + carry[j]


@njit(fastmath=FAST_MATH, error_model=ERROR_MODEL, inline="always")
def _rotate(states: Floats, layer: int, rotation: Floats, carried: Floats, out: Floats) -> None:
    """``out [b, 2n]`` = (Re; Im) of λ ⊙ h + γ ⊙ b for ``states [b, L, 2, n]`` at ``layer``
    (:func:`_rotate_part`); the caller adds γ ⊙ B x."""
    n = rotation.shape[2]
    for user in range(states.shape[0]):
        for part in range(2):
            half = out[user, part * n : (part + 1) * n]
            _rotate_part(states[user, layer], rotation, carried, part, half)


@njit(fastmath=FAST_MATH, error_model=ERROR_MODEL, inline="always")
def _gelu(x: Floats) -> None:
    """GELU of ``x [b, f]`` in place, the erf form (with :func:`_erf`)."""
    for user in range(x.shape[0]):
        row = x[user]
        for j in range(row.shape[0]):
            row[j] = np.float32(0.5) * row[j] * (np.float32(1.0) + _erf(row[j] * INV_SQRT2))


@njit(fastmath=FAST_MATH, error_model=ERROR_MODEL, inline="always")
def _view1(packed: Floats, layout: Indices, weight: int) -> Floats:
    start = layout[weight, 0]
    return packed[start : start + layout[weight, 1]]


@njit(fastmath=FAST_MATH, error_model=ERROR_MODEL, inline="always")
def _view2(packed: Floats, layout: Indices, weight: int) -> Floats:
    start, rows, columns = layout[weight, 0], layout[weight, 1], layout[weight, 2]
    return packed[start : start + rows * columns].reshape((rows, columns))


@njit(fastmath=FAST_MATH, error_model=ERROR_MODEL, inline="always")
def _view3(packed: Floats, layout: Indices, weight: int) -> Floats:
    start, shape = layout[weight, 0], (layout[weight, 1], layout[weight, 2], layout[weight, 3])
    return packed[start : start + shape[0] * shape[1] * shape[2]].reshape(shape)


@njit(fastmath=FAST_MATH, error_model=ERROR_MODEL, inline="always")
def _view4(packed: Floats, layout: Indices, weight: int) -> Floats:
    start = layout[weight, 0]
    shape = (layout[weight, 1], layout[weight, 2], layout[weight, 3], layout[weight, 4])
    return packed[start : start + shape[0] * shape[1] * shape[2] * shape[3]].reshape(shape)


@njit(fastmath=FAST_MATH, error_model=ERROR_MODEL, inline="always")
def _unpacked(packed: Floats, layout: Indices) -> tuple[Floats, ...]:
    """:func:`service.runtimes.numba_weights.unpack_weights` in a kernel, in its
    :data:`~service.runtimes.numba_weights.WEIGHT_NDIMS` order (numba needs each view's dimensions
    fixed)."""
    return (
        _view1(packed, layout, 0), _view1(packed, layout, 1), _view4(packed, layout, 2),
        _view3(packed, layout, 3), _view3(packed, layout, 4), _view3(packed, layout, 5),
        _view2(packed, layout, 6), _view2(packed, layout, 7), _view2(packed, layout, 8),
        _view3(packed, layout, 9), _view2(packed, layout, 10), _view3(packed, layout, 11),
        _view2(packed, layout, 12), _view2(packed, layout, 13), _view2(packed, layout, 14),
    )  # fmt: skip


@kernel
def step_kernel(
    items: Indices,
    states: Floats,
    hidden_out: Floats,
    states_out: Floats,
    table: Floats,
    weights: Floats,
    layout: Indices,
    eps: float,
) -> int:
    """One event per user: ``items [b]``, ``states [b, L, 2, n]`` → ``hidden_out [b, d]``,
    ``states_out [b, L, 2, n]`` (written in place).

    ``table`` is the item embedding ``[v, d]``, whose rows :func:`top_k_kernel` scores when
    it gets no column-major copy; ``weights`` and ``layout`` are the other weights, packed by
    :func:`service.runtimes.numba_weights.pack_weights`.

    Returns:
        -1, or the first user whose item is not a row of ``table``; then nothing is written
        (unchecked, it would read outside the table).
    """
    (
        embedding_norm_weight, embedding_norm_bias, rotations, input_bias, u_weight_t,
        c_weight_t, c_bias, lru_norm_weight, lru_norm_bias, ffn_in_weight_t, ffn_in_bias,
        ffn_out_weight_t, ffn_out_bias, ffn_norm_weight, ffn_norm_bias,
    ) = _unpacked(weights, layout)  # fmt: skip
    batch, width = items.shape[0], table.shape[1]
    n_layers, n = rotations.shape[0], rotations.shape[3]
    x = np.empty((batch, width), np.float32)
    h = np.empty((batch, 2 * n), np.float32)  # (Re h; Im h) of one layer, every user
    residual = np.empty((batch, width), np.float32)
    inner = np.empty((batch, ffn_in_weight_t.shape[2]), np.float32)
    failed = _embed(items, table, embedding_norm_weight, embedding_norm_bias, eps, x)
    if failed >= 0:
        return failed
    for k in range(n_layers):  # layer by layer, so each weight row is read once per batch
        _rotate(states, k, rotations[k], input_bias[k], h)
        _add_products(u_weight_t[k], x, h)  # + γ ⊙ B x
        for user in range(batch):
            states_out[user, k, 0] = h[user, :n]
            states_out[user, k, 1] = h[user, n:]
            _sum_into(c_bias[k], x[user], residual[user])
        _add_products(c_weight_t[k], h, residual)  # Re(C h) + c + x
        for user in range(batch):
            _layer_norm(residual[user], lru_norm_weight[k], lru_norm_bias[k], eps, x[user])
            inner[user] = ffn_in_bias[k]
        _add_products(ffn_in_weight_t[k], x, inner)
        _gelu(inner)
        for user in range(batch):
            _sum_into(ffn_out_bias[k], x[user], residual[user])
        _add_products(ffn_out_weight_t[k], inner, residual)
        for user in range(batch):
            _layer_norm(residual[user], ffn_norm_weight[k], ffn_norm_bias[k], eps, x[user])
    hidden_out[:] = x
    return -1


SCAN_WIDTH = 64
"""Scores checked at once against the selection's threshold before any is looked at alone.
The top 10 of 3,416 scores from a close floor took 2.0 µs in runs of 32 of a variable count,
0.7 µs in runs of 64 of a fixed count, which LLVM vectorises fully (32 fixed: no faster)."""
FLOOR_ROWS = 8
"""Recent rows whose k-th best scores floor the next row's selection (:func:`_rank`)."""


@njit(fastmath=FAST_MATH, error_model=ERROR_MODEL, inline="always")
def _insert(
    score: np.float32, item: int, filled: int, k: int, best_items: Indices, best_scores: Floats
) -> int:
    """Insert into the sorted best ``k`` (dropping the last when full), after any equal score
    (ties keep the lower index first). Returns how many are kept now."""
    if filled == k:
        slot = k - 1
    else:
        slot = filled
        filled += 1
    while slot > 0 and best_scores[slot - 1] < score:
        best_scores[slot] = best_scores[slot - 1]
        best_items[slot] = best_items[slot - 1]
        slot -= 1
    best_scores[slot] = score
    best_items[slot] = item
    return filled


@njit(fastmath=FAST_MATH, error_model=ERROR_MODEL, inline="always")
def _select(
    scores: Floats,
    exclude: Indices,
    first: int,
    last: int,
    k: int,
    best_items: Indices,
    best_scores: Floats,
    floor: np.float32,
) -> int:
    """Mask column 0 and ``exclude[first:last]`` in ``scores`` (in place), then keep the best
    ``k`` finite scores above ``floor`` by insertion, ties to the lower index. Returns how many
    were kept, or -1 when an excluded index is outside ``[0, v)``.

    With ``floor`` -inf that is the exact top-``k``; with a higher ``floor`` it is too whenever
    ``k`` are kept (the k-th best is then above ``floor``); fewer kept says only that the floor
    was too high.

    Only a score above the threshold can enter: ``floor`` until ``k`` are kept, then the k-th
    best. The scan skips each whole run of :data:`SCAN_WIDTH` scores none of which is above
    it (a vectorised count, no branches: a float max does not vectorise without assuming no
    NaN); the last, partial run is inserted score by score.
    """
    n_columns = scores.shape[0]
    scores[0] = -np.inf
    for position in range(first, last):
        index = exclude[position]
        if index < 0 or index >= n_columns:
            return -1
        scores[index] = -np.inf
    filled = 0
    threshold = floor  # -inf (masked) and NaN never compare above it
    whole = n_columns - n_columns % SCAN_WIDTH
    for start in range(0, whole, SCAN_WIDTH):
        block = scores[start : start + SCAN_WIDTH]
        above = np.int32(0)
        for item in range(SCAN_WIDTH):  # a fixed count, which LLVM vectorises fully
            above += np.int32(block[item] > threshold)  # NaN never counts: cannot hide one
        if above:
            filled, threshold = _scan(
                scores, start, start + SCAN_WIDTH, k, best_items, best_scores, threshold, filled
            )
    filled, threshold = _scan(
        scores, whole, n_columns, k, best_items, best_scores, threshold, filled
    )  # the last, partial run
    return filled


@njit(fastmath=FAST_MATH, error_model=ERROR_MODEL, inline="always")
def _scan(
    scores: Floats,
    start: int,
    stop: int,
    k: int,
    best_items: Indices,
    best_scores: Floats,
    threshold: np.float32,
    filled: int,
) -> tuple[int, np.float32]:
    """:func:`_select`'s insertion of ``scores[start:stop]`` one by one. Returns how many are
    kept and the threshold now."""
    for item in range(start, stop):
        score = scores[item]
        if score > threshold and score != np.inf:  # +inf comes from bad weights only
            filled = _insert(score, item, filled, k, best_items, best_scores)
            if filled == k:
                threshold = best_scores[k - 1]
    return filled, threshold


@njit(fastmath=FAST_MATH, error_model=ERROR_MODEL, inline="always")
def _rank(
    scores: Floats,
    user: int,
    exclude: Indices,
    exclude_starts: Indices,
    k: int,
    top_items: Indices,
    top_scores: Floats,
    counts: Indices,
    floors: Floats,
    cursor: Indices,
) -> bool:
    """:func:`_select` of row ``user``'s ``scores`` with its exclusions, into its row of the
    outputs; False when an excluded index is outside the table.

    ``floors [FLOOR_ROWS]`` holds the k-th best scores of the last rows ranked (+inf where
    none yet), ``cursor [1]`` counts the rows written there. Rows scored by one model have
    similar scales, so their minimum is tried first as a floor: most of the insertions of a
    scan from -inf are of scores that end up below it. When fewer than ``k`` scores are above
    it, the row is ranked again from -inf, so the result is the exact top-k whatever the
    floors hold.
    """
    first, last = exclude_starts[user], exclude_starts[user + 1]
    best_items, best_scores = top_items[user], top_scores[user]
    floor = np.float32(np.inf)
    for kept in floors:
        floor = min(floor, kept)
    unfloored = np.float32(-np.inf)
    start = floor if floor < np.inf else unfloored  # +inf: no row ranked yet
    filled = _select(scores, exclude, first, last, k, best_items, best_scores, start)
    if 0 <= filled < k and start > unfloored:
        filled = _select(scores, exclude, first, last, k, best_items, best_scores, unfloored)
    counts[user] = filled
    if filled == k and floors.shape[0] > 0:  # numpy's error model: x % 0 would not raise
        floors[cursor[0] % floors.shape[0]] = best_scores[k - 1]
        cursor[0] += 1
    return bool(filled >= 0)


@njit(fastmath=FAST_MATH, error_model=ERROR_MODEL, inline="always")
def _score(query: Floats, table: Floats, bias: Floats, out: Floats) -> None:
    """``out = table @ query + bias``, four rows at a time: four independent sums in flight
    instead of one horizontal sum after another (≈ 12 % faster at 3,416 × 64 here)."""
    n_rows, width = table.shape
    whole = n_rows - n_rows % 4
    for item in range(0, whole, 4):
        row0, row1, row2, row3 = table[item], table[item + 1], table[item + 2], table[item + 3]
        sum0 = sum1 = sum2 = sum3 = np.float32(0.0)
        for j in range(width):
            sum0 += row0[j] * query[j]
            sum1 += row1[j] * query[j]
            sum2 += row2[j] * query[j]
            sum3 += row3[j] * query[j]
        out[item], out[item + 1] = sum0 + bias[item], sum1 + bias[item + 1]
        out[item + 2], out[item + 3] = sum2 + bias[item + 2], sum3 + bias[item + 3]
    for item in range(whole, n_rows):
        row0, sum0 = table[item], np.float32(0.0)
        for j in range(width):
            sum0 += row0[j] * query[j]
        out[item] = sum0 + bias[item]


SCORE_COLUMNS_PER_PASS = 8
"""Table columns added per pass over the scores (:func:`_score_columns`)."""


@njit(fastmath=FAST_MATH, error_model=ERROR_MODEL, inline="always")
def _score_columns(query: Floats, columns: Floats, bias: Floats, out: Floats) -> None:
    """:func:`_score` from ``columns [d, v]``, the table stored by column: eight columns per
    pass over ``out``, each a vectorised multiply-add over every item, no horizontal sums
    (13.0 against 14.6 µs at 3,416 × 64 here; within 2 % at 10,000 and 30,000 items, 6 % slower
    at 65,536, a size the service ranks through its int8 first stage by default)."""
    width, n_items = columns.shape
    for item in range(n_items):
        out[item] = bias[item]
    whole = width - width % SCORE_COLUMNS_PER_PASS
    for j in range(0, whole, SCORE_COLUMNS_PER_PASS):
        c0, c1, c2, c3 = columns[j], columns[j + 1], columns[j + 2], columns[j + 3]
        c4, c5, c6, c7 = columns[j + 4], columns[j + 5], columns[j + 6], columns[j + 7]
        q0, q1, q2, q3 = query[j], query[j + 1], query[j + 2], query[j + 3]
        q4, q5, q6, q7 = query[j + 4], query[j + 5], query[j + 6], query[j + 7]
        for item in range(n_items):
            out[item] += (q0 * c0[item] + q1 * c1[item] + q2 * c2[item] + q3 * c3[item]) + (
                q4 * c4[item] + q5 * c5[item] + q6 * c6[item] + q7 * c7[item]
            )
    for j in range(whole, width):
        column, qj = columns[j], query[j]
        for item in range(n_items):
            out[item] += qj * column[item]


@kernel
def top_k_kernel(
    hidden: Floats,
    table: Floats,
    columns: Floats,
    bias: Floats,
    exclude: Indices,
    exclude_starts: Indices,
    k: int,
    top_items: Indices,
    top_scores: Floats,
    counts: Indices,
    floors: Floats,
    cursor: Indices,
) -> int:
    """Exact top-``k`` of ``hidden [b, d] @ tableᵀ + bias`` per user, column 0, excluded items
    and non-finite scores left out, best first; ties keep the lower index first (as ONNX TopK).

    ``columns`` is ``table`` stored by column (``[d, v]``), scored faster
    (:func:`_score_columns`), or an empty ``[0, 0]`` array: then ``table``'s rows are scored.

    Selection is by insertion into the sorted best ``k``: O(v·k) at worst, meant for small
    ``k`` (the caller ranks large ``k`` otherwise).

    ``exclude`` holds every user's excluded indices back to back; user ``u``'s are
    ``exclude[exclude_starts[u]:exclude_starts[u + 1]]``. Writes ``top_items [b, k]``,
    ``top_scores [b, k]`` and ``counts [b]`` (fewer than ``k`` when fewer items are left).
    ``floors`` and ``cursor`` are :func:`_rank`'s memory of recent k-th best scores, kept by
    the caller from call to call (one pair per ``k``).

    Returns:
        -1, or the first user with an excluded index outside ``[0, v)`` (not ranked).
    """
    scores = np.empty(table.shape[0], np.float32)
    by_column = columns.shape[0] == table.shape[1] and columns.shape[1] == table.shape[0]
    for user in range(hidden.shape[0]):
        if by_column:
            _score_columns(hidden[user], columns, bias, scores)
        else:
            _score(hidden[user], table, bias, scores)
        if not _rank(
            scores, user, exclude, exclude_starts, k, top_items, top_scores, counts, floors, cursor
        ):
            return user
    return -1


@kernel
def select_top_k_kernel(
    scores: Floats,
    bias: Floats,
    exclude: Indices,
    exclude_starts: Indices,
    k: int,
    top_items: Indices,
    top_scores: Floats,
    counts: Indices,
    floors: Floats,
    cursor: Indices,
) -> int:
    """:func:`top_k_kernel` for ``scores [b, v]`` = ``hidden @ tableᵀ`` computed elsewhere (a
    batch scores faster in one BLAS product than row by row); ``bias [v]`` is added here, row
    by row while the row is in cache, and the row masked in place."""
    for user in range(scores.shape[0]):
        row = scores[user]
        for item in range(row.shape[0]):
            row[item] += bias[item]
        if not _rank(
            row, user, exclude, exclude_starts, k, top_items, top_scores, counts, floors, cursor
        ):
            return user
    return -1


@kernel
def step_top_k_kernel(step_arguments: tuple[Any, ...], rank_arguments: tuple[Any, ...]) -> int:
    """:func:`step_kernel`, then :func:`top_k_kernel` of the new hidden vectors, in one call:
    an event's whole model work for one dispatch from Python instead of two (with their
    argument checks and output arrays).

    ``step_arguments`` are :func:`step_kernel`'s, in its order (``items``, ``states``,
    ``hidden_out``, ``states_out``, ``table``, the packed weights and layout, ``eps``);
    ``rank_arguments`` are :func:`top_k_kernel`'s after ``hidden`` and ``table`` (``columns``,
    ``bias``, the exclusions, ``k``, the outputs, the floors).

    Returns:
        -1; a user ``u < b`` whose item is not a row of ``table`` (nothing written); or
        ``b + u`` for the first user ``u`` with an excluded index outside ``[0, v)`` (steps
        written, that user and later ones not ranked).
    """
    failed = step_kernel(*step_arguments)
    if failed >= 0:
        return failed
    items, hidden_out, table = step_arguments[0], step_arguments[2], step_arguments[4]
    failed = top_k_kernel(hidden_out, table, *rank_arguments)
    return failed if failed < 0 else items.shape[0] + failed


# The batched step (``service.runtimes.numba_batched``): from 8 rows on, BLAS does the matrix
# products 2-3.5x faster than the loops above, so only the element-wise parts stay compiled.


@kernel
def embed_kernel(
    items: Indices, table: Floats, weight: Floats, bias: Floats, eps: float, out: Floats
) -> int:
    """:func:`_embed` as a kernel."""
    return _embed(items, table, weight, bias, eps, out)


@kernel
def rotate_kernel(
    states: Floats, layer: int, rotation: Floats, carried: Floats, projected: Floats,
    states_out: Floats,
) -> int:  # fmt: skip
    """The new state at ``layer``, written to ``states_out [b, L, 2, n]``: λ ⊙ h + γ ⊙ b
    (:func:`_rotate_part`) plus ``projected [b, 2n]`` (γ ⊙ B x, from BLAS). ``states_out``
    must not be ``states``: the real half is written before the imaginary half reads it."""
    n = rotation.shape[2]
    for user in range(states.shape[0]):
        for part in range(2):
            new, added = states_out[user, layer, part], projected[user, part * n :]
            _rotate_part(states[user, layer], rotation, carried, part, new)
            for j in range(n):
                new[j] += added[j]
    return -1


@kernel
def residual_norm_kernel(
    x: Floats, bias: Floats, residual: Floats, weight: Floats, norm_bias: Floats, eps: float,
    out: Floats,
) -> int:  # fmt: skip
    """``out [b, d]`` = LayerNorm(``x + bias + residual``) row by row; ``x`` is overwritten with
    the sum and ``out`` may be ``residual``."""
    for user in range(x.shape[0]):
        row = x[user]
        for j in range(row.shape[0]):
            row[j] = row[j] + bias[j] + residual[user, j]
        _layer_norm(row, weight, norm_bias, eps, out[user])
    return -1


@kernel
def gelu_kernel(x: Floats, bias: Floats) -> int:
    """GELU(``x + bias``) of ``x [b, f]`` in place (:func:`_gelu`)."""
    for user in range(x.shape[0]):
        row = x[user]
        for j in range(row.shape[0]):
            row[j] += bias[j]
    _gelu(x)
    return -1


KERNELS = (
    step_kernel, top_k_kernel, select_top_k_kernel, step_top_k_kernel,
    embed_kernel, rotate_kernel, residual_norm_kernel, gelu_kernel,
)  # fmt: skip
"""Every compiled kernel (what the stepper compiles at start-up and numba caches on disk)."""
