"""Top-k ranking metrics from the 1-based rank of each user's single held-out item (pure).

With one target per user: Recall@k = HR@k = [rank ≤ k], NDCG@k = [rank ≤ k] / log2(rank + 1)
(the ideal DCG is 1), MRR@k = [rank ≤ k] / rank. Every value is a per-user mean (the official
code averages per-batch means, reference A6, which weights a short last batch more).
"""

import torch
from torch import Tensor

REPORTED_KS = (10, 20)


def recall_at_k(ranks: Tensor, k: int) -> float:
    """Share of users whose target is in the top ``k``; ``ranks`` is ``[u]``, 1-based."""
    return (ranks <= k).double().mean().item() if ranks.numel() else 0.0


def ndcg_at_k(ranks: Tensor, k: int) -> float:
    """Mean of ``1 / log2(rank + 1)`` over users, counting 0 when ``rank > k``."""
    if not ranks.numel():
        return 0.0
    gains = 1.0 / torch.log2(ranks.double() + 1.0)
    return torch.where(ranks <= k, gains, torch.zeros_like(gains)).mean().item()


def mrr_at_k(ranks: Tensor, k: int) -> float:
    """Mean of ``1 / rank`` over users, counting 0 when ``rank > k``."""
    if not ranks.numel():
        return 0.0
    reciprocal = 1.0 / ranks.double()
    return torch.where(ranks <= k, reciprocal, torch.zeros_like(reciprocal)).mean().item()


def summarize(ranks: Tensor) -> dict[str, float]:
    """The reported metrics: ``ndcg@k`` and ``recall@k`` for k in 10, 20, and ``mrr@10``."""
    summary: dict[str, float] = {}
    for k in REPORTED_KS:
        summary[f"ndcg@{k}"] = ndcg_at_k(ranks, k)
        summary[f"recall@{k}"] = recall_at_k(ranks, k)
    summary["mrr@10"] = mrr_at_k(ranks, 10)
    return summary
