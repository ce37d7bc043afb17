"""Stream ingestion on a real Redis (single node and cluster): order per user across shards
and consumer restarts, invalid entries to the dead-letter stream, idempotent redelivery."""

import asyncio
from collections.abc import Callable
from pathlib import Path

import pytest

from service.ingest.consumer import Consumer
from service.settings import Settings
from service.store.streams import GROUP, Entry, dead_letter_key, ingest_key, shard_of
from tests.conftest import TINY_ITEM_IDS, RedisTarget
from tests.service.ingest import SyncRedis, events_applied, produce, with_consumer
from tests.service.test_ordered import PoisonedStepper

pytestmark = pytest.mark.redis_topologies

USERS = 30


@pytest.fixture
def settings(tiny_artifact: Path, redis_target: RedisTarget) -> Settings:
    return Settings(artifact=tiny_artifact, ingest_claim_ms=1000, **redis_target.settings)


def user_events(count: int, start: int = 0) -> list[dict[str, str]]:
    """Events ``start..start+count`` round-robin over the users, items cycling."""
    return [
        {"user_id": f"u{n % USERS}", "item_id": TINY_ITEM_IDS[(n * 7) % 50]}
        for n in range(start, start + count)
    ]


async def wait_for(check: Callable[[], bool]) -> None:
    """Poll ``check`` (in a thread: it talks to Redis) for up to a minute."""
    for _ in range(1200):
        if await asyncio.to_thread(check):
            return
        await asyncio.sleep(0.05)
    raise AssertionError("not reached within a minute")


def history(client: SyncRedis, user: str) -> list[str]:
    return [item.decode() for item in client.lrange(f"lrurec:v1:{{{user}}}:hist", 0, -1)]  # type: ignore[union-attr]


def test_events_are_applied_in_stream_order_per_user_across_restarts(
    settings: Settings, redis_client: SyncRedis
) -> None:
    sent = user_events(600)
    produce(redis_client, sent[:300])

    def all_applied(count: int) -> Callable[[], bool]:
        per_user = count // USERS
        return lambda: all(events_applied(redis_client, f"u{u}") == per_user for u in range(USERS))

    async def first(consumer: Consumer) -> None:
        await wait_for(all_applied(300))
        assert consumer.owned == list(range(16))  # the only consumer owns every shard

    asyncio.run(with_consumer(settings, first))
    produce(redis_client, sent[300:])  # while no consumer runs

    async def second(_: Consumer) -> None:
        await wait_for(all_applied(600))

    asyncio.run(with_consumer(settings, second))
    assert len({shard_of(f"u{u}", 16) for u in range(USERS)}) > 8  # users spread over shards
    for u in range(USERS):
        expected = [event["item_id"] for event in sent if event["user_id"] == f"u{u}"]
        assert history(redis_client, f"u{u}") == expected
    for shard in range(16):  # everything acknowledged
        assert redis_client.xpending(ingest_key("lrurec", shard), GROUP)["pending"] == 0


def test_invalid_entries_go_to_the_dead_letter_stream_with_their_reason(
    settings: Settings, redis_client: SyncRedis
) -> None:
    user = "mixed"
    shard = shard_of(user, 16)
    entries = [
        {"user_id": user, "item_id": "item-1"},
        {"user_id": user},  # no item
        {"user_id": user, "item_id": "item-2", "timestamp": "yesterday"},
        {"user_id": user, "item_id": "item-3", "colour": "red"},  # unknown field
        {"user_id": user, "item_id": "item-4", "event_id": "e\x01"},  # control character
        {"user_id": user, "item_id": "item-5"},
    ]
    produce(redis_client, entries)

    async def body(_: Consumer) -> None:
        await wait_for(lambda: events_applied(redis_client, user) == 2)
        await wait_for(lambda: redis_client.xlen(dead_letter_key("lrurec", shard)) == 4)

    asyncio.run(with_consumer(settings, body))
    assert history(redis_client, user) == ["item-1", "item-5"]
    raw: list[tuple[bytes, dict[bytes, bytes]]] = redis_client.xrange(  # type: ignore[assignment]
        dead_letter_key("lrurec", shard)
    )
    letters = [{k.decode(): v.decode() for k, v in fields.items()} for _, fields in raw]
    reasons = [letter["reason"] for letter in letters]
    assert "item_id" in reasons[0]
    assert "timestamp" in reasons[1]
    assert "colour" in reasons[2]
    assert "event_id" in reasons[3]
    assert all(letter["entry_id"] and letter["user_id"] == user for letter in letters)
    assert redis_client.xpending(ingest_key("lrurec", shard), GROUP)["pending"] == 0


def test_a_redelivered_entry_without_event_id_is_applied_once(
    settings: Settings, redis_client: SyncRedis
) -> None:
    """Delivered to a consumer that died before acknowledging: the next owner claims and
    applies it again; its stream entry id is its event id, so the state moves once."""
    [entry_id] = produce(redis_client, [{"user_id": "again", "item_id": "item-3"}])
    key = ingest_key("lrurec", shard_of("again", 16))

    async def first(_: Consumer) -> None:
        await wait_for(lambda: events_applied(redis_client, "again") == 1)

    asyncio.run(with_consumer(settings, first))
    # As if the consumer died after writing: the entry is delivered again, unacknowledged.
    redis_client.xgroup_setid(key, GROUP, id="0")
    redis_client.xreadgroup(GROUP, "dead-consumer", {key: ">"})
    assert redis_client.xpending(key, GROUP)["pending"] == 1

    async def second(_: Consumer) -> None:
        await wait_for(lambda: redis_client.xpending(key, GROUP)["pending"] == 0)

    asyncio.run(with_consumer(settings, second))
    assert events_applied(redis_client, "again") == 1
    assert history(redis_client, "again") == ["item-3"]
    received = redis_client.hget("lrurec:v1:{again}:state", "events_received")
    assert received == b"1"  # the duplicate was recognised, not counted as a new event
    assert entry_id


def test_a_taken_over_shard_is_read_from_its_unacknowledged_entries_until_none_are_left(
    settings: Settings, redis_client: SyncRedis
) -> None:
    """A consumer died holding more delivered, unacknowledged entries than one read takes: the
    next owner applies every one of them, in stream order, before the entries added later."""
    user = "backlogged"
    key = ingest_key("lrurec", shard_of(user, 16))
    sent = [{"user_id": user, "item_id": TINY_ITEM_IDS[n % 50]} for n in range(30)]
    produce(redis_client, sent[:25])
    redis_client.xgroup_create(key, GROUP, id="0", mkstream=True)
    redis_client.xreadgroup(GROUP, "dead-consumer", {key: ">"})  # delivered, never acknowledged
    produce(redis_client, sent[25:])
    assert redis_client.xpending(key, GROUP)["pending"] == 25

    async def body(_: Consumer) -> None:
        await wait_for(lambda: events_applied(redis_client, user) == 30)

    asyncio.run(with_consumer(settings.model_copy(update={"ingest_batch_size": 4}), body))
    assert history(redis_client, user) == [event["item_id"] for event in sent]
    assert redis_client.xpending(key, GROUP)["pending"] == 0


def test_a_batch_that_fails_other_than_in_redis_stops_only_its_own_shard(
    settings: Settings, redis_client: SyncRedis
) -> None:
    """One read holds two shards' entries and the model fails (as a bug would) on one shard's
    item: that shard's entry stays pending to be read again; the other is applied and
    acknowledged."""
    users = {"poisoned": "item-7", "healthy": "item-8"}
    shards = {user: shard_of(user, 16) for user in users}
    assert len(set(shards.values())) == 2
    ids = produce(redis_client, [{"user_id": u, "item_id": item} for u, item in users.items()])
    reads: dict[int, list[Entry]] = {}
    for (user, item), entry_id in zip(users.items(), ids, strict=True):
        key = ingest_key("lrurec", shards[user])
        redis_client.xgroup_create(key, GROUP, id="0")
        redis_client.xreadgroup(GROUP, "c1", {key: ">"})  # delivered to c1, not acknowledged
        reads[shards[user]] = [(entry_id, {"user_id": user, "item_id": item})]

    async def apply(consumer: Consumer) -> set[int]:
        poison = consumer.engine.index("item-7")
        assert poison is not None
        consumer.engine.stepper = PoisonedStepper(consumer.engine.stepper, poison)
        return await consumer.apply(reads)

    assert asyncio.run(with_consumer(settings, apply, run=False)) == {shards["poisoned"]}
    assert events_applied(redis_client, "healthy") == 1
    assert events_applied(redis_client, "poisoned") == 0
    for user, pending in (("poisoned", 1), ("healthy", 0)):
        key = ingest_key("lrurec", shards[user])
        assert redis_client.xpending(key, GROUP)["pending"] == pending


def test_a_shard_whose_batch_keeps_failing_waits_while_the_others_are_applied(
    settings: Settings, redis_client: SyncRedis
) -> None:
    """The model fails (as a bug would) on one user's item: that entry stays pending, neither
    acknowledged nor dead-lettered, while the events of every other shard are applied; once
    the model takes it, it is applied too."""
    stuck = shard_of("poisoned", 16)
    users = [f"u{u}" for u in range(USERS) if shard_of(f"u{u}", 16) != stuck]
    produce(redis_client, [{"user_id": "poisoned", "item_id": "item-7"}])
    produce(redis_client, [{"user_id": user, "item_id": "item-8"} for user in users * 3])
    key = ingest_key("lrurec", stuck)

    async def body(consumer: Consumer) -> None:
        healthy = consumer.engine.stepper
        poison = consumer.engine.index("item-7")
        assert poison is not None
        consumer.engine.stepper = PoisonedStepper(healthy, poison)
        await wait_for(lambda: all(events_applied(redis_client, user) == 3 for user in users))
        assert events_applied(redis_client, "poisoned") == 0
        assert redis_client.xpending(key, GROUP)["pending"] == 1
        assert redis_client.xlen(dead_letter_key("lrurec", stuck)) == 0
        consumer.engine.stepper = healthy
        await wait_for(lambda: events_applied(redis_client, "poisoned") == 1)

    asyncio.run(with_consumer(settings, body))
    assert redis_client.xpending(key, GROUP)["pending"] == 0


def test_a_deleted_stream_gets_its_group_again_and_the_other_shards_go_on(
    settings: Settings, redis_client: SyncRedis
) -> None:
    """A shard's stream is deleted while the consumer runs, and a producer adds to it again
    (a new stream, without the group): the group is created again and every event applied."""
    users = ["gone", *(f"u{u}" for u in range(USERS))]
    assert len({shard_of(user, 16) for user in users}) > 8

    async def body(_: Consumer) -> None:
        produce(redis_client, [{"user_id": user, "item_id": "item-1"} for user in users])
        await wait_for(lambda: all(events_applied(redis_client, user) == 1 for user in users))
        redis_client.delete(ingest_key("lrurec", shard_of("gone", 16)))
        produce(redis_client, [{"user_id": user, "item_id": "item-2"} for user in users])
        await wait_for(lambda: all(events_applied(redis_client, user) == 2 for user in users))

    asyncio.run(with_consumer(settings, body))
    assert history(redis_client, "gone") == ["item-1", "item-2"]
