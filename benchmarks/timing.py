"""Small timing helpers shared by the benchmark scripts: medians over repeats after warm-up."""

import statistics
import time
from collections.abc import Callable


def median_seconds(function: Callable[[], object], repeats: int, warmup: int = 2) -> float:
    """Median wall time of ``function()`` over ``repeats`` calls, after ``warmup`` calls."""
    for _ in range(warmup):
        function()
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


def repeats_for(
    budget_seconds: float, one_call_seconds: float, low: int = 3, high: int = 2000
) -> int:
    """How many repeats fit a time budget, clamped to [low, high]."""
    return max(low, min(high, int(budget_seconds / max(one_call_seconds, 1e-9))))
