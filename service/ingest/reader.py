"""A shard reader: one loop that reads all the shards it holds with one command per read and
hands each read to be applied, so many quiet shards cost one round trip, not one each.

A consumer runs two readers on a single Redis (one reads while the other's batch is applied:
Redis and Python work at the same time) and one reader per shard on a cluster, whose shards
are in different slots.
"""

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable

from redis.exceptions import RedisError

from service.store.streams import Entry, IngestStreams

logger = logging.getLogger(__name__)

RETRY_SECONDS = 0.2
"""Pause before a shard is read (or taken over) again after Redis or its batch failed."""

ApplyReads = Callable[[dict[int, list[Entry]]], Awaitable[set[int]]]
"""Applies one read's entries, by shard, and acknowledges what is settled; returns the shards
some of whose entries must be read again (Redis failed for them: they stay pending, in order)."""


class ShardReader:
    """Reads the shards it holds, one read at a time: one ``XREADGROUP`` over all of them, the
    entries applied, then the next read, so each shard's entries are applied in stream order.

    A shard that joins is first read from the entries delivered to this consumer and not yet
    acknowledged (its earlier owners' too: they are claimed when it joins), until none are
    left; then from new entries. A leaving shard is released once the read in progress is
    applied.
    """

    def __init__(
        self, streams: IngestStreams, consumer: str, apply: ApplyReads, count: int, block_ms: int
    ) -> None:
        self._streams = streams
        self._consumer = consumer
        self._apply = apply
        self._count = count
        self._block_ms = block_ms
        self._reading: dict[int, bool] = {}  # shard → read its own unacknowledged entries
        self._joining: list[int] = []
        self._leaving: set[int] = set()
        self._releasing: set[int] = set()
        self._retry_at: dict[int, float] = {}  # shard → when to read (or claim) it again
        self._changed = asyncio.Event()
        self._stopping = False

    @property
    def held(self) -> set[int]:
        """The shards whose lease this reader holds (leaving ones until they are released)."""
        return {*self._reading, *self._joining, *self._releasing}

    @property
    def active(self) -> set[int]:
        """The shards held and not leaving."""
        return {*self._reading, *self._joining} - self._leaving

    def join(self, shard: int) -> None:
        """Start reading ``shard`` (its lease is held) after the read in progress."""
        self._leaving.discard(shard)
        if shard not in self.held:
            self._joining.append(shard)
        self._changed.set()

    def leave(self, shard: int) -> None:
        """Release ``shard`` once the read in progress is applied."""
        if shard in self._reading or shard in self._joining:
            self._leaving.add(shard)
            self._changed.set()

    def stop(self) -> None:
        """Finish the read in progress, release every shard and return from :meth:`run`."""
        self._stopping = True
        self._leaving |= {*self._reading, *self._joining}
        self._changed.set()

    async def run(self) -> None:
        try:
            while True:
                await self._update()
                if not self._reading and not self._joining:
                    if self._stopping:
                        return
                    self._changed.clear()
                    await self._changed.wait()
                elif not await self._read_and_apply():
                    await self._pause()
        finally:
            for shard in self.held:
                with contextlib.suppress(RedisError):
                    await self._streams.release(shard, self._consumer)

    def _due(self, shard: int) -> bool:
        return self._retry_at.get(shard, 0.0) <= time.monotonic()

    def _retry_later(self, shard: int) -> None:
        self._retry_at[shard] = time.monotonic() + RETRY_SECONDS

    async def _pause(self) -> None:
        """Wait until a shard's retry is due, or until a shard joins or leaves."""
        waits = [at for shard, at in self._retry_at.items() if shard in self.held]
        timeout = max(0.0, min(waits) - time.monotonic()) if waits else None
        self._changed.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._changed.wait(), timeout)

    async def _update(self) -> None:
        """Release the leaving shards; claim the unacknowledged entries of the joining shards
        that are due. A failure holds back only its own shard."""
        while True:
            while self._leaving:
                shard = self._leaving.pop()
                self._reading.pop(shard, None)
                self._retry_at.pop(shard, None)
                if shard in self._joining:
                    self._joining.remove(shard)
                self._releasing.add(shard)  # still held: not taken again before it is released
                try:
                    await self._streams.release(shard, self._consumer)
                except RedisError as error:  # the lease lapses on its own
                    logger.warning("ingest: shard %d: Redis failed to release it: %s", shard, error)
                finally:
                    self._releasing.discard(shard)
            for shard in [shard for shard in self._joining if self._due(shard)]:
                try:
                    await self._streams.claim(shard, self._consumer, min_idle_ms=0)
                except RedisError as error:
                    logger.warning(
                        "ingest: shard %d: Redis failed to take it over: %s", shard, error
                    )
                    await self._recreate_group(error, [shard])
                    self._retry_later(shard)
                    continue
                if shard in self._joining:  # claimed; if it is leaving, the next pass sees it
                    self._joining.remove(shard)
                    self._reading[shard] = True
            if not self._leaving:
                return

    async def _recreate_group(self, error: RedisError, shards: list[int]) -> None:
        """After ``NOGROUP`` (the stream was deleted), create the shards' groups again."""
        if "NOGROUP" in str(error):
            for shard in shards:
                with contextlib.suppress(RedisError):
                    await self._streams.ensure_group(shard)

    async def _read_and_apply(self) -> bool:
        """One read of the due shards and its batch; False if no shard was due. A shard Redis
        failed for (or whose batch failed) is read again, from its own entries, after
        ``RETRY_SECONDS``; the other shards go on meanwhile."""
        due = {shard: own for shard, own in self._reading.items() if self._due(shard)}
        if not due:
            return False
        try:
            reads = await self._streams.read(self._consumer, due, self._count, self._block_ms)
            for shard, own in due.items():
                if own and not reads.get(shard) and shard in self._reading:
                    self._reading[shard] = False  # none of its own left: new entries next
            reads = {shard: entries for shard, entries in reads.items() if entries}
            unsettled = await self._apply(reads) if reads else set()
        except RedisError as error:
            logger.warning("ingest: shards %s: Redis failed: %s", sorted(due), error)
            await self._recreate_group(error, list(due))
            unsettled, reads = set(due), {shard: [] for shard in due}
        for shard in reads:
            if shard not in self._reading:  # released meanwhile
                continue
            # A read of its own entries goes on until none are left.
            self._reading[shard] = due[shard] or shard in unsettled
            if shard in unsettled:
                self._retry_later(shard)
            else:
                self._retry_at.pop(shard, None)
        return True
