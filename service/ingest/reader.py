"""A shard reader: one loop that reads all the shards it holds with one command per read and
hands each read to be applied, so many quiet shards cost one round trip, not one each.

A consumer runs two readers on a single Redis (one reads while the other's batch is applied:
Redis and Python work at the same time) and one reader per shard on a cluster, whose shards
are in different slots.
"""

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

from redis.exceptions import RedisError

from service.store.streams import Entry, IngestStreams

logger = logging.getLogger(__name__)

RETRY_SECONDS = 0.2
"""Pause before reading again after Redis failed a read or part of a batch."""

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
        self._changed = asyncio.Event()
        self._stopping = False

    @property
    def held(self) -> set[int]:
        """The shards whose lease this reader holds (leaving ones until they are released)."""
        return {*self._reading, *self._joining}

    @property
    def active(self) -> set[int]:
        """The shards held and not leaving."""
        return self.held - self._leaving

    def join(self, shard: int) -> None:
        """Start reading ``shard`` (its lease is held) after the read in progress."""
        self._leaving.discard(shard)
        if shard not in self.held:
            self._joining.append(shard)
        self._changed.set()

    def leave(self, shard: int) -> None:
        """Release ``shard`` once the read in progress is applied."""
        if shard in self.held:
            self._leaving.add(shard)
            self._changed.set()

    def stop(self) -> None:
        """Finish the read in progress, release every shard and return from :meth:`run`."""
        self._stopping = True
        self._leaving |= self.held
        self._changed.set()

    async def run(self) -> None:
        try:
            while True:
                try:
                    await self._update()
                except RedisError as error:
                    logger.warning("ingest: Redis failed while taking over shards: %s", error)
                    await asyncio.sleep(RETRY_SECONDS)
                    continue
                if not self._reading:
                    if self._stopping:
                        return
                    self._changed.clear()
                    await self._changed.wait()
                    continue
                if not await self._read_and_apply():
                    await asyncio.sleep(RETRY_SECONDS)
        finally:
            for shard in self.held:
                with contextlib.suppress(RedisError):
                    await self._streams.release(shard, self._consumer)

    async def _update(self) -> None:
        """Release the leaving shards; claim the joining shards' unacknowledged entries."""
        while self._leaving or self._joining:
            if self._leaving:
                shard = self._leaving.pop()
                self._reading.pop(shard, None)
                if shard in self._joining:
                    self._joining.remove(shard)
                await self._streams.release(shard, self._consumer)
                continue
            shard = self._joining[0]
            await self._streams.claim(shard, self._consumer, min_idle_ms=0)
            if self._joining and self._joining[0] == shard:  # it may have left meanwhile
                self._joining.pop(0)
                self._reading[shard] = True

    async def _read_and_apply(self) -> bool:
        """One read and its batch; False if Redis failed for some of it (read again)."""
        reading = dict(self._reading)
        try:
            reads = await self._streams.read(self._consumer, reading, self._count, self._block_ms)
            for shard, own in reading.items():
                if own and not reads.get(shard):
                    self._reading[shard] = False  # none of its own left: new entries next
            reads = {shard: entries for shard, entries in reads.items() if entries}
            if not reads:
                return True
            unsettled = await self._apply(reads)
        except RedisError as error:
            logger.warning("ingest: shards %s: Redis failed: %s", sorted(reading), error)
            for shard in reading:
                if shard in self._reading:
                    self._reading[shard] = True
            return False
        for shard in reads:
            if shard in self._reading:  # still held; a read of its own goes on until empty
                self._reading[shard] = reading[shard] or shard in unsettled
        return not unsettled
