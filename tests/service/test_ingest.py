"""The ingest port (``LRUREC_INGEST_PORT``, service.ingest): ``POST /events`` over the service's
own small HTTP/1.1 protocol gives the same documents and errors as the main port, and keeps
HTTP/1.1 intact (keep-alive, pipelining, HTTP/1.0, chunked bodies, 100-continue, a bad request,
the idle timeout, a graceful shutdown, Redis down)."""

import contextlib
import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI

from service import ingest_protocol
from service.embedded_redis import EmbeddedRedis, free_port
from service.ingest import Ingest
from service.settings import Settings
from tests.service.wire import (
    events_applied,
    exchange,
    hold_events,
    read_answers,
    request,
    running,
    wait_until,
)

EVENT = {"user_id": "i1", "item_id": "item-1"}


def with_ingest(settings: Settings, **overrides: Any) -> Settings:
    return Settings.model_validate(
        {**settings.model_dump(), "ingest_port": free_port(), **overrides}
    )


@pytest.fixture
def ports(settings: Settings) -> Iterator[tuple[FastAPI, int, int]]:
    """(app, main port, ingest port) of a running service."""
    configured = with_ingest(settings)
    assert configured.ingest_port is not None
    with running(configured) as (app, port, _):
        yield app, port, configured.ingest_port


def test_events_on_the_ingest_port_get_the_main_ports_documents(
    ports: tuple[FastAPI, int, int],
) -> None:
    _, main, ingest = ports
    for n in range(1, 4):
        item = {"item_id": f"item-{n}", "event_id": f"e{n}"}
        ((_, _, direct),) = exchange(ingest, request("/events?k=5", {"user_id": "a", **item}))
        ((_, _, reference),) = exchange(main, request("/events?k=5", {"user_id": "b", **item}))
        got, expected = json.loads(direct), json.loads(reference)
        assert got.pop("user_id") == "a"
        assert expected.pop("user_id") == "b"
        assert got == expected
        assert got["events_applied"] == n
        assert len(got["recommendations"]) == 5
    ((status, _, body),) = exchange(ingest, request("/events", {"user_id": "a", **item}))
    assert status == 200
    assert json.loads(body) == {**json.loads(body), "applied": False, "reason": "duplicate"}


@pytest.mark.parametrize(
    ("payload", "status", "kind"),
    [
        (request("/events?k=ten", EVENT), 422, "validation"),
        (request("/events", b"{not json"), 422, "validation"),
        (request("/events", {"user_id": "i1"}), 422, "validation"),
        (request("/events/batch", {"events": [EVENT]}), 404, "not_found"),
        (b"GET /events HTTP/1.1\r\nHost: t\r\n\r\n", 405, "method_not_allowed"),
    ],
    ids=["bad-query", "bad-json", "missing-field", "other-path", "other-method"],
)
def test_refused_requests_get_the_main_ports_errors_and_the_connection_stays(
    ports: tuple[FastAPI, int, int], payload: bytes, status: int, kind: str
) -> None:
    _, main, ingest = ports
    with socket.create_connection(("127.0.0.1", ingest), timeout=10) as sock:
        sock.sendall(payload + request("/events", EVENT))
        (refused, accepted) = read_answers(sock, 2)
    if status == 422:  # the main port says the same
        ((main_status, _, main_body),) = exchange(main, payload)
        assert (main_status, json.loads(main_body)) == (status, json.loads(refused[2]))
    assert refused[0] == status, refused[2]
    assert json.loads(refused[2])["error"] == kind
    assert accepted[0] == 200


def test_a_body_over_the_limit_is_refused_before_it_is_read_or_in_its_turn(
    settings: Settings,
) -> None:
    configured = with_ingest(settings, max_body_bytes=2048)
    assert configured.ingest_port is not None
    oversized = request("/events", {**EVENT, "event_id": "x" * 3000})
    with running(configured) as (_, main, _):
        ((main_status, _, main_body),) = exchange(main, oversized)
        with socket.create_connection(("127.0.0.1", configured.ingest_port), timeout=10) as sock:
            head = oversized.partition(b"\r\n\r\n")[0] + b"\r\nExpect: 100-continue\r\n\r\n"
            sock.sendall(head)  # by its Content-Length, before any of the body
            ((status, headers, body),) = read_answers(sock, 1)
            assert sock.recv(1) == b""
        # Behind another request, in its turn; the connection stays.
        accepted = request("/events", EVENT)
        answers = exchange(configured.ingest_port, accepted + oversized + accepted, 3)
    assert (status, headers["connection"]) == (413, "close")
    assert (main_status, json.loads(main_body)) == (413, json.loads(body))
    assert [answer[0] for answer in answers] == [200, 413, 200]


def test_a_chunked_body_over_the_limit_is_refused_without_waiting_for_the_rest(
    settings: Settings,
) -> None:
    configured = with_ingest(settings, max_body_bytes=2048)
    assert configured.ingest_port is not None
    head = b"POST /events HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
    chunk = b"%x\r\n%s\r\n" % (1500, b" " * 1500)
    with (
        running(configured),
        socket.create_connection(("127.0.0.1", configured.ingest_port), timeout=10) as sock,
    ):
        sock.sendall(head + chunk)
        sock.sendall(chunk)  # 3,000 bytes so far; the last chunk is never sent
        ((status, headers, body),) = read_answers(sock, 1)
        assert sock.recv(1) == b""
    assert (status, headers["connection"]) == (413, "close")
    assert json.loads(body)["error"] == "body_too_large"


def test_an_api_key_is_required_on_the_ingest_port(settings: Settings) -> None:
    configured = with_ingest(settings, api_key="s3cret")
    assert configured.ingest_port is not None
    with running(configured):
        ((refused, _, body),) = exchange(configured.ingest_port, request("/events", EVENT))
        ((wrong, _, _),) = exchange(
            configured.ingest_port, request("/events", EVENT, "X-API-Key: nope")
        )
        ((accepted, _, _),) = exchange(
            configured.ingest_port, request("/events", EVENT, "X-API-Key: s3cret")
        )
    assert (refused, wrong, accepted) == (401, 401, 200)
    assert json.loads(body)["error"] == "unauthorized"


def test_pipelined_requests_are_answered_in_order_on_one_connection(
    ports: tuple[FastAPI, int, int],
) -> None:
    events = [request("/events?k=1", {"user_id": f"p{n}", "item_id": "item-2"}) for n in range(4)]
    bad = request("/events", {"user_id": "p-bad"})
    answers = exchange(ports[2], b"".join([*events[:2], bad, *events[2:]]), count=5)
    assert [status for status, _, _ in answers] == [200, 200, 422, 200, 200]
    users = [json.loads(body).get("user_id") for _, _, body in answers]
    assert users == ["p0", "p1", None, "p2", "p3"]
    assert all("connection" not in headers for _, headers, _ in answers)


def test_http_1_0_chunked_bodies_and_100_continue(ports: tuple[FastAPI, int, int]) -> None:
    body = json.dumps(EVENT).encode()
    old = request("/events", EVENT).replace(b"HTTP/1.1", b"HTTP/1.0", 1)
    with socket.create_connection(("127.0.0.1", ports[2]), timeout=10) as sock:
        sock.sendall(old)
        ((status, headers, _),) = read_answers(sock, 1)
        assert (status, headers["connection"]) == (200, "close")
        assert sock.recv(1) == b""
    chunked = b"POST /events HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
    chunked += b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body)
    ((status, _, _),) = exchange(ports[2], chunked)
    assert status == 200
    with socket.create_connection(("127.0.0.1", ports[2]), timeout=10) as sock:
        payload = request("/events", EVENT, "Expect: 100-continue")
        head, _, rest = payload.partition(b"\r\n\r\n")
        sock.sendall(head + b"\r\n\r\n")
        assert sock.recv(64).startswith(b"HTTP/1.1 100 Continue\r\n\r\n")
        sock.sendall(rest)
        ((status, _, _),) = read_answers(sock, 1)
    assert status == 200


def test_a_malformed_request_is_a_400_and_the_connection_closes(
    ports: tuple[FastAPI, int, int],
) -> None:
    with socket.create_connection(("127.0.0.1", ports[2]), timeout=10) as sock:
        sock.sendall(b"POST /events HTTP/1.1\r\nContent-Length: nope\r\n\r\n")
        ((status, headers, body),) = read_answers(sock, 1)
        assert sock.recv(1) == b""
    assert (status, headers["connection"]) == (400, "close")
    assert json.loads(body)["error"] == "http"


def test_an_idle_connection_is_closed(
    ports: tuple[FastAPI, int, int], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(ingest_protocol, "IDLE_SECONDS", 0.3)
    with socket.create_connection(("127.0.0.1", ports[2]), timeout=10) as sock:
        sock.sendall(request("/events", EVENT))
        ((status, _, _),) = read_answers(sock, 1)
        started = time.monotonic()
        assert sock.recv(1) == b""  # closed by the server, not by the 10 s socket timeout
        assert time.monotonic() - started < 2  # the 0.3 s limit, not the default 5 s
    assert status == 200


def test_a_shutdown_answers_the_event_in_progress_then_closes(settings: Settings) -> None:
    configured = with_ingest(settings)
    assert configured.ingest_port is not None
    with running(configured) as (app, _, server):
        release = hold_events(app)
        with socket.create_connection(("127.0.0.1", configured.ingest_port), timeout=10) as sock:
            second = request("/events", {**EVENT, "user_id": "i2"})
            sock.sendall(request("/events", EVENT) + second)
            wait_until(lambda: bool(app.state.ingest.tasks))  # the first is in the engine
            server.should_exit = True
            wait_until(lambda: app.state.ingest.server is not None and all(
                connection.closing for connection in app.state.ingest.connections
            ))  # fmt: skip
            release.set()
            answers = read_answers(sock, 2)
            assert sock.recv(1) == b""
    # Both requests already read are answered; the last one says the connection closes.
    assert [answer[0] for answer in answers] == [200, 200]
    assert [json.loads(answer[2])["user_id"] for answer in answers] == ["i1", "i2"]
    assert "connection" not in answers[0][1]
    assert answers[1][1]["connection"] == "close"


def test_redis_down_is_a_503_on_the_ingest_port(tiny_artifact: Path) -> None:
    with EmbeddedRedis() as redis_server:
        settings = Settings(
            artifact=tiny_artifact, redis_url=redis_server.url, redis_timeout_seconds=0.5,
            redis_retries=1, ingest_port=free_port(),
        )  # fmt: skip
        assert settings.ingest_port is not None
        with running(settings):
            redis_server.stop()
            ((status, headers, body),) = exchange(settings.ingest_port, request("/events", EVENT))
    assert status == 503, body
    assert json.loads(body)["error"] == "redis_unavailable"
    assert headers["retry-after"] == "1"


def test_a_bug_past_the_error_handlers_is_a_500_and_a_closed_connection(
    ports: tuple[FastAPI, int, int], monkeypatch: pytest.MonkeyPatch
) -> None:
    async def broken(*_: object) -> None:
        raise RuntimeError("a bug in the ingest path")

    monkeypatch.setattr(Ingest, "answer", broken)
    with socket.create_connection(("127.0.0.1", ports[2]), timeout=10) as sock:
        sock.sendall(request("/events", EVENT))
        ((status, headers, body),) = read_answers(sock, 1)
        assert sock.recv(1) == b""
    assert (status, headers["connection"]) == (500, "close")
    assert json.loads(body)["error"] == "internal"


def test_ingest_requests_are_timed_under_the_route_template(
    ports: tuple[FastAPI, int, int],
) -> None:
    _, main, ingest = ports

    def count(route: str, method: str, status: str) -> float:
        ((_, _, text),) = exchange(main, b"GET /metrics HTTP/1.1\r\nHost: t\r\n\r\n")
        series = (
            f'lrurec_http_request_duration_seconds_count{{method="{method}",'
            f'route="{route}",status="{status}"}}'
        )
        lines = [line for line in text.decode().splitlines() if line.startswith(series)]
        return float(lines[0].split()[-1]) if lines else 0.0

    labels = [("/events", "POST", "2xx"), ("<unmatched>", "POST", "4xx"), ("/events", "GET", "4xx")]
    before = [count(*label) for label in labels]
    exchange(ingest, request("/events", EVENT))
    exchange(ingest, request("/users/x", EVENT))
    exchange(ingest, b"GET /events HTTP/1.1\r\nHost: t\r\n\r\n")  # 405, labelled as on main
    after = [count(*label) for label in labels]
    assert [now - then for now, then in zip(after, before, strict=True)] == [1, 1, 1]


def test_no_interim_100_continue_overtakes_an_answer_in_progress(
    ports: tuple[FastAPI, int, int],
) -> None:
    app, _, ingest = ports
    release = hold_events(app)
    waiting = request("/events", {**EVENT, "user_id": "c2"}, "Expect: 100-continue")
    with socket.create_connection(("127.0.0.1", ingest), timeout=10) as sock:
        sock.sendall(request("/events", EVENT) + waiting)
        wait_until(lambda: bool(app.state.ingest.tasks))
        time.sleep(0.1)  # the second request read meanwhile
        release.set()
        received = b""
        while received.count(b"HTTP/1.1 200") < 2:
            chunk = sock.recv(65536)
            assert chunk, "the server closed the connection early"
            received += chunk
    assert received.startswith(b"HTTP/1.1 200")  # the first request's answer comes first
    assert b"100 Continue" not in received


def test_head_gets_the_headers_only_and_the_connection_stays(
    ports: tuple[FastAPI, int, int],
) -> None:
    with socket.create_connection(("127.0.0.1", ports[2]), timeout=10) as sock:
        sock.sendall(b"HEAD /events HTTP/1.1\r\nHost: t\r\n\r\n" + request("/events", EVENT))
        received = b""
        while received.count(b"\r\n\r\n") < 2 or not received.endswith(b"}"):
            received += sock.recv(65536)
    head, _, rest = received.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 405")
    assert int(dict(line.split(b": ", 1) for line in head.split(b"\r\n")[1:])[b"content-length"])
    assert rest.startswith(b"HTTP/1.1 200")  # no body between the two answers


def test_http_1_0_asking_for_keep_alive_is_answered_and_closed(
    ports: tuple[FastAPI, int, int],
) -> None:
    payload = request("/events", EVENT, "Connection: keep-alive").replace(
        b"HTTP/1.1", b"HTTP/1.0", 1
    )
    with socket.create_connection(("127.0.0.1", ports[2]), timeout=10) as sock:
        sock.sendall(payload)
        ((status, headers, _),) = read_answers(sock, 1)
        started = time.monotonic()
        assert sock.recv(1) == b""
        assert time.monotonic() - started < 1  # at once, not after the idle timeout
    assert (status, headers["connection"]) == (200, "close")


def test_the_api_key_is_checked_before_100_continue_and_read_as_the_main_port_reads_it(
    settings: Settings,
) -> None:
    configured = with_ingest(settings, api_key="s3cret")
    port = configured.ingest_port
    assert port is not None
    body = json.dumps(EVENT).encode()
    with running(configured) as (_, main, _):
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            head = request("/events", EVENT, "Expect: 100-continue").partition(b"\r\n\r\n")[0]
            sock.sendall(head + b"\r\n\r\n")  # no key: refused before the body is sent
            ((status, headers, _),) = read_answers(sock, 1)
            assert sock.recv(1) == b""
        assert (status, headers["connection"]) == (401, "close")
        for keys, expected in (("s3cret", "nope"), 200), (("nope", "s3cret"), 401):
            twice = request("/events", EVENT, *(f"X-API-Key: {key}" for key in keys))
            ((on_ingest, _, _),) = exchange(port, twice)
            ((on_main, _, _),) = exchange(main, twice)
            assert on_ingest == on_main == expected  # the first header counts
        chunked = b"POST /events HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
        chunked += b"%x\r\n%s\r\n0\r\nX-API-Key: s3cret\r\n\r\n" % (len(body), body)
        ((status, _, _),) = exchange(port, chunked)
        assert status == 401  # a key in a trailer is not a header


def test_malformed_input_is_a_400_after_the_answers_to_what_came_before(
    ports: tuple[FastAPI, int, int],
) -> None:
    two = request("/events", EVENT) + request("/events", {**EVENT, "user_id": "i2"})
    with socket.create_connection(("127.0.0.1", ports[2]), timeout=10) as sock:
        sock.sendall(two + b"NOT HTTP AT ALL\r\n\r\n")
        answers = read_answers(sock, 3)
        assert sock.recv(1) == b""
    assert [answer[0] for answer in answers] == [200, 200, 400]
    assert answers[2][1]["connection"] == "close"


def test_a_client_that_does_not_read_its_answers_stops_being_read(
    ports: tuple[FastAPI, int, int],
) -> None:
    app, _, ingest = ports
    many = request("/events?k=50", EVENT) * 3000
    with socket.create_connection(("127.0.0.1", ingest), timeout=10) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.setblocking(False)
        with contextlib.suppress(BlockingIOError):  # the server stopped reading
            sock.sendall(many)
        time.sleep(1.5)
        (connection,) = app.state.ingest.connections
        buffered = connection.transport.get_write_buffer_size()
        paused = connection.write_paused
    # Bounded by the transport's high-water mark (64 KB) and one answer (≈ 2.5 KB); without
    # the pause it grew by ≈ 0.75 MB a second here.
    assert paused
    assert buffered < 256 * 1024
    assert events_applied(ports[1], "i1") < 3000
