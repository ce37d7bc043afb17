"""The open-loop generator against a real (tiny) HTTP server with a known service time."""

import asyncio
from collections.abc import Awaitable, Callable, Sequence

import orjson
import pytest

from benchmarks.loadgen.generator import LoadResult, LoadSpec, post_requests, run_load, send_times
from benchmarks.loadgen.sweep import knee

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


def serial_server(
    service_seconds: float, status: int = 200, per_connection: bool = False,
    bodies: list[tuple[int, bytes]] | None = None,
) -> Handler:  # fmt: skip
    """Answers one request at a time machine-wide (a single-server queue), or per connection;
    records ``(connection number, body)`` of each request in ``bodies`` when given."""
    machine = asyncio.Lock()
    connections = 0

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        number, busy = connections, asyncio.Lock() if per_connection else machine
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
            body = await reader.readexactly(length)
            if bodies is not None:
                bodies.append((number, body))
            async with busy:
                await asyncio.sleep(service_seconds)
            body = b'{"ok":true}'
            writer.write(
                b"HTTP/1.1 %d X\r\ncontent-length: %d\r\n\r\n%s" % (status, len(body), body)
            )
            await writer.drain()

    return handle


def offer(
    handler_factory: Callable[[], Handler], spec: LoadSpec,
    bodies: Sequence[bytes] = (b'{"a":1}', b'{"a":2}'), keys: Sequence[int] | None = None,
) -> LoadResult:  # fmt: skip
    async def main() -> LoadResult:
        server = await asyncio.start_server(handler_factory(), "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        requests = post_requests("127.0.0.1", "/events", bodies)
        try:
            return await run_load([("127.0.0.1", port)], requests, spec, keys)
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


def test_keyed_requests_each_travel_in_order_over_the_connection_their_key_picks() -> None:
    bodies = [b'{"user":%d,"n":%d}' % (n % 5, n) for n in range(40)]
    received: list[tuple[int, bytes]] = []
    spec = LoadSpec(rate=200, duration=1.0, warmup=0.0, connections=8)
    result = offer(
        lambda: serial_server(0.0, bodies=received), spec, bodies, [n % 5 for n in range(40)]
    )
    assert result.errors == result.dropped == 0
    by_user: dict[int, list[tuple[int, int]]] = {}
    for connection, body in received:
        document = orjson.loads(body)
        by_user.setdefault(document["user"], []).append((connection, document["n"]))
    assert sorted(by_user) == [0, 1, 2, 3, 4]
    for user, arrivals in by_user.items():
        assert len({connection for connection, _ in arrivals}) == 1, f"user {user} spread out"
        sent_order = list(range(user, 40, 5)) * 5  # the requests are cycled
        assert [n for _, n in arrivals] == sent_order[: len(arrivals)]
    assert len({arrivals[0][0] for arrivals in by_user.values()}) == 5  # five connections


def test_a_keyed_request_waits_for_its_own_connection_while_others_are_free() -> None:
    # Each connection serves 50/s; 100/s offered. Unkeyed, eight connections share the load;
    # every request keyed to one connection queues behind it, and that wait is counted.
    spec = LoadSpec(rate=100, duration=1.5, warmup=0.0, connections=8, schedule="uniform")
    spread = offer(lambda: serial_server(0.02, per_connection=True), spec)
    one = offer(lambda: serial_server(0.02, per_connection=True), spec, keys=[7, 7])
    assert spread.errors == one.errors == 0
    assert spread.achieved_rate > 85
    assert spread.percentile_ms(99) < 200
    assert one.achieved_rate < 65
    assert one.percentile_ms(99) > 400


def silent_server() -> Handler:
    """Reads requests and never answers them."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while await reader.read(65536):
            pass

    return handle


def closing_server(opened: list[int]) -> Handler:
    """Answers one request per connection, then closes it (as a server closes an idle
    keep-alive connection); counts the connections in ``opened``."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        opened.append(1)
        head = await reader.readuntil(b"\r\n\r\n")
        await reader.readexactly(int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0]))
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}")
        await writer.drain()
        await asyncio.sleep(0.01)
        writer.close()

    return handle


@pytest.mark.parametrize("keys", [None, [0, 1]], ids=["unkeyed", "keyed"])
def test_requests_never_answered_are_each_one_error(keys: list[int] | None) -> None:
    spec = LoadSpec(rate=50, duration=0.5, warmup=0.0, connections=4, drain_timeout=0.3)
    result = offer(silent_server, spec, keys=keys)
    assert result.errors == len(send_times(spec))  # counted at the drain, not again at close
    assert result.latencies == []


def test_a_keyed_connection_the_server_closes_is_opened_again_for_its_key() -> None:
    opened: list[int] = []
    spec = LoadSpec(rate=20, duration=1.0, warmup=0.0, connections=2, schedule="uniform")
    result = offer(lambda: closing_server(opened), spec, keys=[0, 0])
    assert result.errors == 0
    assert len(result.latencies) == len(send_times(spec)) == 20
    assert len(opened) >= 20  # one per request: each was closed after its answer


def test_keys_must_match_the_requests_one_to_one() -> None:
    with pytest.raises(ValueError, match="one per request"):
        offer(lambda: serial_server(0.0), LoadSpec(rate=10, duration=0.2, warmup=0), keys=[1])


def test_the_knee_is_the_highest_sustained_rate_within_the_objective() -> None:
    def row(offered: float, achieved: float, p99: float) -> dict[str, float | int | str]:
        return {"offered_rps": offered, "achieved_rps": achieved, "p99_ms": p99,
                "errors": 0, "dropped": 0}  # fmt: skip

    rows = [row(100, 100, 3), row(200, 199, 9), row(400, 398, 40), row(800, 500, 900)]
    assert knee(rows, 15.0) == 200
    assert knee(rows, 50.0) == 400
    assert knee(rows[3:], 15.0) is None
