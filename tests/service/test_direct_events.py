"""``POST /events`` answered from uvicorn's request cycle (service.http_protocol,
``EventsFastPath.answer_cycle``), on a real uvicorn server with the service's protocol: the same
documents and errors as the ASGI path, and HTTP/1.1 kept intact (keep-alive, pipelining,
``Connection: close``, requests it hands back to the full app)."""

import json
import logging
import socket
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI
from uvicorn.middleware.proxy_headers import ProxyHeadersMiddleware

from service.embedded_redis import EmbeddedRedis
from service.fast_events import EventsFastPath
from service.http_protocol import events_fast_path
from service.main import create_app
from service.settings import Settings
from tests.service.wire import exchange, read_answers, request, serving, spy_on_direct_calls


@pytest.fixture
def served(settings: Settings) -> Iterator[tuple[FastAPI, int]]:
    with serving(settings) as running:
        yield running


@pytest.fixture
def direct_calls(served: tuple[FastAPI, int]) -> list[str]:
    return spy_on_direct_calls(served[0])


def test_the_direct_path_is_found_through_uvicorns_wrappers(settings: Settings) -> None:
    app = create_app(settings)
    wrapped = ProxyHeadersMiddleware(app)  # type: ignore[arg-type]  # starlette vs uvicorn types
    assert events_fast_path(wrapped) is app.fast_events  # type: ignore[attr-defined]
    assert events_fast_path(FastAPI()) is None


def test_keep_alive_events_are_answered_directly_with_the_event_document(
    served: tuple[FastAPI, int], direct_calls: list[str]
) -> None:
    event = {"user_id": "d1", "item_id": "item-1"}
    with socket.create_connection(("127.0.0.1", served[1]), timeout=10) as sock:
        for n in range(3):
            sock.sendall(request("/events?k=3", {**event, "item_id": f"item-{n + 1}"}))
            ((status, headers, body),) = read_answers(sock, 1)
            assert status == 200
            assert headers["content-type"] == "application/json"
            assert "date" in headers
            assert "connection" not in headers  # kept alive
            document = json.loads(body)
            assert document["events_applied"] == n + 1
            assert len(document["recommendations"]) == 3
    assert direct_calls == ["/events"] * 3


def test_pipelined_requests_are_answered_in_order(
    served: tuple[FastAPI, int], direct_calls: list[str]
) -> None:
    events = [request("/events?k=1", {"user_id": f"p{n}", "item_id": "item-2"}) for n in range(4)]
    bad = request("/events", {"user_id": "p-bad"})  # no item_id: the full app answers 422
    answers = exchange(served[1], b"".join([*events[:2], bad, *events[2:]]), count=5)
    assert [status for status, _, _ in answers] == [200, 200, 422, 200, 200]
    users = [json.loads(body).get("user_id") for _, _, body in answers]
    assert users == ["p0", "p1", None, "p2", "p3"]
    assert len(direct_calls) == 5


def test_connection_close_is_honoured(served: tuple[FastAPI, int]) -> None:
    with socket.create_connection(("127.0.0.1", served[1]), timeout=10) as sock:
        sock.sendall(
            request("/events", {"user_id": "c1", "item_id": "item-1"}, "Connection: close")
        )
        ((status, headers, _),) = read_answers(sock, 1)
        assert status == 200
        assert headers["connection"] == "close"
        assert sock.recv(1) == b""  # closed by the server


EVENT_BODY = b'{"user_id": "v1", "item_id": "item-1"}'
CHUNKED = b"POST /events HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"


@pytest.mark.parametrize(
    ("payload", "status"),
    [
        (request("/events?k=ten", EVENT_BODY), 422),
        (request("/events", b"{not json"), 422),
        (request("/events", EVENT_BODY, "Expect: 100-continue"), 200),
        (CHUNKED + b"%x\r\n%s\r\n0\r\n\r\n" % (len(EVENT_BODY), EVENT_BODY), 200),
    ],
    ids=["bad-query", "bad-json", "expect-100-continue", "chunked-body"],
)
def test_requests_the_direct_path_declines_get_the_full_apps_answer(
    served: tuple[FastAPI, int],
    direct_calls: list[str],
    payload: bytes,
    status: int,
) -> None:
    ((answered, _, body),) = exchange(served[1], payload)
    assert answered == status, body
    if status == 422:
        assert json.loads(body)["error"] == "validation"
    else:
        assert json.loads(body)["applied"] is True
    assert direct_calls == ["/events"]  # handed over, then declined


def test_an_api_key_is_required_on_the_direct_path(settings: Settings) -> None:
    keyed = Settings.model_validate({**settings.model_dump(), "api_key": "s3cret"})
    with serving(keyed) as (_, port):
        event = {"user_id": "k1", "item_id": "item-1"}
        ((refused, _, _),) = exchange(port, request("/events", event))
        ((accepted, _, _),) = exchange(port, request("/events", event, "X-API-Key: s3cret"))
    assert (refused, accepted) == (401, 200)


def test_redis_errors_are_503_and_the_event_is_not_run_twice(tiny_artifact: Path) -> None:
    with EmbeddedRedis() as redis_server:
        settings = Settings(
            artifact=tiny_artifact, redis_url=redis_server.url, redis_timeout_seconds=0.5,
            redis_retries=1,
        )  # fmt: skip
        with serving(settings) as (app, port):
            fast_path: EventsFastPath = app.fast_events  # type: ignore[attr-defined]
            engine = app.state.engine
            applied: list[str] = []
            apply: Callable[..., Awaitable[Any]] = engine.apply

            async def counting_apply(event: Any, k: int, exclude_seen: bool) -> Any:
                applied.append(event.user_id)
                return await apply(event, k, exclude_seen)

            engine.apply = counting_apply
            assert fast_path is not None
            redis_server.stop()
            ((status, headers, body),) = exchange(
                port, request("/events", {"user_id": "r1", "item_id": "item-1"})
            )
    assert status == 503, body
    assert json.loads(body)["error"] == "redis_unavailable"
    assert headers["retry-after"] == "1"
    assert applied == ["r1"]


def test_a_content_length_with_thousands_of_leading_zeros_is_read_as_its_value(
    served: tuple[FastAPI, int], direct_calls: list[str]
) -> None:
    """``int()`` refuses strings over 4,300 digits; the HTTP parser accepts them."""
    padded = request("/events", EVENT_BODY).replace(
        b"Content-Length: ", b"Content-Length: " + b"0" * 5000
    )
    ((status, _, body),) = exchange(served[1], padded)
    assert status == 200, body
    assert direct_calls == ["/events"]


def test_an_exception_on_the_direct_path_is_a_500_not_a_silent_connection(
    served: tuple[FastAPI, int],
) -> None:
    fast_path: EventsFastPath = served[0].fast_events  # type: ignore[attr-defined]

    def broken(*_: object) -> None:
        raise RuntimeError("a bug in the direct path")

    fast_path._parse = broken  # type: ignore[method-assign,assignment]
    with socket.create_connection(("127.0.0.1", served[1]), timeout=10) as sock:
        sock.sendall(request("/events", EVENT_BODY))
        ((status, headers, _),) = read_answers(sock, 1)
        assert status == 500
        assert headers["connection"] == "close"
        assert sock.recv(1) == b""
    del fast_path._parse  # the method again: the server still answers
    ((status, _, _),) = exchange(served[1], request("/events", EVENT_BODY))
    assert status == 200


def test_with_the_access_log_on_every_event_goes_through_asgi_and_is_logged(
    settings: Settings,
) -> None:
    lines: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: lines.append(record.getMessage())  # type: ignore[method-assign]
    with serving(settings, "info") as (app, port):
        logging.getLogger("uvicorn.access").addHandler(handler)
        try:
            calls = spy_on_direct_calls(app)
            ((status, _, _),) = exchange(port, request("/events", EVENT_BODY))
        finally:
            logging.getLogger("uvicorn.access").removeHandler(handler)
    assert status == 200
    assert calls == []
    assert any('"POST /events HTTP/1.1" 200' in line for line in lines)
