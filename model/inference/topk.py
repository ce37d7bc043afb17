"""Exact top-k over a large catalogue in column chunks, so memory stays ``b × chunk_size``.

Scoring 1M items for 64 users at once would materialise a 256 MB ``[b, v]`` matrix; here each
chunk of the item table is scored, reduced to its own top-k and merged into the running best, so
the result is the same exact top-k as ``torch.topk`` over the full score matrix (up to the order
of exactly tied scores). The tables are the ones ``model.score`` uses: ``(embedding.weight,
item_bias)`` for LRURec, ``(embedding.weight, None)`` for SASRec.
"""

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

DEFAULT_CHUNK = 65_536
"""Items scored at once: 16 MB of float32 scores at batch 64."""

MIN_BLOCKED = 16_384
"""Below this many columns plain ``torch.topk`` is as fast as :func:`block_top_k`."""


def block_top_k(scores: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """Exact ``torch.topk(scores, k, dim=1)`` (sorted) through block maxima; ``[b, n] → [b, k]``.

    ``torch.topk`` on CPU costs about 9 ms for one row of 1M scores; this takes the maximum of
    each block of columns (one vectorised pass), keeps the ``k`` blocks with the largest maxima
    and runs ``topk`` only on their columns. Exact: a block holding one of the ``k`` best scores
    has a maximum at least that score, and at most ``k - 1`` other blocks can have a larger one
    (each such maximum is a distinct score above it), so the block is among the ``k`` kept.
    The columns past the last full block are always kept.
    """
    batch, n = scores.shape
    block = max(64, math.isqrt(n // k))
    if n < MIN_BLOCKED or k * block * 4 > n:
        values, indices = torch.topk(scores, k, dim=1)
        return values, indices
    full = (n // block) * block
    maxima = scores[:, :full].reshape(batch, full // block, block).amax(dim=2)  # [b, n_blocks]
    _, blocks = torch.topk(maxima, k, dim=1)  # [b, k]
    offsets = torch.arange(block, device=scores.device)
    columns = (blocks.unsqueeze(-1) * block + offsets).reshape(batch, k * block)  # [b, k·block]
    if full < n:
        tail = torch.arange(full, n, device=scores.device).expand(batch, n - full)
        columns = torch.cat([columns, tail], dim=1)
    values, positions = torch.topk(scores.gather(1, columns), k, dim=1)
    return values, columns.gather(1, positions)


def _exclusion_index(
    exclude: Sequence[Sequence[int]], device: torch.device
) -> tuple[Tensor, Tensor]:
    """Flat (row, column) index tensors of every excluded item."""
    rows = [row for row, items in enumerate(exclude) for _ in items]
    columns = [item for items in exclude for item in items]
    return (
        torch.tensor(rows, dtype=torch.long, device=device),
        torch.tensor(columns, dtype=torch.long, device=device),
    )


def chunked_top_k(
    hidden: Tensor,
    table: Tensor,
    bias: Tensor | None,
    k: int,
    *,
    chunk_size: int = DEFAULT_CHUNK,
    exclude: Sequence[Sequence[int]] | None = None,
) -> tuple[Tensor, Tensor]:
    """Best ``k`` items of ``hidden @ tableᵀ + bias``, never column 0 (padding), best first.

    Args:
        hidden: ``[b, d]``.
        table: item embeddings ``[v, d]`` (row 0 is padding).
        bias: ``[v]`` or ``None``.
        k: items per user; at most ``v - 1`` are returned.
        chunk_size: items scored at once (bounds the temporary scores to ``[b, chunk_size]``).
        exclude: per user, item indices that must not be returned (e.g. already seen).

    Returns:
        ``(values [b, k'], indices [b, k'])`` with ``k' = min(k, v - 1)``, sorted by decreasing
        score. Where fewer than ``k'`` items remain after the exclusions, the tail has value -inf
        (its index is meaningless): callers drop non-finite values.
    """
    if k < 1 or chunk_size < 1:
        raise ValueError(f"k and chunk_size must be >= 1, got {k}, {chunk_size}")
    if exclude is not None and len(exclude) != hidden.shape[0]:
        raise ValueError(f"exclude has {len(exclude)} rows for a batch of {hidden.shape[0]}")
    vocab = table.shape[0]
    width = min(k, vocab - 1)
    rows, columns = _exclusion_index(exclude, hidden.device) if exclude else (None, None)
    if vocab <= chunk_size:  # one pass: fewest tensor ops, which is what batch 1 pays for
        scores = F.linear(hidden, table, bias)  # [b, v]
        scores[:, 0] = -torch.inf
        if rows is not None and columns is not None:
            scores[rows, columns] = -torch.inf
        return block_top_k(scores, width)
    best_values = hidden.new_full((hidden.shape[0], width), -torch.inf)
    best_indices = torch.zeros(hidden.shape[0], width, dtype=torch.long, device=hidden.device)
    for begin in range(1, vocab, chunk_size):  # from 1: column 0 is padding
        end = min(begin + chunk_size, vocab)
        scores = F.linear(hidden, table[begin:end], None if bias is None else bias[begin:end])
        if rows is not None and columns is not None:
            inside = (columns >= begin) & (columns < end)
            scores[rows[inside], columns[inside] - begin] = -torch.inf
        values, indices = block_top_k(scores, min(width, end - begin))  # [b, ≤ width]
        merged_values = torch.cat([best_values, values], dim=1)
        merged_indices = torch.cat([best_indices, indices + begin], dim=1)
        best_values, order = torch.topk(merged_values, width, dim=1)
        best_indices = merged_indices.gather(1, order)
    return best_values, best_indices
