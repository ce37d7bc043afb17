"""Full-ranking evaluation of a next-item scorer, in the paper's and the service's protocol.

* ``paper`` (official code, reference A6): the input is the last ``max_len`` items of the
  history; the items inside that window and the padding column are masked.
* ``serving``: the whole history goes through the model's recurrent state (:meth:`prefill`, which
  equals stepping event by event), and the ``max_len`` most recent history items are masked, as
  the service does with ``exclude_seen=true``: exactly what a user of the service gets.

A popularity scorer runs through the same code, so the baseline is masked and ranked identically.
"""

from collections.abc import Callable
from enum import StrEnum

import numpy as np
import torch
from torch import Tensor

from model import RecurrentRecommender
from training.batching import left_pad, pack_by_tokens
from training.metrics import summarize

Scorer = Callable[[Tensor], Tensor]
"""Left-padded inputs ``LongTensor[b, L]`` → scores ``[b, n_items + 1]``."""

EVAL_TOKENS = 256 * 200
"""Tokens per evaluation batch (users × padded length); bounds memory for long histories."""


class Protocol(StrEnum):
    paper = "paper"
    serving = "serving"


def last_position_scorer(model: RecurrentRecommender) -> Scorer:
    """Scores from the parallel forward's last position (the ``paper`` protocol)."""

    def score(items: Tensor) -> Tensor:
        return model.score(model(items)[:, -1])

    return score


def recurrent_scorer(model: RecurrentRecommender) -> Scorer:
    """Scores from the state rebuilt over the whole history (the ``serving`` protocol)."""

    def score(items: Tensor) -> Tensor:
        hidden, _ = model.prefill(items)
        return model.score(hidden)

    return score


def popularity_scorer(popularity: Tensor) -> Scorer:
    """The same popularity ranking for every user; ``popularity`` is ``[n_items + 1]``."""

    def score(items: Tensor) -> Tensor:
        return popularity.to(items.device).float().expand(items.shape[0], -1)

    return score


def target_ranks(scores: Tensor, targets: Tensor, masked: Tensor) -> Tensor:
    """1-based rank of each target among all items, after masking.

    Args:
        scores: ``[b, v]``.
        targets: ``[b]`` item indices.
        masked: ``LongTensor[b, m]`` items to exclude (0 entries mask the padding column).

    Returns:
        ``LongTensor[b]``; ties count in the target's favour.
    """
    scores = scores.float().clone()
    scores[:, 0] = -torch.inf
    scores.scatter_(1, masked, -torch.inf)
    target_scores = scores.gather(1, targets.unsqueeze(1))  # [b, 1]
    return (scores > target_scores).sum(dim=1) + 1


@torch.inference_mode()
def rank_targets(
    scorer: Scorer,
    histories: list[np.ndarray],
    targets: np.ndarray,
    max_len: int,
    protocol: Protocol | str,
    device: str = "cpu",
) -> Tensor:
    """Ranks of every user's target (users with target 0 are skipped).

    Args:
        histories: per-user input history, oldest first.
        targets: ``[u]`` held-out items, 0 for "no target".
        max_len: input window (``paper``) and mask length (both protocols).

    Returns:
        ``LongTensor[u']`` for the users with a target, in user order.
    """
    protocol = Protocol(protocol)
    users = np.flatnonzero(targets > 0)
    inputs = [
        histories[u] if protocol is Protocol.serving else histories[u][-max_len:] for u in users
    ]
    lengths = np.array([len(x) for x in inputs], dtype=np.int64)
    ranks = torch.zeros(len(users), dtype=torch.long)
    for chosen in pack_by_tokens(np.argsort(lengths, kind="stable"), lengths, EVAL_TOKENS):
        batch = left_pad([inputs[j] for j in chosen])
        masked = left_pad([inputs[j][-max_len:] for j in chosen], max_len)
        scores = scorer(batch.to(device))
        batch_targets = torch.from_numpy(targets[users[chosen]]).to(device)
        ranks[torch.from_numpy(chosen)] = target_ranks(
            scores, batch_targets, masked.to(device)
        ).cpu()
    return ranks


def evaluate(
    scorer: Scorer,
    histories: list[np.ndarray],
    targets: np.ndarray,
    max_len: int,
    protocol: Protocol | str,
    device: str = "cpu",
) -> dict[str, float]:
    """NDCG@10/20, Recall@10/20 and MRR@10 (per-user means) over users with a target."""
    return summarize(rank_targets(scorer, histories, targets, max_len, protocol, device))
