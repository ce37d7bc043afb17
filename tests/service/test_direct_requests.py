"""``POST /events`` answered from uvicorn's request cycle (service.http_protocol): HTTP/1.1's
corners on a real uvicorn server (HTTP/1.0, a body in several packets, an oversized body, a
request queued behind one in progress, a graceful shutdown, a client that leaves while its
event is being applied, and one that leaves before the end of its body)."""

import json
import socket
import time
from collections.abc import Iterator

import pytest
from fastapi import FastAPI

from service.settings import Settings
from tests.service.wire import (
    events_applied,
    exchange,
    hold_events,
    read_answers,
    request,
    running,
    serving,
    spy_on_direct_calls,
)

EVENT = {"user_id": "w1", "item_id": "item-1"}


@pytest.fixture
def served(settings: Settings) -> Iterator[tuple[FastAPI, int]]:
    with serving(settings) as server:
        yield server


def test_an_http_1_0_event_is_answered_and_the_connection_closed(
    served: tuple[FastAPI, int],
) -> None:
    calls = spy_on_direct_calls(served[0])
    payload = request("/events", EVENT).replace(b"HTTP/1.1", b"HTTP/1.0", 1)
    with socket.create_connection(("127.0.0.1", served[1]), timeout=10) as sock:
        sock.sendall(payload)
        ((status, headers, body),) = read_answers(sock, 1)
        assert sock.recv(1) == b""
    assert status == 200, body
    assert headers["connection"] == "close"
    assert calls == ["/events"]


def test_a_body_arriving_in_several_packets_is_read_whole(served: tuple[FastAPI, int]) -> None:
    calls = spy_on_direct_calls(served[0])
    payload = request("/events?k=2", EVENT)
    head_end = payload.index(b"\r\n\r\n") + 4
    with socket.create_connection(("127.0.0.1", served[1]), timeout=10) as sock:
        for part in (payload[:head_end], payload[head_end : head_end + 5], payload[head_end + 5 :]):
            sock.sendall(part)
            time.sleep(0.05)
        ((status, _, body),) = read_answers(sock, 1)
    assert status == 200, body
    assert len(json.loads(body)["recommendations"]) == 2
    assert calls == ["/events"]


def test_a_body_over_the_limit_is_left_to_the_full_app(settings: Settings) -> None:
    small = Settings.model_validate({**settings.model_dump(), "max_body_bytes": 1024})
    with serving(small) as (app, port):
        calls = spy_on_direct_calls(app)
        oversized = request("/events", {**EVENT, "event_id": "x" * 2000})
        ((status, _, body),) = exchange(port, oversized)
    assert status == 413, body
    assert json.loads(body)["error"] == "body_too_large"
    assert calls == ["/events"]


def test_a_request_behind_one_in_progress_waits_for_its_answer(
    served: tuple[FastAPI, int],
) -> None:
    app, port = served
    calls = spy_on_direct_calls(app)
    release = hold_events(app)
    health = b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n"
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(request("/events?k=1", EVENT) + health)
        sock.settimeout(0.3)
        with pytest.raises(TimeoutError):  # the health check must not overtake the event
            sock.recv(1)
        sock.settimeout(10)
        release.set()
        answers = read_answers(sock, 2)
    assert [status for status, _, _ in answers] == [200, 200]
    assert json.loads(answers[0][2])["user_id"] == "w1"
    assert json.loads(answers[1][2])["status"] == "ok"
    assert calls == ["/events"]


def test_a_graceful_shutdown_answers_the_event_in_progress_then_closes(
    settings: Settings,
) -> None:
    with running(settings) as (app, port, server):
        release = hold_events(app)
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            sock.sendall(request("/events", EVENT))
            time.sleep(0.2)  # read and waiting in the engine
            server.should_exit = True
            time.sleep(0.2)
            release.set()
            ((status, headers, body),) = read_answers(sock, 1)
            assert sock.recv(1) == b""
    assert status == 200, body
    assert json.loads(body)["applied"] is True
    assert headers["connection"] == "close"


def test_an_event_whose_client_left_is_applied_once_and_the_server_goes_on(
    served: tuple[FastAPI, int],
) -> None:
    app, port = served
    release = hold_events(app)
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(request("/events", {**EVENT, "user_id": "gone"}))
        time.sleep(0.2)
    release.set()
    deadline = time.monotonic() + 10
    while events_applied(port, "gone") < 1:
        assert time.monotonic() < deadline, "the event was not applied"
        time.sleep(0.05)
    ((status, _, body),) = exchange(port, request("/events", {**EVENT, "user_id": "gone"}))
    assert status == 200, body
    assert json.loads(body)["events_applied"] == 2


def _metric(port: int, name: str, *labels: str) -> float:
    """The sum of the ``name`` samples whose labels include every one of ``labels``."""
    head = b"GET /metrics HTTP/1.1\r\nHost: t\r\n\r\n"
    ((status, _, body),) = exchange(port, head)
    assert status == 200
    total = 0.0
    for line in body.decode().splitlines():
        if line.startswith(name + "{") and all(label in line for label in labels):
            total += float(line.rsplit(" ", 1)[1])
    return total


@pytest.mark.parametrize(
    ("path", "body"),
    [("/events", b'{"user_id": "left", "item_id": "item-1"}'),
     ("/events/batch", b'{"events": [{"user_id": "left", "item_id": "item-1"}]}')],
)  # fmt: skip
def test_a_client_that_leaves_mid_body_is_no_server_error(
    served: tuple[FastAPI, int], path: str, body: bytes
) -> None:
    _, port = served
    errors = "lrurec_errors_total", 'kind="internal"'
    server_errors = "lrurec_http_request_duration_seconds_count", f'route="{path}"', 'status="5xx"'
    before = _metric(port, *errors), _metric(port, *server_errors)
    partial = request(path, body)[:-20]
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(partial)  # Content-Length promises 20 more bytes that never come
        time.sleep(0.2)
    time.sleep(0.3)
    assert (_metric(port, *errors), _metric(port, *server_errors)) == before
    assert events_applied(port, "left") == 0
    ((status, _, body),) = exchange(port, request("/events", {**EVENT, "user_id": "left"}))
    assert status == 200, body
