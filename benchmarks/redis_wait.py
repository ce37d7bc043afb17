"""What ``LRUREC_REDIS_WAIT_REPLICAS`` costs: the latency of one event's write (the apply
script) and of a pipelined batch of writes, on a loopback Redis Cluster of 3 masters with one
replica each, without ``WAIT`` and with ``WAIT 1`` after the writes.

Writes go through the service's own store (``service.store.UserStore``), one user per event, so
the batch spreads over the three masters as the event lane's batches do.

    python -m benchmarks.redis_wait
    python -m benchmarks.redis_wait --writes 5000 --batch 32
"""

import argparse
import asyncio
import time

import numpy as np

from benchmarks.timing import machine_probe
from cli.embedded_cluster import EmbeddedCluster
from cli.embedded_redis import EmbeddedRedis
from service.store import Limits, Replication, UserStore, Write, create_redis
from service.store.user_store import PendingWrite

STATE = bytes(2048)  # the LRURec default state (float32)
HIDDEN = bytes(256)


def write(n: int) -> Write:
    return Write(
        expected_version=0, token=f"t{n}", event_id=f"e{n}", item="item-1", state=STATE,
        hidden=HIDDEN, model_version="m", applied=True, received=True,
    )  # fmt: skip


async def measure(
    url: str, replicas: int, writes: int, batch: int, cluster: bool = True
) -> dict[str, float]:
    client = create_redis(url, 5.0, 2, 16, cluster=cluster)
    store = UserStore(client, "bench", Limits(200, 1000, 0), Replication(replicas, 1000))
    tag = f"r{replicas}-{time.monotonic_ns()}"
    try:
        for n in range(50):  # warm-up: connections to every master, scripts loaded
            await store.write(f"{tag}-warm-{n}", write(n))
        single = []
        for n in range(writes):
            started = time.perf_counter()
            await store.write(f"{tag}-{n}", write(n))
            single.append(time.perf_counter() - started)
        batched = []
        for start in range(0, writes, batch):
            pending: list[PendingWrite] = [
                (f"{tag}-b-{n}", write(n), None) for n in range(start, start + batch)
            ]
            started = time.perf_counter()
            results = await store.write_many(pending)
            batched.append(time.perf_counter() - started)
            assert not any(isinstance(result, Exception) for result in results), results[:3]
    finally:
        await client.aclose()
    one, many = np.array(single) * 1e6, np.array(batched) * 1e6
    return {
        "p50": float(np.percentile(one, 50)), "p99": float(np.percentile(one, 99)),
        "batch_p50": float(np.percentile(many, 50)), "batch_p99": float(np.percentile(many, 99)),
    }  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--writes", type=int, default=3000, help="writes per configuration")
    parser.add_argument("--batch", type=int, default=32, help="writes per pipelined batch")
    args = parser.parse_args()
    print(machine_probe())
    with EmbeddedRedis() as single:
        reference = asyncio.run(measure(single.url, 0, args.writes, args.batch, cluster=False))
    with EmbeddedCluster() as cluster:
        rows = {replicas: asyncio.run(measure(cluster.url, replicas, args.writes, args.batch))
                for replicas in (0, 1)}  # fmt: skip
    print(f"single node, no replica: write p50 {reference['p50']:.0f}us p99 "
          f"{reference['p99']:.0f}us; batch of {args.batch} p50 {reference['batch_p50']:.0f}us "
          f"p99 {reference['batch_p99']:.0f}us")  # fmt: skip
    batch_column = f"batch of {args.batch} p50"
    print("cluster, 3 masters x 1 replica:")
    print(f"{'WAIT':>6} {'write p50':>10} {'p99':>8} {batch_column:>18} {'p99':>8}")
    for replicas, row in rows.items():
        print(f"{replicas:>6} {row['p50']:>8.0f}us {row['p99']:>6.0f}us "
              f"{row['batch_p50']:>16.0f}us {row['batch_p99']:>6.0f}us")  # fmt: skip
    base, waited = rows[0], rows[1]
    print(f"WAIT 1 adds {waited['p50'] - base['p50']:.0f} us to a write's p50 "
          f"(x{waited['p50'] / base['p50']:.2f}) and {waited['batch_p50'] - base['batch_p50']:.0f}"
          f" us to a batch's (x{waited['batch_p50'] / base['batch_p50']:.2f})")  # fmt: skip


if __name__ == "__main__":
    main()
