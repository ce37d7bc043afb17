"""Busy polling (service.busy_poll): the event loop keeps iterating, without sleeping, for the
window after each request, and falls asleep once the window passes without one."""

import asyncio
import time
from pathlib import Path

import httpx
import pytest

from service.busy_poll import BusyPoll
from service.engine import Engine
from service.settings import Settings
from tests.service.wire import serving, wait_until

WINDOW = 0.2
"""Seconds; wide enough that a slow CI machine's scheduling cannot end a window early."""


async def _polls_during(poll: BusyPoll, seconds: float) -> int:
    before = poll.polls
    await asyncio.sleep(seconds)
    return poll.polls - before


def test_polls_for_the_window_after_a_touch_then_sleeps() -> None:
    async def scenario() -> None:
        poll = BusyPoll(WINDOW)
        assert not poll.polling
        poll.touch()
        assert poll.polling
        # While polling, the loop iterates instead of blocking until the sleep's timer: one
        # iteration takes microseconds, so a tenth of the window holds many of them.
        assert await _polls_during(poll, WINDOW / 10) > 20
        await asyncio.sleep(WINDOW * 1.5)
        assert not poll.polling
        assert await _polls_during(poll, WINDOW / 4) == 0  # asleep: nothing runs the poll

    asyncio.run(scenario())


def test_a_touch_while_polling_extends_the_window() -> None:
    async def scenario() -> None:
        poll = BusyPoll(WINDOW)
        poll.touch()
        await asyncio.sleep(WINDOW * 0.75)
        poll.touch()
        await asyncio.sleep(WINDOW * 0.75)  # past the first window, inside the second
        assert poll.polling
        await asyncio.sleep(WINDOW * 1.5)
        assert not poll.polling
        poll.touch()  # polling starts again after a sleep
        assert poll.polling
        assert await _polls_during(poll, WINDOW / 10) > 20

    asyncio.run(scenario())


def test_stop_ends_polling_inside_the_window() -> None:
    async def scenario() -> None:
        poll = BusyPoll(10.0)
        poll.touch()
        await asyncio.sleep(0.01)
        poll.stop()
        await asyncio.sleep(0.01)
        assert not poll.polling
        poll.touch()  # a request during shutdown does not start it again
        assert not poll.polling

    asyncio.run(scenario())


def test_a_window_must_be_positive() -> None:
    with pytest.raises(ValueError, match="positive"):
        BusyPoll(0.0)


def test_off_by_default(tiny_artifact: Path, redis_url: str) -> None:
    assert Settings(artifact=tiny_artifact, redis_url=redis_url).busy_poll_us == 0


def test_the_service_polls_after_an_event_and_sleeps_when_idle(
    tiny_artifact: Path, redis_url: str
) -> None:
    settings = Settings(artifact=tiny_artifact, redis_url=redis_url, busy_poll_us=int(WINDOW * 1e6))
    with serving(settings) as (app, port):
        engine: Engine = app.state.engine
        poll = engine.busy_poll
        assert poll is not None
        assert poll.window == WINDOW
        base = f"http://127.0.0.1:{port}"
        answer = httpx.post(f"{base}/events?k=3", json={"user_id": "poller", "item_id": "item-1"})
        assert answer.status_code == 200
        assert answer.json()["applied"] is True
        assert poll.polling  # the answer came back well inside the window
        wait_until(lambda: not poll.polling, timeout=5.0)
        polls = poll.polls
        time.sleep(WINDOW)
        assert poll.polls == polls  # no request, no polling
        answer = httpx.get(f"{base}/recommendations/poller?k=3")
        assert answer.status_code == 200
        assert len(answer.json()["items"]) == 3
        assert poll.polling  # a read polls too
