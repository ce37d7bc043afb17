"""The ingest port (``LRUREC_INGEST_PORT``, service.ingest): ``POST /events`` over the service's
own small HTTP/1.1 protocol gives the same documents and errors as the main port, and keeps
HTTP/1.1 intact (keep-alive, pipelining, HTTP/1.0, chunked bodies, 100-continue, a bad request,
the idle timeout, a graceful shutdown, Redis down)."""

import asyncio
import json
import socket
import threading
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
from tests.service.wire import exchange, read_answers, request, running

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
        (request("/events", {**EVENT, "event_id": "x" * 3000}), 413, "body_too_large"),
    ],
    ids=["bad-query", "bad-json", "missing-field", "other-path", "other-method", "too-large"],
)
def test_refused_requests_get_the_main_ports_errors_and_the_connection_stays(
    settings: Settings, payload: bytes, status: int, kind: str
) -> None:
    configured = with_ingest(settings, max_body_bytes=2048)
    assert configured.ingest_port is not None
    with running(configured) as (_, main, _):
        with socket.create_connection(("127.0.0.1", configured.ingest_port), timeout=10) as sock:
            sock.sendall(payload + request("/events", EVENT))
            (refused, accepted) = read_answers(sock, 2)
        if status in (422, 413):  # the main port says the same
            ((main_status, _, main_body),) = exchange(main, payload)
            assert (main_status, json.loads(main_body)) == (status, json.loads(refused[2]))
    assert refused[0] == status, refused[2]
    assert json.loads(refused[2])["error"] == kind
    assert accepted[0] == 200


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
        assert time.monotonic() - started < 5
    assert status == 200


def hold_events(app: FastAPI) -> threading.Event:
    """Make every event wait in the engine until the returned event is set."""
    engine = app.state.engine
    apply = engine.apply
    release = threading.Event()

    async def held(*arguments: Any) -> Any:
        await asyncio.to_thread(release.wait, 30)  # set from the test's thread
        return await apply(*arguments)

    engine.apply = held
    return release


def test_a_shutdown_answers_the_event_in_progress_then_closes(settings: Settings) -> None:
    configured = with_ingest(settings)
    assert configured.ingest_port is not None
    with running(configured) as (app, _, server):
        release = hold_events(app)
        with socket.create_connection(("127.0.0.1", configured.ingest_port), timeout=10) as sock:
            sock.sendall(request("/events", EVENT))
            time.sleep(0.2)  # read and waiting in the engine
            server.should_exit = True
            time.sleep(0.2)
            release.set()
            ((status, headers, body),) = read_answers(sock, 1)
            assert sock.recv(1) == b""
    assert (status, headers["connection"]) == (200, "close")
    assert json.loads(body)["applied"] is True


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

    before = count("/events", "POST", "2xx"), count("<unmatched>", "POST", "4xx")
    exchange(ingest, request("/events", EVENT))
    exchange(ingest, request("/users/x", EVENT))
    after = count("/events", "POST", "2xx"), count("<unmatched>", "POST", "4xx")
    assert (after[0] - before[0], after[1] - before[1]) == (1, 1)


def test_no_interim_100_continue_overtakes_an_answer_in_progress(
    ports: tuple[FastAPI, int, int],
) -> None:
    app, _, ingest = ports
    release = hold_events(app)
    waiting = request("/events", {**EVENT, "user_id": "c2"}, "Expect: 100-continue")
    with socket.create_connection(("127.0.0.1", ingest), timeout=10) as sock:
        sock.sendall(request("/events", EVENT) + waiting)
        time.sleep(0.3)
        release.set()
        received = b""
        while received.count(b"HTTP/1.1 200") < 2:
            chunk = sock.recv(65536)
            assert chunk, "the server closed the connection early"
            received += chunk
    assert received.startswith(b"HTTP/1.1 200")  # the first request's answer comes first
    assert b"100 Continue" not in received
