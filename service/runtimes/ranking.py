"""Exact top-k of one score vector in numpy: cold starts and backends without a fused top-k."""

from collections.abc import Sequence

import numpy as np

from service.runtimes.protocol import FloatArray, IndexArray


def top_k_numpy(
    scores: FloatArray, k: int, exclude: Sequence[int] | IndexArray
) -> tuple[IndexArray, FloatArray]:
    """Best ``k`` of one score vector ``[v]`` without column 0, the excluded indices and
    non-finite scores; best first, ties by the lower index (as the other backends' top-k).

    Returns fewer than ``k`` items when fewer are left. Used for cold starts (a precomputed
    vector) and by backends without a fused top-k.
    """
    masked = np.where(np.isfinite(scores), scores, -np.inf).astype(np.float32, copy=False)
    masked[0] = -np.inf
    if len(exclude):
        masked[np.asarray(exclude, dtype=np.int64)] = -np.inf
    k = min(k, int(np.isfinite(masked).sum()))
    if k <= 0:
        return np.empty(0, dtype=np.int64), np.empty(0, dtype=np.float32)
    chosen = np.argpartition(-masked, k - 1)[:k]
    cut = masked[chosen].min()
    if np.count_nonzero(masked == cut) > np.count_nonzero(masked[chosen] == cut):
        # More items tie at the cut than were taken: take the lowest indices among them.
        above = np.flatnonzero(masked > cut)
        chosen = np.concatenate([above, np.flatnonzero(masked == cut)[: k - len(above)]])
    chosen = np.sort(chosen)  # index order, so the stable sort breaks ties by index
    order = chosen[np.argsort(-masked[chosen], kind="stable")]
    return order.astype(np.int64), masked[order]
