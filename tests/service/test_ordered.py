"""A stream batch applied as a whole (service.engine.ordered) answers, stores and logs what
applying its events one at a time does, with one model call per position and one pipelined
write; what it cannot settle goes the ordinary way, in order."""

import asyncio
import random
from pathlib import Path
from typing import Any

import pytest
import redis

from service.engine.engine import Engine
from service.engine.ordered import Outcome, apply_in_order
from service.ingest.consumer import Coalescer
from service.schemas import Event
from service.settings import Settings
from service.store.event_log import log_key
from tests.conftest import RedisTarget
from tests.metrics import sample
from tests.service.engines import started_engine
from tests.service.test_event_lane import (
    RecordingStepper,
    _assert_same_records,
    _records,
)

pytestmark = pytest.mark.redis_topologies

Batches = list[list[Event]]


def _batches(seed: int = 0) -> Batches:
    """Six batches of 40 events over 15 users: several events of a user per batch, unknown
    items, repeated event ids (in and across batches, maybe another user's) and events
    without an id."""
    rng = random.Random(seed)
    batches: Batches = []
    event_ids: list[str] = []
    for number in range(6):
        batch = []
        for n in range(40):
            user = f"ordered-{rng.randrange(15)}"
            item = "unknown-item" if rng.random() < 0.1 else f"item-{rng.randrange(1, 51)}"
            event_id: str | None = f"e{number}-{n}"
            if event_ids and rng.random() < 0.1:
                event_id = rng.choice(event_ids)
            elif rng.random() < 0.3:
                event_id = None
            if event_id is not None:
                event_ids.append(event_id)
            batch.append(Event(user_id=user, item_id=item, event_id=event_id))
        batches.append(batch)
    return batches


def _answers(outcomes: list[Outcome]) -> list[dict[str, Any]]:
    answers = []
    for outcome in outcomes:
        assert outcome is not None
        answers.append(outcome.result().model_dump())
    return answers


async def _one_at_a_time(engine: Engine, batches: Batches) -> list[dict[str, Any]]:
    return [
        (await engine.apply(event, 0, exclude_seen=False)).result().model_dump()
        for batch in batches
        for event in batch
    ]


async def _as_batches(engine: Engine, batches: Batches) -> list[dict[str, Any]]:
    answers = []
    for batch in batches:
        answers += _answers(await apply_in_order(engine, batch))
    return answers


def _logged(client: "redis.Redis", prefix: str, shards: int) -> dict[bytes, list[Any]]:
    """Each user's (item, event id) log entries, in log order (users of a shard may
    interleave differently)."""
    logged: dict[bytes, list[Any]] = {}
    for shard in range(shards):
        entries: list[tuple[bytes, dict[bytes, bytes]]] = client.xrange(log_key(prefix, shard))  # type: ignore[assignment]
        for _, fields in entries:
            logged.setdefault(fields[b"user_id"], []).append(
                (fields[b"item_id"], fields[b"event_id"])
            )
    return logged


@pytest.mark.parametrize("state_cache_users", [4096, 5])
def test_a_batch_answers_stores_and_logs_what_one_event_at_a_time_does(
    tiny_artifact: Path,
    redis_target: RedisTarget,
    redis_client: "redis.Redis",
    state_cache_users: int,
) -> None:
    batches = _batches()
    users = {event.user_id for batch in batches for event in batch}
    runs = {}
    for whole in (True, False):
        prefix = f"ordered{int(whole)}{state_cache_users}"
        settings = Settings(
            artifact=tiny_artifact, **redis_target.settings, key_prefix=prefix,
            batch_events=False, state_cache_users=state_cache_users,
        )  # fmt: skip

        async def main(whole: bool = whole, settings: Settings = settings) -> Any:
            engine, close = await started_engine(settings)
            recording = RecordingStepper(engine.stepper)
            engine.stepper = recording
            try:
                run = _as_batches if whole else _one_at_a_time
                return await run(engine, batches), recording.rows, settings.log_shards
            finally:
                await close()

        answers, rows, shards = asyncio.run(main())
        records = _records(redis_client, prefix, users)
        runs[whole] = answers, records, rows, _logged(redis_client, prefix, shards)
    (answers, records, rows, logged), (alone, alone_records, alone_rows, alone_logged) = (
        runs[True],
        runs[False],
    )
    assert max(alone_rows) == 1
    assert max(rows) > 1  # batched model calls
    assert len(rows) < len(alone_rows) / 3
    assert sum(answer["reason"] == "duplicate" for answer in alone) > 0
    assert sum(answer["reason"] == "unknown_item" for answer in alone) > 0
    assert answers == alone
    _assert_same_records(records, alone_records)
    assert logged == alone_logged


def test_one_model_call_per_position_of_a_users_events(
    tiny_artifact: Path, redis_target: RedisTarget, redis_client: "redis.Redis"
) -> None:
    settings = Settings(artifact=tiny_artifact, **redis_target.settings, key_prefix="depth")
    # a: 3 events, b: 2, c: 1, interleaved; the second of b is an unknown item.
    plan = [("a", "item-1"), ("b", "item-2"), ("a", "item-3"), ("c", "item-4"),
            ("b", "unknown-item"), ("a", "item-5")]  # fmt: skip
    batch = [Event(user_id=user, item_id=item) for user, item in plan]

    async def main() -> tuple[list[Outcome], list[int]]:
        engine, close = await started_engine(settings)
        recording = RecordingStepper(engine.stepper)
        engine.stepper = recording
        try:
            return await apply_in_order(engine, batch), recording.rows
        finally:
            await close()

    outcomes, rows = asyncio.run(main())
    assert rows == [3, 1, 1]  # a, b, c; then a (b's second is unknown); then a
    assert [outcome.events_applied if outcome else None for outcome in outcomes] == [
        1, 1, 2, 1, 1, 3,
    ]  # fmt: skip
    assert outcomes[4] is not None
    assert outcomes[4].reason == "unknown_item"
    history = redis_client.lrange("depth:v1:{a}:hist", 0, -1)
    assert history == [b"item-1", b"item-3", b"item-5"]
    assert redis_client.lrange("depth:v1:{b}:hist", 0, -1) == [b"item-2", b"unknown-item"]


def test_a_record_written_by_another_worker_is_applied_from_the_record(
    tiny_artifact: Path, redis_target: RedisTarget, redis_client: "redis.Redis"
) -> None:
    """The first engine's copy of ``u`` is stale: its chained writes are all refused, and the
    user's events are applied the ordinary way, in order."""
    settings = Settings(artifact=tiny_artifact, **redis_target.settings, key_prefix="elsewhere")

    async def main() -> list[Outcome]:
        first, close_first = await started_engine(settings)
        second, close_second = await started_engine(settings)
        try:
            await apply_in_order(first, [Event(user_id="u", item_id="item-1")])
            await second.apply(Event(user_id="u", item_id="item-2"), 0, False)
            stale = sample("lrurec_state_cache_events_total", outcome="miss")
            batch = [Event(user_id="u", item_id=f"item-{n}") for n in (3, 4, 5)]
            outcomes = await apply_in_order(first, batch)
            # the refused events were read again by the ordinary path
            assert sample("lrurec_state_cache_events_total", outcome="miss") > stale
            return outcomes
        finally:
            await close_first()
            await close_second()

    outcomes = asyncio.run(main())
    assert [outcome.events_applied if outcome else None for outcome in outcomes] == [3, 4, 5]
    history = redis_client.lrange("elsewhere:v1:{u}:hist", 0, -1)
    assert history == [f"item-{n}".encode() for n in range(1, 6)]


def test_a_state_of_another_model_is_rebuilt_before_the_batch_steps_it(
    tiny_artifact: Path, redis_target: RedisTarget, redis_client: "redis.Redis"
) -> None:
    settings = Settings(
        artifact=tiny_artifact, **redis_target.settings, key_prefix="stalemodel",
        state_cache_users=0,
    )  # fmt: skip

    async def main() -> tuple[list[Outcome], float]:
        engine, close = await started_engine(settings)
        try:
            await apply_in_order(engine, [Event(user_id="u", item_id="item-1")])
            redis_client.hset("stalemodel:v1:{u}:state", "model_version", "an-older-model")
            rebuilds = sample("lrurec_state_rebuilds_total")
            batch = [Event(user_id="u", item_id="item-2"), Event(user_id="v", item_id="item-2")]
            outcomes = await apply_in_order(engine, batch)
            return outcomes, sample("lrurec_state_rebuilds_total") - rebuilds
        finally:
            await close()

    outcomes, rebuilt = asyncio.run(main())
    assert rebuilt == 1
    assert [outcome.events_applied if outcome else None for outcome in outcomes] == [2, 1]
    stored = redis_client.hget("stalemodel:v1:{u}:state", "model_version")
    assert stored is not None
    assert stored != b"an-older-model"


def test_a_users_failed_write_leaves_its_later_events_unapplied_and_others_applied(
    tiny_artifact: Path, redis_target: RedisTarget, redis_client: "redis.Redis"
) -> None:
    """A script error for one user's write (its event-id key holds a string, which the write
    checks before changing anything) fails that user's events, which are reported unapplied
    for a retry, and no other user's."""
    settings = Settings(artifact=tiny_artifact, **redis_target.settings, key_prefix="failing")
    redis_client.set("failing:v1:{broken}:eids", "not a sorted set")
    users = ("ok", "broken", "ok", "broken")
    batch = [
        Event(user_id=user, item_id="item-1", event_id=f"e{n}") for n, user in enumerate(users)
    ]

    async def main() -> list[Outcome]:
        engine, close = await started_engine(settings)
        try:
            return await apply_in_order(engine, batch)
        finally:
            await close()

    rejected = sample("lrurec_events_total", outcome="rejected")
    outcomes = asyncio.run(main())
    assert outcomes[1] is None
    assert outcomes[3] is None
    assert [outcome.events_applied if outcome else None for outcome in outcomes[::2]] == [1, 2]
    assert sample("lrurec_events_total", outcome="rejected") == rejected + 2
    assert redis_client.llen("failing:v1:{ok}:hist") == 2
    assert redis_client.hget("failing:v1:{broken}:state", "version") is None  # nothing written


def test_batches_handed_in_together_are_applied_as_one(
    tiny_artifact: Path, redis_target: RedisTarget
) -> None:
    """The consumer's shard tasks hand their batches to one Coalescer: those handed in during
    one event-loop iteration share one model call per position, each gets its own outcomes,
    and a batch handed in later is applied on its own."""
    settings = Settings(artifact=tiny_artifact, **redis_target.settings, key_prefix="merged")
    shard_a = [Event(user_id="a", item_id=f"item-{n}", event_id=f"a{n}") for n in (1, 2)]
    shard_b = [Event(user_id="b", item_id="item-3", event_id="b1")]
    later = [Event(user_id="c", item_id="item-4", event_id="c1")]

    async def main() -> tuple[list[list[Outcome]], list[int]]:
        engine, close = await started_engine(settings)
        recording = RecordingStepper(engine.stepper)
        engine.stepper = recording
        coalescer = Coalescer(lambda: engine)
        try:
            together = await asyncio.gather(coalescer.apply(shard_a), coalescer.apply(shard_b))
            return [*together, await coalescer.apply(later)], recording.rows
        finally:
            await close()

    (for_a, for_b, for_later), rows = asyncio.run(main())
    assert rows == [2, 1, 1]  # a's and b's first events together, a's second, then c's
    assert [outcome.events_applied if outcome else None for outcome in for_a] == [1, 2]
    assert [outcome.user_id if outcome else None for outcome in for_b] == ["b"]
    assert [outcome.user_id if outcome else None for outcome in for_later] == ["c"]


class PoisonedStepper(RecordingStepper):
    """The real backend, failing (as a bug would) on any step that includes one item."""

    def __init__(self, inner: Any, poison: int) -> None:
        super().__init__(inner)
        self.poison = poison

    def step(self, items: Any, states: Any) -> Any:
        if self.poison in list(items):
            raise RuntimeError("the model cannot take this item")
        return super().step(items, states)


def test_a_failure_in_a_merged_batch_stops_only_the_batch_that_caused_it(
    tiny_artifact: Path, redis_target: RedisTarget
) -> None:
    settings = Settings(artifact=tiny_artifact, **redis_target.settings, key_prefix="poison")
    poisoned = [Event(user_id="p", item_id="item-7", event_id="p1")]
    healthy = [Event(user_id="h", item_id="item-8", event_id="h1")]

    async def main() -> list[object]:
        engine, close = await started_engine(settings)
        poison = engine.index("item-7")
        assert poison is not None
        engine.stepper = PoisonedStepper(engine.stepper, poison)
        coalescer = Coalescer(lambda: engine)
        try:
            return list(await asyncio.gather(
                coalescer.apply(poisoned), coalescer.apply(healthy), return_exceptions=True
            ))  # fmt: skip
        finally:
            await close()

    for_poisoned, for_healthy = asyncio.run(main())
    assert isinstance(for_poisoned, RuntimeError)
    assert isinstance(for_healthy, list)
    assert [outcome.events_applied if outcome else None for outcome in for_healthy] == [1]
