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
as a consumer of a stream partitioned by user sends them, and so reach one server process (a
keyed connection the server closes, e.g. idle too long, is opened again for the requests
waiting for it). At most ``max_outstanding`` requests are in flight or queued: a request due
beyond that is not sent and counted as ``dropped`` (the offered load then exceeds what the run
can even queue).
"""

import asyncio
import math
import time
from collections import deque
from collections.abc import Sequence
from typing import cast

from benchmarks.loadgen.load_spec import LoadResult, LoadSpec, send_times

__all__ = ["MIN_SLEEP", "LoadResult", "LoadSpec", "post_requests", "run_load", "send_times"]

MIN_SLEEP = 0.001
"""The shortest wait between sends (s). uvloop rounds a timer to the nearest millisecond, so a
shorter sleep returns at once: waiting for a send due in under 0.5 ms spun the loop, and the
generator burned up to a core the server shares (measured: 212,000 wake-ups/s for
``sleep(0.0003)``). Requests that fall due meanwhile go out together, late by at most about a
millisecond; that lateness is part of their latency and shown as the send lag."""


class _Connection(asyncio.Protocol):
    """One keep-alive connection; parses answers by Content-Length (no chunked bodies)."""

    def __init__(self, run: "_Run", slot: int) -> None:
        self.run = run
        self.slot = slot
        """Its place among the run's connections (keyed runs: the keys it carries)."""
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.intended = 0.0
        self.waiting: deque[tuple[float, bytes]] = deque()
        """Keyed runs: requests due for this connection while it was busy, oldest first."""
        self.lost = False
        self.reopening = False
        """Keyed runs: a new connection is being opened in this lost one's place."""

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
    """One run: its connections, the requests waiting for one, and the counters."""

    def __init__(
        self, spec: LoadSpec, addresses: Sequence[tuple[str, int]], requests: Sequence[bytes],
        keys: Sequence[int] | None,
    ) -> None:  # fmt: skip
        self.spec = spec
        self.addresses = addresses
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
        self.finished = False
        """Drained or given up: connections closing now are the run's doing, not the server's."""
        self.reopening: set[asyncio.Task[None]] = set()

    async def open(self, slot: int) -> _Connection:
        host, port = self.addresses[slot % len(self.addresses)]
        loop = asyncio.get_running_loop()
        _, connection = await loop.create_connection(lambda: _Connection(self, slot), host, port)
        return connection

    async def open_all(self) -> None:
        for slot in range(self.spec.connections):
            self.connections.append(await self.open(slot))
            await asyncio.sleep(self.spec.connect_interval)
        self.free = [c for c in self.connections if not c.lost] if self.keys is None else []

    async def offer(self) -> None:
        """Submit every request at its send time (catching up on any already due)."""
        offsets = send_times(self.spec)
        start = time.perf_counter() + 0.05
        self.window = (start + self.spec.warmup, start + self.spec.warmup + self.spec.duration)
        index = 0
        while index < len(offsets):
            now = time.perf_counter()
            while index < len(offsets) and start + offsets[index] <= now:
                self.submit(start + offsets[index])
                index += 1
            if index < len(offsets):
                await asyncio.sleep(max(MIN_SLEEP, start + offsets[index] - time.perf_counter()))
        self.scheduled_all = True
        self._maybe_done()

    async def drain(self) -> None:
        """Wait for the answers still due; those missing at the timeout are errors. Then close."""
        try:
            await asyncio.wait_for(asyncio.shield(self.done), self.spec.drain_timeout)
        except TimeoutError:
            self.result.errors += sum(self._in_window(moment) for moment in self._unanswered())
        self.finished = True
        for task in self.reopening:
            task.cancel()
        for connection in self.connections:
            if connection.transport is not None:
                connection.transport.close()

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
            if connection.lost:  # this request goes over a new one in its place
                self._reopen_soon(connection)
                connection = None
            elif connection in self.busy:
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
        self._next(connection)

    def _next(self, connection: _Connection) -> None:
        """Send the next request waiting for ``connection``, or mark it free."""
        waiting = self.queue if self.keys is None else connection.waiting
        if waiting:
            queued_intended, request = waiting.popleft()
            self.queued -= 1
            self.busy.add(connection)
            connection.send(request, queued_intended)
        else:
            self.busy.discard(connection)
            if self.keys is None:
                self.free.append(connection)
            self._maybe_done()

    def lost(self, connection: _Connection) -> None:
        """The server closed ``connection``: its request in flight is an error; keyed, the
        requests waiting for it go over a new one in its place."""
        connection.lost = True
        if self.finished:
            return
        if connection in self.free:
            self.free.remove(connection)
        if connection in self.busy:
            self.busy.discard(connection)
            self.result.errors += self._in_window(connection.intended)
        if self.keys is not None and connection.waiting:
            self._reopen_soon(connection)
        self._maybe_done()

    def _reopen_soon(self, old: _Connection) -> None:
        """Open a connection in ``old``'s place for its key's requests (once at a time; only
        when one waits, so a server that closes idle connections sees no reconnect loop)."""
        if old.reopening:
            return
        old.reopening = True
        task = asyncio.get_running_loop().create_task(self._reopen(old))
        self.reopening.add(task)
        task.add_done_callback(self.reopening.discard)

    async def _reopen(self, old: _Connection) -> None:
        try:
            new = await self.open(old.slot)
        except OSError:  # the server is gone: what waits for this key will not be sent
            self.result.errors += sum(self._in_window(moment) for moment, _ in old.waiting)
            self.queued -= len(old.waiting)
            old.waiting.clear()
            old.reopening = False  # the next request for this key tries again
            self._maybe_done()
            return
        new.waiting = old.waiting
        self.connections[old.slot] = new
        self._next(new)

    def _unanswered(self) -> list[float]:
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
    run = _Run(spec, addresses, requests, keys)
    await run.open_all()
    cpu_start = time.process_time()
    await run.offer()
    await run.drain()
    run.result.client_cpu_seconds = time.process_time() - cpu_start
    return run.result


def post_requests(host: str, path: str, bodies: Sequence[bytes]) -> list[bytes]:
    """Pre-encoded ``POST path`` requests, one per JSON body."""
    head = f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
    return [f"{head}Content-Length: {len(body)}\r\n\r\n".encode() + body for body in bodies]
