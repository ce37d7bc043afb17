"""An int8 copy of the item table with rigorous error bounds, for the first stage of exact top-k.

Scores are ``s_i = h·e_i + b_i``. Both are folded into one dot product of length ``D = d + 1``:
the query ``q = [h, c]`` and the augmented item row ``ẽ_i = [e_i, b_i / c]``, where ``c`` is the
smallest power of two (so ``c · (b_i / c) = b_i`` exactly) that brings the bias column within the
range of the embeddings. The table is quantised once, symmetrically, with one scale ``s_t``:
``ẽ_ij ≈ s_t · t_ij`` with ``t_ij ∈ [-127, 127]``; a query per row with its own scale ``s_q``:
``q_j ≈ s_q · (u_j - 128)``, ``u_j ∈ [1, 255]``. The integer dot ``I_i = Σ_j (u_j - 128) t_ij``
is exact in int32, and ``a_i = s_q s_t I_i`` is the approximate score. Its error is bounded by

    |s_i - a_i| = |q·(ẽ_i - ê_i) + (q - q̂)·ê_i| ≤ Σ_j |q_j| Δ_j + max_j |q_j - q̂_j| · N₁ + μ

(Hölder), with ``Δ_j = max_i |ẽ_ij - s_t t_ij|`` per column and ``N₁ = max_i ‖s_t t_i‖₁``, both
computed once here, and ``μ`` a margin for float32 rounding of the exact score. Each of the two
terms may instead take its Cauchy-Schwarz form, ``‖q‖₂ max_i ‖ẽ_i - ê_i‖₂`` and
``‖q - q̂‖₂ max_i ‖ê_i‖₂``; the smaller of the two forms is used. The bound is the
same for every item of a query, so ranking by ``I_i`` is ranking by ``a_i``.

One item with a huge norm would set ``s_t`` for everyone and make every other item's codes coarse;
so items whose row maximum or L1 norm exceeds ``OUTLIER_FACTOR`` times that of the
(``max_outliers`` + 1)-th largest are kept out of the int8 table (their codes are zero and they are
masked) and are scored exactly on every query instead.

Storage: ``codes`` is ``uint8 [D, n_pad]`` holding ``t + 128`` (the layout of the right-hand side
of an ``[b, D] × [D, n_pad]`` integer GEMM); ``n_pad`` rounds ``v`` up to whole blocks of
``block`` columns. It is a quarter of the float32 table.
"""

from dataclasses import dataclass

import numpy as np
import torch
from numpy.typing import NDArray
from torch import Tensor

ZERO_POINT = 128
"""Zero point of both the uint8 codes and the uint8 query."""

LEVELS = 127
"""Codes are in ``[-LEVELS, LEVELS]`` (symmetric), stored shifted by ``ZERO_POINT``."""

OUTLIER_FACTOR = 2.0
"""An item is an outlier when its row maximum or L1 norm is this many times the reference."""

UNIT_ROUNDOFF = 2.0**-24
"""float32 unit roundoff: the exact scores are float32 sums."""

ROW_CHUNK = 65_536
"""Rows quantised at once (bounds the float64 temporaries to ``ROW_CHUNK × D``)."""


@dataclass(frozen=True)
class QuantizedTable:
    """The int8 table and the constants of its error bound (see the module docstring).

    Attributes:
        codes: ``uint8 [D, n_pad]``, ``t + 128``; zero codes (128) for masked columns.
        scale: ``s_t``.
        bias_feature: ``c``, the query's constant last feature.
        column_error: ``Δ_j`` ``float64 [D]`` over the quantised items.
        max_l1: ``N₁``.
        error_l2: ``max_i ‖ẽ_i - ê_i‖₂`` (for the Cauchy-Schwarz form of the bound).
        max_l2: ``N₂ = max_i ‖s_t t_i‖₂``.
        masked: columns stage 1 never ranks: 0 (padding), the outliers and the padding columns.
        outliers: item indices scored exactly on every query.
        n_items: ``v`` (columns of the real table, padding included).
        block: columns per block of the block-maximum reduction.
    """

    codes: NDArray[np.uint8]
    scale: float
    bias_feature: float
    column_error: NDArray[np.float64]
    max_l1: float
    error_l2: float
    max_l2: float
    masked: NDArray[np.int64]
    outliers: NDArray[np.int64]
    n_items: int
    block: int


def augmented_rows(table: Tensor, bias: Tensor | None, bias_feature: float) -> Tensor:
    """``[e_i, b_i / c]``: ``[v, d]`` → float64 ``[v, d + 1]``."""
    column = torch.zeros(table.shape[0], 1, dtype=torch.float64)
    if bias is not None:
        column[:, 0] = bias.detach().to("cpu", torch.float64) / bias_feature
    return torch.cat([table.detach().to("cpu", torch.float64), column], dim=1)


def _float32_rows(
    table: Tensor, bias: Tensor | None, bias_feature: float, begin: int, end: int
) -> NDArray[np.float32]:
    """Rows ``begin:end`` of ``[e_i, b_i / c]`` in float32 (exact: ``c`` is a power of two)."""
    rows = np.zeros((end - begin, table.shape[1] + 1), dtype=np.float32)
    rows[:, :-1] = table[begin:end].detach().to("cpu", torch.float32).numpy()
    if bias is not None:
        rows[:, -1] = bias[begin:end].detach().to("cpu", torch.float32).numpy() / bias_feature
    return rows


def _power_of_two_above(numerator: float, denominator: float) -> float:
    """The smallest power of two ``c`` with ``numerator / c ≤ denominator`` (1 if undefined)."""
    if numerator <= 0.0 or denominator <= 0.0:
        return 1.0
    return float(2.0 ** np.ceil(np.log2(numerator / denominator)))


def _reference(values: Tensor, max_outliers: int) -> float:
    """The (m + 1)-th largest of ``values[1:]``: a maximum that m outliers cannot move."""
    rest = values[1:]
    return float(torch.topk(rest, min(max_outliers + 1, rest.shape[0])).values[-1])


def _row_stats(
    table: Tensor, bias: Tensor | None, max_outliers: int
) -> tuple[float, Tensor, Tensor]:
    """``(c, row maxima [v], row L1 norms [v])`` of the augmented rows, in float64."""
    row_max = torch.empty(table.shape[0], dtype=torch.float64)  # [v]
    row_l1 = torch.empty(table.shape[0], dtype=torch.float64)  # [v]; only to find outliers
    for begin in range(0, table.shape[0], ROW_CHUNK):  # chunks: no full-size temporary
        magnitudes = table[begin : begin + ROW_CHUNK].detach().to("cpu", torch.float32).abs()
        row_max[begin : begin + ROW_CHUNK] = magnitudes.amax(dim=1)
        row_l1[begin : begin + ROW_CHUNK] = magnitudes.sum(dim=1)
    if bias is None:
        return 1.0, row_max, row_l1
    bias_abs = bias.detach().abs().to("cpu", torch.float64)  # [v]
    # The bias column must not set the table's scale (measured on ML-1M: a bias column twice
    # as wide as the embeddings doubled the bound and quadrupled the candidates), so b / c stays
    # within the embeddings' range; robust maxima, so that outliers do not choose c.
    c = _power_of_two_above(_reference(bias_abs, max_outliers), _reference(row_max, max_outliers))
    return c, torch.maximum(row_max, bias_abs / c), row_l1 + bias_abs / c


def _outliers(row_max: Tensor, row_l1: Tensor, max_outliers: int) -> Tensor:
    """Items (never 0) whose row maximum or L1 norm is far above the (m + 1)-th largest."""
    if max_outliers < 1 or row_max.shape[0] <= max_outliers + 2:
        return torch.zeros(0, dtype=torch.long)
    flags = torch.zeros_like(row_max, dtype=torch.bool)
    for values in (row_max, row_l1):
        flags |= values > OUTLIER_FACTOR * _reference(values, max_outliers)
    flags[0] = False
    return torch.nonzero(flags).flatten()


def quantize_table(
    table: Tensor, bias: Tensor | None, *, block: int = 64, max_outliers: int = 64
) -> QuantizedTable:
    """Quantise ``(table [v, d], bias [v] | None)`` to a :class:`QuantizedTable`.

    Args:
        table: item embeddings ``[v, d]``; row 0 is padding and is never ranked.
        bias: per-item score bias ``[v]`` or ``None``.
        block: columns per block for the block-maximum reduction of stage 1.
        max_outliers: at most this many items (per criterion) are kept out and scored exactly.
    """
    vocab = table.shape[0]
    bias_feature, row_max, row_l1 = _row_stats(table, bias, max_outliers)
    outliers = _outliers(row_max, row_l1, max_outliers)
    regular = torch.ones(vocab, dtype=torch.bool)
    regular[0] = False
    regular[outliers] = False
    top = float(row_max[regular].max()) if bool(regular.any()) else 0.0
    scale = float(np.float32(top / LEVELS)) if top > 0.0 else 1.0  # float32: exact below
    n_pad = -(-vocab // block) * block
    codes = np.full((table.shape[1] + 1, n_pad), ZERO_POINT, dtype=np.uint8)
    column_error = np.zeros(table.shape[1] + 1, dtype=np.float32)
    max_l1 = max_l2 = error_l2 = 0.0
    regular_rows = regular.numpy()
    for begin in range(0, vocab, ROW_CHUNK):
        end = min(begin + ROW_CHUNK, vocab)
        rows = _float32_rows(table, bias, bias_feature, begin, end)  # [chunk, D]
        rows[~regular_rows[begin:end]] = 0.0  # masked items: zero codes, no error contribution
        t = np.clip(np.rint(rows / np.float32(scale)), -LEVELS, LEVELS)  # [chunk, D], integral
        error = np.abs(rows - np.float32(scale) * t)  # [chunk, D]
        column_error = np.maximum(column_error, error.max(axis=0))
        error_l2 = max(error_l2, float(np.sqrt(np.square(error).sum(axis=1)).max()))
        max_l1 = max(max_l1, float(np.abs(t).sum(axis=1).max()))  # integral sums: exact
        max_l2 = max(max_l2, float(np.sqrt(np.square(t).sum(axis=1)).max()))  # exact sums
        codes[:, begin:end] = (t + ZERO_POINT).astype(np.uint8).T
    # The float32 product and difference above round by at most one unit each; a float32 sum
    # of D squares and its square root by at most (D + 2) units.
    rounding = 2 * (LEVELS + 1) * scale * UNIT_ROUNDOFF
    errors = column_error.astype(np.float64) * (1 + 2 * UNIT_ROUNDOFF) + rounding
    width = table.shape[1] + 1
    norm_slack = 1 + 4 * (width + 4) * UNIT_ROUNDOFF
    error_l2 = (error_l2 + np.sqrt(width) * float(errors.max())) * norm_slack
    masked = np.concatenate([[0], outliers.numpy(), np.arange(vocab, n_pad)]).astype(np.int64)
    return QuantizedTable(
        codes=codes,
        scale=scale,
        bias_feature=bias_feature,
        column_error=errors,
        max_l1=scale * max_l1,
        error_l2=error_l2,
        max_l2=scale * max_l2 * norm_slack,
        masked=masked,
        outliers=outliers.numpy().astype(np.int64),
        n_items=vocab,
        block=block,
    )


@dataclass(frozen=True)
class QuantizedQueries:
    """Queries quantised per row, with the per-row error bound ``ε`` of every approximate score.

    Attributes:
        codes: ``uint8 [b, D]``, ``u = round(q / s_q) + 128``.
        unit: ``s_q · s_t`` per row ``float64 [b]``: approximate score = ``unit · I``.
        bound: ``ε`` per row ``float64 [b]``: ``|s_i - unit · I_i| ≤ ε`` for every quantised item.
    """

    codes: NDArray[np.uint8]
    unit: NDArray[np.float64]
    bound: NDArray[np.float64]


def quantize_queries(hidden: Tensor, quantized: QuantizedTable) -> QuantizedQueries:
    """Quantise ``hidden [b, d]`` for ``quantized``; bound the error of every approximate score."""
    h = hidden.detach().to("cpu", torch.float64).numpy()
    q = np.concatenate([h, np.full((h.shape[0], 1), quantized.bias_feature)], axis=1)  # [b, D]
    # A non-finite hidden vector gives a non-finite bound (callers then scan exactly).
    with np.errstate(invalid="ignore", over="ignore"):
        top = np.abs(q).max(axis=1)  # [b]; > 0 because c > 0
        scale = top / LEVELS
        u = np.clip(np.rint(q / scale[:, None]), -LEVELS, LEVELS)  # [b, D], integral
        residual = q - scale[:, None] * u  # [b, D]
        l1 = np.abs(q).sum(axis=1)  # [b]
        # Each term has two valid forms, Hölder (L1 × L∞) and Cauchy-Schwarz (L2 × L2): take the
        # smaller (on ML-1M embeddings the L2 forms are the tighter ones for most queries).
        table_term = np.minimum(
            np.abs(q) @ quantized.column_error, np.linalg.norm(q, axis=1) * quantized.error_l2
        )
        query_term = np.minimum(
            np.abs(residual).max(axis=1) * quantized.max_l1,
            np.linalg.norm(residual, axis=1) * quantized.max_l2,
        )
        # The exact float32 score h·e + b differs from the real one by at most γ_D Σ|q_j ẽ_ij|,
        # and |ẽ_ij| ≤ (LEVELS + 1/2) s_t; twice that covers any summation order and float64.
        rounding = 2 * (q.shape[1] + 2) * UNIT_ROUNDOFF * l1 * (LEVELS + 1) * quantized.scale
        bound = (table_term + query_term) * (1 + 1e-9) + rounding  # 1e-9: the float64 arithmetic
        codes = (np.nan_to_num(u) + ZERO_POINT).astype(np.uint8)
    return QuantizedQueries(codes=codes, unit=scale * quantized.scale, bound=bound)


def reference_scores(codes: NDArray[np.uint8], quantized: QuantizedTable) -> NDArray[np.int32]:
    """The obvious integer GEMV: ``Σ_j (u_j - 128)(w_ij - 128)``, ``[b, D]`` → int32 ``[b, n_pad]``.

    Exact (int64 accumulation) and slow; the fast kernels are tested against it.
    """
    left = codes.astype(np.int64) - ZERO_POINT
    right = quantized.codes.astype(np.int64) - ZERO_POINT
    return (left @ right).astype(np.int32)
