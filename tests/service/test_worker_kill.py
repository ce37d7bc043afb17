"""A worker of ``lrurec serve --workers 2`` SIGKILLed under a steady open-loop load: its
requests in flight get no answer, the supervisor starts a new worker, and no user's record is
half-written (each event is one script). The clients' retries of every unanswered or 503'd
event, with the same ids, apply each event exactly once."""

import asyncio
import signal
import time
from collections import Counter

import httpx
import numpy as np
import psutil
import pytest
import redis

from cli.demo import ensure_demo_artifact
from model import load_artifact
from tests.service.conftest import lrurec_serve
from tests.service.offline import load_model, stepped, stored_state
from tests.service.open_loop import NO_ANSWER, open_loop, round_robin_event

USERS = 40
RATE = 150.0
"""1,200 events in all: 30 per user, under the demo model's max_len of 50."""
BEFORE, AFTER = 2.0, 6.0


REPLACED_WITHIN = 30.0
"""Seconds for the supervisor to reap and replace a dead worker, half of its 60 s ping timeout.
uvicorn checks its workers every 0.5 s, pinging each in turn; a busy live worker may take
seconds to answer, so on a loaded machine a killed worker can stay a zombie for a while."""


def alive(process: psutil.Process) -> bool:
    """Running and not a zombie (a zombie has exited; only its parent has not reaped it yet)."""
    try:
        return bool(process.is_running() and process.status() != psutil.STATUS_ZOMBIE)
    except psutil.NoSuchProcess:
        return False


def workers(supervisor: int) -> list[psutil.Process]:
    """The live uvicorn worker processes under ``lrurec serve`` (spawned by multiprocessing;
    not its redis-server or multiprocessing's resource tracker)."""
    found = []
    for child in psutil.Process(supervisor).children(recursive=True):
        try:
            if alive(child) and "spawn_main" in " ".join(child.cmdline()):
                found.append(child)
        except psutil.NoSuchProcess:  # ended while we looked (ZombieProcess is a subclass)
            continue
    return found


def wait_for_workers(supervisor: int, count: int) -> None:
    deadline = time.monotonic() + REPLACED_WITHIN
    while len(workers(supervisor)) != count:
        assert time.monotonic() < deadline, f"not {count} live workers after {REPLACED_WITHIN}s"
        time.sleep(0.1)


@pytest.mark.slow
def test_a_worker_killed_under_load_leaves_no_half_written_state(redis_url: str) -> None:
    options = ("--redis-url", redis_url, "--workers", "2")
    with lrurec_serve(*options) as server:
        before = workers(server.process.pid)
        assert len(before) == 2
        victim = before[0]
        load, sent = asyncio.run(
            open_loop(server.base_url, RATE, BEFORE + AFTER, round_robin_event(USERS),
                      [(BEFORE, lambda: victim.send_signal(signal.SIGKILL))])
        )  # fmt: skip
        assert not alive(victim)
        assert load.bad == [], load.bad[:5]
        assert set(load.statuses) <= {200, 503, NO_ANSWER}, load.statuses

        for event in load.unanswered:  # the clients' retries, with the same ids
            retried = httpx.post(f"{server.base_url}/events", params={"k": 0}, json=event)
            assert retried.status_code == 200, retried.text
        wait_for_workers(server.process.pid, 2)  # the supervisor replaced the dead one
        assert victim.pid not in {worker.pid for worker in workers(server.process.pid)}

        artifact = ensure_demo_artifact()
        model, index = load_model(artifact), load_artifact(str(artifact)).index_of()
        expected = Counter(f"u{n % USERS}" for n in range(sent))
        client = redis.Redis.from_url(redis_url)
        for user in (f"u{n}" for n in range(USERS)):
            info = httpx.get(f"{server.base_url}/users/{user}").json()
            assert info["events_applied"] == expected[user]  # each event exactly once
            history = info["recent_items"]
            assert len(history) == expected[user]  # fewer than max_len: every event is kept
            _, state = stepped(model, [index[item] for item in history])
            np.testing.assert_allclose(
                stored_state(client, user), state.flatten().numpy(), atol=1e-5
            )
        client.close()


@pytest.mark.slow
def test_a_worker_killed_while_the_supervisor_waits_for_its_ping_is_replaced(
    redis_url: str,
) -> None:
    """The supervisor's health ping of a stopped worker waits up to its 60 s timeout; a kill
    during that wait must end the wait at once, not when it times out."""
    with lrurec_serve("--redis-url", redis_url, "--workers", "2") as server:
        victim = workers(server.process.pid)[0]
        victim.send_signal(signal.SIGSTOP)  # the next ping of it waits for an answer ...
        time.sleep(1.5)
        victim.send_signal(signal.SIGKILL)  # ... and the worker dies during that wait
        wait_for_workers(server.process.pid, 2)
        assert victim.pid not in {worker.pid for worker in workers(server.process.pid)}
        assert httpx.get(f"{server.base_url}/readyz").status_code == 200
