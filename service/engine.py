"""The serving logic: apply an event (load state → one model step → atomic write) and recommend.

Per user, writes are serialised twice over: an in-process ``asyncio.Lock`` keeps one worker's
concurrent requests for a user from racing at all, and the store's version check (CAS inside
one Lua script) makes writers in other workers or replicas retry instead of overwriting.
Model compute runs inline on the event loop: a step plus top-k over 3,416 items holds it for
under a millisecond on one CPU thread (benchmarks/RESULTS.md); a threadpool hop per event would
add overhead without parallelism (one torch thread, small ops that mostly hold the GIL).
"""

import asyncio
import itertools
import os
import random
import weakref
from collections.abc import Sequence
from math import prod

import numpy as np
from redis.exceptions import RedisError

from model import Artifact
from service import telemetry
from service.batching import MicroBatcher
from service.errors import ContentionError, NotFoundError
from service.outcome import Applied, Ranked, scored
from service.runtime import FloatArray, Stepper, top_k_numpy
from service.schemas import (
    Event,
    EventResult,
    Reason,
    Recommendations,
    UserInfo,
)
from service.settings import Settings
from service.state_cache import StateCache
from service.store import Snapshot, UserStore, Write, WriteResult, WriteStatus


class Engine:
    """Applies events and serves recommendations for one loaded artifact."""

    def __init__(
        self, store: UserStore, stepper: Stepper, artifact: Artifact, settings: Settings
    ) -> None:
        self.store = store
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
        self._locks: weakref.WeakValueDictionary[str, asyncio.Lock] = weakref.WeakValueDictionary()
        self._batcher = MicroBatcher(stepper) if settings.micro_batch else None
        self._in_flight = 0
        """Events between arrival and answer: with one, nothing could share its model call."""
        self._cache = StateCache(settings.state_cache_users, store.max_len)
        # Writer tokens only need to be unique: a random per-process prefix and a counter cost
        # a fraction of uuid4() (~9 µs).
        self._token_prefix = os.urandom(8).hex()
        self._token_counter = itertools.count()

    def _token(self) -> str:
        return f"{self._token_prefix}{next(self._token_counter):x}"

    @property
    def n_items(self) -> int:
        return len(self.item_ids)

    def _lock(self, user_id: str) -> asyncio.Lock:
        lock = self._locks.get(user_id)
        if lock is None:
            lock = asyncio.Lock()
            self._locks[user_id] = lock
        return lock

    def _known(self, history: Sequence[str]) -> list[int]:
        return [self._index[item] for item in history if item in self._index]

    def _stale(self, snap: Snapshot) -> bool:
        """The stored state belongs to another model (version or shape) and needs a rebuild."""
        if snap.state is None:
            return False
        return snap.model_version != self.model_version or len(snap.state) != self._state_bytes

    async def _load(self, user_id: str, event_id: str | None, history: bool) -> Snapshot:
        """Load a user; the history is fetched when asked for or when a rebuild needs it."""
        snap = await self.store.load(user_id, event_id, history)
        if self._stale(snap) and not snap.history_loaded:
            snap = await self.store.load(user_id, event_id, history=True)
        return snap

    def _current(self, snap: Snapshot) -> tuple[FloatArray | None, FloatArray | None, bool]:
        """(state, hidden, rebuilt) of a snapshot; a state of another model is rebuilt.

        A user whose events never advanced the model has no state (``None, None``).
        """
        if snap.state is None or snap.hidden is None:
            return None, None, False
        if not self._stale(snap):
            state = np.frombuffer(snap.state, dtype=np.float32).reshape(self._state_shape)
            return state, np.frombuffer(snap.hidden, dtype=np.float32), False
        known = self._known(snap.history)
        if not known:  # nothing this model knows: restart from its zero state
            zero = np.zeros(self._state_shape, dtype=np.float32)
            return zero, self.stepper.cold_start_hidden(), True
        hidden, states = self.stepper.prefill(np.asarray([known], dtype=np.int64))
        return states[0], hidden[0], True

    async def _step(self, index: int, state: FloatArray | None) -> tuple[FloatArray, FloatArray]:
        base = state if state is not None else np.zeros(self._state_shape, dtype=np.float32)
        if self._batcher is not None and self._in_flight > 1:
            return await self._batcher.step(index, base)
        with telemetry.MODEL_STEP.time():
            hidden, states = self.stepper.step(np.asarray([index], dtype=np.int64), base[None])
        return hidden[0], states[0]

    async def _commit(
        self, event: Event, index: int | None, token: str, history: bool
    ) -> tuple[WriteResult, Snapshot, FloatArray | None]:
        """Read → step → check-and-write, retried while another writer got there first.

        The read is skipped when this worker wrote the user last (service.state_cache); a
        refused write answers with the current record, so a retry needs no read either.
        """
        cached = self._cache.get(event.user_id, history)
        snap = cached.snapshot if cached is not None and not self._stale(cached.snapshot) else None
        expected_token = cached.token if snap is not None and cached is not None else ""
        outcome = telemetry.CACHE_FRESH if expected_token else telemetry.CACHE_MISS
        attempt = 0  # only races with other writers count against the retry budget
        try:
            while attempt < self._max_retries:
                if snap is None:
                    snap = await self._load(event.user_id, event.event_id, history)
                    expected_token = ""
                result, hidden = await self._attempt(event, index, token, snap, expected_token)
                if result.status != WriteStatus.CONFLICT:
                    if result.status != WriteStatus.DUPLICATE or not expected_token:
                        return result, snap, hidden
                    # The duplicate may be newer than this worker's copy: read the record.
                    snap, outcome = None, telemetry.CACHE_MISS
                    continue
                self._cache.drop(event.user_id)
                if expected_token:  # this worker's copy was stale: no race, retry at once
                    outcome = telemetry.CACHE_STALE
                else:
                    telemetry.CAS_RETRIES.inc()
                    # Jittered exponential backoff so competing workers do not collide again.
                    await asyncio.sleep(random.uniform(0, min(0.05, 0.0005 * 2**attempt)))
                    attempt += 1
                snap, expected_token = self._usable(result.record), ""
        finally:
            outcome.inc()
        raise ContentionError(
            f"user {event.user_id!r}: too many concurrent writers; nothing written"
        )

    async def _attempt(
        self, event: Event, index: int | None, token: str, snap: Snapshot, expected_token: str
    ) -> tuple[WriteResult, FloatArray | None]:
        """One step from ``snap`` and its check-and-write: ``(result, hidden)``.

        A snapshot that already saw the event id is answered DUPLICATE without a write.
        """
        state, hidden, rebuilt = self._current(snap)
        if snap.duplicate:
            return WriteResult(WriteStatus.DUPLICATE, snap.events_applied, snap.version), hidden
        if index is not None:
            hidden, state = await self._step(index, state)
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
            self._cache.put(event.user_id, snap, write, result)
            if rebuilt and result.status == WriteStatus.WRITTEN:
                telemetry.STATE_REBUILDS.inc()
        return result, hidden

    def _usable(self, record: Snapshot | None) -> Snapshot | None:
        """A conflict's record, unless it must be rebuilt and came without the history."""
        if record is None or (self._stale(record) and not record.history_loaded):
            return None
        return record

    async def apply_event(self, event: Event, k: int, exclude_seen: bool) -> EventResult:
        """Apply one event; with ``k > 0`` also return the user's fresh top-k."""
        return (await self.apply(event, k, exclude_seen)).result()

    async def apply(self, event: Event, k: int, exclude_seen: bool) -> Applied:
        """:meth:`apply_event` without building the response model."""
        # Counted for micro-batching: an event alone in the process runs its model calls
        # inline, without waiting an event-loop iteration for others that cannot come.
        self._in_flight += 1
        try:
            return await self._apply(event, k, exclude_seen)
        finally:
            self._in_flight -= 1

    async def _apply(self, event: Event, k: int, exclude_seen: bool) -> Applied:
        index = self._index.get(event.item_id)
        try:
            async with self._lock(event.user_id):
                # The history is read only to mask seen items: a k=0 event stays O(1).
                history = k > 0 and exclude_seen
                result, snap, hidden = await self._commit(event, index, self._token(), history)
        except (RedisError, ContentionError):
            telemetry.EVENTS.labels("rejected").inc()
            raise
        duplicate = result.status == WriteStatus.DUPLICATE
        reason: Reason | None = (
            "duplicate" if duplicate else None if index is not None else "unknown_item"
        )
        telemetry.event_counter(reason or "applied").inc()
        recommendations = None
        if k > 0:
            seen = snap.history if duplicate else [*snap.history, event.item_id]
            _, recommendations = await self._top_k(hidden, k, seen if exclude_seen else [])
        return Applied(
            event.user_id, reason, result.events_applied, self.model_version, recommendations
        )

    async def _top_k(
        self, hidden: FloatArray | None, k: int, seen: Sequence[str]
    ) -> tuple[bool, Ranked]:
        """(cold_start, items): the model's top-k for ``hidden``, or the cold-start list."""
        exclude = self._known(seen)
        if hidden is not None and self._batcher is not None and self._in_flight > 1:
            indices, scores = await self._batcher.top_k(hidden, k, exclude)
        else:
            with telemetry.SCORE.time():
                if hidden is None:
                    telemetry.COLD_STARTS.inc()
                    indices, scores = top_k_numpy(self._cold_scores, k, exclude)
                else:
                    indices, scores = self.stepper.top_k(hidden[None], k, [exclude])[0]
        ids = self.item_ids
        ranked = [(ids[i - 1], s) for i, s in zip(indices.tolist(), scores.tolist(), strict=True)]
        return hidden is None, ranked

    async def recommend(self, user_id: str, k: int, exclude_seen: bool) -> Recommendations:
        """Top-k for a user's stored state (rebuilt once if it belongs to another model)."""
        snap = await self._load(user_id, None, history=exclude_seen)
        state, hidden, rebuilt = self._current(snap)
        if rebuilt and state is not None and hidden is not None:
            write = Write(
                expected_version=snap.version,
                token=self._token(),
                state=state.tobytes(),
                hidden=hidden.tobytes(),
                model_version=self.model_version,
            )
            result = await self.store.write(user_id, write, operation="rebuild")
            if result.status == WriteStatus.WRITTEN:  # a concurrent writer rebuilt it already
                telemetry.STATE_REBUILDS.inc()
        cold, items = await self._top_k(hidden, k, snap.history if exclude_seen else [])
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
        async with self._lock(user_id):
            self._cache.drop(user_id)
            return await self.store.delete(user_id)
