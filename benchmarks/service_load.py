"""Load test of ``POST /events`` (one model step + top-k) against the real service.

Starts one worker (``--server``: uvicorn or granian) and a redis-server on loopback in
subprocesses, serving an artifact at ML-1M catalogue size, pre-fills user histories through
``/events/batch``, then drives ``POST /events?k=<k>`` from this separate process with
``--concurrency`` keep-alive connections for ``--duration`` seconds and prints events/s and
latency percentiles.

Two clients: ``raw`` (a minimal HTTP/1.1 keep-alive client on asyncio streams, so the load
generator takes little of the CPU the server needs on a small machine) and ``httpx``.

    python -m benchmarks.service_load --duration 20 --concurrency 16 --client raw

A closed loop (each connection waits for its answer): ``python -m benchmarks.openloop`` (the
generator in ``benchmarks/loadgen/``) is the one for latency under a fixed arrival rate; this
script shares its server, readiness and pre-fill helpers.
"""

import argparse
import asyncio
import json
import random
import statistics
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import httpx
import orjson
import psutil

from benchmarks.loadgen.artifacts import ML1M_ITEMS, bench_artifact
from benchmarks.loadgen.cpu import process_cpu
from benchmarks.loadgen.servers import READY_TIMEOUT, Server, running_service, wait_ready
from benchmarks.loadgen.workload import prefill
from cli.embedded_redis import EmbeddedRedis, free_port

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "benchmarks" / "out"

Send = Callable[[bytes], Awaitable[float]]


async def raw_connection(host: str, port: int, path: str) -> Send:
    """A keep-alive HTTP/1.1 connection; ``send(body)`` returns the request latency."""
    reader, writer = await asyncio.open_connection(host, port)
    head = f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"

    async def send(body: bytes) -> float:
        start = time.perf_counter()
        writer.write(f"{head}Content-Length: {len(body)}\r\n\r\n".encode() + body)
        status_line = await reader.readline()
        length = 0
        while (line := await reader.readline()) not in (b"\r\n", b""):
            name, _, value = line.partition(b":")
            if name.lower() == b"content-length":
                length = int(value)
        await reader.readexactly(length)
        if b" 200 " not in status_line:
            raise RuntimeError(f"unexpected response {status_line!r}")
        return time.perf_counter() - start

    return send


async def httpx_connection(base_url: str, path: str) -> Send:
    client = httpx.AsyncClient(
        base_url=base_url, timeout=30.0, limits=httpx.Limits(max_connections=1)
    )

    async def send(body: bytes) -> float:
        start = time.perf_counter()
        response = await client.post(
            path, content=body, headers={"Content-Type": "application/json"}
        )
        response.raise_for_status()
        return time.perf_counter() - start

    return send


async def drive(
    args: argparse.Namespace, port: int, item_ids: list[str]
) -> tuple[list[float], float]:
    """Latencies of every request completed inside the measured window, and its length."""
    path = f"/events?k={args.k}"
    base_url = f"http://127.0.0.1:{port}"

    async def connect() -> Send:
        if args.client == "raw":
            return await raw_connection("127.0.0.1", port, path)
        return await httpx_connection(base_url, path)

    senders = [await connect() for _ in range(args.concurrency)]
    latencies: list[float] = []
    start = time.perf_counter()
    measure_from, stop_at = start + args.warmup, start + args.warmup + args.duration

    async def loop(send: Send, seed: int) -> None:
        rng = random.Random(seed)
        while (now := time.perf_counter()) < stop_at:
            body = orjson.dumps(
                {"user_id": f"user-{rng.randrange(args.users)}", "item_id": rng.choice(item_ids)}
            )
            latency = await send(body)
            if now >= measure_from:
                latencies.append(latency)

    await asyncio.gather(*(loop(send, seed) for seed, send in enumerate(senders)))
    return latencies, time.perf_counter() - measure_from


def cpu_seconds(roots: list[int]) -> float:
    """User + system CPU of the service's processes and the redis-server."""
    return sum(process_cpu(roots).values())


def percentile(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=1000, method="inclusive")[int(q * 10) - 1]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--duration", type=float, default=20.0, help="measured seconds")
    parser.add_argument("--warmup", type=float, default=3.0, help="unmeasured seconds first")
    parser.add_argument("--concurrency", type=int, default=16, help="open connections")
    parser.add_argument("--client", choices=["raw", "httpx"], default="raw")
    parser.add_argument(
        "--server", type=Server, choices=list(Server), default=Server.UVICORN,
        help="HTTP server of the service (granian needs `pip install granian`)",
    )  # fmt: skip
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--users", type=int, default=1000)
    parser.add_argument("--prefill", type=int, default=10, help="events per user before timing")
    parser.add_argument(
        "--artifact", type=Path, help="serve this artifact (items '1'..'3416'), not a random one"
    )
    args = parser.parse_args()

    item_ids = [str(index) for index in range(1, ML1M_ITEMS + 1)]  # bench_artifact's ids
    artifact = args.artifact or bench_artifact(OUT / "service_bench", "lrurec")
    port = free_port()
    with (
        EmbeddedRedis() as redis,
        running_service(args.server, artifact, 1, port, redis.url, {}) as server,
    ):
        wait_ready(server, port, 1, READY_TIMEOUT)
        prefill_start = time.perf_counter()
        prefill(port, item_ids, args.users, args.prefill)
        prefill_seconds = time.perf_counter() - prefill_start
        roots = [server.pid] + ([redis.pid] if redis.pid else [])
        cpu_before = cpu_seconds(roots)
        latencies, elapsed = asyncio.run(drive(args, port, item_ids))
        cpu = cpu_seconds(roots) - cpu_before
    result = {
        "server": args.server, "client": args.client, "concurrency": args.concurrency, "k": args.k,
        "items": len(item_ids), "events": len(latencies), "seconds": round(elapsed, 2),
        "events_per_s": round(len(latencies) / elapsed, 1),
        "p50_ms": round(percentile(latencies, 50) * 1e3, 2),
        "p90_ms": round(percentile(latencies, 90) * 1e3, 2),
        "p99_ms": round(percentile(latencies, 99) * 1e3, 2),
        "max_ms": round(max(latencies) * 1e3, 2),
        "server_cpu_ms_per_event": round(cpu / len(latencies) * 1e3, 3),
        "batch_events_per_s": round(args.users * args.prefill / prefill_seconds, 1),
        "load_average_1m": round(psutil.getloadavg()[0], 1),
    }  # fmt: skip
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / f"service_load_{args.client}.json").write_text(json.dumps(result, indent=2) + "\n")
    columns = list(result)
    print("| " + " | ".join(columns) + " |")
    print("|" + " --- |" * len(columns))
    print("| " + " | ".join(str(result[column]) for column in columns) + " |")


if __name__ == "__main__":
    main()
