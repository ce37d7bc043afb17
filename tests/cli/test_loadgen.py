"""The open-loop generator against a real (tiny) HTTP server with a known service time."""

import asyncio
from collections.abc import Awaitable, Callable

from cli.bench.loadgen import LoadResult, LoadSpec, post_requests, run_load, send_times
from cli.bench.sweep import knee

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


def serial_server(service_seconds: float, status: int = 200) -> Handler:
    """Answers one request at a time machine-wide (a single-server queue)."""
    busy = asyncio.Lock()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
            await reader.readexactly(length)
            async with busy:
                await asyncio.sleep(service_seconds)
            body = b'{"ok":true}'
            writer.write(
                b"HTTP/1.1 %d X\r\ncontent-length: %d\r\n\r\n%s" % (status, len(body), body)
            )
            await writer.drain()

    return handle


def offer(handler_factory: Callable[[], Handler], spec: LoadSpec) -> LoadResult:
    async def main() -> LoadResult:
        server = await asyncio.start_server(handler_factory(), "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        requests = post_requests("127.0.0.1", "/events", [b'{"a":1}', b'{"a":2}'])
        try:
            return await run_load([("127.0.0.1", port)], requests, spec)
        finally:
            server.close()

    return asyncio.run(main())


def test_schedules_have_the_offered_rate() -> None:
    uniform = send_times(LoadSpec(rate=100, duration=2, warmup=1, schedule="uniform"))
    poisson = send_times(LoadSpec(rate=100, duration=20, warmup=0))
    assert len(uniform) == 300
    assert 1800 < len(poisson) < 2200
    assert poisson == sorted(poisson)


def test_a_fast_server_sustains_the_offered_rate() -> None:
    result = offer(lambda: serial_server(0.0), LoadSpec(rate=200, duration=1.5, warmup=0.5))
    assert abs(result.achieved_rate - 200) < 40
    assert result.errors == result.dropped == 0
    assert result.percentile_ms(50) < 50


def test_queueing_behind_a_saturated_server_is_counted_from_the_intended_send_time() -> None:
    # Capacity 50/s, offered 100/s for 1.5 s: a closed-loop client would report ~20 ms per
    # request; measured from the schedule, the backlog's wait shows up (about 0.7 s at the end).
    spec = LoadSpec(rate=100, duration=1.5, warmup=0.0, connections=8, schedule="uniform")
    result = offer(lambda: serial_server(0.02), spec)
    assert result.errors == 0
    assert result.achieved_rate < 65
    assert result.percentile_ms(99) > 400
    assert result.percentile_ms(50) > 100


def test_outstanding_requests_are_bounded_and_the_excess_counted_as_dropped() -> None:
    spec = LoadSpec(rate=200, duration=1.0, warmup=0.0, connections=2, max_outstanding=5)
    result = offer(lambda: serial_server(0.02), spec)
    assert result.dropped > 50
    assert len(result.latencies) + result.dropped == len(send_times(spec))


def test_error_answers_are_counted_and_no_latency_is_recorded() -> None:
    result = offer(lambda: serial_server(0.0, status=503), LoadSpec(rate=100, duration=1, warmup=0))
    assert result.errors > 50
    assert result.latencies == []
    row = result.summary()
    assert row["errors"] == result.errors


def test_the_knee_is_the_highest_sustained_rate_within_the_objective() -> None:
    def row(offered: float, achieved: float, p99: float) -> dict[str, float | int | str]:
        return {"offered_rps": offered, "achieved_rps": achieved, "p99_ms": p99,
                "errors": 0, "dropped": 0}  # fmt: skip

    rows = [row(100, 100, 3), row(200, 199, 9), row(400, 398, 40), row(800, 500, 900)]
    assert knee(rows, 15.0) == 200
    assert knee(rows, 50.0) == 400
    assert knee(rows[3:], 15.0) is None
