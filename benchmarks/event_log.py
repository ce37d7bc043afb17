"""The event log's costs: client CPU per appended event (in pipelined batches, as concurrent
requests append them), Redis memory per entry, and the export's speed.

    python -m benchmarks.event_log
    python -m benchmarks.event_log --events 200000 --concurrency 64
"""

import argparse
import asyncio
import tempfile
import time
from pathlib import Path

import redis

from benchmarks.timing import machine_probe
from cli.embedded_redis import EmbeddedRedis
from cli.events_command import _export
from service.store import create_redis
from service.store.event_log import EventLog, LogEntry


async def append_all(url: str, events: int, concurrency: int) -> float:
    """Client CPU seconds to append ``events`` entries, ``concurrency`` awaiting at once."""
    client = create_redis(url, 5.0, 2, 16)
    log = EventLog(client, "bench", 16, maxlen=10_000_000)
    started = time.process_time()
    for start in range(0, events, concurrency):
        await asyncio.gather(*(
            log.append(LogEntry(f"user-{n % 100_000}", str(n % 3416 + 1), f"e{n:012d}",
                                1_733_456_789.0 + n / 1000, "58ddc1d588819351"))
            for n in range(start, min(start + concurrency, events))
        ))  # fmt: skip
    cpu = time.process_time() - started
    await client.aclose()
    return cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--concurrency", type=int, default=64, help="appends awaiting at once")
    args = parser.parse_args()
    print(machine_probe())
    with EmbeddedRedis() as server:
        sync = redis.Redis.from_url(server.url)
        before = int(sync.info("memory")["used_memory"])
        cpu = asyncio.run(append_all(server.url, args.events, args.concurrency))
        used = int(sync.info("memory")["used_memory"]) - before
        with tempfile.TemporaryDirectory() as directory:
            out = Path(directory) / "events.parquet"
            started = time.perf_counter()
            _, written = asyncio.run(_export(server.url, False, "bench", 16, out, 0.0))
            seconds = time.perf_counter() - started
            size = out.stat().st_size
    print(f"append: {cpu / args.events * 1e6:.1f} us client CPU per event "
          f"({args.concurrency} appends per pipelined batch)")  # fmt: skip
    print(f"memory: {used / args.events:.0f} B per entry in Redis (used_memory delta)")
    print(f"export: {written:,} events in {seconds:.1f} s = {written / seconds:,.0f} events/s, "
          f"{size / written:.1f} B per event in Parquet")  # fmt: skip


if __name__ == "__main__":
    main()
