"""The stream consumer: owns ingest shards under leases and applies their entries in order.

Each shard is owned by one consumer at a time (a lease in Redis, renewed every third of
``LRUREC_INGEST_CLAIM_MS``), so a user's events, which all go to one shard, are applied in
stream order. Consumers share the shards evenly: each counts the live consumers (a heartbeat
set) and owns at most its share. A shard whose owner stopped renewing (it crashed) is taken over
with the entries the dead owner was delivered and did not acknowledge (``XAUTOCLAIM``), which
are applied before any new entry. The batches of the shards that are read in the same
event-loop iteration are applied as one through the engine of ``POST /events``
(service.engine.ordered: one pipelined read, one model step per position, one pipelined write;
the same atomic script and event-id idempotency); an entry without
``event_id`` uses its stream entry id, so a redelivered entry is not applied twice. ``XACK``
follows the write.
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
from service.schemas import Event
from service.settings import Settings
from service.store.streams import Entry, IngestStreams

logger = logging.getLogger(__name__)

LAG_SAMPLE_SECONDS = 1.0
RETRY_SECONDS = 0.2
"""Pause before reading a shard again after Redis failed part of a batch."""


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
        self._shards: dict[int, tuple[asyncio.Task[None], asyncio.Event]] = {}
        self._coalescer = Coalescer(lambda: self.engine)

    @property
    def owned(self) -> list[int]:
        """The shards this consumer reads now."""
        return sorted(self._shards)

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
        for shard, (task, leaving) in list(self._shards.items()):
            if task.done():
                self._shards.pop(shard)
                if not task.cancelled() and task.exception() is not None:
                    logger.error("ingest: shard %d stopped", shard, exc_info=task.exception())
            elif not await self.streams.acquire(shard, self.name, self._lease_ms):
                logger.warning("ingest: lost the lease of shard %d", shard)
                leaving.set()
        active = [shard for shard, (_, leaving) in self._shards.items() if not leaving.is_set()]
        for shard in sorted(active)[share:]:
            self._shards[shard][1].set()  # finishes its batch, then releases the lease
        start = sum(map(ord, self.name)) % self.streams.shards  # consumers start apart
        for offset in range(self.streams.shards):
            if len(active) >= share:
                break
            shard = (start + offset) % self.streams.shards
            if shard in self._shards:
                continue
            if await self.streams.acquire(shard, self.name, self._lease_ms):
                leaving = asyncio.Event()
                task = asyncio.create_task(self._consume(shard, leaving))
                self._shards[shard] = (task, leaving)
                active.append(shard)
        telemetry.INGEST_SHARDS.set(len(self._shards))

    async def _leave_all(self) -> None:
        for _, leaving in self._shards.values():
            leaving.set()
        await asyncio.gather(*(task for task, _ in self._shards.values()), return_exceptions=True)
        self._shards.clear()
        telemetry.INGEST_SHARDS.set(0)
        with contextlib.suppress(RedisError):
            await self.streams.leave(self.name)

    async def _consume(self, shard: int, leaving: asyncio.Event) -> None:
        """Apply the shard's entries in order until ``leaving`` is set, then release it."""
        pending = True  # first what earlier owners (or this one) left unacknowledged
        try:
            await self.streams.claim(shard, self.name, min_idle_ms=0)
            while not leaving.is_set():
                try:
                    entries = await self.streams.read(
                        shard, self.name, self.settings.ingest_batch_size,
                        self.settings.ingest_block_ms, pending=pending,
                    )  # fmt: skip
                    if not entries:
                        pending = False
                        continue
                    pending = not await self._apply(shard, entries)
                except RedisError as error:
                    logger.warning("ingest: shard %d: Redis failed: %s", shard, error)
                    pending = True
                if pending:
                    await asyncio.sleep(RETRY_SECONDS)
        finally:
            with contextlib.suppress(RedisError):
                await self.streams.release(shard, self.name)

    async def _apply(self, shard: int, entries: list[Entry]) -> bool:
        """Apply one batch and acknowledge what is settled; False if some entries must be
        read again (Redis failed for them: they stay pending, in order)."""
        telemetry.INGEST_BATCH.observe(len(entries))
        telemetry.INGEST_ENTRIES.labels("consumed").inc(len(entries))
        events: list[Event] = []
        valid: list[str] = []
        dead: list[tuple[Entry, str]] = []
        for entry in entries:
            parsed = parse_entry(*entry)
            if isinstance(parsed, str):
                dead.append((entry, parsed))
            else:
                events.append(parsed)
                valid.append(entry[0])
        outcomes = await self._coalescer.apply(events)
        acknowledged = [entry_id for (entry_id, _), _ in dead]
        now_ms, settled = time.time() * 1000, True
        counts: collections.Counter[str] = collections.Counter()  # by outcome, counted once
        for entry_id, result in zip(valid, outcomes, strict=True):
            if result is None:  # Redis failed for it: it stays pending, read again in order
                counts["retried"] += 1
                settled = False
                continue
            counts[result.reason or "applied"] += 1  # a duplicate, an unknown item: settled
            if result.reason is None:
                added_ms = float(entry_id.split("-", 1)[0])
                telemetry.INGEST_APPLY_SECONDS.observe(max(0.0, now_ms - added_ms) / 1000)
            acknowledged.append(entry_id)
        for outcome, count in counts.items():
            telemetry.INGEST_ENTRIES.labels(outcome).inc(count)
        telemetry.INGEST_ENTRIES.labels("rejected").inc(len(dead))
        await self.streams.acknowledge(shard, acknowledged, dead)
        return settled

    async def _sample_lag(self) -> None:
        now_ms = time.time() * 1000
        for shard in self.owned:
            waiting, oldest_ms = await self.streams.lag(shard)
            telemetry.INGEST_LAG_ENTRIES.labels(str(shard)).set(waiting)
            age = 0.0 if oldest_ms is None else max(0.0, now_ms - oldest_ms) / 1000
            telemetry.INGEST_LAG_SECONDS.labels(str(shard)).set(age)
