"""The stream consumer: owns ingest shards under leases and applies their entries in order.

Each shard is owned by one consumer at a time (a lease in Redis, renewed every third of
``LRUREC_INGEST_CLAIM_MS``), so a user's events, which all go to one shard, are applied in
stream order. Consumers share the shards evenly: each counts the live consumers (a heartbeat
set) and owns at most its share. A shard whose owner stopped renewing (it crashed) is taken over
with the entries the dead owner was delivered and did not acknowledge (``XAUTOCLAIM``), which
are applied before any new entry.

The shards owned are read by shard readers (service.ingest.reader): two on a single Redis, each
reading its shards with one command, and one per shard on a cluster. The reads handed in during
one event-loop iteration are applied as one through the engine of ``POST /events``
(service.engine.ordered: one pipelined read, one model step per position, one pipelined write;
the same atomic script and event-id idempotency); an entry without ``event_id`` uses its stream
entry id, so a redelivered entry is not applied twice. ``XACK`` follows the write, one
pipelined round trip per read.
"""

import asyncio
import collections
import contextlib
import logging
import math
import time
from collections.abc import Callable

from redis.exceptions import RedisError

from service import telemetry
from service.engine.engine import Engine
from service.engine.ordered import Outcome, apply_in_order
from service.ingest.entries import parse_entry
from service.ingest.reader import ShardReader
from service.schemas import Event
from service.settings import Settings
from service.store.streams import Entry, IngestStreams, Settled

logger = logging.getLogger(__name__)

LAG_SAMPLE_SECONDS = 1.0
READERS_TOGETHER = 2
"""Shard readers on a single Redis: one reads while the other's batch is applied."""


Waiting = tuple[list[Event], "asyncio.Future[list[Outcome]]"]
"""A shard task's batch and the future its outcomes go to."""


class Coalescer:
    """Applies the batches that shard tasks hand in during one event-loop iteration as one
    (service.engine.ordered), so a paced stream spread over many shards still makes batches of
    a useful size: one record read, one model step per position and one write for all of them.
    A user's events all go to one shard, so merging shards keeps each user's order."""

    def __init__(self, engine: Callable[[], Engine]) -> None:
        self._engine = engine
        self._waiting: list[Waiting] = []
        self._running: set[asyncio.Task[None]] = set()  # referenced until done

    async def apply(self, events: list[Event]) -> list[Outcome]:
        """``apply_in_order(engine, events)``'s outcomes, applied with the other batches handed
        in this iteration; its exception if the merged batch raised."""
        if not events:
            return []
        loop = asyncio.get_running_loop()
        future: asyncio.Future[list[Outcome]] = loop.create_future()
        self._waiting.append((events, future))
        if len(self._waiting) == 1:  # the first of this iteration: apply after the others
            loop.call_soon(self._start)
        return await future

    def _start(self) -> None:
        waiting, self._waiting = self._waiting, []
        task = asyncio.ensure_future(self._apply(waiting))
        self._running.add(task)
        task.add_done_callback(self._running.discard)

    async def _apply(self, waiting: list[Waiting]) -> None:
        engine = self._engine()  # one model for the merged batch
        merged = [event for events, _ in waiting for event in events]
        try:
            outcomes = await apply_in_order(engine, merged)
        except asyncio.CancelledError:
            for _, future in waiting:
                future.cancel()
            raise
        except RedisError as error:  # each waiter gets it: its entries stay pending
            for _, future in waiting:
                _hand(future, error)
            return
        except Exception as error:
            if len(waiting) == 1:
                _hand(waiting[0][1], error)
                return
            # Not Redis: a bug, or an entry the model cannot take. Each shard's batch is
            # applied again on its own (its events have ids, so what landed is recognised),
            # so only the shard that holds the culprit stops.
            for events, future in waiting:
                try:
                    _hand(future, await apply_in_order(engine, events))
                except Exception as own_error:
                    _hand(future, own_error)
            return
        start = 0
        for events, future in waiting:
            _hand(future, outcomes[start : start + len(events)])
            start += len(events)


def _hand(future: "asyncio.Future[list[Outcome]]", result: list[Outcome] | Exception) -> None:
    """Give a waiter its outcomes or exception (none if it was cancelled meanwhile: its
    entries stay pending)."""
    if future.done():
        return
    if isinstance(result, Exception):
        future.set_exception(result)
    else:
        future.set_result(result)


class Consumer:
    """One consumer of the group: ``await consumer.run(stop)`` until ``stop`` is set, then
    finish the batches in flight, acknowledge them and release the shards."""

    def __init__(
        self, engine: Engine, streams: IngestStreams, settings: Settings, name: str
    ) -> None:
        self.engine = engine
        self.streams = streams
        self.settings = settings
        self.name = name
        self._lease_ms = settings.ingest_claim_ms
        self._readers: dict[int, tuple[ShardReader, asyncio.Task[None]]] = {}
        self._coalescer = Coalescer(lambda: self.engine)

    @property
    def owned(self) -> list[int]:
        """The shards this consumer reads now."""
        return sorted(shard for reader, _ in self._readers.values() for shard in reader.held)

    async def run(self, stop: asyncio.Event) -> None:
        for shard in range(self.streams.shards):
            await self.streams.ensure_group(shard)
        next_lag = 0.0
        try:
            while not stop.is_set():
                try:
                    await self._balance()
                    if time.monotonic() >= next_lag:
                        await self._sample_lag()
                        next_lag = time.monotonic() + LAG_SAMPLE_SECONDS
                    telemetry.READY.set(1)  # the model is loaded and Redis answers
                except RedisError as error:
                    telemetry.READY.set(0)
                    logger.warning("ingest: Redis failed while renewing shards: %s", error)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), timeout=self._lease_ms / 3000)
        finally:
            telemetry.READY.set(0)
            await self._leave_all()

    async def _balance(self) -> None:
        """Renew the leases held, give up shards beyond this consumer's share, take free ones
        up to it."""
        live = await self.streams.heartbeat(self.name, self._lease_ms)
        share = math.ceil(self.streams.shards / max(live, 1))
        for slot, (reader, task) in list(self._readers.items()):
            if task.done():  # a bug stopped it; its shards are released and taken again
                self._readers.pop(slot)
                if not task.cancelled() and task.exception() is not None:
                    logger.error("ingest: a shard reader stopped", exc_info=task.exception())
                continue
            for shard in sorted(reader.held):  # leaving ones too: until their read is applied
                if shard not in reader.held:  # released meanwhile: its lease is gone
                    continue
                renewed = await self.streams.renew(shard, self.name, self._lease_ms)
                if not renewed and shard in reader.active:
                    logger.warning("ingest: lost the lease of shard %d", shard)
                    reader.leave(shard)
        readers = [reader for reader, _ in self._readers.values()]
        active = sorted(shard for reader in readers for shard in reader.active)
        for shard in active[share:]:
            for reader in readers:
                reader.leave(shard)  # finishes its read, then releases the lease
        active = active[:share]
        held = set(self.owned)
        start = sum(map(ord, self.name)) % self.streams.shards  # consumers start apart
        for offset in range(self.streams.shards):
            if len(active) >= share:
                break
            shard = (start + offset) % self.streams.shards
            if shard in held:
                continue
            if await self.streams.acquire(shard, self.name, self._lease_ms):
                self._reader_for(shard).join(shard)
                active.append(shard)
        telemetry.INGEST_SHARDS.set(len(self.owned))

    def _reader_for(self, shard: int) -> ShardReader:
        """The reader a newly owned shard joins: on a single Redis, the one of the two with
        fewer shards; on a cluster, one of its own."""
        if self.streams.readable_together:
            slots = range(READERS_TOGETHER)
            slot = min(
                slots, key=lambda s: len(self._readers[s][0].held) if s in self._readers else 0
            )
        else:
            slot = shard
        if slot not in self._readers:
            reader = ShardReader(
                self.streams, self.name, self.apply, self.settings.ingest_batch_size,
                self.settings.ingest_block_ms,
            )  # fmt: skip
            self._readers[slot] = (reader, asyncio.create_task(reader.run()))
        return self._readers[slot][0]

    async def _leave_all(self) -> None:
        for reader, _ in self._readers.values():
            reader.stop()
        tasks = [task for _, task in self._readers.values()]
        await asyncio.gather(*tasks, return_exceptions=True)
        self._readers.clear()
        telemetry.INGEST_SHARDS.set(0)
        with contextlib.suppress(RedisError):
            await self.streams.leave(self.name)

    async def apply(self, reads: dict[int, list[Entry]]) -> set[int]:
        """Apply one read's entries, by shard, and acknowledge what is settled; the shards
        some of whose entries must be read again (they stay pending, in order): those Redis
        failed for, and a shard whose batch failed otherwise (a bug), which is logged.

        Each shard's batch is handed to the coalescer on its own, so a batch that fails for a
        reason other than Redis stops only its own shard."""
        telemetry.INGEST_BATCH.observe(sum(map(len, reads.values())))
        batches: dict[int, tuple[list[Event], list[str]]] = {}
        settled: dict[int, Settled] = {}
        for shard, entries in reads.items():
            telemetry.INGEST_ENTRIES.labels("consumed").inc(len(entries))
            acknowledged, dead = settled.setdefault(shard, ([], []))
            events, entry_ids = batches.setdefault(shard, ([], []))
            for entry in entries:
                parsed = parse_entry(*entry)
                if isinstance(parsed, str):
                    dead.append((entry, parsed))
                    acknowledged.append(entry[0])
                else:
                    events.append(parsed)
                    entry_ids.append(entry[0])
        results = await asyncio.gather(
            *(self._coalescer.apply(events) for events, _ in batches.values()),
            return_exceptions=True,
        )
        for failed in results:
            if isinstance(failed, RedisError):  # the merged batch failed: read them again
                telemetry.INGEST_ENTRIES.labels("retried").inc(
                    sum(len(e) for e, _ in batches.values())
                )
                raise failed
        now_ms, unsettled = time.time() * 1000, set()
        counts: collections.Counter[str] = collections.Counter()  # by outcome, counted once
        for (shard, (_, entry_ids)), outcomes in zip(batches.items(), results, strict=True):
            if isinstance(outcomes, BaseException):
                logger.error("ingest: shard %d: a batch failed", shard, exc_info=outcomes)
                counts["retried"] += len(entry_ids)
                unsettled.add(shard)
                continue
            for entry_id, result in zip(entry_ids, outcomes, strict=True):
                if result is None:  # Redis failed for it: it stays pending, read again in order
                    counts["retried"] += 1
                    unsettled.add(shard)
                    continue
                counts[result.reason or "applied"] += 1  # a duplicate, an unknown item: settled
                if result.reason is None:
                    added_ms = float(entry_id.split("-", 1)[0])
                    telemetry.INGEST_APPLY_SECONDS.observe(max(0.0, now_ms - added_ms) / 1000)
                settled[shard][0].append(entry_id)
        for outcome, count in counts.items():
            telemetry.INGEST_ENTRIES.labels(outcome).inc(count)
        telemetry.INGEST_ENTRIES.labels("rejected").inc(sum(len(d) for _, d in settled.values()))
        await self.streams.acknowledge(settled)
        return unsettled

    async def _sample_lag(self) -> None:
        now_ms = time.time() * 1000
        for shard in self.owned:
            waiting, oldest_ms = await self.streams.lag(shard)
            telemetry.INGEST_LAG_ENTRIES.labels(str(shard)).set(waiting)
            age = 0.0 if oldest_ms is None else max(0.0, now_ms - oldest_ms) / 1000
            telemetry.INGEST_LAG_SECONDS.labels(str(shard)).set(age)
