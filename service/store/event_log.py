"""The event log: every acknowledged event, appended to a sharded Redis Stream, so that the
events a model served can be exported and trained on.

Key layout (``P`` = key prefix)::

    P:v1:log:{s}   stream  user_id, item_id, event_id, timestamp, model_version

with ``s = crc32(UTF-8 user id) % shards`` (the ingest streams' sharding), so a user's entries
are in one stream, in the order they were applied, and each stream is one Redis Cluster slot.
Each stream is trimmed to about ``maxlen`` entries (``XADD MAXLEN ~``).

Appends from the same event-loop iteration go out together: one pipelined round trip of XADDs
(a user's write script is in another slot, so the append follows it). An event is acknowledged
only once its entry is in the log; a failed append raises, the client retries with the same
event id, and the retry (a duplicate) is logged again: an event may appear twice in the log,
and the export keeps one row per (user, event id).
"""

import asyncio
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from service.store.client import RedisClient
from service.store.keys import LAYOUT_VERSION
from service.store.streams import shard_of
from service.store.user_store import redis_call


def log_key(prefix: str, shard: int) -> str:
    return f"{prefix}:{LAYOUT_VERSION}:log:{{{shard}}}"


@dataclass(frozen=True)
class LogEntry:
    user_id: str
    item_id: str
    event_id: str
    timestamp: float
    model_version: str


class EventLog:
    """Appends entries in pipelined batches; ``maxlen == 0`` turns the log off."""

    def __init__(self, client: RedisClient, prefix: str, shards: int, maxlen: int) -> None:
        self._client = client
        self._prefix = prefix
        self.shards = shards
        self.maxlen = maxlen
        self._pending: list[tuple[LogEntry, asyncio.Future[None]]] = []
        self._flushes: set[asyncio.Task[None]] = set()  # referenced until done

    @property
    def enabled(self) -> bool:
        return self.maxlen > 0

    def key(self, user_id: str) -> str:
        return log_key(self._prefix, shard_of(user_id, self.shards))

    async def append(self, entry: LogEntry) -> None:
        """Return once ``entry`` is in the log; raise the Redis error if it could not be."""
        if not self.enabled:
            return
        future = asyncio.get_running_loop().create_future()
        self._pending.append((entry, future))
        if len(self._pending) == 1:  # the first of this iteration: flush after the others
            asyncio.get_running_loop().call_soon(self._flush_soon)
        await future

    async def append_many(self, entries: Sequence[LogEntry]) -> None:
        """Return once every entry is in the log (one pipelined round trip); raise the Redis
        error if they could not all be (some may be: a retry logs them again)."""
        if not self.enabled or not entries:
            return
        pipe = self._client.pipeline(transaction=False)
        for entry in entries:
            self._queue(pipe, entry)
        with redis_call("log"):
            await pipe.execute()

    def _queue(self, pipe: Any, entry: LogEntry) -> None:
        fields = {
            "user_id": entry.user_id, "item_id": entry.item_id, "event_id": entry.event_id,
            "timestamp": repr(entry.timestamp), "model_version": entry.model_version,
        }  # fmt: skip
        pipe.xadd(self.key(entry.user_id), fields, maxlen=self.maxlen, approximate=True)

    def _flush_soon(self) -> None:
        batch, self._pending = self._pending, []
        task = asyncio.ensure_future(self._flush(batch))
        self._flushes.add(task)
        task.add_done_callback(self._flushes.discard)

    async def _flush(self, batch: list[tuple[LogEntry, "asyncio.Future[None]"]]) -> None:
        pipe = self._client.pipeline(transaction=False)
        for entry, _ in batch:
            self._queue(pipe, entry)
        try:
            with redis_call("log"):
                await pipe.execute()
        except Exception as error:  # every waiter gets it: its event is not acknowledged
            for _, future in batch:
                if not future.done():
                    future.set_exception(error)
        else:
            for _, future in batch:
                if not future.done():
                    future.set_result(None)
        finally:
            for _, future in batch:  # cancelled mid-flush: the waiters are not left hanging
                if not future.done():
                    future.cancel()

    async def length(self, shard: int) -> int:
        """Entries in one shard's stream now."""
        return int(await self._client.xlen(log_key(self._prefix, shard)))

    async def read(
        self, shard: int, since_ms: int = 0, chunk: int = 10_000
    ) -> AsyncIterator[list[tuple[str, LogEntry]]]:
        """The shard's entries logged at or after ``since_ms`` (unix milliseconds), oldest
        first, ``chunk`` at a time, as ``(entry id, entry)``."""
        key, start = log_key(self._prefix, shard), f"{since_ms}-0"
        while True:
            with redis_call("log_read"):
                raw = await self._client.xrange(key, min=start, count=chunk)
            if not raw:
                return
            yield [(_text(entry_id), _entry(fields)) for entry_id, fields in raw]
            start = f"({_text(raw[-1][0])}"


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _entry(fields: Mapping[bytes | str, bytes | str] | None) -> LogEntry:
    text = {_text(key): _text(value) for key, value in (fields or {}).items()}
    return LogEntry(
        text.get("user_id", ""), text.get("item_id", ""), text.get("event_id", ""),
        float(text.get("timestamp") or 0.0), text.get("model_version", ""),
    )  # fmt: skip
