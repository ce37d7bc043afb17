"""Ranking metrics against values computed by hand."""

import math

import pytest
import torch

from training.metrics import mrr_at_k, ndcg_at_k, recall_at_k, summarize

RANKS = torch.tensor([1, 3, 10, 11, 25])


def test_recall_counts_targets_within_k() -> None:
    assert recall_at_k(RANKS, 10) == pytest.approx(3 / 5)
    assert recall_at_k(RANKS, 1) == pytest.approx(1 / 5)
    assert recall_at_k(RANKS, 20) == pytest.approx(4 / 5)


def test_ndcg_is_mean_discounted_gain_within_k() -> None:
    expected = (1 / math.log2(2) + 1 / math.log2(4) + 1 / math.log2(11)) / 5
    assert ndcg_at_k(RANKS, 10) == pytest.approx(expected)
    expected_20 = expected + 1 / math.log2(12) / 5
    assert ndcg_at_k(RANKS, 20) == pytest.approx(expected_20)


def test_mrr_is_mean_reciprocal_rank_within_k() -> None:
    assert mrr_at_k(RANKS, 10) == pytest.approx((1 + 1 / 3 + 1 / 10) / 5)


def test_summary_names_the_reported_metrics_and_empty_input_gives_zero() -> None:
    assert set(summarize(RANKS)) == {"ndcg@10", "recall@10", "ndcg@20", "recall@20", "mrr@10"}
    assert summarize(torch.tensor([], dtype=torch.long))["ndcg@10"] == 0.0
