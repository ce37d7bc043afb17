"""The stream consumer: owns ingest shards under leases and applies their entries in order.

Each shard is owned by one consumer at a time (a lease in Redis, renewed every third of
``LRUREC_INGEST_CLAIM_MS``), so a user's events, which all go to one shard, are applied in
stream order. Consumers share the shards evenly: each counts the live consumers (a heartbeat
set) and owns at most its share. A shard whose owner stopped renewing (it crashed) is taken over
with the entries the dead owner was delivered and did not acknowledge (``XAUTOCLAIM``), which
are applied before any new entry. Entries are applied through the engine of ``POST /events``
(the same atomic script and event-id idempotency); an entry without ``event_id`` uses its
stream entry id, so a redelivered entry is not applied twice. ``XACK`` follows the write.
"""

import asyncio
import contextlib
import logging
import math
import time

from redis.exceptions import RedisError

from service import telemetry
from service.engine.batch import apply_batch
from service.engine.engine import Engine
from service.ingest.entries import parse_entry
from service.schemas import Event
from service.settings import Settings
from service.store.streams import Entry, IngestStreams

logger = logging.getLogger(__name__)

LAG_SAMPLE_SECONDS = 1.0
RETRY_SECONDS = 0.2
"""Pause before reading a shard again after Redis failed part of a batch."""
SETTLED = ("duplicate", "unknown_item")
"""Reasons an event was not applied that still acknowledge its entry (nothing to retry)."""


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
        results, _ = await apply_batch(
            self.engine, events, k=0, exclude_seen=False, concurrency=len(events) or 1
        )
        acknowledged = [entry_id for (entry_id, _), _ in dead]
        now_ms, settled = time.time() * 1000, True
        for entry_id, result in zip(valid, results, strict=True):
            if result.applied:
                telemetry.INGEST_ENTRIES.labels("applied").inc()
                added_ms = float(entry_id.split("-", 1)[0])
                telemetry.INGEST_APPLY_SECONDS.observe(max(0.0, now_ms - added_ms) / 1000)
            elif result.reason in SETTLED:
                telemetry.INGEST_ENTRIES.labels(str(result.reason)).inc()
            else:
                telemetry.INGEST_ENTRIES.labels("retried").inc()
                settled = False
                continue
            acknowledged.append(entry_id)
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
