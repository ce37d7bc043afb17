"""Open-loop HTTP load generator: fixed arrival rate, latency from the intended send time.

A closed-loop client (send, wait, send) slows down with the server and so hides queueing: the
requests it would have sent while the server stalled never exist ("coordinated omission"). Here
the send times are fixed in advance (a Poisson or uniform schedule at ``rate`` requests/s) and a
request's latency runs from its *intended* send time to the last byte of its response, so time
spent waiting for a free connection, or behind a stalled server, is counted.

The client is raw HTTP/1.1 over keep-alive connections on asyncio protocols (no tasks, no
streams, requests pre-encoded): per request it costs a few tens of microseconds of CPU, little
next to the server it shares the machine with. Each connection carries one request at a time
(no pipelining); a request due while every connection is busy waits in a FIFO queue. With
``keys`` (one per request, e.g. its user) a request goes over the connection its key picks
instead, and waits for that one: each user's events then travel in order over one connection,
as a consumer of a stream partitioned by user sends them, and so reach one server process. At
most ``max_outstanding`` requests are in flight or queued: a request due beyond that is not sent
and counted as ``dropped`` (the offered load then exceeds what the run can even queue).
"""

import asyncio
import math
import random
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import cast

MIN_SLEEP = 0.001
"""The shortest wait between sends (s). uvloop rounds a timer to the nearest millisecond, so a
shorter sleep returns at once: waiting for a send due in under 0.5 ms spun the loop, and the
generator burned up to a core the server shares (measured: 212,000 wake-ups/s for
``sleep(0.0003)``). Requests that fall due meanwhile go out together, late by at most about a
millisecond; that lateness is part of their latency and shown as the send lag."""


@dataclass(frozen=True)
class LoadSpec:
    """One open-loop run: ``rate`` requests/s for ``warmup + duration`` seconds."""

    rate: float
    duration: float = 8.0
    warmup: float = 2.0
    connections: int = 64
    max_outstanding: int = 2000
    schedule: str = "poisson"
    """``poisson`` (exponential gaps) or ``uniform`` (equal gaps)."""
    drain_timeout: float = 5.0
    """Seconds to wait for outstanding answers after the last send; late ones are errors."""
    seed: int = 0
    connect_interval: float = 0.01
    """Pause between opening connections: a burst of connects is accepted by whichever server
    process wakes first (uvicorn's workers share one listening socket), pinning every
    keep-alive connection to one worker; spaced out, they spread over the workers."""


@dataclass
class LoadResult:
    """Latencies (seconds, from intended send time) of requests intended inside the window."""

    spec: LoadSpec
    latencies: list[float] = field(default_factory=list)
    completed_in_window: int = 0
    """2xx answers that arrived inside the measured window (the achieved throughput)."""
    errors: int = 0
    """Non-2xx answers, broken connections and answers missing at the end of the drain."""
    dropped: int = 0
    client_cpu_seconds: float = 0.0
    send_lags: list[float] = field(default_factory=list)
    """Actual minus intended send time: waiting for a free connection, and the generator's own
    timer resolution (~1 ms on uvloop); part of every latency, so shown apart."""

    @property
    def achieved_rate(self) -> float:
        return self.completed_in_window / self.spec.duration

    def percentile_ms(self, q: float) -> float:
        """Nearest-rank percentile ``q`` (0-100) in ms; NaN without samples."""
        if not self.latencies:
            return math.nan
        ordered = sorted(self.latencies)
        rank = max(1, math.ceil(q / 100 * len(ordered)))
        return ordered[rank - 1] * 1e3

    def summary(self) -> dict[str, float | int]:
        """One table row: offered vs achieved rate, percentiles (ms), errors."""
        row: dict[str, float | int] = {
            "offered_rps": round(self.spec.rate, 1),
            "achieved_rps": round(self.achieved_rate, 1),
        }
        for name, q in (("p50", 50), ("p90", 90), ("p99", 99), ("p99.9", 99.9), ("max", 100)):
            row[f"{name}_ms"] = round(self.percentile_ms(q), 2)
        lags = sorted(self.send_lags)
        row["send_lag_p99_ms"] = round(lags[int(0.99 * (len(lags) - 1))] * 1e3, 2) if lags else 0.0
        row.update(errors=self.errors, dropped=self.dropped, samples=len(self.latencies))
        return row


def send_times(spec: LoadSpec) -> list[float]:
    """Intended send offsets (seconds from the start) over ``warmup + duration``."""
    total = spec.warmup + spec.duration
    if spec.schedule == "uniform":
        return [i / spec.rate for i in range(math.ceil(total * spec.rate))]
    if spec.schedule != "poisson":
        raise ValueError(f"unknown schedule {spec.schedule!r}; use poisson or uniform")
    rng = random.Random(spec.seed)
    times, now = [], 0.0
    while (now := now + rng.expovariate(spec.rate)) < total:
        times.append(now)
    return times


class _Connection(asyncio.Protocol):
    """One keep-alive connection; parses answers by Content-Length (no chunked bodies)."""

    def __init__(self, run: "_Run") -> None:
        self.run = run
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.intended = 0.0
        self.waiting: deque[tuple[float, bytes]] = deque()
        """Keyed runs: requests due for this connection while it was busy, oldest first."""
        self.lost = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement the interface without subclassing asyncio.Transport.
        self.transport = cast(asyncio.Transport, transport)

    def send(self, request: bytes, intended: float) -> None:
        assert self.transport is not None
        self.intended = intended
        if self.run.window[0] <= intended < self.run.window[1]:
            self.run.result.send_lags.append(time.perf_counter() - intended)
        self.transport.write(request)

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        end = self.buffer.find(b"\r\n\r\n")
        if end < 0:
            return
        head = bytes(self.buffer[:end]).lower()
        start = head.find(b"content-length:")
        length = 0
        if start >= 0:
            line_end = head.find(b"\r\n", start)
            length = int(head[start + 15 : line_end if line_end >= 0 else None])
        if len(self.buffer) < end + 4 + length:
            return
        del self.buffer[: end + 4 + length]
        self.run.answered(self, head[9:12] in (b"200", b"201", b"202"), self.intended)

    def connection_lost(self, exc: Exception | None) -> None:
        self.run.lost(self)


class _Run:
    """The state of one run: free connections, the wait queue and the counters."""

    def __init__(
        self, spec: LoadSpec, requests: Sequence[bytes], keys: Sequence[int] | None
    ) -> None:
        self.spec = spec
        self.requests = requests
        self.keys = keys
        self.result = LoadResult(spec)
        self.window = (math.inf, math.inf)
        self.connections: list[_Connection] = []
        self.free: list[_Connection] = []
        """Unkeyed runs: connections without a request."""
        self.busy: set[_Connection] = set()
        self.queue: deque[tuple[float, bytes]] = deque()
        """Unkeyed runs: requests due while every connection was busy, oldest first."""
        self.queued = 0
        """Requests waiting, in ``queue`` or (keyed) a connection's own."""
        self.sent = 0
        self.done = asyncio.get_running_loop().create_future()
        self.scheduled_all = False

    @property
    def outstanding(self) -> int:
        return len(self.busy) + self.queued

    def submit(self, intended: float) -> None:
        if self.outstanding >= self.spec.max_outstanding:
            self.result.dropped += self._in_window(intended)
            return
        number = self.sent % len(self.requests)
        request = self.requests[number]
        self.sent += 1
        if self.keys is None:
            connection = self.free.pop() if self.free else None
            waiting = self.queue
        else:
            connection = self.connections[self.keys[number] % len(self.connections)]
            waiting = connection.waiting
            if connection.lost:  # its key has nowhere to go
                self.result.errors += self._in_window(intended)
                return
            if connection in self.busy:
                connection = None
        if connection is None:
            waiting.append((intended, request))
            self.queued += 1
        else:
            self.busy.add(connection)
            connection.send(request, intended)

    def _in_window(self, moment: float) -> bool:
        return self.window[0] <= moment < self.window[1]

    def answered(self, connection: _Connection, ok: bool, intended: float) -> None:
        now = time.perf_counter()
        if self._in_window(intended):
            if ok:
                self.result.latencies.append(now - intended)
            else:
                self.result.errors += 1
        if ok and self._in_window(now):
            self.result.completed_in_window += 1
        waiting = self.queue if self.keys is None else connection.waiting
        if waiting:
            queued_intended, request = waiting.popleft()
            self.queued -= 1
            connection.send(request, queued_intended)
        else:
            self.busy.discard(connection)
            if self.keys is None:
                self.free.append(connection)
            self._maybe_done()

    def lost(self, connection: _Connection) -> None:
        connection.lost = True
        if connection in self.free:
            self.free.remove(connection)
        if connection in self.busy:
            self.busy.discard(connection)
            self.result.errors += self._in_window(connection.intended)
        self.result.errors += sum(self._in_window(moment) for moment, _ in connection.waiting)
        self.queued -= len(connection.waiting)
        connection.waiting.clear()
        self._maybe_done()

    def unanswered(self) -> list[float]:
        """Intended send times of the requests still in flight or waiting."""
        waiting = [*self.queue, *(entry for c in self.connections for entry in c.waiting)]
        return [c.intended for c in self.busy] + [moment for moment, _ in waiting]

    def _maybe_done(self) -> None:
        if self.scheduled_all and not self.busy and not self.queued and not self.done.done():
            self.done.set_result(None)


async def run_load(
    addresses: Sequence[tuple[str, int]], requests: Sequence[bytes], spec: LoadSpec,
    keys: Sequence[int] | None = None,
) -> LoadResult:  # fmt: skip
    """Offer ``spec.rate`` requests/s of ``requests`` (cycled) to the servers at ``addresses``.

    Args:
        addresses: ``(host, port)`` of each server; connections are spread over them in turn.
        requests: complete HTTP/1.1 requests (head and body), sent in turn.
        spec: rate, window, connections and bounds.
        keys: one non-negative integer per request; when given, request ``i`` always goes over
            connection ``keys[i] % spec.connections`` (waiting for it), instead of any free one.
    """
    if keys is not None and len(keys) != len(requests):
        raise ValueError(f"{len(keys)} keys for {len(requests)} requests: give one per request")
    loop = asyncio.get_running_loop()
    offsets = send_times(spec)
    run = _Run(spec, requests, keys)
    connections = []
    for number in range(spec.connections):
        host, port = addresses[number % len(addresses)]
        _, protocol = await loop.create_connection(lambda: _Connection(run), host, port)
        connections.append(protocol)
        await asyncio.sleep(spec.connect_interval)
    run.connections = connections
    run.free = list(connections) if keys is None else []
    cpu_start = time.process_time()
    start = time.perf_counter() + 0.05
    run.window = (start + spec.warmup, start + spec.warmup + spec.duration)
    index = 0
    while index < len(offsets):
        now = time.perf_counter()
        while index < len(offsets) and start + offsets[index] <= now:
            run.submit(start + offsets[index])  # catch up: every due request, at its own time
            index += 1
        if index < len(offsets):
            await asyncio.sleep(max(MIN_SLEEP, start + offsets[index] - time.perf_counter()))
    run.scheduled_all = True
    run._maybe_done()
    try:
        await asyncio.wait_for(asyncio.shield(run.done), spec.drain_timeout)
    except TimeoutError:
        run.result.errors += sum(run._in_window(moment) for moment in run.unanswered())
    run.result.client_cpu_seconds = time.process_time() - cpu_start
    for connection in connections:
        if connection.transport is not None:
            connection.transport.close()
    return run.result


def post_requests(host: str, path: str, bodies: Sequence[bytes]) -> list[bytes]:
    """Pre-encoded ``POST path`` requests, one per JSON body."""
    head = f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
    return [f"{head}Content-Length: {len(body)}\r\n\r\n".encode() + body for body in bodies]
