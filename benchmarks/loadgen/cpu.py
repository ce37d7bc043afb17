"""CPU accounting: the service's processes, and the share of the host's time stolen from it."""

from collections.abc import Sequence

import psutil


def process_cpu(roots: Sequence[int]) -> dict[int, float]:
    """User + system CPU seconds of each process in the trees under ``roots``."""
    seconds: dict[int, float] = {}
    for pid in roots:
        root = psutil.Process(pid)
        for process in [root, *root.children(recursive=True)]:
            try:
                times = process.cpu_times()
            except psutil.NoSuchProcess:
                continue
            seconds[process.pid] = times.user + times.system
    return seconds


def used_seconds(before: dict[int, float], after: dict[int, float]) -> float:
    """CPU seconds the processes of two :func:`process_cpu` readings used in between."""
    return sum(after.values()) - sum(before.get(pid, 0.0) for pid in after)


def cpu_split(before: dict[int, float], after: dict[int, float]) -> str:
    """Shares (%) of the busiest processes, e.g. ``"51/44/5"``: workers, then redis-server."""
    used = sorted((after[pid] - before.get(pid, 0.0) for pid in after), reverse=True)
    total = sum(used) or 1.0
    return "/".join(f"{100 * part / total:.0f}" for part in used if part / total >= 0.02)


def host_cpu() -> tuple[float, float]:
    """``(stolen, total)`` CPU seconds of this host, all CPUs: ``stolen`` is the time its
    hypervisor ran something else while a vCPU had work (0 on bare metal and where the OS does
    not report it)."""
    times = psutil.cpu_times()
    # Linux counts guest time inside user and nice already: not twice.
    guest = getattr(times, "guest", 0.0) + getattr(times, "guest_nice", 0.0)
    return float(getattr(times, "steal", 0.0)), float(sum(times) - guest)


def steal_pct(before: tuple[float, float], after: tuple[float, float]) -> float:
    """Share (%) of the host's CPU time stolen between two :func:`host_cpu` readings.

    On a small shared VM the latency tail follows it: a run with a few percent stolen has a p99
    several times that of a quiet one at the same rate, so every row reports it next to its
    latencies.
    """
    total = after[1] - before[1]
    return round(100 * (after[0] - before[0]) / total, 2) if total > 0 else 0.0
