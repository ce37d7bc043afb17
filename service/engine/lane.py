"""The batched event lane (group commit): events of users this worker wrote last, applied a loop
iteration's worth at a time, or more under load (``LRUREC_BATCH_EVENTS``, on by default).

Per event, most CPU went to per-event Python around the model and Redis calls: a chain of
coroutines, a Redis future, a model call of one row and their bookkeeping. Events whose user's
record this worker holds (service.engine.state_cache) need no read, so everything they do fits
one synchronous pass: the events that reach the engine in one event-loop iteration (or that wait
for a batch to come back, below) run as one batched model call and one pipelined round trip of
check-and-write scripts (:meth:`UserStore.write_many`), in one task.

At most :data:`IN_FLIGHT` batches are between their model call and their Redis reply at once:
events that reach the lane while that many are out wait, and go together as one batch (of at
most :data:`MAX_BATCH`) as soon as one comes back, as a database's group commit does. Under
load, batches then grow with the load instead of staying at what one loop iteration brings, so
the per-batch work (the model call's dispatch, the Redis write and read, the task) is shared by
more events. A lone event never waits: nothing is out.

Same results as one at a time (tests/service/test_event_lane.py): each event's write carries
the version and writer token of the copy it stepped from, so the script refuses it if anything
else wrote the user meanwhile; such an event (and a duplicate event id) leaves the lane and is
applied by the engine's ordinary path, still holding its user's lock. The caller holds that
lock throughout (:class:`service.engine.user_locks.UserLocks`), so a user's events keep their
order.
"""

import asyncio
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Generic, Protocol, TypeVar

import numpy as np
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from service import telemetry
from service.engine.outcome import Applied, Ranked, Ranking
from service.engine.state_cache import Cached, StateCache
from service.runtimes.protocol import NOTHING, FloatArray, IndexArray, Stepper, appended
from service.schemas import Event
from service.store import Snapshot, UserStore, Write, WriteResult, WriteStatus


class LaneOwner(Protocol):
    """What the lane uses of the engine that owns it."""

    store: UserStore
    stepper: Stepper
    cache: StateCache
    model_version: str

    def known(self, history: Sequence[str]) -> IndexArray: ...

    def seen_after(self, appended: IndexArray, history: Sequence[str]) -> IndexArray: ...

    def state_of(self, snap: Snapshot) -> FloatArray: ...

    def named(self, indices: IndexArray, scores: FloatArray) -> Ranked: ...

    def new_token(self) -> str: ...


MAX_BATCH = 64
"""Most events per batch (one model call, one pipelined round trip)."""
IN_FLIGHT = 2
"""Most batches out at once (between their model call and their Redis reply); see the module
docstring."""
ItemT = TypeVar("ItemT")

LaneOutcome = Applied | WriteResult | None
"""An event applied in the lane; or refused (a conflict, whose :class:`WriteResult` carries the
record the write met, or a duplicate event id), or left unanswered by a batch task cancelled
before its write was sent (None): the ordinary path then applies it
(``Engine._commit(refused=...)``). A batch task cancelled after its write was sent answers its
events with :class:`UnknownOutcomeError` instead: the write may have been applied."""


class UnknownOutcomeError(RedisTimeoutError):
    """A batch's write was sent but its reply never read (its task was cancelled). Like a Redis
    timeout the event may or may not have been applied: the caller answers 503 and the client
    retries with the same ``event_id`` (applying it again here could apply it twice)."""


@dataclass(slots=True)
class _Entry:
    event: Event
    index: int
    ranking: Ranking
    cached: Cached
    """This worker's copy of the user's record (its lock held since: the copy cannot change)."""
    future: "asyncio.Future[LaneOutcome]"


@dataclass(slots=True)
class _Batch:
    """The events of one batch task."""

    entries: list[_Entry]
    sent: bool = False
    """Its writes may have reached Redis: a cancelled task then leaves the outcome unknown."""


@dataclass(slots=True)
class _Prepared:
    """One event stepped from this worker's copy, ready to write."""

    entry: _Entry
    cached: Cached
    write: Write
    appended: IndexArray | None
    """The model's indices of the history and the new item (None: history not loaded)."""
    ranked: Ranked | None


class Window(Generic[ItemT]):
    """Items gathered until the end of this event-loop iteration, then handed to ``flush`` in
    batches of at most :data:`MAX_BATCH`."""

    def __init__(self, flush: "Callable[[list[ItemT]], None]") -> None:
        self._flush = flush
        self._items: list[ItemT] = []

    def add(self, item: ItemT) -> None:
        self._items.append(item)
        if len(self._items) == 1:
            asyncio.get_running_loop().call_soon(self._due)

    def _due(self) -> None:
        items, self._items = self._items, []
        for start in range(0, len(items), MAX_BATCH):
            self._flush(items[start : start + MAX_BATCH])


class EventLane:
    """Applies events of cached users in batches; callers hold the user's lock.

    Args:
        engine: the engine whose store, model, state cache and helpers the lane uses.
    """

    def __init__(self, engine: LaneOwner) -> None:
        self._engine = engine
        self._window = Window[_Entry](self._start)
        self._tasks: dict[asyncio.Task[None], _Batch] = {}
        """Batches out, by their task (a reference until done: the loop keeps only weak ones)."""
        self._held: list[_Entry] = []
        """Events gathered while :data:`IN_FLIGHT` batches were out, oldest first: what goes out
        next (in batches of at most ``MAX_BATCH``)."""

    async def apply(
        self, event: Event, index: int, ranking: Ranking, cached: Cached
    ) -> LaneOutcome:
        """Apply one event from ``cached``, a usable copy of its user's record, whose lock the
        caller holds (:data:`LaneOutcome`)."""
        future: asyncio.Future[LaneOutcome] = asyncio.get_running_loop().create_future()
        self._window.add(_Entry(event, index, ranking, cached, future))
        return await future

    def _start(self, batch: list[_Entry]) -> None:
        if len(self._tasks) >= IN_FLIGHT:
            self._held += batch  # goes out with the others when a batch comes back
            return
        out = _Batch(batch)
        task = asyncio.get_running_loop().create_task(self._run(out))
        self._tasks[task] = out
        task.add_done_callback(self._came_back)

    def _came_back(self, task: "asyncio.Task[None]") -> None:
        """A batch task ended (done, or cancelled at shutdown): answer what it left, then send
        what was held."""
        batch = self._tasks.pop(task)
        if task.cancelled():  # perhaps before its first step: no line of _run ran
            for entry in batch.entries:
                if entry.future.done():
                    continue
                if batch.sent:  # this worker's copy may be behind the record now: read it next
                    self._engine.cache.drop(entry.event.user_id)
                    entry.future.set_exception(
                        UnknownOutcomeError("the event's write was sent but its reply never read")
                    )
                else:  # nothing was written: the ordinary path applies it
                    entry.future.set_result(None)
        held, self._held = self._held, []
        for start in range(0, len(held), MAX_BATCH):
            self._start(held[start : start + MAX_BATCH])

    async def _run(self, batch: _Batch) -> None:
        """Step, rank and write one batch; every entry's future is resolved, whatever fails
        (when cancelled, by :meth:`_came_back`)."""
        entries = batch.entries
        try:
            prepared = self._prepare(entries)
            if prepared:
                batch.sent = True  # from here the writes may reach Redis
                await self._write(prepared)
        except Exception as error:  # a broken model or Redis down: every caller gets it
            for entry in entries:
                if not entry.future.done():
                    entry.future.set_exception(error)
        for entry in entries:  # anything not settled goes the ordinary way
            if not entry.future.done():
                entry.future.set_result(None)

    def _prepare(self, entries: list[_Entry]) -> list[_Prepared]:
        """The batch's model call(s) and writes (a cancelled caller's event is left out)."""
        usable = [(entry, entry.cached) for entry in entries if not entry.future.done()]
        if not usable:
            return []
        seen = [self._seen(entry, cached) for entry, cached in usable]
        hidden, states, ranked = self._step(usable, seen)
        return [
            _Prepared(entry, cached, self._write_of(entry, cached, states[row], hidden[row]),
                      seen[row], ranked[row])
            for row, (entry, cached) in enumerate(usable)
        ]  # fmt: skip

    def _seen(self, entry: _Entry, cached: Cached) -> IndexArray | None:
        """The model's indices of the cached history and the event's item, when loaded."""
        seen = cached.seen
        if seen is None and cached.snapshot.history_loaded:
            seen = self._engine.known(cached.snapshot.history)
        return None if seen is None else appended(seen, entry.index)

    def _step(
        self, usable: list[tuple[_Entry, Cached]], seen: list[IndexArray | None]
    ) -> tuple[FloatArray, FloatArray, list[Ranked | None]]:
        """One batched step (with top-k when any event asks for one) from the cached states."""
        engine = self._engine
        items = np.fromiter((entry.index for entry, _ in usable), np.int64, len(usable))
        states = np.stack([engine.state_of(cached.snapshot) for _, cached in usable])
        k = max(entry.ranking.k for entry, _ in usable)
        if k == 0:
            with telemetry.MODEL_STEP.time():
                hidden, new_states = engine.stepper.step(items, states)
            return hidden, new_states, [None] * len(usable)
        exclude = [
            indices if entry.ranking.exclude_seen and indices is not None else NOTHING
            for (entry, _), indices in zip(usable, seen, strict=True)
        ]
        with telemetry.MODEL_STEP_SCORE.time():
            hidden, new_states, rows = engine.stepper.step_top_k(items, states, k, exclude)
        ranked: list[Ranked | None] = [
            engine.named(indices[: entry.ranking.k], scores[: entry.ranking.k])
            if entry.ranking.k
            else None
            for (entry, _), (indices, scores) in zip(usable, rows, strict=True)
        ]  # a row's best k is a prefix of its best max-k
        return hidden, new_states, ranked

    def _write_of(
        self, entry: _Entry, cached: Cached, state: FloatArray, hidden: FloatArray
    ) -> Write:
        event = entry.event
        return Write(
            expected_version=cached.snapshot.version,
            token=self._engine.new_token(),
            event_id=event.event_id or "",
            item=event.item_id,
            state=state.tobytes(),
            hidden=hidden.tobytes(),
            model_version=self._engine.model_version,
            applied=True,
            received=True,
            expected_token=cached.token,
        )

    async def _write(self, prepared: list[_Prepared]) -> None:
        engine = self._engine
        results = await engine.store.write_many(
            [(p.entry.event.user_id, p.write, p.cached.snapshot.history_loaded) for p in prepared]
        )
        for item, result in zip(prepared, results, strict=True):
            if isinstance(result, RedisError):
                if not item.entry.future.done():
                    item.entry.future.set_exception(result)
            else:
                self._settle(item, result)

    def _settle(self, item: _Prepared, result: WriteResult) -> None:
        """Keep a written record and answer; anything else leaves the lane: a conflict with
        the record it met, a duplicate event id to be read again (its first delivery may be
        newer than this worker's copy)."""
        engine, event = self._engine, item.entry.event
        if result.status not in (WriteStatus.WRITTEN, WriteStatus.ALREADY_WRITTEN):
            if result.status == WriteStatus.CONFLICT:  # a duplicate wrote nothing: copy stands
                engine.cache.drop(event.user_id)
            if not item.entry.future.done():
                item.entry.future.set_result(result)
            return
        snapshot = item.cached.snapshot
        seen = None if item.appended is None else engine.seen_after(item.appended, snapshot.history)
        engine.cache.put(event.user_id, snapshot, item.write, result, seen)
        telemetry.CACHE_FRESH.inc()
        telemetry.event_counter("applied").inc()
        if not item.entry.future.done():
            item.entry.future.set_result(
                Applied(event.user_id, None, result.events_applied, engine.model_version,
                        item.ranked if item.entry.ranking.k > 0 else None)
            )  # fmt: skip
