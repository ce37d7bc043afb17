"""The batch scripts of a single Redis (apply_batch.lua, load_batch.lua) against the per-event
scripts they wrap: same results, same records, and an event-log entry for exactly the writes
that landed."""

import asyncio
import random
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import pytest
import redis

from service.store import (
    Limits,
    Replication,
    ReplicationTimeoutError,
    UserStore,
    Write,
    create_redis,
)
from service.store.records import WriteResult, WriteStatus
from service.store.user_store import BATCH_SCRIPT_CALLS, LoggedWrite, PendingWrite

T = TypeVar("T")
LIMITS = Limits(max_len=4, max_event_ids=3, ttl_seconds=0)
NO_REPLICATION = Replication()


def run(
    redis_url: str,
    body: Callable[[UserStore, UserStore], Awaitable[T]],
    replication: Replication = NO_REPLICATION,
) -> T:
    """``body(per_event, batched)``: two stores on one Redis, under different prefixes."""

    async def main() -> T:
        client = create_redis(redis_url, timeout_seconds=2.0, retries=1, max_connections=4)
        try:
            one = UserStore(client, "one", LIMITS, replication)
            batch = UserStore(client, "batch", LIMITS, replication)
            return await body(one, batch)
        finally:
            await client.aclose()

    return asyncio.run(main())


def _writes(count: int, users: int, seed: int = 0) -> list[tuple[str, Write]]:
    """``count`` writes over ``users`` users, each chained on the last one that landed (its
    version and writer token), with stale versions, repeated event ids, unknown items (no
    state) and retried tokens mixed in."""
    rng = random.Random(seed)
    versions = dict.fromkeys((f"u{n}" for n in range(users)), 0)
    tokens = dict.fromkeys(versions, "")
    seen: dict[str, list[str]] = {user: [] for user in versions}
    writes = []
    for n in range(count):
        user = f"u{rng.randrange(users)}"
        version, token, event_id = versions[user], f"t{n}", f"e{n}"
        lands = True
        roll = rng.random()
        if roll < 0.05:
            version, lands = version + 1, False  # stale: refused
        elif roll < 0.08 and tokens[user]:
            token, lands = tokens[user], False  # a retried write: recognised by its token
        elif roll < 0.15 and seen[user]:
            event_id, lands = seen[user][-1], False  # a repeated event id
        elif roll < 0.3:
            event_id = ""
        applied = rng.random() > 0.1
        state, hidden = (rng.randbytes(16), rng.randbytes(8)) if applied else (b"", b"")
        write = Write(
            expected_version=version, token=token, event_id=event_id, item=f"i{n % 7}",
            state=state, hidden=hidden, model_version="m1" if applied else "",
            applied=applied, received=True, expected_token=tokens[user],
        )  # fmt: skip
        writes.append((user, write))
        if lands:
            versions[user], tokens[user] = version + 1, token
            if event_id:
                seen[user].append(event_id)
    return writes


def _record(client: "redis.Redis", prefix: str, user: str) -> tuple[object, ...]:
    base = f"{prefix}:v1:{{{user}}}"
    state = client.hgetall(f"{base}:state")
    state.pop(b"updated_at", None)  # the time of the write
    eids = f"{base}:eids"
    seen = client.zrange(eids, 0, -1) if client.type(eids) == b"zset" else client.get(eids)
    return state, client.lrange(f"{base}:hist", 0, -1), seen


def _statuses(results: list[WriteResult | redis.RedisError]) -> list[object]:
    return [
        (result.status, result.events_applied, result.version)
        if isinstance(result, WriteResult)
        else type(result)
        for result in results
    ]


@pytest.mark.parametrize("scripts_flushed", [False, True])
def test_a_batch_answers_and_stores_what_per_event_scripts_do_and_logs_what_landed(
    redis_url: str, redis_client: "redis.Redis", scripts_flushed: bool
) -> None:
    """More writes than one script call takes (several calls, one pipeline), and also after
    Redis lost its scripts (SCRIPT FLUSH): they are loaded again."""
    writes = _writes(BATCH_SCRIPT_CALLS * 2 + 45, users=40)
    redis_client.set("batch:v1:{u3}:eids", "not a sorted set")  # u3's writes fail in the script
    redis_client.set("one:v1:{u3}:eids", "not a sorted set")
    stream = "batch:v1:log:{0}"

    async def body(one: UserStore, batch: UserStore) -> tuple[list[object], list[object]]:
        pending: list[PendingWrite] = [(user, write, None) for user, write in writes]
        expected = await one.write_many(pending)
        if scripts_flushed:
            redis_client.script_flush()
        logged: list[LoggedWrite] = [(user, write, stream, 1.5) for user, write in writes]
        assert batch.batched
        got = await batch.write_batch(logged, log_maxlen=10_000, logged_version="m1")
        return _statuses(expected), _statuses(got)

    expected, got = run(redis_url, body)
    assert got == expected
    assert redis.ResponseError in got  # u3's
    assert any(status[0] == WriteStatus.CONFLICT for status in got if isinstance(status, tuple))
    assert any(status[0] == WriteStatus.DUPLICATE for status in got if isinstance(status, tuple))
    for user in {user for user, _ in writes}:
        assert _record(redis_client, "batch", user) == _record(redis_client, "one", user)

    landed = [
        (user.encode(), write.item.encode(), write.event_id.encode())
        for (user, write), status in zip(writes, got, strict=True)
        if isinstance(status, tuple) and status[0] != WriteStatus.CONFLICT
    ]
    raw: Any = redis_client.xrange(stream)
    entries = [fields for _, fields in raw]
    assert [(f[b"user_id"], f[b"item_id"], f[b"event_id"]) for f in entries] == landed
    assert {(f[b"timestamp"], f[b"model_version"]) for f in entries} == {(b"1.5", b"m1")}


def test_a_batch_without_a_log_appends_nothing(redis_url: str, redis_client: "redis.Redis") -> None:
    async def body(_: UserStore, batch: UserStore) -> list[object]:
        logged: list[LoggedWrite] = [(u, w, "batch:v1:log:{1}", 2.0) for u, w in _writes(30, 5)]
        return _statuses(await batch.write_batch(logged, log_maxlen=0, logged_version="m1"))

    assert any(isinstance(status, tuple) for status in run(redis_url, body))
    assert redis_client.exists("batch:v1:log:{1}") == 0


def test_batched_reads_match_per_user_reads(redis_url: str) -> None:
    """Users with records and users without, more than one script call takes."""
    users = [f"u{n}" for n in range(BATCH_SCRIPT_CALLS + 30)]

    async def body(_: UserStore, batch: UserStore) -> tuple[list[object], list[object]]:
        logged: list[LoggedWrite] = [(u, w, None, 0.0) for u, w in _writes(200, users=100)]
        await batch.write_batch(logged, log_maxlen=0, logged_version="m1")
        per_user = [await batch.load(user, history=False) for user in users]
        return list(per_user), list(await batch.load_many(users))

    per_user, batched = run(redis_url, body)
    assert batched == per_user
    assert any(getattr(snap, "version", 0) > 0 for snap in batched)
    assert any(getattr(snap, "version", 1) == 0 for snap in batched)


def test_a_batch_waits_for_the_replicas_asked_for(redis_url: str) -> None:
    """The single node has no replica: asking for one answers a timeout for every write,
    though they landed (a retry is then recognised as a duplicate)."""

    async def body(_: UserStore, batch: UserStore) -> tuple[list[object], bool]:
        write = Write(expected_version=0, token="t", event_id="e1", item="i", received=True)
        results = await batch.write_batch([("w", write, None, 0.0)], 0, "m1")
        retried = await batch.load("w", event_id="e1")
        return list(results), retried.duplicate

    results, duplicate = run(redis_url, body, replication=Replication(1, 50))
    assert all(isinstance(result, ReplicationTimeoutError) for result in results)
    assert duplicate
