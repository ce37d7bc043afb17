"""Service-level sweep: start the service, offer rising open-loop rates, find the knee.

For each configuration (model × workers × server) a fresh service runs as a subprocess on
loopback (:mod:`benchmarks.loadgen.servers`) with a fresh redis-server of its own, users are
pre-filled through ``/events/batch``, then ``POST /events?k=<k>`` is offered at each rate in turn
(see :mod:`benchmarks.loadgen.generator`) until the service saturates. The knee is the highest
offered rate that the service sustains (achieved ≥ 95 % of offered, no errors, nothing dropped)
with p99 within the latency objective.
"""

import asyncio
import time
from collections.abc import Callable, Coroutine, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

from benchmarks.loadgen.cpu import cpu_split, host_cpu, process_cpu, steal_pct, used_seconds
from benchmarks.loadgen.generator import LoadResult, LoadSpec, run_load
from benchmarks.loadgen.servers import (
    HOST,
    READY_TIMEOUT,
    Server,
    running_service,
    wait_ready,
)
from benchmarks.loadgen.workload import event_requests, prefill, user_keys
from cli.embedded_redis import EmbeddedRedis, free_port

SUSTAINED = 0.95
"""Achieved/offered ratio above which a rate counts as sustained."""
SATURATED = 0.85
"""Below this ratio (or with drops) the sweep stops: higher rates only queue more."""

Row = dict[str, float | int | str]


@dataclass(frozen=True)
class SweepSpec:
    """What every configuration of one sweep shares."""

    rates: tuple[float, ...]
    duration: float = 8.0
    warmup: float = 2.0
    k: int = 10
    users: int = 1000
    prefill_events: int = 10
    slo_p99_ms: float = 15.0
    connections: int = 64
    schedule: str = "poisson"
    keyed: bool = False
    """Each user's events over one connection (:func:`benchmarks.loadgen.generator.run_load`'s
    ``keys``)."""
    server: Server = Server.UVICORN


@dataclass(frozen=True)
class Layout:
    """How one configuration's service is laid out: ``replicas`` processes on their own ports
    (1 = one port), each with ``workers`` worker processes."""

    label: str
    workers: int
    replicas: int = 1


def run_on_uvloop(coroutine: Coroutine[Any, Any, LoadResult]) -> LoadResult:
    """Run on uvloop when installed (the server runs on it too; a cheaper loop per request)."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coroutine)
    return uvloop.run(coroutine)


def measure_rates(
    roots: Sequence[int], ports: Sequence[int], requests: list[bytes], spec: SweepSpec,
    report: Callable[[Row], None],
) -> list[Row]:  # fmt: skip
    """One row per offered rate, rising until the service saturates."""
    rows: list[Row] = []
    keys = user_keys(requests) if spec.keyed else None
    for rate in spec.rates:
        load = LoadSpec(
            rate=rate, duration=spec.duration, warmup=spec.warmup,
            connections=spec.connections, schedule=spec.schedule, drain_timeout=15.0,
        )  # fmt: skip
        before, host_before = process_cpu(roots), host_cpu()
        result = run_on_uvloop(run_load([(HOST, port) for port in ports], requests, load, keys))
        after, host_after = process_cpu(roots), host_cpu()
        sent = max(1, round(rate * (spec.warmup + spec.duration)))
        row: Row = {
            **result.summary(),
            "server_cpu_ms_per_event": round(used_seconds(before, after) / sent * 1e3, 3),
            "client_cpu_ms_per_event": round(result.client_cpu_seconds / sent * 1e3, 3),
            "cpu_split_pct": cpu_split(before, after),
            "load_1m": round(psutil.getloadavg()[0], 2),
            "steal_pct": steal_pct(host_before, host_after),
        }
        rows.append(row)
        report(row)
        if result.achieved_rate < SATURATED * rate or result.dropped:
            break
        time.sleep(1.0)
    return rows


def knee(rows: list[Row], slo_p99_ms: float) -> float | None:
    """Highest offered rate sustained with p99 ≤ ``slo_p99_ms`` (None if none)."""
    good = [
        float(row["offered_rps"])
        for row in rows
        if float(row["achieved_rps"]) >= SUSTAINED * float(row["offered_rps"])
        and row["errors"] == 0
        and row["dropped"] == 0
        and float(row["p99_ms"]) <= slo_p99_ms
    ]
    return max(good) if good else None


def sweep_configuration(
    artifact: Path, layout: Layout, settings: dict[str, str], item_ids: list[str],
    spec: SweepSpec, report: Callable[[Row], None],
) -> list[Row]:  # fmt: skip
    """Start the service, pre-fill users, measure every rate, stop the service.

    ``layout.replicas > 1`` starts that many services of ``layout.workers`` workers on their own
    ports, and the load generator spreads its connections over them evenly (as a load balancer
    would); otherwise one service serves on one port. Every process shares one redis-server,
    whose CPU counts as the server's.
    """
    with ExitStack() as stack:
        redis = stack.enter_context(EmbeddedRedis())
        ports = [free_port() for _ in range(max(1, layout.replicas))]
        servers = [
            stack.enter_context(
                running_service(spec.server, artifact, layout.workers, port, redis.url, settings)
            )
            for port in ports
        ]
        for server, port in zip(servers, ports, strict=True):
            wait_ready(server, port, layout.workers, READY_TIMEOUT)
        prefill(ports[0], item_ids, spec.users, spec.prefill_events)
        requests = event_requests(item_ids, spec.users, spec.k)
        roots = [server.pid for server in servers] + ([redis.pid] if redis.pid else [])
        return measure_rates(roots, ports, requests, spec, report)
