"""Service-level sweep: start ``lrurec serve``, offer rising open-loop rates, find the knee.

For each configuration (model × workers) a fresh ``lrurec serve`` runs as a subprocess on
loopback with its embedded redis-server, users are pre-filled through ``/events/batch``, then
``POST /events?k=<k>`` is offered at each rate in turn (see :mod:`cli.bench.loadgen`) until the
service saturates. The knee is the highest offered rate that the service sustains (achieved ≥ 95 %
of offered, no errors, nothing dropped) with p99 within the latency objective.
"""

import asyncio
import json
import os
import random
import subprocess
import sys
import time
import urllib.request
import zlib
from collections.abc import Callable, Coroutine, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.error import URLError

import orjson
import psutil

from cli.bench.loadgen import LoadResult, LoadSpec, post_requests, run_load
from service.embedded_redis import EmbeddedRedis, free_port

HOST = "127.0.0.1"
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
    """Each user's events over one connection (:func:`cli.bench.loadgen.run_load`'s ``keys``)."""


def run_on_uvloop(coroutine: Coroutine[Any, Any, LoadResult]) -> LoadResult:
    """Run on uvloop when installed (the server runs on it too; a cheaper loop per request)."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coroutine)
    return uvloop.run(coroutine)


def _http_json(port: int, method: str, path: str, body: bytes | None = None) -> object:
    request = urllib.request.Request(
        f"http://{HOST}:{port}{path}", data=body, method=method,
        headers={"Content-Type": "application/json"},
    )  # fmt: skip
    with urllib.request.urlopen(request, timeout=60) as response:
        return json.loads(response.read())


def start_server(
    artifact: Path, workers: int, port: int, settings: dict[str, str]
) -> subprocess.Popen[bytes]:
    """``lrurec serve`` in a subprocess (embedded Redis, no access log) with extra ``LRUREC_*``
    environment ``settings``."""
    command = [
        sys.executable, "-c", "from cli.main import app; app()", "serve",
        "--port", str(port), "--artifact", str(artifact), "--workers", str(workers),
        "--no-access-log", "--log-level", "warning",
    ]  # fmt: skip
    env = {**os.environ, **settings}
    if "LRUREC_REDIS_URL" not in settings:
        env.pop("LRUREC_REDIS_URL", None)  # its own embedded redis-server, fresh each time
    return subprocess.Popen(command, env=env)


def wait_ready(server: subprocess.Popen[bytes], port: int, workers: int, timeout: float) -> None:
    """Until ``/readyz`` answers 200 (several times for several workers) or ``timeout``."""
    deadline = time.monotonic() + timeout
    answers = 0
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"lrurec serve exited with status {server.returncode}")
        try:
            _http_json(port, "GET", "/readyz")
            answers += 1
            if answers >= 4 * workers:
                return
        except (URLError, ConnectionError, OSError):
            answers = 0
        time.sleep(0.5)
    raise RuntimeError(f"lrurec serve not ready on port {port} after {timeout:.0f} s")


def prefill(port: int, item_ids: list[str], users: int, events_per_user: int) -> None:
    """Give every user a history, so state reads and seen-item masking are realistic."""
    rng = random.Random(1)
    events = [
        {"user_id": f"user-{user}", "item_id": rng.choice(item_ids)}
        for _ in range(events_per_user)
        for user in range(users)
    ]
    for start in range(0, len(events), 1000):
        body = orjson.dumps({"events": events[start : start + 1000]})
        _http_json(port, "POST", "/events/batch", body)


def event_requests(item_ids: list[str], users: int, k: int, count: int = 8192) -> list[bytes]:
    """Pre-encoded ``POST /events?k=k`` requests for random (user, item) pairs."""
    rng = random.Random(2)
    bodies = [
        orjson.dumps({"user_id": f"user-{rng.randrange(users)}", "item_id": rng.choice(item_ids)})
        for _ in range(count)
    ]
    return post_requests(HOST, f"/events?k={k}", bodies)


def user_keys(requests: Sequence[bytes]) -> list[int]:
    """A key per ``POST /events`` request, the same for every event of one user (its
    ``user_id``'s CRC-32), so a keyed run sends each user's events over one connection."""
    return [zlib.crc32(orjson.loads(request.partition(b"\r\n\r\n")[2])["user_id"].encode())
            for request in requests]  # fmt: skip


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


def _split(before: dict[int, float], after: dict[int, float]) -> str:
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

    On this project's 2-vCPU VM the tail follows it (benchmarks/RESULTS.md, issue 5, session
    9): one worker at 3,000 events/s had p99 ≤ 15 ms almost only in runs with under 0.5 %
    stolen, so every row reports it next to its latencies.
    """
    total = after[1] - before[1]
    return round(100 * (after[0] - before[0]) / total, 2) if total > 0 else 0.0


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
        server_cpu = sum(after.values()) - sum(before.get(pid, 0.0) for pid in after)
        sent = max(1, round(rate * (spec.warmup + spec.duration)))
        row: Row = {
            **result.summary(),
            "server_cpu_ms_per_event": round(server_cpu / sent * 1e3, 3),
            "client_cpu_ms_per_event": round(result.client_cpu_seconds / sent * 1e3, 3),
            "cpu_split_pct": _split(before, after),
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


def _stop(server: subprocess.Popen[bytes]) -> None:
    server.terminate()
    try:
        server.wait(timeout=30)
    except subprocess.TimeoutExpired:
        server.kill()
        server.wait()


def sweep_configuration(
    artifact: Path, workers: int, replicas: int, settings: dict[str, str],
    item_ids: list[str], spec: SweepSpec, report: Callable[[Row], None], ingest: bool = False,
) -> list[Row]:  # fmt: skip
    """Start the service, pre-fill users, measure every rate, stop the service.

    ``replicas > 1`` starts that many ``lrurec serve --workers <workers>`` processes on their own
    ports sharing one redis-server, and the load generator spreads its connections over them
    evenly (as a load balancer would); otherwise one process serves on one port. With
    ``ingest`` every process also opens its ingest port (``LRUREC_INGEST_PORT``), and the
    events go there instead of the main port.
    """
    with ExitStack() as stack:
        extra_roots: list[int] = []
        if replicas > 1:
            redis = stack.enter_context(EmbeddedRedis())
            settings = {**settings, "LRUREC_REDIS_URL": redis.url}
            extra_roots = [redis.pid] if redis.pid is not None else []
        ports = [free_port() for _ in range(max(1, replicas))]
        ingest_ports = [free_port() for _ in ports]
        servers = [
            start_server(
                artifact, workers, port,
                {**settings, "LRUREC_INGEST_PORT": str(ingest_port)} if ingest else settings,
            )
            for port, ingest_port in zip(ports, ingest_ports, strict=True)
        ]  # fmt: skip
        for server in servers:
            stack.callback(_stop, server)
        for server, port in zip(servers, ports, strict=True):
            wait_ready(server, port, workers, timeout=180.0)
        prefill(ports[0], item_ids, spec.users, spec.prefill_events)
        requests = event_requests(item_ids, spec.users, spec.k)
        roots = [server.pid for server in servers] + extra_roots
        targets = ingest_ports if ingest else ports
        return measure_rates(roots, targets, requests, spec, report)
