"""Redis SIGKILLed for 5 s under a steady open-loop load, then restarted from its append-only
file (``appendfsync always``): the service answers only 200 or a Redis 503 with Retry-After,
``/readyz`` goes 503 and back to 200 by itself, and no acknowledged event is lost.

A 503'd event may still have been written (its reply lost with the server): the client's
retries with the same event ids then apply each event exactly once.
"""

import asyncio
import signal
import subprocess
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import redis

from cli.embedded_redis import free_port, redis_server_binary
from tests.service.conftest import lrurec_serve
from tests.service.open_loop import open_loop, round_robin_event

USERS = 20
RATE = 100.0
"""Events per second, sent on a fixed schedule whatever the answers (open loop)."""
BEFORE, DOWN, AFTER = 2.0, 5.0, 4.0


class DurableRedis:
    """A redis-server persisting every write to its append-only file before answering."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        command = [
            str(redis_server_binary()), "--bind", "127.0.0.1", "--port", str(self.port),
            "--dir", str(self.directory), "--appendonly", "yes", "--appendfsync", "always",
            "--save", "", "--loglevel", "warning",
        ]  # fmt: skip
        self.process = subprocess.Popen(command, stdout=subprocess.DEVNULL)
        client = redis.Redis.from_url(self.url, socket_connect_timeout=0.2)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                if client.ping():
                    return
            except (redis.ConnectionError, redis.BusyLoadingError):
                time.sleep(0.05)
        raise AssertionError("redis-server did not start")

    def kill(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait()


@pytest.fixture
def durable_redis(tmp_path: Path) -> Iterator[DurableRedis]:
    server = DurableRedis(tmp_path)
    server.start()
    try:
        yield server
    finally:
        if server.process is not None and server.process.poll() is None:
            server.kill()


def test_redis_killed_and_restarted_loses_no_acknowledged_event(
    durable_redis: DurableRedis,
) -> None:
    environment = {"LRUREC_REDIS_TIMEOUT_SECONDS": "0.5", "LRUREC_REDIS_RETRIES": "1"}
    with lrurec_serve("--redis-url", durable_redis.url, environment=environment) as server:
        faults = [(BEFORE, durable_redis.kill), (BEFORE + DOWN, durable_redis.start)]
        load, sent = asyncio.run(
            open_loop(
                server.base_url, RATE, BEFORE + DOWN + AFTER, round_robin_event(USERS), faults
            )
        )
        assert load.bad == [], load.bad[:5]
        assert set(load.statuses) <= {200, 503}, load.statuses
        assert load.statuses[503] > 0, "the outage was not seen"
        assert 503 in load.readiness
        assert load.readiness[-1] == 200

        applied = {
            f"u{n}": httpx.get(f"{server.base_url}/users/u{n}").json()["events_applied"]
            for n in range(USERS)
        }
        for user, count in load.acknowledged.items():
            assert applied[user] >= count, (user, applied[user], count)  # none lost

        for event in load.unanswered:  # the clients' retries, with the same ids
            retried = httpx.post(f"{server.base_url}/events", params={"k": 0}, json=event)
            assert retried.status_code == 200, retried.text
        expected = Counter(f"u{n % USERS}" for n in range(sent))
        for n in range(USERS):
            info = httpx.get(f"{server.base_url}/users/u{n}").json()
            assert info["events_applied"] == expected[f"u{n}"]  # each event exactly once
