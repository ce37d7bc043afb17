"""A stream's batch of events, applied in order per user with one pipelined read, one batched
model step per position and one pipelined write for the whole batch.

The ordinary path (:meth:`Engine.apply`) costs each event its own coroutines, read round trip,
one-row model call and write round trip; a stream consumer that applies hundreds of entries at
a time pays that per entry. Here a batch is applied as a whole:

1. the records of the users this worker did not write last (service.engine.state_cache) are
   read in one pipeline;
2. the users' first events are stepped in one model call, their second events (from the states
   the first produced) in the next, and so on: as many calls as one user has events;
3. every event's check-and-write goes out in one pipeline. A user's writes are chained: each
   expects the version and writer token the previous one leaves, and Redis runs them in order
   (one user's keys are in one slot, sent on one connection). So if one is refused (a conflict,
   a duplicate event id) or fails, the user's later writes are refused too and nothing is
   written out of order;
4. the applied events (and duplicates) are appended to the event log in one pipeline.

On a single Redis, steps 3 and 4 are one pipeline of a few batch-script calls
(service/store/apply_batch.lua: apply.lua's check-and-write per event, and its log append when
it lands), so a batch costs a handful of commands rather than two per event. A cluster keeps a
script call per event: one script may touch one slot only.

Events that the batch cannot settle (a write refused by a conflict, those after a duplicate, a
state of another model that must be rebuilt from the history, a user whose lock is held) go to
:meth:`Engine.apply`, in order, once the batch is written. Same results as applying the events
one at a time (tests/service/test_ordered.py).
"""

import asyncio
import collections
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from redis.exceptions import RedisError

from service import telemetry
from service.engine.engine import Engine
from service.engine.outcome import Applied
from service.errors import ContentionError
from service.runtimes.protocol import FloatArray
from service.schemas import Event, Reason
from service.store import Snapshot, Write, WriteResult, WriteStatus
from service.store.event_log import LogEntry
from service.store.user_store import LoggedWrite, PendingWrite

Outcome = Applied | None
"""An event's outcome; None: not applied (Redis failed or the user stayed contended), nor any
later event of its user in the batch: the caller tries them again."""


@dataclass(slots=True)
class _Chain:
    """One user's events of the batch, in order, and the record they start from."""

    user_id: str
    positions: list[int]
    snapshot: Snapshot | None = None
    token: str = ""
    """The writer token the first write expects ('' when the record was read: any)."""
    state: FloatArray | None = None
    hidden: FloatArray | None = None
    writes: list[Write] = field(default_factory=list)


async def apply_in_order(engine: Engine, events: Sequence[Event]) -> list[Outcome]:
    """Apply ``events`` (k = 0) in order per user, as the module docstring describes; one
    outcome per event."""
    outcomes: list[Outcome] = [None] * len(events)
    chains, rest = await _chains(engine, events)
    try:
        _step_all(engine, events, chains)
        if engine.store.batched:  # the log appends are in the same script calls
            results = await _write_and_log_all(engine, events, chains)
        else:
            results = await _write_all(engine, chains)
    finally:
        for chain in chains:
            engine.locks.release(chain.user_id)
    logged = _settle(engine, chains, results, outcomes, rest)
    if not engine.store.batched:
        await _log(engine, events, logged, outcomes)
    # What the batch could not settle, the ordinary way: in order per user, users in parallel.
    await asyncio.gather(*(_one_by_one(engine, events, positions, outcomes) for positions in rest))
    return outcomes


async def _chains(engine: Engine, events: Sequence[Event]) -> tuple[list[_Chain], list[list[int]]]:
    """The users' chains with their starting records (their locks taken), and the positions
    of the users left to the ordinary path."""
    by_user: dict[str, list[int]] = {}
    for position, event in enumerate(events):
        by_user.setdefault(event.user_id, []).append(position)
    chains: list[_Chain] = []
    rest: list[list[int]] = []
    unread: list[_Chain] = []
    fresh = missed = 0  # events, counted once per batch
    for user_id, positions in by_user.items():
        if not engine.locks.take(user_id):  # another request of this worker has the user
            rest.append(positions)
            continue
        chain = _Chain(user_id, positions)
        cached = engine.cache.get(user_id, history=False)
        if cached is not None and not engine.stale(cached.snapshot):
            chain.snapshot, chain.token = cached.snapshot, cached.token
            fresh += len(positions)
        else:
            unread.append(chain)
            missed += len(positions)
        chains.append(chain)
    telemetry.CACHE_FRESH.inc(fresh)
    telemetry.CACHE_MISS.inc(missed)
    if unread:
        try:
            snapshots = await engine.store.load_many([chain.user_id for chain in unread])
        except BaseException:
            for chain in chains:
                engine.locks.release(chain.user_id)
            raise
        for chain, snap in zip(unread, snapshots, strict=True):
            if isinstance(snap, RedisError) or engine.stale(snap):  # a rebuild reads the history
                engine.locks.release(chain.user_id)
                chains.remove(chain)
                rest.append(chain.positions)
            else:
                chain.snapshot = snap
    return chains, rest


def _step_all(engine: Engine, events: Sequence[Event], chains: list[_Chain]) -> None:
    """Every chain's writes: position by position, one batched model step each."""
    for chain in chains:
        assert chain.snapshot is not None
        if chain.snapshot.state is not None and chain.snapshot.hidden is not None:
            chain.state = engine.state_of(chain.snapshot)
            chain.hidden = np.frombuffer(chain.snapshot.hidden, dtype=np.float32)
    longest = max((len(chain.positions) for chain in chains), default=0)
    for depth in range(longest):
        due = [chain for chain in chains if depth < len(chain.positions)]
        stepped = [
            (chain, index) for chain in due
            if (index := engine.index(events[chain.positions[depth]].item_id)) is not None
        ]  # fmt: skip
        if stepped:
            items = np.fromiter((index for _, index in stepped), np.int64, len(stepped))
            states = np.stack([engine.state_or_zeros(chain.state) for chain, _ in stepped])
            with telemetry.MODEL_STEP.time():
                hidden, new_states = engine.stepper.step(items, states)
            for row, (chain, _) in enumerate(stepped):
                chain.state, chain.hidden = new_states[row], hidden[row]
        moved = {id(chain) for chain, _ in stepped}
        for chain in due:
            chain.writes.append(_write_of(engine, chain, events[chain.positions[depth]],
                                          id(chain) in moved))  # fmt: skip


def _write_of(engine: Engine, chain: _Chain, event: Event, stepped: bool) -> Write:
    """The next write of ``chain``: it expects what the previous one leaves."""
    assert chain.snapshot is not None
    previous = chain.writes[-1].token if chain.writes else chain.token
    return Write(
        expected_version=chain.snapshot.version + len(chain.writes),
        token=engine.new_token(),
        event_id=event.event_id or "",
        item=event.item_id,
        state=chain.state.tobytes() if stepped and chain.state is not None else b"",
        hidden=chain.hidden.tobytes() if stepped and chain.hidden is not None else b"",
        model_version=engine.model_version if stepped else "",
        applied=stepped,
        received=True,
        expected_token=previous,
    )


async def _write_all(engine: Engine, chains: list[_Chain]) -> list[list[WriteResult | RedisError]]:
    """Every chain's writes in one pipeline; each chain's results, in order."""
    flat: list[PendingWrite] = [
        (chain.user_id, write, None) for chain in chains for write in chain.writes
    ]
    if not flat:
        return []
    replies = await engine.store.write_many(flat)
    results, start = [], 0
    for chain in chains:
        results.append(replies[start : start + len(chain.writes)])
        start += len(chain.writes)
    return results


async def _write_and_log_all(
    engine: Engine, events: Sequence[Event], chains: list[_Chain]
) -> list[list[WriteResult | RedisError]]:
    """:func:`_write_all` on a single Redis, through the batch script: each write that lands
    (written or a duplicate) is appended to the event log in the same script call."""
    log = engine.event_log if engine.event_log is not None and engine.event_log.enabled else None
    now = time.time()
    flat: list[LoggedWrite] = []
    for chain in chains:
        stream = None if log is None else log.key(chain.user_id)
        for position, write in zip(chain.positions, chain.writes, strict=True):
            timestamp = events[position].timestamp
            flat.append((chain.user_id, write, stream, now if timestamp is None else timestamp))
    if not flat:
        return []
    maxlen = 0 if log is None else log.maxlen
    replies = await engine.store.write_batch(flat, maxlen, engine.model_version)
    results, start = [], 0
    for chain in chains:
        results.append(replies[start : start + len(chain.writes)])
        start += len(chain.writes)
    return results


def _settle(
    engine: Engine, chains: list[_Chain],
    results: list[list[WriteResult | RedisError]], outcomes: list[Outcome],
    rest: list[list[int]],
) -> list[int]:  # fmt: skip
    """Outcomes of the written events, the state cache brought up to date; the positions to
    log. A chain's events after its first refused write join ``rest``; after a failed one,
    they stay None."""
    logged: list[int] = []
    counts: collections.Counter[str] = collections.Counter()  # by outcome, counted once
    for chain, replies in zip(chains, results, strict=True):
        assert chain.snapshot is not None
        before, user_id = chain.snapshot, chain.user_id
        for depth, (write, result) in enumerate(zip(chain.writes, replies, strict=True)):
            position = chain.positions[depth]
            if isinstance(result, RedisError):
                engine.cache.drop(user_id)
                counts["rejected"] += len(chain.positions) - depth
                break
            if result.status == WriteStatus.DUPLICATE:
                counts["duplicate"] += 1
                outcomes[position] = Applied(
                    user_id, "duplicate", result.events_applied, engine.model_version, None
                )
                logged.append(position)
                if depth + 1 < len(chain.positions):
                    rest.append(chain.positions[depth + 1 :])
                break
            if result.status == WriteStatus.CONFLICT:  # another writer: its record is newer
                engine.cache.drop(user_id)
                rest.append(chain.positions[depth:])
                break
            before = engine.cache.put(user_id, before, write, result)
            reason: Reason | None = None if write.applied else "unknown_item"
            counts[reason or "applied"] += 1
            outcomes[position] = Applied(
                user_id, reason, result.events_applied, engine.model_version, None
            )
            logged.append(position)
    for outcome, count in counts.items():
        telemetry.event_counter(outcome).inc(count)
    return logged


async def _log(
    engine: Engine, events: Sequence[Event], logged: list[int], outcomes: list[Outcome]
) -> None:
    """Append the settled events to the event log; if that fails they are not acknowledged
    (their retry is a duplicate, logged then)."""
    if engine.event_log is None or not logged:
        return
    now = time.time()
    entries = []
    for position in logged:
        event, outcome = events[position], outcomes[position]
        assert outcome is not None
        timestamp = now if event.timestamp is None else event.timestamp
        entries.append(LogEntry(event.user_id, event.item_id, event.event_id or "", timestamp,
                                outcome.model_version))  # fmt: skip
    try:
        await engine.event_log.append_many(entries)
    except RedisError:
        telemetry.EVENTS.labels("rejected").inc(len(logged))
        for position in logged:
            outcomes[position] = None


async def _one_by_one(
    engine: Engine, events: Sequence[Event], positions: list[int], outcomes: list[Outcome]
) -> None:
    """A user's remaining events through the ordinary path; stop at the first failure."""
    for n, position in enumerate(positions):
        try:
            outcomes[position] = await engine.apply(events[position], 0, exclude_seen=False)
        except (RedisError, ContentionError):  # counted there; its successors never ran
            telemetry.EVENTS.labels("rejected").inc(len(positions) - n - 1)
            return
