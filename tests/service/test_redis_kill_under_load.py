"""Redis SIGKILLed for 5 s under a steady open-loop load, then restarted from its append-only
file (``appendfsync always``): the service answers only 200 or a Redis 503 with Retry-After,
``/readyz`` goes 503 and back to 200 by itself, and no acknowledged event is lost.

A 503'd event may still have been written (its reply lost with the server): the client's
retries with the same event ids then apply each event exactly once.
"""

import asyncio
import contextlib
import signal
import subprocess
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
import redis

from cli.embedded_redis import free_port, redis_server_binary
from tests.service.conftest import lrurec_serve

USERS = 20
RATE = 100.0
"""Events per second, sent on a fixed schedule whatever the answers (open loop)."""
BEFORE, DOWN, AFTER = 2.0, 5.0, 4.0
ITEMS = [f"sku-{n:04d}" for n in range(1, 41)]  # ids of the demo catalogue `lrurec serve` builds


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


@dataclass
class Load:
    acknowledged: Counter[str] = field(default_factory=Counter)
    unanswered: list[dict[str, str]] = field(default_factory=list)
    statuses: Counter[int] = field(default_factory=Counter)
    bad: list[str] = field(default_factory=list)
    readiness: list[int] = field(default_factory=list)


async def send(client: httpx.AsyncClient, event: dict[str, str], load: Load) -> None:
    response = await client.post("/events", params={"k": 0}, json=event)
    load.statuses[response.status_code] += 1
    if response.status_code == 200 and response.json()["applied"]:
        load.acknowledged[event["user_id"]] += 1
    elif response.status_code == 503:
        kind = response.json()["error"]
        if not kind.startswith("redis_") or response.headers.get("Retry-After") != "1":
            load.bad.append(response.text)
        load.unanswered.append(event)
    else:
        load.bad.append(f"{response.status_code} {response.text}")


async def watch_readiness(
    client: httpx.AsyncClient, load: Load, stop: asyncio.Event, recovered: asyncio.Event
) -> None:
    while not stop.is_set():
        status = (await client.get("/readyz")).status_code
        load.readiness.append(status)
        if status == 200 and 503 in load.readiness:
            recovered.set()
        await asyncio.sleep(0.1)


async def run_load(base_url: str, redis_server: DurableRedis) -> tuple[Load, int]:
    load, stop, recovered = Load(), asyncio.Event(), asyncio.Event()
    limits = httpx.Limits(max_connections=64)
    async with httpx.AsyncClient(base_url=base_url, timeout=10.0, limits=limits) as client:
        watcher = asyncio.create_task(watch_readiness(client, load, stop, recovered))
        tasks, sent, started = [], 0, time.monotonic()
        killed = restarted = False
        while (elapsed := time.monotonic() - started) < BEFORE + DOWN + AFTER:
            if not killed and elapsed >= BEFORE:
                redis_server.kill()
                killed = True
            if not restarted and elapsed >= BEFORE + DOWN:
                await asyncio.to_thread(redis_server.start)  # replays the append-only file
                restarted = True
            while sent < elapsed * RATE:
                event = {"user_id": f"u{sent % USERS}", "item_id": ITEMS[sent % len(ITEMS)],
                         "event_id": f"e{sent}"}  # fmt: skip
                tasks.append(asyncio.create_task(send(client, event, load)))
                sent += 1
            await asyncio.sleep(0.005)
        await asyncio.gather(*tasks)
        # Ready again by itself, without a restart of the service.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(recovered.wait(), timeout=30)
        stop.set()
        await watcher
    return load, sent


def test_redis_killed_and_restarted_loses_no_acknowledged_event(
    durable_redis: DurableRedis,
) -> None:
    environment = {"LRUREC_REDIS_TIMEOUT_SECONDS": "0.5", "LRUREC_REDIS_RETRIES": "1"}
    with lrurec_serve("--redis-url", durable_redis.url, environment=environment) as server:
        load, sent = asyncio.run(run_load(server.base_url, durable_redis))
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
