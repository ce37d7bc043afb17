"""The batched event lane (service.engine.lane) gives the same answers and records as applying
each event on its own (``batch_events=False``, the reference path), and really batches."""

import asyncio
import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import redis
from redis.cluster import RedisCluster

from service.engine.engine import Engine
from service.runtimes.protocol import Exclusion, FloatArray, IndexArray, Stepper
from service.schemas import Event
from service.settings import Settings
from tests.conftest import RedisTarget
from tests.metrics import sample
from tests.service.engines import started_engine

pytestmark = pytest.mark.redis_topologies

Script = list[list[tuple[Event, int, bool]]]
"""Rounds of ``(event, k, exclude_seen)``; a round's events are applied concurrently."""


class RecordingStepper:
    """The real backend, recording the rows of every step and step+top-k call."""

    def __init__(self, inner: Stepper) -> None:
        self.inner = inner
        self.rows: list[int] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def step(self, items: IndexArray, states: FloatArray) -> tuple[FloatArray, FloatArray]:
        self.rows.append(len(items))
        return self.inner.step(items, states)

    def step_top_k(
        self, items: IndexArray, states: FloatArray, k: int, exclude: Sequence[Exclusion]
    ) -> tuple[FloatArray, FloatArray, list[tuple[IndexArray, FloatArray]]]:
        self.rows.append(len(items))
        return self.inner.step_top_k(items, states, k, exclude)


def _script(seed: int = 0) -> Script:
    """Twelve users over eight rounds: repeated users inside a round, unknown items, repeated
    event ids, k of 0/3/10 and exclude_seen on and off."""
    rng = random.Random(seed)
    rounds: Script = []
    event_ids: list[str] = []
    for round_number in range(8):
        events = []
        for n in range(16):
            user = f"lane-{rng.randrange(12)}"
            item = "unknown-item" if rng.random() < 0.1 else f"item-{rng.randrange(1, 51)}"
            event_id: str | None = f"e{round_number}-{n}"
            if event_ids and rng.random() < 0.1:
                event_id = rng.choice(event_ids)  # a duplicate delivery (maybe another user's id)
            elif rng.random() < 0.3:
                event_id = None
            if event_id is not None:
                event_ids.append(event_id)
            event = Event(user_id=user, item_id=item, event_id=event_id)
            events.append((event, rng.choice([0, 3, 10]), rng.random() < 0.7))
        rounds.append(events)
    return rounds


async def _applied(engine: Engine, script: Script) -> list[dict[str, Any]]:
    answers: list[dict[str, Any]] = []
    for events in script:
        outcomes = await asyncio.gather(*(engine.apply(*request) for request in events))
        answers += [outcome.result().model_dump() for outcome in outcomes]
    return answers


def _run(settings: Settings, script: Script) -> tuple[list[Any], RecordingStepper]:
    async def main() -> tuple[list[Any], RecordingStepper]:
        engine, close = await started_engine(settings)
        recording = RecordingStepper(engine.stepper)
        engine.stepper = recording
        try:
            return await _applied(engine, script), recording
        finally:
            await close()

    return asyncio.run(main())


def _records(client: "redis.Redis", prefix: str, users: set[str]) -> dict[str, Any]:
    records = {}
    for user in users:
        base = f"{prefix}:v1:{{{user}}}"
        state = client.hgetall(f"{base}:state")
        records[user] = (
            {key: value for key, value in state.items() if key not in (b"token", b"updated_at")},
            client.lrange(f"{base}:hist", 0, -1),
            client.zrange(f"{base}:eids", 0, -1, withscores=True),
        )
    return records


def _assert_same_answers(lane: list[dict[str, Any]], alone: list[dict[str, Any]]) -> None:
    assert len(lane) == len(alone)
    for batched, reference in zip(lane, alone, strict=True):
        ranked, expected = batched.pop("recommendations"), reference.pop("recommendations")
        assert batched == reference
        assert (ranked is None) == (expected is None)
        if ranked is not None and expected is not None:
            assert [r["item_id"] for r in ranked] == [r["item_id"] for r in expected]
            np.testing.assert_allclose(
                [r["score"] for r in ranked], [r["score"] for r in expected], atol=1e-4
            )


def _assert_same_records(lane: dict[str, Any], alone: dict[str, Any]) -> None:
    assert lane.keys() == alone.keys()
    for user, (state, history, event_ids) in lane.items():
        reference_state, reference_history, reference_event_ids = alone[user]
        assert history == reference_history
        assert event_ids == reference_event_ids
        assert state.keys() == reference_state.keys()
        for field in (b"state", b"hidden"):
            np.testing.assert_allclose(
                np.frombuffer(state.pop(field), np.float32),
                np.frombuffer(reference_state.pop(field), np.float32),
                atol=1e-5,
            )
        assert state == reference_state


@pytest.mark.parametrize("state_cache_users", [4096, 5])
def test_the_lane_answers_and_stores_what_one_event_at_a_time_does(
    tiny_artifact: Path,
    redis_target: RedisTarget,
    redis_client: "redis.Redis",
    state_cache_users: int,
) -> None:
    script = _script()
    users = {event.user_id for events in script for event, _, _ in events}
    runs = {}
    for batch_events in (True, False):
        prefix = f"lane{int(batch_events)}{state_cache_users}"
        settings = Settings(
            artifact=tiny_artifact, **redis_target.settings, key_prefix=prefix,
            batch_events=batch_events, state_cache_users=state_cache_users,
        )  # fmt: skip
        answers, recording = _run(settings, script)
        runs[batch_events] = answers, _records(redis_client, prefix, users), recording.rows
    (lane_answers, lane_records, lane_rows), (answers, records, rows) = runs[True], runs[False]
    assert max(rows) == 1  # the reference path: one event per model call
    assert max(lane_rows) > 1  # the lane: batched calls
    assert sum(answer["reason"] == "duplicate" for answer in answers) > 0
    _assert_same_answers(lane_answers, answers)
    _assert_same_records(lane_records, records)


def test_a_users_events_in_one_batch_are_applied_in_arrival_order(
    tiny_artifact: Path, redis_target: RedisTarget, redis_client: "redis.Redis"
) -> None:
    settings = Settings(
        artifact=tiny_artifact,
        redis_url=redis_target.url,
        redis_cluster=redis_target.cluster,
        key_prefix="laneorder",
    )
    items = [f"item-{n}" for n in range(1, 31)]
    script: Script = [[(Event(user_id="ordered", item_id="item-40"), 3, True)]]
    script.append([(Event(user_id="ordered", item_id=item), 3, True) for item in items])
    answers, _ = _run(settings, script)
    assert [answer["events_applied"] for answer in answers] == list(range(1, 32))
    history = redis_client.lrange("laneorder:v1:{ordered}:hist", 0, -1)
    assert history == [item.encode() for item in ["item-40", *items]]


def test_a_stale_copy_in_the_lane_is_refused_and_the_event_applied_from_the_record(
    tiny_artifact: Path, redis_target: RedisTarget, redis_client: "redis.Redis"
) -> None:
    settings = Settings(
        artifact=tiny_artifact,
        redis_url=redis_target.url,
        redis_cluster=redis_target.cluster,
        key_prefix="lanestale",
    )

    async def main() -> list[dict[str, Any]]:
        first, close_first = await started_engine(settings)
        second, close_second = await started_engine(settings)
        try:
            answers = [(await first.apply(Event(user_id="u", item_id="item-1"), 3, True))]
            answers.append(await second.apply(Event(user_id="u", item_id="item-2"), 3, True))
            stale = sample("lrurec_state_cache_events_total", outcome="stale")
            answers.append(await first.apply(Event(user_id="u", item_id="item-3"), 3, True))
            assert sample("lrurec_state_cache_events_total", outcome="stale") == stale + 1
            return [answer.result().model_dump() for answer in answers]
        finally:
            await close_first()
            await close_second()

    answers = asyncio.run(main())
    assert [answer["events_applied"] for answer in answers] == [1, 2, 3]
    history = redis_client.lrange("lanestale:v1:{u}:hist", 0, -1)
    assert history == [b"item-1", b"item-2", b"item-3"]
    recommended = {item["item_id"] for item in answers[2]["recommendations"]}
    assert not recommended & {"item-1", "item-2", "item-3"}  # the record's history, masked


def pause_every_node(client: "redis.Redis", milliseconds: int) -> None:
    if isinstance(client, RedisCluster):  # CLIENT PAUSE acts on the node it is sent to
        client.client_pause(milliseconds, target_nodes=RedisCluster.ALL_NODES)
    else:
        client.client_pause(milliseconds)


async def _iterations(count: int) -> None:
    for _ in range(count):
        await asyncio.sleep(0)


def test_events_arriving_while_batches_are_out_go_out_together(
    tiny_artifact: Path, redis_target: RedisTarget, redis_client: "redis.Redis"
) -> None:
    """With two batches waiting for Redis, the events that arrive meanwhile are held and sent
    as one batch when one comes back."""
    settings = Settings(
        artifact=tiny_artifact,
        redis_url=redis_target.url,
        redis_cluster=redis_target.cluster,
        key_prefix="laneheld",
    )
    users = [f"held-{n}" for n in range(9)]

    async def main() -> tuple[list[int], list[int]]:
        engine, close = await started_engine(settings)
        try:  # first events: every user's record cached, so the next ones take the lane
            await asyncio.gather(*(engine.apply(Event(user_id=u, item_id="item-1"), 0, False)
                                   for u in users))  # fmt: skip
            recording = RecordingStepper(engine.stepper)
            engine.stepper = recording
            pause_every_node(redis_client, 500)  # nothing comes back meanwhile
            events = [Event(user_id=user, item_id="item-2") for user in users]
            calls = [asyncio.ensure_future(engine.apply(event, 3, False)) for event in events[:4]]
            await _iterations(8)  # the first four went out together and wait for Redis
            for event in events[4:]:  # one at a time, each in loop iterations of its own
                calls.append(asyncio.ensure_future(engine.apply(event, 3, False)))
                await _iterations(8)
            outcomes = await asyncio.gather(*calls)
            return recording.rows, [outcome.events_applied for outcome in outcomes]
        finally:
            await close()

    rows, applied = asyncio.run(main())
    assert rows == [4, 1, 4]
    assert applied == [2] * len(users)
