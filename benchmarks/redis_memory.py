"""Redis memory per user: fill a private redis-server with synthetic users shaped like ML-1M's
and read the cost from ``INFO memory``.

Each user gets what the service stores (``service/store/keys.py``): the state hash (state and
hidden float32 bytes of the LRURec default config, model version, counters, timestamps), the
history list (the last ``max_len`` item ids) and, with ``--event-ids``, the event-id set (one
16-character id per event, at most ``max_event_ids``), each with the default TTL. History
lengths are drawn from ML-1M's sequence lengths when ``../shared/data/ml-1m/sequences.txt``
exists (a log-normal stand-in otherwise; the script says which).

The bulk fill writes that layout directly (pipelined HSET/RPUSH/ZADD/EXPIRE); a sample of users
is first written through the service's own store (the apply script, one call per event) and the
two are compared key by key with ``MEMORY USAGE``, so the fill is checked against the real path.

    python -m benchmarks.redis_memory --users 1000000
    python -m benchmarks.redis_memory --users 100000 --event-ids
"""

import argparse
import asyncio
import time
from pathlib import Path

import numpy as np
import redis
from redis.typing import EncodableT, FieldT
from tqdm import tqdm

from cli.embedded_redis import EmbeddedRedis
from model import LRURecConfig
from service.settings import Settings
from service.store import Limits, UserStore, create_redis
from service.store.keys import user_keys
from service.store.records import Write

ML1M = Path(__file__).resolve().parents[2] / "shared" / "data" / "ml-1m" / "sequences.txt"
PREFIX = "lrurec"
N_ITEMS = 3706
CHUNK = 1000


def sequence_lengths(n_users: int, rng: np.random.Generator) -> tuple[np.ndarray, str]:
    """Events per user, drawn from ML-1M's sequences (or a log-normal stand-in)."""
    if ML1M.exists():
        lengths = np.array([len(line.split()) - 1 for line in ML1M.read_text().splitlines()])
        return rng.choice(lengths, size=n_users), f"ML-1M ({len(lengths)} users)"
    synthetic = rng.lognormal(mean=4.6, sigma=1.0, size=n_users).astype(np.int64) + 20
    return synthetic, "log-normal stand-in (ML-1M not found)"


class UserShape:
    """The byte sizes and limits of one stored user, from the default model and settings."""

    def __init__(self) -> None:
        config = LRURecConfig(n_items=N_ITEMS)
        settings = Settings()
        self.state = bytes(4 * config.n_layers * 2 * config.d_state)
        self.hidden = bytes(4 * config.d_model)
        self.limits = Limits(config.max_len, settings.max_event_ids, settings.user_ttl_seconds)
        self.items = np.array([str(n) for n in range(1, N_ITEMS + 1)], dtype=object)

    def history(self, length: int, rng: np.random.Generator) -> list[str]:
        kept = min(length, self.limits.max_len)
        return list(self.items[rng.integers(0, N_ITEMS, size=kept)])

    def event_ids(self, user: int, length: int) -> list[str]:
        return [
            f"{user:08x}{n:08x}" for n in range(max(0, length - self.limits.max_event_ids), length)
        ]


def fill_direct(
    client: "redis.Redis", users: range, lengths: np.ndarray, shape: UserShape, with_ids: bool
) -> None:
    """Write each user's final layout in pipelines of ``CHUNK`` users."""
    rng = np.random.default_rng(users.start)
    ttl = shape.limits.ttl_seconds
    with tqdm(total=len(users), unit="user", desc="fill") as progress:
        for start in range(users.start, users.stop, CHUNK):
            pipe = client.pipeline(transaction=False)
            for user in range(start, min(start + CHUNK, users.stop)):
                length = int(lengths[user])
                state_key, hist_key, eids_key = user_keys(PREFIX, f"user-{user}")
                fields: dict[FieldT, EncodableT] = {
                    "version": length, "token": f"{user:032x}", "events_applied": length,
                    "updated_at": f"{time.time():.6f}", "state": shape.state,
                    "hidden": shape.hidden, "model_version": "58ddc1d588819351",
                    "events_received": length,
                }  # fmt: skip
                pipe.hset(state_key, mapping=fields)
                pipe.rpush(hist_key, *shape.history(length, rng))
                keys = [state_key, hist_key]
                if with_ids:
                    ids = shape.event_ids(user, length)
                    pipe.zadd(
                        eids_key, {eid: length - len(ids) + n + 1 for n, eid in enumerate(ids)}
                    )
                    keys.append(eids_key)
                for key in keys:
                    pipe.expire(key, ttl)
            pipe.execute()
            progress.update(min(CHUNK, users.stop - start))


async def fill_through_store(
    url: str, users: range, lengths: np.ndarray, shape: UserShape, with_ids: bool
) -> None:
    """The reference: every event of each user through the service's apply script (which
    trims the history and the event ids itself)."""
    client = create_redis(url, 5.0, 2, 8)
    store = UserStore(client, PREFIX, shape.limits)
    rng = np.random.default_rng(users.start)
    try:
        for user in users:
            length, version = int(lengths[user]), 0
            items = shape.history(length, rng)
            items = ["1"] * (length - len(items)) + items  # trimmed away by the script
            for n, item in enumerate(items):
                write = Write(
                    expected_version=version, token=f"{user:024x}{n:08x}",
                    event_id=f"{user:08x}{n:08x}" if with_ids else "", item=item,
                    state=shape.state, hidden=shape.hidden, model_version="58ddc1d588819351",
                    applied=True, received=True,
                )  # fmt: skip
                version = (await store.write(f"user-{user}", write)).version
    finally:
        await client.aclose()


def usage(client: "redis.Redis", users: range, with_ids: bool) -> float:
    """Mean ``MEMORY USAGE`` (bytes) of the users' keys, all nested values sampled."""
    total = 0
    for user in users:
        keys = user_keys(PREFIX, f"user-{user}")[: 3 if with_ids else 2]
        total += sum(int(client.memory_usage(key, samples=0) or 0) for key in keys)
    return total / len(users)


def used_memory(client: "redis.Redis") -> int:
    return int(client.info("memory")["used_memory"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--users", type=int, default=1_000_000)
    parser.add_argument("--event-ids", action="store_true", help="store event ids as well")
    parser.add_argument("--sample", type=int, default=200, help="users written event by event")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rng = np.random.default_rng(args.seed)
    lengths, source = sequence_lengths(args.users + args.sample, rng)
    shape = UserShape()
    print(f"history lengths: {source}; mean events per user {lengths.mean():.1f}; max_len "
          f"{shape.limits.max_len}; event ids: {'yes' if args.event_ids else 'no'}")  # fmt: skip
    with EmbeddedRedis() as server:
        client = redis.Redis.from_url(server.url)
        reference = range(args.users, args.users + args.sample)
        asyncio.run(fill_through_store(server.url, reference, lengths, shape, args.event_ids))
        direct_sample = range(args.users + args.sample, args.users + 2 * args.sample)
        fill_direct(client, direct_sample, np.concatenate([lengths, lengths[reference]]),
                    shape, args.event_ids)  # fmt: skip
        through_store = usage(client, reference, args.event_ids)
        direct = usage(client, direct_sample, args.event_ids)
        print(
            f"MEMORY USAGE per user: {through_store:,.0f} B through the store's script, "
            f"{direct:,.0f} B by the direct fill ({direct / through_store - 1:+.1%})"
        )
        client.delete(*[key for user in [*reference, *direct_sample]
                        for key in user_keys(PREFIX, f"user-{user}")])  # fmt: skip
        before = used_memory(client)
        started = time.perf_counter()
        fill_direct(client, range(args.users), lengths, shape, args.event_ids)
        elapsed = time.perf_counter() - started
        after = used_memory(client)
        per_user = (after - before) / args.users
        print(f"filled {args.users:,} users in {elapsed:.0f} s; used_memory {before:,} -> "
              f"{after:,} B: {per_user:,.0f} B per user, {2**30 / per_user:,.0f} users per GiB "
              f"(before replicas and fragmentation: used_memory_rss "
              f"{int(client.info('memory')['used_memory_rss']):,} B)")  # fmt: skip


if __name__ == "__main__":
    main()
