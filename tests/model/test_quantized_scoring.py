"""The int8 two-stage top-k returns the exact fp32 top-k; its error bound holds for every item."""

import numpy as np
import pytest
import torch
from torch import Tensor

from model.inference.quantized_scoring import TwoStageTopK
from model.inference.quantized_table import (
    augmented_rows,
    quantize_queries,
    quantize_table,
    reference_scores,
)
from model.inference.topk import chunked_top_k

TIE = 1e-4
"""Scores closer than this to the k-th best may be swapped with it (float32 rounding order)."""


def random_table(n: int, d: int, seed: int, bias: bool = True) -> tuple[Tensor, Tensor | None]:
    generator = torch.Generator().manual_seed(seed)
    table = torch.randn(n + 1, d, generator=generator) * 0.3
    return table, torch.randn(n + 1, generator=generator) if bias else None


def exact_scores(hidden: Tensor, table: Tensor, bias: Tensor | None) -> Tensor:
    """float64 scores ``[b, v]``: the reference the bound is about."""
    scores = hidden.double() @ table.double().T
    return scores if bias is None else scores + bias.double()


def assert_exact_top_k(
    result: tuple[Tensor, Tensor],
    hidden: Tensor,
    table: Tensor,
    bias: Tensor | None,
    k: int,
    exclude: list[list[int]] | None = None,
) -> None:
    """Same values as ``chunked_top_k``; same items except exchanges among near-ties."""
    values, indices = result
    expected_values, expected_indices = chunked_top_k(hidden, table, bias, k, exclude=exclude)
    torch.testing.assert_close(values, expected_values, rtol=1e-5, atol=1e-5)
    scores = exact_scores(hidden, table, bias)
    for row in range(hidden.shape[0]):
        finite = torch.isfinite(expected_values[row])
        got = set(indices[row][finite].tolist())
        want = set(expected_indices[row][finite].tolist())
        assert len(got) == int(finite.sum())
        assert 0 not in got
        assert not got & set((exclude or [[]] * hidden.shape[0])[row])
        if finite.any():
            kth = float(expected_values[row][finite][-1])
            for item in got ^ want:
                assert abs(float(scores[row, item]) - kth) <= TIE, (row, item)


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("with_bias", [True, False])
def test_error_bound_holds_for_every_item(seed: int, with_bias: bool) -> None:
    table, bias = random_table(2_000, 16, seed, with_bias)
    table[5] *= 50.0  # an outlier: scored exactly, outside the bound
    quantized = quantize_table(table, bias, block=64)
    hidden = torch.randn(8, 16, generator=torch.Generator().manual_seed(100 + seed)) * 2
    queries = quantize_queries(hidden, quantized)
    approx = queries.unit[:, None] * reference_scores(queries.codes, quantized)[:, :2_001]
    error = np.abs(exact_scores(hidden, table, bias).numpy() - approx)  # [b, v]
    regular = np.setdiff1d(np.arange(2_001), quantized.masked)
    assert 5 in quantized.outliers.tolist()
    assert (error[:, regular] <= queries.bound[:, None]).all()
    assert (error[:, regular].max(axis=1) > 0.05 * queries.bound).all()  # not vacuous


def test_codes_are_a_quarter_of_the_float32_table() -> None:
    table, bias = random_table(4_095, 32, 0)
    quantized = quantize_table(table, bias, block=256)
    assert quantized.codes.dtype == np.uint8
    assert quantized.codes.shape == (33, 4_096)
    assert quantized.codes.nbytes <= 0.26 * (table.numel() * 4) + 33 * 256


def test_bias_column_reconstructs_the_bias_exactly() -> None:
    table, bias = random_table(100, 8, 1)
    assert bias is not None
    quantized = quantize_table(table, bias * 40.0)
    rows = augmented_rows(table, bias * 40.0, quantized.bias_feature)
    torch.testing.assert_close(rows[:, -1] * quantized.bias_feature, (bias * 40.0).double())
    assert quantized.bias_feature == 2.0 ** round(np.log2(quantized.bias_feature))


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("batch", [1, 7])
@pytest.mark.parametrize("k", [1, 10, 50])
def test_two_stage_equals_exact_top_k(seed: int, batch: int, k: int) -> None:
    table, bias = random_table(5_000, 16, seed)
    hidden = torch.randn(batch, 16, generator=torch.Generator().manual_seed(seed + 7))
    exclude = [list(range(row + 1, 5_000, 37)) for row in range(batch)]
    scorer = TwoStageTopK(table, bias, block=64, buffer_bytes=3 * 5_056 * 4)
    assert scorer.rows_per_call == 3  # several kernel calls per batch
    values, indices = scorer(hidden, k, exclude)
    expected_values, expected_indices = chunked_top_k(hidden, table, bias, k, exclude=exclude)
    assert torch.equal(indices, expected_indices)
    torch.testing.assert_close(values, expected_values, rtol=1e-5, atol=1e-5)
    assert scorer.stats.fallbacks == 0
    assert max(scorer.stats.candidates) < 5_000 // 4  # stage 1 did prune


def test_one_huge_norm_item_is_an_outlier_not_a_fallback() -> None:
    table, bias = random_table(3_000, 16, 3)
    table[17] = 1_000.0
    hidden = torch.randn(5, 16, generator=torch.Generator().manual_seed(0))
    hidden[0] = -hidden[0].abs()  # item 17 is the worst for row 0 and the best elsewhere
    scorer = TwoStageTopK(table, bias, block=64)
    assert scorer.quantized.outliers.tolist() == [17]
    assert_exact_top_k(scorer(hidden, 10), hidden, table, bias, 10)
    assert scorer.stats.fallbacks == 0
    assert max(scorer.stats.candidates) < 300


def test_near_ties_and_identical_rows() -> None:
    table, bias = random_table(2_000, 16, 4)
    assert bias is not None
    hidden = torch.randn(4, 16, generator=torch.Generator().manual_seed(4))
    best = int(exact_scores(hidden[:1], table, bias).argmax())
    for copy in range(100, 130):  # 30 exact copies of the best item of row 0, and near copies
        table[copy], bias[copy] = table[best], bias[best]
        table[copy + 100] = table[best] + 1e-6 * (copy - 115)
        bias[copy + 100] = bias[best]
    scorer = TwoStageTopK(table, bias, block=64)
    assert_exact_top_k(scorer(hidden, 10), hidden, table, bias, 10)
    assert scorer.stats.fallbacks == 0


def test_exclusions_covering_the_best_items() -> None:
    table, bias = random_table(2_000, 16, 5)
    hidden = torch.randn(3, 16, generator=torch.Generator().manual_seed(5))
    order = exact_scores(hidden, table, bias).argsort(dim=1, descending=True)
    exclude = [order[row, :200].tolist() for row in range(3)]  # the 200 best of each row
    scorer = TwoStageTopK(table, bias, block=64)
    values, indices = scorer(hidden, 10, exclude)
    assert_exact_top_k((values, indices), hidden, table, bias, 10, exclude)
    for row in range(3):
        assert not set(indices[row].tolist()) & set(exclude[row])


def test_k_above_the_remaining_items_returns_fewer() -> None:
    table, bias = random_table(300, 8, 6)
    hidden = torch.randn(2, 8, generator=torch.Generator().manual_seed(6))
    exclude = [list(range(1, 296)), []]  # row 0 has 5 items left
    values, indices = TwoStageTopK(table, bias, block=64)(hidden, 20, exclude)
    assert values.shape == (2, 20)
    assert torch.isfinite(values[0]).sum() == 5
    assert set(indices[0, :5].tolist()) == {296, 297, 298, 299, 300}
    assert (indices[0, 5:] == 0).all()
    assert torch.isfinite(values[1]).all()
    assert_exact_top_k((values, indices), hidden, table, bias, 20, exclude)
    full, _ = TwoStageTopK(table, bias)(hidden, 1_000)
    assert full.shape == (2, 300)  # at most v - 1 items


def test_too_many_candidates_falls_back_to_the_exact_scan() -> None:
    table, bias = random_table(3_000, 16, 7)
    hidden = torch.randn(6, 16, generator=torch.Generator().manual_seed(7))
    exclude = [[1, 2, 3]] * 6
    scorer = TwoStageTopK(table, bias, block=64, max_candidates=1)
    values, indices = scorer(hidden, 10, exclude)
    assert scorer.stats.fallbacks == 6
    assert scorer.stats.rows == 6
    expected_values, expected_indices = chunked_top_k(hidden, table, bias, 10, exclude=exclude)
    assert torch.equal(indices, expected_indices)
    torch.testing.assert_close(values, expected_values)


def test_constant_table_makes_every_item_a_candidate_and_stays_exact() -> None:
    table = torch.ones(501, 8)
    bias = torch.zeros(501)
    bias[42] = 1e-3  # the only difference is below the int8 resolution of the table
    hidden = torch.ones(1, 8)
    scorer = TwoStageTopK(table, bias, block=64)
    _, indices = scorer(hidden, 1)
    assert indices.tolist() == [[42]]
    assert scorer.stats.candidates[-1] >= 499


def test_non_finite_hidden_falls_back_to_the_exact_scan() -> None:
    table, bias = random_table(500, 8, 9)
    hidden = torch.randn(2, 8, generator=torch.Generator().manual_seed(9))
    hidden[0, 3] = torch.inf
    scorer = TwoStageTopK(table, bias, block=64)
    _, indices = scorer(hidden, 5)
    assert scorer.stats.fallbacks == 1
    assert torch.equal(indices[1], chunked_top_k(hidden[1:], table, bias, 5)[1][0])


def test_bad_exclusions_are_rejected() -> None:
    table, bias = random_table(100, 8, 8)
    scorer = TwoStageTopK(table, bias)
    with pytest.raises(ValueError, match="excluded item indices"):
        scorer(torch.zeros(1, 8), 5, [[-1]])
    with pytest.raises(ValueError, match="excluded item indices"):
        scorer(torch.zeros(1, 8), 5, [[101]])
    with pytest.raises(ValueError, match="rows for a batch"):
        scorer(torch.zeros(2, 8), 5, [[1]])
    with pytest.raises(ValueError, match="k must be"):
        scorer(torch.zeros(1, 8), 0)
