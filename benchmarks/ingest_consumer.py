"""Stream ingestion: what one ``lrurec consume`` process applies per second, its end-to-end lag
under a paced producer, and its CPU per event next to ``POST /events`` in the same run.

The artifact has ML-1M's shape (3,416 items, d = 64, 2 layers, max_len 200; random weights: the
cost does not depend on them). Three phases, on a private redis-server:

1. backlog: ``--backlog`` events over ``--users`` users are added first (pipelined XADD), then
   one consumer (this process, the service's ``Consumer`` on the app's engine) applies them;
   applied events/s and consumer CPU per event;
2. lag: a producer process adds ``--rate`` events/s for ``--seconds``; the lag of each entry is
   from its XADD (the entry id's time) to the end of the batch that wrote it: p50/p99;
3. ``POST /events?k=0`` at ``--http-rate`` through ``lrurec serve`` (one worker): its CPU per
   event, for the ratio.

    python -m benchmarks.ingest_consumer
    python -m benchmarks.ingest_consumer --backlog 200000 --users 100000 --rate 5000
"""

import argparse
import asyncio
import os
import sys
import time
from pathlib import Path

import numpy as np
import redis
from prometheus_client import REGISTRY

from benchmarks.loadgen.artifacts import ML1M_ITEMS, bench_artifact
from benchmarks.loadgen.servers import Server
from benchmarks.service_cpu import measure as measure_http
from benchmarks.timing import machine_probe
from cli.embedded_redis import EmbeddedRedis
from service.app import limit_threads
from service.gc_tuning import tune_garbage_collector
from service.ingest.consumer import Consumer
from service.settings import Settings
from service.store import create_redis
from service.store.streams import Entry, IngestStreams, ingest_key, shard_of
from tests.service.engines import started_engine

REPO = Path(__file__).resolve().parents[1]
SHARDS = 16

PRODUCER = """
import sys, time, zlib, redis
url, rate, seconds, users = sys.argv[1], float(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4])
client = redis.Redis.from_url(url)
keys = [f"lrurec:v1:ingest:{{{s}}}" for s in range(16)]
start, sent = time.monotonic(), 0
while (elapsed := time.monotonic() - start) < seconds:
    due = int(elapsed * rate)
    if due > sent:
        pipe = client.pipeline(transaction=False)
        for n in range(sent, due):
            user = f"user-{n * 7919 % users}"
            pipe.xadd(keys[zlib.crc32(user.encode()) % 16],
                      {"user_id": user, "item_id": str(n % 3416 + 1)})
        pipe.execute()
        sent = due
    time.sleep(0.002)
"""


class TimedConsumer(Consumer):
    """The consumer, noting each batch's entries' lag once the batch is written."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.lags_ms: list[float] = []

    async def apply(self, reads: dict[int, list[Entry]]) -> set[int]:
        unsettled = await super().apply(reads)
        now_ms = time.time() * 1000
        for entries in reads.values():
            self.lags_ms += [now_ms - float(entry_id.split("-", 1)[0]) for entry_id, _ in entries]
        return unsettled


def applied() -> float:
    return REGISTRY.get_sample_value("lrurec_ingest_entries_total", {"outcome": "applied"}) or 0


async def until_applied(count: float) -> None:
    for _ in range(36_000):  # at most 30 minutes
        if applied() >= count:
            return
        await asyncio.sleep(0.05)
    raise RuntimeError(f"{count:,.0f} events not applied within 30 minutes")


def fill_backlog(url: str, events: int, users: int) -> None:
    client = redis.Redis.from_url(url)
    for start in range(0, events, 5000):
        pipe = client.pipeline(transaction=False)
        for n in range(start, min(start + 5000, events)):
            user = f"user-{n * 7919 % users}"
            fields = {"user_id": user, "item_id": str(n % ML1M_ITEMS + 1)}
            pipe.xadd(ingest_key("lrurec", shard_of(user, SHARDS)), fields)  # type: ignore[arg-type]
        pipe.execute()
    client.close()


async def consume_phases(settings: Settings, args: argparse.Namespace) -> dict[str, float]:
    limit_threads(settings.torch_threads)  # as `lrurec consume` does
    engine, close = await started_engine(settings)
    assert settings.redis_url is not None
    client = create_redis(settings.redis_url, 5.0, 2, 64)
    streams = IngestStreams(client, "lrurec", SHARDS)
    consumer = TimedConsumer(engine, streams, settings, "bench")
    tune_garbage_collector(settings.ingest_gc_threshold)  # as `lrurec consume` does
    stop = asyncio.Event()
    started, cpu_started = time.monotonic(), time.process_time()
    running = asyncio.create_task(consumer.run(stop))
    await until_applied(args.backlog)
    backlog_seconds = time.monotonic() - started
    backlog_cpu = time.process_time() - cpu_started
    consumer.lags_ms.clear()
    before, cpu_before = applied(), time.process_time()
    producer = await asyncio.create_subprocess_exec(
        sys.executable, "-c", PRODUCER, settings.redis_url, str(args.rate), str(args.seconds),
        str(args.users),
    )  # fmt: skip
    await producer.wait()
    await asyncio.sleep(1.0)  # the last entries
    paced = applied() - before
    paced_cpu = time.process_time() - cpu_before
    stop.set()
    await running
    await client.aclose()
    await close()
    lags = np.array(consumer.lags_ms[int(len(consumer.lags_ms) * 0.05) :])  # past the start
    return {
        "backlog_rate": args.backlog / backlog_seconds,
        "backlog_cpu_us": backlog_cpu / args.backlog * 1e6,
        "paced_rate": paced / args.seconds,
        "paced_cpu_us": paced_cpu / max(paced, 1) * 1e6,
        "lag_p50": float(np.percentile(lags, 50)),
        "lag_p99": float(np.percentile(lags, 99)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--backlog", type=int, default=100_000, help="events added first")
    parser.add_argument("--users", type=int, default=100_000)
    parser.add_argument("--rate", type=float, default=5000.0, help="paced producer, events/s")
    parser.add_argument("--seconds", type=float, default=20.0, help="paced phase length")
    parser.add_argument("--http-rate", type=float, default=1000.0, help="POST /events rate")
    args = parser.parse_args()
    print(machine_probe())
    artifact = bench_artifact(REPO / "benchmarks" / "out" / "service_bench", "lrurec")
    with EmbeddedRedis() as server:
        fill_backlog(server.url, args.backlog, args.users)
        settings = Settings(artifact=artifact, redis_url=server.url, ingest_shards=SHARDS)
        figures = asyncio.run(consume_phases(settings, args))
    http_args = argparse.Namespace(
        rate=args.http_rate, duration=8.0, backend="auto", users=1000, k=0, server=Server.UVICORN
    )
    http = measure_http(REPO, {}, http_args, artifact)
    print(f"load average {os.getloadavg()}")
    print(f"backlog: {args.backlog:,} events over {args.users:,} users applied at "
          f"{figures['backlog_rate']:,.0f} events/s, consumer CPU {figures['backlog_cpu_us']:.0f}"
          " us/event")  # fmt: skip
    print(f"paced producer at {args.rate:,.0f}/s: applied {figures['paced_rate']:,.0f}/s, "
          f"end-to-end lag p50 {figures['lag_p50']:.1f} ms, p99 {figures['lag_p99']:.1f} ms, "
          f"consumer CPU {figures['paced_cpu_us']:.0f} us/event")  # fmt: skip
    http_us = http["service_ms"] * 1000
    print(f"POST /events?k=0 at {args.http_rate:,.0f}/s: service CPU {http_us:.0f} us/event "
          f"(p99 {http['p99_ms']:.1f} ms); consumer/HTTP CPU per event: backlog "
          f"{figures['backlog_cpu_us'] / http_us:.2f}, paced "
          f"{figures['paced_cpu_us'] / http_us:.2f}")  # fmt: skip


if __name__ == "__main__":
    main()
