"""An open-loop load for fault tests: events sent on a fixed schedule whatever the answers,
faults injected at set times, every answer and ``/readyz`` recorded."""

import asyncio
import contextlib
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import httpx

ITEMS = [f"sku-{n:04d}" for n in range(1, 41)]  # ids of the demo catalogue `lrurec serve` builds

NO_ANSWER = 0
"""The status recorded for a request whose connection failed before any answer."""

Fault = tuple[float, Callable[[], None]]
"""``(seconds after the start, action)``; the action runs in a thread (it may block)."""


@dataclass
class Load:
    """What a run saw."""

    acknowledged: Counter[str] = field(default_factory=Counter)
    """Events answered 200 and applied, per user."""
    unanswered: list[dict[str, str]] = field(default_factory=list)
    """Events answered 503 or not at all: the client's to retry."""
    statuses: Counter[int] = field(default_factory=Counter)
    bad: list[str] = field(default_factory=list)
    """Answers other than 200 or a Redis 503 with ``Retry-After: 1``."""
    readiness: list[int] = field(default_factory=list)
    """``/readyz`` statuses every 0.1 s; ``NO_ANSWER`` where its connection failed."""
    answers: list[tuple[float, int]] = field(default_factory=list)
    """``(seconds after the start the event was sent, status)`` of every event."""


def round_robin_event(users: int, items: Sequence[str] = ITEMS) -> Callable[[int], dict[str, str]]:
    """Event ``n``: user ``u{n % users}``, an item of ``items``, event id ``e{n}``."""

    def event(n: int) -> dict[str, str]:
        return {"user_id": f"u{n % users}", "item_id": items[n % len(items)], "event_id": f"e{n}"}

    return event


async def _send(
    client: httpx.AsyncClient, event: dict[str, str], load: Load, sent_at: float
) -> None:
    try:
        response = await client.post("/events", params={"k": 0}, json=event)
    except httpx.TransportError:  # no answer at all (its process died): the client retries
        load.statuses[NO_ANSWER] += 1
        load.answers.append((sent_at, NO_ANSWER))
        load.unanswered.append(event)
        return
    load.statuses[response.status_code] += 1
    load.answers.append((sent_at, response.status_code))
    if response.status_code == 200 and response.json()["applied"]:
        load.acknowledged[event["user_id"]] += 1
    elif response.status_code == 503:
        kind = response.json()["error"]
        if not kind.startswith("redis_") or response.headers.get("Retry-After") != "1":
            load.bad.append(response.text)
        load.unanswered.append(event)
    else:
        load.bad.append(f"{response.status_code} {response.text}")


async def _watch_readiness(
    client: httpx.AsyncClient, load: Load, stop: asyncio.Event, recovered: asyncio.Event
) -> None:
    while not stop.is_set():
        try:
            status = (await client.get("/readyz")).status_code
        except httpx.TransportError:  # the probe's connection was held by a worker that died
            status = NO_ANSWER
        load.readiness.append(status)
        if status == 200 and 503 in load.readiness:
            recovered.set()
        await asyncio.sleep(0.1)


async def open_loop(
    base_url: str,
    rate: float,
    seconds: float,
    event: Callable[[int], dict[str, str]],
    faults: Sequence[Fault] = (),
    recovery_timeout: float = 30.0,
) -> tuple[Load, int]:
    """Send ``rate`` events per second for ``seconds``, running each fault at its time; wait
    for every answer and, if ``/readyz`` went 503, until it is 200 again. ``(load, sent)``."""
    load, stop, recovered = Load(), asyncio.Event(), asyncio.Event()
    limits = httpx.Limits(max_connections=64)
    async with httpx.AsyncClient(base_url=base_url, timeout=10.0, limits=limits) as client:
        watcher = asyncio.create_task(_watch_readiness(client, load, stop, recovered))
        pending = sorted(faults, key=lambda fault: fault[0])
        tasks, actions, sent, started = [], [], 0, time.monotonic()
        while (elapsed := time.monotonic() - started) < seconds:
            while pending and elapsed >= pending[0][0]:  # in the background: the load goes on
                actions.append(asyncio.create_task(asyncio.to_thread(pending.pop(0)[1])))
            while sent < elapsed * rate:
                tasks.append(asyncio.create_task(_send(client, event(sent), load, elapsed)))
                sent += 1
            await asyncio.sleep(0.005)
        await asyncio.gather(*actions, *tasks)
        if 503 in load.readiness:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(recovered.wait(), timeout=recovery_timeout)
        stop.set()
        await watcher
    return load, sent
