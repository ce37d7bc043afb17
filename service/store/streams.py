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
from typing import Any

from redis.exceptions import ResponseError

from service.store.client import RedisClient
from service.store.keys import LAYOUT_VERSION

GROUP = "lrurec"
"""The consumer group every ``lrurec consume`` process reads through."""

Entry = tuple[str, dict[str, str]]
"""``(entry id, fields)`` of one stream entry, decoded."""

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

    async def read(
        self, shard: int, consumer: str, count: int, block_ms: int, pending: bool
    ) -> list[Entry]:
        """The next new entries (``pending=False``) or this consumer's own delivered but
        unacknowledged ones (``pending=True``, oldest first)."""
        reply = await self._client.xreadgroup(
            GROUP, consumer, {self.key(shard): "0" if pending else ">"}, count=count,
            block=None if pending else block_ms,
        )  # fmt: skip
        if not reply:
            return []
        if isinstance(reply, dict):  # RESP3 shape
            return _entries(next(iter(reply.values()))[0])
        return _entries(reply[0][1])

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

    async def acknowledge(
        self, shard: int, entry_ids: list[str], dead: list[tuple[Entry, str]]
    ) -> None:
        """``XACK`` ``entry_ids``; each ``dead`` entry is first copied, with its reason, to
        the shard's dead-letter stream (one pipelined round trip, one slot)."""
        if not entry_ids:
            return
        pipe = self._client.pipeline(transaction=False)
        for (entry_id, fields), reason in dead:
            letter = {**fields, "entry_id": entry_id, "reason": reason}
            pipe.xadd(dead_letter_key(self._prefix, shard), letter)  # type: ignore[arg-type]
        pipe.xack(self.key(shard), GROUP, *entry_ids)
        await pipe.execute()

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
