"""The ingest streams: producers ``XADD`` events, consumers read them through one consumer
group, in order per shard.

Key layout (``P`` = key prefix; ``{s}`` = the shard number as a hash tag, so a shard's stream,
its dead letters and its owner lease share one Redis Cluster slot)::

    P:v1:ingest:{s}        stream  events: user_id, item_id, optional event_id and timestamp
    P:v1:ingest-dead:{s}   stream  refused entries: the entry's fields, entry_id and reason
    P:v1:ingest-owner:{s}  string  the consumer that owns the shard now (a lease with a TTL)
    P:v1:ingest-consumers  zset    live consumers, scored by when their heartbeat expires

A user's events go to shard ``crc32(UTF-8 user id) % shards``, so they are read in the order
they were added.
"""

import time
import zlib
from collections.abc import Mapping
from typing import Any

from redis.asyncio.cluster import RedisCluster
from redis.exceptions import ResponseError

from service.store.client import RedisClient
from service.store.keys import LAYOUT_VERSION

GROUP = "lrurec"
"""The consumer group every ``lrurec consume`` process reads through."""

Entry = tuple[str, dict[str, str]]
"""``(entry id, fields)`` of one stream entry, decoded."""

Settled = tuple[list[str], list[tuple[Entry, str]]]
"""A shard's entries to acknowledge: their ids (the dead ones included), and the dead ones with
the reason each was refused."""

_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""


def shard_of(user_id: str, shards: int) -> int:
    """The shard of ``user_id``: CRC32 of its UTF-8 bytes modulo ``shards``."""
    return zlib.crc32(user_id.encode("utf-8")) % shards


def ingest_key(prefix: str, shard: int) -> str:
    return f"{prefix}:{LAYOUT_VERSION}:ingest:{{{shard}}}"


def dead_letter_key(prefix: str, shard: int) -> str:
    return f"{prefix}:{LAYOUT_VERSION}:ingest-dead:{{{shard}}}"


def owner_key(prefix: str, shard: int) -> str:
    return f"{prefix}:{LAYOUT_VERSION}:ingest-owner:{{{shard}}}"


def consumers_key(prefix: str) -> str:
    return f"{prefix}:{LAYOUT_VERSION}:ingest-consumers"


def _text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def _entries(raw: Any) -> list[Entry]:
    if raw and isinstance(raw[0][0], bytes):  # the service's clients: raw replies
        return [
            (entry_id.decode(), {k.decode("utf-8", "replace"): v.decode("utf-8", "replace")
                                 for k, v in (fields or {}).items()})
            for entry_id, fields in raw
        ]  # fmt: skip
    return [
        (_text(entry_id), {_text(k): _text(v) for k, v in (fields or {}).items()})
        for entry_id, fields in raw or []
    ]


class IngestStreams:
    """Reads, acknowledgements, dead letters and owner leases of the ingest shards."""

    def __init__(self, client: RedisClient, prefix: str, shards: int) -> None:
        self._client = client
        self._prefix = prefix
        self.shards = shards
        self._renew = client.register_script(_RENEW)
        self._release = client.register_script(_RELEASE)

    def key(self, shard: int) -> str:
        return ingest_key(self._prefix, shard)

    async def ensure_group(self, shard: int) -> None:
        """Create the shard's stream and consumer group if they do not exist (from the start
        of the stream, so events added before the first consumer are applied too)."""
        try:
            await self._client.xgroup_create(self.key(shard), GROUP, id="0", mkstream=True)
        except ResponseError as error:
            if "BUSYGROUP" not in str(error):
                raise

    @property
    def readable_together(self) -> bool:
        """Whether one ``XREADGROUP`` may read several shards: on a single Redis. On a cluster
        the shards are in different slots, and one command may touch one slot only."""
        return not isinstance(self._client, RedisCluster)

    async def read(
        self, consumer: str, shards: Mapping[int, bool], count: int, block_ms: int
    ) -> dict[int, list[Entry]]:
        """One ``XREADGROUP`` over ``shards``, each mapped to whether to read this consumer's
        own delivered but unacknowledged entries (oldest first) instead of new ones; at most
        ``count`` entries per shard. Blocks up to ``block_ms`` for new entries, unless some
        shard reads its own (those are answered at once). The entries of each shard that
        answered."""
        keys = {self.key(shard): shard for shard in shards}
        reply = await self._client.xreadgroup(
            GROUP, consumer, {key: "0" if shards[shard] else ">" for key, shard in keys.items()},
            count=count, block=None if any(shards.values()) else block_ms,
        )  # fmt: skip
        if not reply:
            return {}
        if isinstance(reply, dict):  # RESP3 shape
            return {keys[_text(key)]: _entries(value[0]) for key, value in reply.items()}
        return {keys[_text(key)]: _entries(raw) for key, raw in reply}

    async def claim(self, shard: int, consumer: str, min_idle_ms: int) -> int:
        """Take over every entry of the shard delivered to a consumer and left
        unacknowledged for ``min_idle_ms`` (``XAUTOCLAIM``); this consumer then reads them,
        oldest first, as its own pending entries. How many were taken."""
        claimed, cursor = 0, "0-0"
        while True:
            reply = await self._client.xautoclaim(
                self.key(shard), GROUP, consumer, min_idle_ms, start_id=cursor, count=1000
            )  # (with justid, redis-py keeps only the ids and drops the cursor)
            cursor = _text(reply[0])
            claimed += len(reply[1])
            if cursor == "0-0":
                return claimed

    async def acknowledge(self, settled: Mapping[int, Settled]) -> None:
        """``XACK`` each shard's settled entry ids; each dead entry is first copied, with its
        reason, to its shard's dead-letter stream. One pipelined round trip for the letters
        (when there are any), then one for the acknowledgements."""
        letters = self._client.pipeline(transaction=False)
        for shard, (_, dead) in settled.items():
            for (entry_id, fields), reason in dead:
                letter = {**fields, "entry_id": entry_id, "reason": reason}
                letters.xadd(dead_letter_key(self._prefix, shard), letter)  # type: ignore[arg-type]
        if len(letters):  # first, so that no dead entry is acknowledged without its letter
            await letters.execute()
        acks = self._client.pipeline(transaction=False)
        for shard, (entry_ids, _) in settled.items():
            if entry_ids:
                acks.xack(self.key(shard), GROUP, *entry_ids)
        if len(acks):
            await acks.execute()

    async def lag(self, shard: int, limit: int = 10_000) -> tuple[int, float | None]:
        """``(entries not yet delivered to the group (at most limit), unix ms of the oldest
        of them or None)``."""
        groups = await self._client.xinfo_groups(self.key(shard))
        delivered = next(
            (_text(g["last-delivered-id"]) for g in groups if _text(g["name"]) == GROUP), "0-0"
        )
        waiting = await self._client.xrange(self.key(shard), min=f"({delivered}", count=limit)
        if not waiting:
            return 0, None
        return len(waiting), float(_text(waiting[0][0]).split("-")[0])

    async def acquire(self, shard: int, consumer: str, lease_ms: int) -> bool:
        """Own the shard for ``lease_ms`` if nobody does (or renew it if this consumer does)."""
        key = owner_key(self._prefix, shard)
        if await self._client.set(key, consumer, nx=True, px=lease_ms):
            return True
        return await self.renew(shard, consumer, lease_ms)

    async def renew(self, shard: int, consumer: str, lease_ms: int) -> bool:
        """Extend the lease of a shard this consumer owns; False if it does not own it."""
        key = owner_key(self._prefix, shard)
        return bool(await self._renew(keys=[key], args=[consumer, lease_ms]))

    async def heartbeat(self, consumer: str, lease_ms: int) -> int:
        """Mark ``consumer`` alive for ``lease_ms``; how many consumers are alive now."""
        key, now = consumers_key(self._prefix), int(time.time() * 1000)
        pipe = self._client.pipeline(transaction=False)
        pipe.zremrangebyscore(key, "-inf", now)
        pipe.zadd(key, {consumer: now + lease_ms})
        pipe.zcard(key)
        *_, live = await pipe.execute()
        return int(live)

    async def leave(self, consumer: str) -> None:
        """Drop ``consumer`` from the live set (a graceful stop)."""
        await self._client.zrem(consumers_key(self._prefix), consumer)

    async def release(self, shard: int, consumer: str) -> None:
        await self._release(keys=[owner_key(self._prefix, shard)], args=[consumer])
