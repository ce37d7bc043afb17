"""Full-ranking evaluation: masking, both protocols, and the popularity baseline."""

import numpy as np
import pytest
import torch

from model import LRURec, LRURecConfig
from training.evaluate import (
    evaluate,
    last_position_scorer,
    popularity_scorer,
    rank_targets,
    recurrent_scorer,
    target_ranks,
)


def test_target_rank_counts_better_unmasked_items() -> None:
    scores = torch.tensor([[9.0, 1.0, 5.0, 3.0, 4.0], [9.0, 8.0, 7.0, 6.0, 5.0]])
    # User 0: item 2 (5.0) would beat item 4 but is masked; column 0 never counts.
    ranks = target_ranks(scores, torch.tensor([4, 3]), torch.tensor([[2, 0], [0, 0]]))
    assert ranks.tolist() == [1, 3]


def test_popularity_protocols_differ_only_in_masked_window() -> None:
    popularity = torch.tensor([0.0, 50.0, 40.0, 30.0, 20.0, 10.0])
    histories = [np.array([1, 2, 3]), np.array([4])]
    targets = np.array([5, 1])
    scorer = popularity_scorer(popularity)
    # max_len 2: user 0 masks items 2, 3 (not 1), so item 5 ranks below 1 and 4.
    paper = rank_targets(scorer, histories, targets, 2, "paper")
    serving = rank_targets(scorer, histories, targets, 2, "serving")
    assert paper.tolist() == serving.tolist() == [3, 1]
    assert evaluate(scorer, histories, targets, 2, "paper")["recall@10"] == 1.0


def test_users_without_target_are_skipped() -> None:
    scorer = popularity_scorer(torch.tensor([0.0, 2.0, 1.0]))
    ranks = rank_targets(scorer, [np.array([1]), np.array([2])], np.array([0, 1]), 5, "paper")
    assert ranks.tolist() == [1]


@pytest.fixture
def model() -> LRURec:
    torch.manual_seed(0)
    return LRURec(LRURecConfig(n_items=20, d_model=8, n_layers=2, max_len=4)).eval()


def test_protocols_agree_for_short_histories_and_differ_for_long(model: LRURec) -> None:
    short = [np.array([3, 4, 5])]
    long = [np.arange(1, 13)]
    target = np.array([19])
    for histories, same in ((short, True), (long, False)):
        paper = rank_targets(last_position_scorer(model), histories, target, 4, "paper")
        serving = rank_targets(recurrent_scorer(model), histories, target, 4, "serving")
        scores_paper = last_position_scorer(model)(torch.tensor([histories[0][-4:].tolist()]))
        scores_serving = recurrent_scorer(model)(torch.tensor([histories[0].tolist()]))
        assert torch.allclose(scores_paper, scores_serving, atol=1e-5) == same
        if same:
            assert paper.tolist() == serving.tolist()


def test_serving_scores_equal_stepping_every_event(model: LRURec) -> None:
    history = torch.tensor([[2, 7, 1, 9, 4, 4, 11]])
    state = model.init_state(1)
    with torch.inference_mode():
        for item in history[0]:
            hidden, state = model.step(item.view(1), state)
        stepped = model.score(hidden)
        assert torch.allclose(recurrent_scorer(model)(history), stepped, atol=1e-5)
