"""Small timing helpers shared by the benchmark scripts: medians over repeats after warm-up."""

import statistics
import time
from collections.abc import Callable

import numpy as np


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


def machine_probe() -> str:
    """One line on how fast this machine is right now, to read a run's numbers against.

    On a shared VM the same code runs 20-50 % slower in some windows:
    memory-bound work (batch-1 scoring reads ~1.5 MB from L3) more than GEMMs. The probe times
    one of each, with numpy on the calling thread's BLAS settings: reading 16 MB, and a
    [64, 64] @ [64, 3,416] float32 product (the batch-64 scoring of ML-1M).
    """
    rng = np.random.default_rng(0)
    big = np.ones(4 << 20, dtype=np.float32)
    hidden = rng.standard_normal((64, 64), dtype=np.float32)
    table = rng.standard_normal((3416, 64), dtype=np.float32)
    read_s = median_seconds(big.sum, repeats=20)
    gemm_s = median_seconds(lambda: hidden @ table.T, repeats=50)
    return (
        f"machine probe: 16 MB read {read_s * 1e6:,.0f} µs ({big.nbytes / read_s / 1e9:.1f} GB/s), "
        f"[64, 64] @ [64, 3,416] {gemm_s * 1e6:,.0f} µs"
    )
