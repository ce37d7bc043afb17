"""The serving logic: apply an event (load state → one model step → atomic write) and recommend.

Per user, writes are serialised twice over: an in-process FIFO lock (service.engine.user_locks)
keeps one worker's concurrent requests for a user from racing at all, in arrival order, and the
store's version check (CAS inside one Lua script) makes writers in other workers or replicas retry
instead of overwriting. Events of users this worker wrote last are applied in batches
(service.engine.lane). Model compute runs inline on the event loop: a step plus top-k over 3,416
items holds it for about 40 µs with the numba backend (benchmarks/RESULTS.md); a threadpool hop
per event would add overhead without parallelism (one torch thread, small ops that mostly hold the
GIL).
"""

import asyncio
import itertools
import os
import random
import time
from collections.abc import Sequence
from math import prod

import numpy as np
from redis.exceptions import RedisError

from model import Artifact
from service import telemetry
from service.engine.lane import EventLane
from service.engine.outcome import Applied, Ranked, Ranking, scored
from service.engine.state_cache import Cached, StateCache
from service.engine.user_locks import UserLocks
from service.errors import ContentionError, NotFoundError
from service.runtimes.protocol import NOTHING, FloatArray, IndexArray, Stepper, appended
from service.runtimes.ranking import top_k_numpy
from service.schemas import (
    Event,
    EventResult,
    Reason,
    Recommendations,
    UserInfo,
)
from service.settings import Settings
from service.store import Snapshot, UserStore, Write, WriteResult, WriteStatus
from service.store.event_log import EventLog, LogEntry


class Engine:
    """Applies events and serves recommendations for one loaded artifact."""

    def __init__(
        self,
        store: UserStore,
        stepper: Stepper,
        artifact: Artifact,
        settings: Settings,
        event_log: EventLog | None = None,
    ) -> None:
        self.store = store
        self.event_log = event_log
        self.stepper = stepper
        self.settings = settings
        self.model_version = artifact.version
        self.model_type = str(artifact.config.get("model_type", "unknown"))
        self.item_ids = artifact.item_ids
        self._index = artifact.index_of()
        self._state_shape = stepper.state_shape
        self._state_bytes = prod(self._state_shape) * 4  # float32
        self._max_retries = settings.cas_max_retries
        if settings.cold_start == "model":
            self._cold_scores = stepper.scores(stepper.cold_start_hidden()[None])[0]
        else:
            self._cold_scores = artifact.popularity.numpy().astype(np.float32)
        self.locks = UserLocks()
        self.cache = StateCache(settings.state_cache_users, store.max_len)
        self._lane = EventLane(self) if settings.batch_events else None
        # Writer tokens only need to be unique: a random per-process prefix and a counter cost
        # a fraction of uuid4() (~9 µs).
        self._token_prefix = os.urandom(8).hex()
        self._token_counter = itertools.count()

    def new_token(self) -> str:
        """A writer token no other write carries (the apply script's retry check)."""
        return f"{self._token_prefix}{next(self._token_counter):x}"

    @property
    def n_items(self) -> int:
        return len(self.item_ids)

    def index(self, item_id: str) -> int | None:
        """The model's index of ``item_id``; None for an item it does not know."""
        return self._index.get(item_id)

    def known(self, history: Sequence[str]) -> IndexArray:
        """The model's indices of the items in ``history`` it knows, in order."""
        index = self._index
        return np.fromiter((index[item] for item in history if item in index), np.int64)

    def seen_after(self, appended: IndexArray, history: Sequence[str]) -> IndexArray:
        """:meth:`known` of ``history`` once an item is appended and the list is trimmed to
        ``max_len`` as the store trims it, from ``appended`` (:meth:`known` of the history and
        the item), without mapping every item again."""
        seen = appended
        dropped = len(history) + 1 - self.store.max_len
        if dropped > 0:  # the oldest items leave the stored list: their indices leave too
            known = self._index
            seen = seen[sum(item in known for item in history[:dropped]) :]
        return seen

    def stale(self, snap: Snapshot) -> bool:
        """The stored state belongs to another model (version or shape) and needs a rebuild."""
        if snap.state is None:
            return False
        return snap.model_version != self.model_version or len(snap.state) != self._state_bytes

    async def _load(self, user_id: str, event_id: str | None, history: bool) -> Snapshot:
        """Load a user; the history is fetched when asked for or when a rebuild needs it."""
        snap = await self.store.load(user_id, event_id, history)
        if self.stale(snap) and not snap.history_loaded:
            snap = await self.store.load(user_id, event_id, history=True)
        return snap

    def state_of(self, snap: Snapshot) -> FloatArray:
        """The state of a snapshot that is not :meth:`stale` (zeros when it has none)."""
        if snap.state is None:
            return np.zeros(self._state_shape, dtype=np.float32)
        return np.frombuffer(snap.state, dtype=np.float32).reshape(self._state_shape)

    def state_or_zeros(self, state: FloatArray | None) -> FloatArray:
        """``state``, or the zero state of a user the model never advanced."""
        return state if state is not None else np.zeros(self._state_shape, dtype=np.float32)

    def _current(self, snap: Snapshot) -> tuple[FloatArray | None, FloatArray | None, bool]:
        """(state, hidden, rebuilt) of a snapshot; a state of another model is rebuilt.

        A user whose events never advanced the model has no state (``None, None``).
        """
        if snap.state is None or snap.hidden is None:
            return None, None, False
        if not self.stale(snap):
            return self.state_of(snap), np.frombuffer(snap.hidden, dtype=np.float32), False
        known = self.known(snap.history)
        if len(known) == 0:  # nothing this model knows: restart from its zero state
            zero = np.zeros(self._state_shape, dtype=np.float32)
            return zero, self.stepper.cold_start_hidden(), True
        hidden, states = self.stepper.prefill(np.asarray([known], dtype=np.int64))
        return states[0], hidden[0], True

    def _step(
        self, index: int, state: FloatArray | None, k: int, exclude: IndexArray
    ) -> tuple[FloatArray, FloatArray, Ranked | None]:
        """``(hidden, new_state, top-k or None when k == 0)`` of one event, in one model call."""
        base = self.state_or_zeros(state)
        if k == 0:
            with telemetry.MODEL_STEP.time():
                hidden, states = self.stepper.step(np.asarray([index], dtype=np.int64), base[None])
            return hidden[0], states[0], None
        with telemetry.MODEL_STEP_SCORE.time():
            hidden, states, ranked = self.stepper.step_top_k(
                np.asarray([index], dtype=np.int64), base[None], k, [exclude]
            )
        return hidden[0], states[0], self.named(*ranked[0])

    def named(self, indices: IndexArray, scores: FloatArray) -> Ranked:
        ids = self.item_ids
        return [(ids[i - 1], s) for i, s in zip(indices.tolist(), scores.tolist(), strict=True)]

    async def _commit(
        self, event: Event, index: int | None, token: str, ranking: Ranking,
        refused: WriteResult | None = None,
    ) -> tuple[WriteResult, Snapshot, FloatArray | None, Ranked | None]:  # fmt: skip
        """Read → step → check-and-write, retried while another writer got there first.

        The read is skipped when this worker wrote the user last (service.engine.state_cache); a
        refused write answers with the current record, so a retry needs no read either:
        ``refused`` is such an answer to a write from this worker's copy (service.engine.lane),
        a conflict (retried from its record) or a duplicate event id (read again).
        """
        cached = self.cache.get(event.user_id, ranking.exclude_seen)
        snap = cached.snapshot if cached is not None and not self.stale(cached.snapshot) else None
        expected_token = cached.token if snap is not None and cached is not None else ""
        seen = cached.seen if snap is not None and cached is not None else None
        outcome = telemetry.CACHE_FRESH if expected_token else telemetry.CACHE_MISS
        if refused is not None and refused.status == WriteStatus.CONFLICT:
            # The copy was stale: start from the record the write met.
            snap, expected_token, seen = self._usable(refused.record), "", None
            outcome = telemetry.CACHE_STALE
        elif refused is not None:  # a duplicate id: its first delivery may be newer, read it
            snap, expected_token, seen, outcome = None, "", None, telemetry.CACHE_MISS
        attempt = 0  # only races with other writers count against the retry budget
        try:
            while attempt < self._max_retries:
                if snap is None:
                    snap = await self._load(event.user_id, event.event_id, ranking.exclude_seen)
                    expected_token, seen = "", None
                result, hidden, ranked = await self._attempt(
                    event, index, token, snap, expected_token, ranking, seen
                )
                if result.status != WriteStatus.CONFLICT:
                    if result.status != WriteStatus.DUPLICATE or not expected_token:
                        return result, snap, hidden, ranked
                    # The duplicate may be newer than this worker's copy: read the record.
                    snap, outcome = None, telemetry.CACHE_MISS
                    continue
                self.cache.drop(event.user_id)
                if expected_token:  # this worker's copy was stale: no race, retry at once
                    outcome = telemetry.CACHE_STALE
                else:
                    telemetry.CAS_RETRIES.inc()
                    # Jittered exponential backoff so competing workers do not collide again.
                    await asyncio.sleep(random.uniform(0, min(0.05, 0.0005 * 2**attempt)))
                    attempt += 1
                snap, expected_token, seen = self._usable(result.record), "", None
        finally:
            outcome.inc()
        raise ContentionError(
            f"user {event.user_id!r}: too many concurrent writers; nothing written"
        )

    async def _attempt(
        self, event: Event, index: int | None, token: str, snap: Snapshot, expected_token: str,
        ranking: Ranking, seen: IndexArray | None,
    ) -> tuple[WriteResult, FloatArray | None, Ranked | None]:  # fmt: skip
        """One step (and top-k, when asked for) from ``snap`` and its check-and-write:
        ``(result, hidden, top-k or None)``. ``seen`` is :meth:`known` of ``snap``'s history
        when this worker has it at hand (None: mapped here when needed).

        A snapshot that already saw the event id is answered DUPLICATE without a write.
        """
        state, hidden, rebuilt = self._current(snap)
        if snap.duplicate:
            duplicate = WriteResult(WriteStatus.DUPLICATE, snap.events_applied, snap.version)
            return duplicate, hidden, None
        if snap.history_loaded and seen is None:
            seen = self.known(snap.history)
        # The history's item indices and the new item's: what this event's top-k excludes.
        with_item = seen if seen is None or index is None else appended(seen, index)
        ranked = None
        if index is not None:
            exclude = with_item if ranking.exclude_seen and with_item is not None else NOTHING
            hidden, state, ranked = self._step(index, state, ranking.k, exclude)
        write_state = state is not None and (index is not None or rebuilt)
        write = Write(
            expected_version=snap.version,
            token=token,
            event_id=event.event_id or "",
            item=event.item_id,
            state=state.tobytes() if write_state and state is not None else b"",
            hidden=hidden.tobytes() if write_state and hidden is not None else b"",
            model_version=self.model_version if write_state else "",
            applied=index is not None,
            received=True,
            expected_token=expected_token,
        )
        result = await self.store.write(event.user_id, write, refresh=snap.history_loaded)
        if result.status in (WriteStatus.WRITTEN, WriteStatus.ALREADY_WRITTEN):
            seen_after = None if with_item is None else self.seen_after(with_item, snap.history)
            self.cache.put(event.user_id, snap, write, result, seen_after)
            if rebuilt and result.status == WriteStatus.WRITTEN:
                telemetry.STATE_REBUILDS.inc()
        return result, hidden, ranked

    def _usable(self, record: Snapshot | None) -> Snapshot | None:
        """A conflict's record, unless it must be rebuilt and came without the history."""
        if record is None or (self.stale(record) and not record.history_loaded):
            return None
        return record

    async def apply_event(self, event: Event, k: int, exclude_seen: bool) -> EventResult:
        """Apply one event; with ``k > 0`` also return the user's fresh top-k."""
        return (await self.apply(event, k, exclude_seen)).result()

    async def apply(self, event: Event, k: int, exclude_seen: bool) -> Applied:
        """:meth:`apply_event` without building the response model.

        The event is acknowledged (returned) only once it is in the event log, if one is on:
        applied, an unknown item (kept in the history) or a duplicate (a retry whose first
        answer may have been lost before its entry was logged).
        """
        applied = await self._apply(event, k, exclude_seen)
        if self.event_log is not None:
            try:
                await self.event_log.append(
                    LogEntry(
                        event.user_id, event.item_id, event.event_id or "",
                        time.time() if event.timestamp is None else event.timestamp,
                        applied.model_version,
                    )
                )  # fmt: skip
            except RedisError:
                telemetry.EVENTS.labels("rejected").inc()
                raise
        return applied

    async def _apply(self, event: Event, k: int, exclude_seen: bool) -> Applied:
        index = self._index.get(event.item_id)
        # The history is read only to mask seen items: a k=0 event stays O(1).
        ranking = Ranking(k, k > 0 and exclude_seen)
        user_id = event.user_id
        try:
            # Taken before any await, so a user's events hold the lock in arrival order.
            copy = self._lane_copy(user_id, index, ranking)
            if copy is None:
                await self.locks.acquire(user_id)
            try:
                refused = None
                if self._lane is not None and copy is not None and index is not None:
                    outcome = await self._lane.apply(event, index, ranking, copy)
                    if isinstance(outcome, Applied):
                        return outcome
                    refused = outcome
                result, snap, hidden, ranked = await self._commit(
                    event, index, self.new_token(), ranking, refused
                )
            finally:
                self.locks.release(user_id)
        except (RedisError, ContentionError):
            telemetry.EVENTS.labels("rejected").inc()
            raise
        duplicate = result.status == WriteStatus.DUPLICATE
        reason: Reason | None = (
            "duplicate" if duplicate else None if index is not None else "unknown_item"
        )
        telemetry.event_counter(reason or "applied").inc()
        if k > 0 and (ranked is None or duplicate):  # no step ranked it: rank the stored hidden
            seen = snap.history if duplicate else [*snap.history, event.item_id]
            _, ranked = self._top_k(hidden, k, self.known(seen) if exclude_seen else NOTHING)
        return Applied(
            event.user_id, reason, result.events_applied, self.model_version,
            ranked if k > 0 else None,
        )  # fmt: skip

    def _lane_copy(self, user_id: str, index: int | None, ranking: Ranking) -> Cached | None:
        """This worker's copy of the user's record when the event goes to the batched lane
        (service.engine.lane): a known item, a usable copy, and the user's lock free (then
        taken); None otherwise."""
        if self._lane is None or index is None:
            return None
        cached = self.cache.get(user_id, ranking.exclude_seen)
        if cached is None or self.stale(cached.snapshot) or not self.locks.take(user_id):
            return None
        return cached

    def _top_k(self, hidden: FloatArray | None, k: int, exclude: IndexArray) -> tuple[bool, Ranked]:
        """(cold_start, items): the model's top-k for ``hidden``, or the cold-start list."""
        with telemetry.SCORE.time():
            if hidden is None:
                telemetry.COLD_STARTS.inc()
                indices, scores = top_k_numpy(self._cold_scores, k, exclude)
            else:
                indices, scores = self.stepper.top_k(hidden[None], k, [exclude])[0]
        return hidden is None, self.named(indices, scores)

    async def recommend(self, user_id: str, k: int, exclude_seen: bool) -> Recommendations:
        """Top-k for a user's stored state (rebuilt once if it belongs to another model)."""
        snap = await self._load(user_id, None, history=exclude_seen)
        state, hidden, rebuilt = self._current(snap)
        if rebuilt and state is not None and hidden is not None:
            write = Write(
                expected_version=snap.version,
                token=self.new_token(),
                state=state.tobytes(),
                hidden=hidden.tobytes(),
                model_version=self.model_version,
            )
            result = await self.store.write(user_id, write, operation="rebuild")
            if result.status == WriteStatus.WRITTEN:  # a concurrent writer rebuilt it already
                telemetry.STATE_REBUILDS.inc()
        exclude = self.known(snap.history) if exclude_seen else NOTHING
        cold, items = self._top_k(hidden, k, exclude)
        return Recommendations(
            user_id=user_id,
            model_version=self.model_version,
            source="cold_start" if cold else "model",
            items=[scored(item, score) for item, score in items],
        )

    async def user_info(self, user_id: str) -> UserInfo:
        snap = await self.store.load(user_id)
        if snap.version == 0 and not snap.history:
            raise NotFoundError(f"user {user_id!r} has no stored events")
        return UserInfo(
            user_id=user_id,
            events_applied=snap.events_applied,
            events_received=snap.events_received,
            recent_items=snap.history,
            model_version=snap.model_version,
            updated_at=snap.updated_at,
        )

    async def ready(self) -> bool:
        """Redis answers PING (the model is loaded whenever an Engine exists)."""
        try:
            ok = await self.store.ping()
        except RedisError:
            ok = False
        telemetry.READY.set(int(ok))
        return ok

    async def delete_user(self, user_id: str) -> bool:
        """Forget a user's state, history and event ids."""
        await self.locks.acquire(user_id)
        try:
            self.cache.drop(user_id)
            return await self.store.delete(user_id)
        finally:
            self.locks.release(user_id)
