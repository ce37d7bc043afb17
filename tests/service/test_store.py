"""The Redis layer on a real server: key layout, the atomic check-and-write script, bounds."""

import asyncio
from collections.abc import Awaitable, Callable
from typing import TypeVar

import pytest
import redis
from redis.crc import key_slot

from service.store import (
    Limits,
    Replication,
    ReplicationTimeoutError,
    UserStore,
    Write,
    WriteResult,
    WriteStatus,
    create_redis,
)
from tests.conftest import RedisTarget

T = TypeVar("T")
NO_REPLICATION = Replication()


pytestmark = pytest.mark.redis_topologies


def run_with_store(
    target: RedisTarget,
    body: Callable[[UserStore], Awaitable[T]],
    max_len: int = 3,
    ttl: int = 0,
    replication: Replication = NO_REPLICATION,
) -> T:
    """Run ``body(store)`` on a fresh event loop and client."""

    async def main() -> T:
        client = create_redis(
            target.url, timeout_seconds=2.0, retries=1, max_connections=4, cluster=target.cluster
        )
        limits = Limits(max_len, max_event_ids=2, ttl_seconds=ttl)
        store = UserStore(client, "lrurec", limits, replication)
        try:
            return await body(store)
        finally:
            await client.aclose()

    return asyncio.run(main())


def event(version: int, token: str, item: str = "a", event_id: str = "") -> Write:
    return Write(
        expected_version=version, token=token, event_id=event_id, item=item,
        state=b"\x01" * 8, hidden=b"\x02" * 4, model_version="m1", applied=True, received=True,
    )  # fmt: skip


def test_all_keys_of_a_user_share_one_cluster_slot(redis_target: RedisTarget) -> None:
    async def body(store: UserStore) -> None:
        for user in ("alice", "user:{42}", "we}ird{", "ünï"):
            keys = store.keys(user)
            assert len({key_slot(key.encode()) for key in keys}) == 1
            assert all(key.startswith("lrurec:v1:") for key in keys)

    run_with_store(redis_target, body)


def test_a_stale_version_writes_nothing(
    redis_target: RedisTarget, redis_client: "redis.Redis"
) -> None:
    async def body(store: UserStore) -> tuple[WriteStatus, WriteStatus, int]:
        first = await store.write("u", event(0, "t1", item="a"))
        stale = await store.write("u", event(0, "t2", item="b"))  # lost the race
        return first.status, stale.status, stale.version

    first, stale, version = run_with_store(redis_target, body)
    assert (first, stale, version) == (WriteStatus.WRITTEN, WriteStatus.CONFLICT, 1)
    assert redis_client.lrange("lrurec:v1:{u}:hist", 0, -1) == [b"a"]
    assert redis_client.hget("lrurec:v1:{u}:state", "events_applied") == b"1"


def test_a_retried_write_is_recognised_by_its_token(redis_target: RedisTarget) -> None:
    async def body(store: UserStore) -> tuple[WriteStatus, int]:
        await store.write("u", event(0, "same-token", event_id="e1"))
        again = await store.write("u", event(0, "same-token", event_id="e1"))
        return again.status, again.events_applied

    assert run_with_store(redis_target, body) == (WriteStatus.ALREADY_WRITTEN, 1)


def test_duplicate_event_ids_are_caught_inside_the_script(redis_target: RedisTarget) -> None:
    async def body(store: UserStore) -> tuple[WriteStatus, bool]:
        await store.write("u", event(0, "t1", event_id="e1"))
        duplicate = await store.write("u", event(1, "t2", event_id="e1"))
        snapshot = await store.load("u", "e1")
        return duplicate.status, snapshot.duplicate

    assert run_with_store(redis_target, body) == (WriteStatus.DUPLICATE, True)


def test_history_and_event_ids_are_bounded(
    redis_target: RedisTarget, redis_client: "redis.Redis"
) -> None:
    async def body(store: UserStore) -> list[str]:
        for version, item in enumerate("abcde"):
            await store.write("u", event(version, f"t{version}", item=item, event_id=f"e{item}"))
        return (await store.load("u")).history

    assert run_with_store(redis_target, body, max_len=3) == ["c", "d", "e"]
    assert redis_client.zrange("lrurec:v1:{u}:eids", 0, -1) == [b"ed", b"ee"]


def test_every_key_gets_the_ttl(redis_target: RedisTarget, redis_client: "redis.Redis") -> None:
    run_with_store(
        redis_target, lambda store: store.write("u", event(0, "t", event_id="e")), ttl=60
    )
    for suffix in ("state", "hist", "eids"):
        assert 0 < redis_client.ttl(f"lrurec:v1:{{u}}:{suffix}") <= 60


def test_delete_removes_every_key(redis_target: RedisTarget, redis_client: "redis.Redis") -> None:
    async def body(store: UserStore) -> tuple[bool, bool]:
        await store.write("u", event(0, "t", event_id="e"))
        return await store.delete("u"), await store.delete("u")

    assert run_with_store(redis_target, body) == (True, False)
    assert (
        redis_client.exists(*(f"lrurec:v1:{{u}}:{part}" for part in ("state", "hist", "eids"))) == 0
    )


@pytest.mark.parametrize("scripts_flushed", [False, True])
def test_pipelined_writes_answer_as_single_writes_would(
    redis_target: RedisTarget, redis_client: "redis.Redis", scripts_flushed: bool
) -> None:
    """Also after Redis lost its scripts (a restart or SCRIPT FLUSH): they are loaded again."""

    async def body(store: UserStore) -> list[object]:
        assert (await store.write("w1", event(0, "t1"))).status == WriteStatus.WRITTEN
        if scripts_flushed:
            redis_client.script_flush()
        return list(
            await store.write_many(
                [
                    ("w1", event(1, "t2", item="b"), None),  # current version: written
                    ("w2", event(0, "t3"), None),  # a new user: written
                    ("w1", event(1, "t4"), True),  # stale version: refused, with the record
                    ("w1", event(0, "t2"), None),  # t2's retry: recognised by its token
                ]
            )
        )

    results = run_with_store(redis_target, body)
    statuses = [getattr(result, "status", None) for result in results]
    assert statuses == [
        WriteStatus.WRITTEN, WriteStatus.WRITTEN, WriteStatus.CONFLICT,
        WriteStatus.ALREADY_WRITTEN,
    ]  # fmt: skip
    conflict = results[2]
    assert isinstance(conflict, WriteResult)
    assert conflict.record is not None
    assert conflict.record.version == 2
    assert conflict.record.history == ["a", "b"]
    assert redis_client.lrange("lrurec:v1:{w1}:hist", 0, -1) == [b"a", b"b"]


def test_writes_wait_for_the_replicas_asked_for(redis_target: RedisTarget) -> None:
    """The single node has no replica, each cluster master one: asking for as many as exist
    acknowledges every write; asking for one more answers a timeout, though the write landed
    (its event id is remembered, so the client's retry is not applied twice)."""
    replicas = 1 if redis_target.cluster else 0
    enough, too_many = Replication(replicas, 2000), Replication(replicas + 1, 50)

    async def acknowledged(store: UserStore) -> list[object]:
        single = await store.write("a", event(0, "t1", event_id="e1"))
        many = await store.write_many(
            [(f"user-{n}", event(0, f"t{n}", event_id="e1"), None) for n in range(12)]
        )
        return [single, *many]

    results = run_with_store(redis_target, acknowledged, replication=enough)
    assert [getattr(result, "status", result) for result in results] == [WriteStatus.WRITTEN] * 13

    async def unconfirmed(store: UserStore) -> list[object]:
        with pytest.raises(ReplicationTimeoutError, match="replicas confirmed"):
            await store.write("b", event(0, "t1", event_id="e1"))
        many = await store.write_many(
            [(f"other-{n}", event(0, f"t{n}", event_id="e1"), None) for n in range(12)]
        )
        retried = await store.load("b", event_id="e1")
        return [*many, retried.duplicate]

    *many, retried_is_duplicate = run_with_store(redis_target, unconfirmed, replication=too_many)
    assert all(isinstance(result, ReplicationTimeoutError) for result in many)
    assert retried_is_duplicate
