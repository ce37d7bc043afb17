"""A batch task of the event lane (service.engine.lane) cancelled, as at shutdown: its events are
answered, and none is applied twice."""

import asyncio
from collections.abc import Coroutine, Generator
from pathlib import Path
from typing import Any, TypeVar, cast

import orjson
import pytest
import redis
from starlette.requests import Request

from service.app import create_app
from service.engine.lane import UnknownOutcomeError
from service.schemas import Event
from service.settings import Settings
from tests.metrics import sample
from tests.service.engines import started_engine

USER = "cancelled"
T = TypeVar("T")


class LaneTasks:
    """A task factory that keeps the lane's batch tasks, cancelling each as it is created when
    ``cancel_at_creation`` (before its first step: no line of it runs)."""

    def __init__(self, cancel_at_creation: bool) -> None:
        self.cancel_at_creation = cancel_at_creation
        self.created: list[asyncio.Task[Any]] = []

    def __call__(
        self,
        loop: asyncio.AbstractEventLoop,
        coro: Coroutine[Any, Any, T] | Generator[Any, None, T],
    ) -> "asyncio.Future[T]":
        task = asyncio.Task(coro, loop=loop)
        if getattr(coro, "__qualname__", "") == "EventLane._run":
            self.created.append(task)
            if self.cancel_at_creation:
                task.cancel()
        return task


def _history(client: "redis.Redis", prefix: str) -> list[bytes]:
    return cast(list[bytes], client.lrange(f"{prefix}:v1:{{{USER}}}:hist", 0, -1))


def _events_applied(client: "redis.Redis", prefix: str) -> int:
    return int(client.hget(f"{prefix}:v1:{{{USER}}}:state", "events_applied") or 0)


@pytest.fixture
def unpaused(redis_client: "redis.Redis") -> Generator[None]:
    yield
    redis_client.client_unpause()


def test_a_batch_cancelled_before_its_first_step_leaves_its_event_to_the_ordinary_path(
    tiny_artifact: Path, redis_url: str, redis_client: "redis.Redis"
) -> None:
    prefix = "lanecancelfirst"
    settings = Settings(artifact=tiny_artifact, redis_url=redis_url, key_prefix=prefix)
    tasks = LaneTasks(cancel_at_creation=True)

    async def main() -> int:
        engine, close = await started_engine(settings)
        try:  # the first event caches the user's record, so the second one takes the lane
            await engine.apply(Event(user_id=USER, item_id="item-1"), 3, True)
            asyncio.get_running_loop().set_task_factory(tasks)
            second = engine.apply(Event(user_id=USER, item_id="item-2"), 3, True)
            applied = await asyncio.wait_for(second, timeout=10)  # never answered: times out
            return applied.events_applied
        finally:
            asyncio.get_running_loop().set_task_factory(None)
            await close()

    assert asyncio.run(main()) == 2
    assert len(tasks.created) == 1
    assert tasks.created[0].cancelled()
    assert _history(redis_client, prefix) == [b"item-1", b"item-2"]
    assert _events_applied(redis_client, prefix) == 2


def test_a_batch_cancelled_after_its_write_was_sent_answers_unknown_and_applies_it_once(
    tiny_artifact: Path, redis_url: str, redis_client: "redis.Redis", unpaused: None
) -> None:
    """The write reaches Redis after the cancel; applying the event (it has no id) again on the
    ordinary path would count it twice. The caller gets a Redis error (503, retry with an id)."""
    prefix = "lanecancelsent"
    settings = Settings(artifact=tiny_artifact, redis_url=redis_url, key_prefix=prefix)
    tasks = LaneTasks(cancel_at_creation=False)

    async def main() -> tuple[BaseException | None, int]:
        engine, close = await started_engine(settings)
        try:
            await engine.apply(Event(user_id=USER, item_id="item-1"), 3, True)
            asyncio.get_running_loop().set_task_factory(tasks)
            redis_client.client_pause(300)  # the write is sent and waits for its reply
            second = asyncio.ensure_future(
                engine.apply(Event(user_id=USER, item_id="item-2"), 3, True)
            )
            for _ in range(8):
                await asyncio.sleep(0)
            assert len(tasks.created) == 1
            assert not tasks.created[0].done()
            tasks.created[0].cancel()
            answered, _ = await asyncio.wait([second], timeout=10)
            assert answered, "the cancelled batch's event was never answered"
            error = second.exception()
            stale = sample("lrurec_state_cache_events_total", outcome="stale")
            third = await engine.apply(Event(user_id=USER, item_id="item-3"), 3, True)
            assert (
                sample("lrurec_state_cache_events_total", outcome="stale") == stale
            )  # the copy was dropped, not tried
            return error, third.events_applied
        finally:
            asyncio.get_running_loop().set_task_factory(None)
            await close()

    error, applied_after = asyncio.run(main())
    assert isinstance(error, UnknownOutcomeError)
    # The cancelled write may or may not have reached Redis (the client drops a connection whose
    # reply it stops waiting for); either way it landed at most once, and the next event
    # followed the record as it is, not the worker's copy.
    history = _history(redis_client, prefix)
    assert history in ([b"item-1", b"item-2", b"item-3"], [b"item-1", b"item-3"])
    assert applied_after == _events_applied(redis_client, prefix) == len(history)


def test_an_unknown_outcome_is_answered_503_redis_unavailable(
    tiny_artifact: Path, redis_url: str
) -> None:
    """The app answers an exception with its handler for the nearest class in its MRO
    (Starlette's lookup): a Redis timeout's, 503 with ``Retry-After``."""
    app = create_app(Settings(artifact=tiny_artifact, redis_url=redis_url))
    error = UnknownOutcomeError("the event's write was sent but its reply never read")
    handler = next(app.exception_handlers[kind] for kind in type(error).__mro__
                   if kind in app.exception_handlers)  # fmt: skip
    scope = {"type": "http", "method": "POST", "path": "/events", "headers": []}
    response = asyncio.run(cast(Any, handler(Request(scope), error)))
    assert response.status_code == 503
    assert orjson.loads(response.body)["error"] == "redis_unavailable"
    assert response.headers["retry-after"] == "1"
