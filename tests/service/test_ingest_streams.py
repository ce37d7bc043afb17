"""The ingest streams' reads on a real single Redis: one ``XREADGROUP`` answers for many
shards, each from its own unacknowledged entries or from new ones."""

import asyncio

import redis

from service.store import create_redis
from service.store.streams import GROUP, IngestStreams, ingest_key


def entry_id(reply: object) -> str:
    assert isinstance(reply, bytes)
    return reply.decode()


def test_one_read_returns_own_unacknowledged_entries_of_one_shard_and_new_ones_of_others(
    redis_url: str,
) -> None:
    client = redis.Redis.from_url(redis_url)
    for shard in range(3):
        client.xgroup_create(ingest_key("lrurec", shard), GROUP, id="0", mkstream=True)
    own = entry_id(client.xadd(ingest_key("lrurec", 0), {"user_id": "a", "item_id": "1"}))
    client.xreadgroup(GROUP, "c1", {ingest_key("lrurec", 0): ">"})  # delivered, not acknowledged
    client.xadd(ingest_key("lrurec", 0), {"user_id": "a", "item_id": "2"})  # new: not read
    fresh = entry_id(client.xadd(ingest_key("lrurec", 1), {"user_id": "b", "item_id": "3"}))

    async def read() -> tuple[bool, dict[int, list[tuple[str, dict[str, str]]]]]:
        aio = create_redis(redis_url, 2.0, 1, 4)
        streams = IngestStreams(aio, "lrurec", 3)
        try:  # blocks for new entries only when no shard reads its own: answered at once
            return streams.readable_together, await streams.read(
                "c1", {0: True, 1: False, 2: False}, count=10, block_ms=10_000
            )
        finally:
            await aio.aclose()

    together, reads = asyncio.run(read())
    assert together
    assert reads[0] == [(own, {"user_id": "a", "item_id": "1"})]
    assert reads[1] == [(fresh, {"user_id": "b", "item_id": "3"})]
    assert not reads.get(2)
