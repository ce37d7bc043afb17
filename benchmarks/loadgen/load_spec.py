"""What one open-loop run offers (:class:`LoadSpec`, its send times) and what it measured
(:class:`LoadResult`); the generator itself is
:mod:`benchmarks.loadgen.generator`."""

import math
import random
from dataclasses import dataclass, field


@dataclass(frozen=True)
class LoadSpec:
    """One open-loop run: ``rate`` requests/s for ``warmup + duration`` seconds."""

    rate: float
    duration: float = 8.0
    warmup: float = 2.0
    connections: int = 64
    max_outstanding: int = 2000
    schedule: str = "poisson"
    """``poisson`` (exponential gaps) or ``uniform`` (equal gaps)."""
    drain_timeout: float = 5.0
    """Seconds to wait for outstanding answers after the last send; late ones are errors."""
    seed: int = 0
    connect_interval: float = 0.01
    """Pause between opening connections: a burst of connects is accepted by whichever server
    process wakes first (uvicorn's workers share one listening socket), pinning every
    keep-alive connection to one worker; spaced out, they spread over the workers."""


@dataclass
class LoadResult:
    """Latencies (seconds, from intended send time) of requests intended inside the window."""

    spec: LoadSpec
    latencies: list[float] = field(default_factory=list)
    completed_in_window: int = 0
    """2xx answers that arrived inside the measured window (the achieved throughput)."""
    errors: int = 0
    """Non-2xx answers, broken connections and answers missing at the end of the drain."""
    dropped: int = 0
    client_cpu_seconds: float = 0.0
    send_lags: list[float] = field(default_factory=list)
    """Actual minus intended send time: waiting for a free connection, and the generator's own
    timer resolution (~1 ms on uvloop); part of every latency, so shown apart."""

    @property
    def achieved_rate(self) -> float:
        return self.completed_in_window / self.spec.duration

    def percentile_ms(self, q: float) -> float:
        """Nearest-rank percentile ``q`` (0-100) in ms; NaN without samples."""
        if not self.latencies:
            return math.nan
        ordered = sorted(self.latencies)
        rank = max(1, math.ceil(q / 100 * len(ordered)))
        return ordered[rank - 1] * 1e3

    def summary(self) -> dict[str, float | int]:
        """One table row: offered vs achieved rate, percentiles (ms), errors."""
        row: dict[str, float | int] = {
            "offered_rps": round(self.spec.rate, 1),
            "achieved_rps": round(self.achieved_rate, 1),
        }
        for name, q in (("p50", 50), ("p90", 90), ("p99", 99), ("p99.9", 99.9), ("max", 100)):
            row[f"{name}_ms"] = round(self.percentile_ms(q), 2)
        lags = sorted(self.send_lags)
        row["send_lag_p99_ms"] = round(lags[int(0.99 * (len(lags) - 1))] * 1e3, 2) if lags else 0.0
        row.update(errors=self.errors, dropped=self.dropped, samples=len(self.latencies))
        return row


def send_times(spec: LoadSpec) -> list[float]:
    """Intended send offsets (seconds from the start) over ``warmup + duration``."""
    total = spec.warmup + spec.duration
    if spec.schedule == "uniform":
        return [i / spec.rate for i in range(math.ceil(total * spec.rate))]
    if spec.schedule != "poisson":
        raise ValueError(f"unknown schedule {spec.schedule!r}; use poisson or uniform")
    rng = random.Random(spec.seed)
    times, now = [], 0.0
    while (now := now + rng.expovariate(spec.rate)) < total:
        times.append(now)
    return times
