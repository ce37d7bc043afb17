"""``POST /events`` served ahead of the Starlette/FastAPI middleware and routing stack.

Measured with a sampling profiler at ~300 events/s on one worker: the layers between uvicorn and
the endpoint (error middleware, metrics and body-limit middleware, exception middleware, the
router and FastAPI's request wrapper) took ~20 % of the worker's CPU per event, more than the
Redis client. :class:`EventsFastPath` is the outermost ASGI layer; it answers a well-formed
``POST /events`` itself and hands anything else to the full app, unchanged:

- every other route and method, and requests before start-up finished;
- a ``POST /events`` it would reject (bad or missing ``Content-Length``, a body over the limit, a
  wrong API key, an invalid query or body): the full app gets the request, with the body it
  already read replayed, and answers exactly as without this layer (413, 401, 422 naming the
  field). Nothing has been applied at that point, so nothing runs twice.

Once the engine is called, errors are answered here by the app's own exception handlers (503
for Redis, 500 otherwise), and the request is timed into ``lrurec_http_request_duration_seconds``
under the route template ``/events`` as the metrics middleware would.
"""

import asyncio
import inspect
import logging
import secrets
import time
from typing import cast
from urllib.parse import parse_qsl

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError
from uvicorn._types import ASGI3Application
from uvicorn.protocols.http.httptools_impl import RequestResponseCycle

from service.coalescing_transport import CoalescingTransport
from service.engine import Engine
from service.limits import declared_length, replay_body
from service.parsing import parse_event_query
from service.schemas import Event
from service.telemetry import ASGIApp, Receive, Scope, Send, http_histogram

logger = logging.getLogger("service")

ROUTE = "/events"
JSON_HEADERS = [(b"content-type", b"application/json")]
QUERY_CACHE_SIZE = 256
"""Distinct query strings whose parsed ``(k, exclude_seen)`` are remembered (they repeat)."""


class EventsFastPath:
    """The outermost ASGI layer: ``POST /events`` here, everything else to ``app``.

    Args:
        app: the full application (``service`` itself, or its middleware stack).
        service: the FastAPI application (its state holds the engine; its exception handlers
            answer errors).
    """

    def __init__(self, app: ASGIApp, service: FastAPI) -> None:
        self.app = app
        self.service = service
        self._queries: dict[bytes, tuple[int, bool] | None] = {}

    @staticmethod
    def handles(scope: Scope) -> bool:
        """Whether ``scope`` is a ``POST /events`` (the only request this layer answers)."""
        return scope["type"] == "http" and scope["method"] == "POST" and _route_path(scope) == ROUTE

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if not self.handles(scope):
            await self.app(scope, receive, send)
            return
        engine: Engine | None = getattr(self.service.state, "engine", None)
        if engine is None or not self._authorised(engine, scope):
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        body = await self._body(scope, receive, engine.settings.max_body_bytes)
        if body is None:  # no usable Content-Length or over the limit: the full app decides
            await self.app(scope, receive, send)
            return
        request = self._parse(engine, scope, body)
        if request is None:
            await self.app(scope, replay_body(body, receive), send)
            return
        try:
            outcome = await engine.apply(*request)
        except Exception as error:
            status = await self._error(scope, receive, send, error)
        else:
            status = 200
            payload = outcome.json()
            headers = [*JSON_HEADERS, (b"content-length", str(len(payload)).encode())]
            await send({"type": "http.response.start", "status": 200, "headers": headers})
            await send({"type": "http.response.body", "body": payload})
        http_histogram(ROUTE, "POST", f"{status // 100}xx").observe(time.perf_counter() - start)

    async def answer_cycle(self, cycle: RequestResponseCycle, app: ASGI3Application) -> None:
        """:meth:`_answer_cycle` with uvicorn's ``run_asgi`` safety net: whatever escapes is
        logged and answered with a 500 (or the connection closed when the answer had begun),
        so no client is left waiting and the connection's next request still runs."""
        try:
            await self._answer_cycle(cycle, app)
        except BaseException as error:
            logger.error("exception answering POST /events", exc_info=error)
            if not cycle.response_started and not cycle.disconnected:
                await cycle.send_500_response()
            else:
                cycle.transport.close()
            if isinstance(error, asyncio.CancelledError):
                raise
        finally:
            cycle.on_response = lambda: None  # as run_asgi: drop the protocol's callback

    async def _answer_cycle(self, cycle: RequestResponseCycle, app: ASGI3Application) -> None:
        """Answer uvicorn's request ``cycle`` for a ``POST /events`` (:meth:`handles`) without
        the ASGI interface: the response is written to the connection as one buffer.

        In a py-spy profile of one worker at 2,200 events/s the ASGI round (``run_asgi``, the
        proxy-headers middleware, ``receive`` and two ``send`` messages with their header checks)
        held ≈ 15 % of the samples, more than the Redis client; end to end this path measured
        ≈ 2 % less CPU per event (benchmarks/RESULTS.md). Anything it would not answer itself (a
        body still arriving, ``Expect: 100-continue``, a request :meth:`__call__` would hand to
        the full app) is run through ``cycle.run_asgi(app)`` as uvicorn would have: the body is
        still in the cycle, unread. An error once the engine was called is answered by the
        app's exception handlers through the cycle's ``send``.
        """
        scope = cast(Scope, cycle.scope)
        engine: Engine | None = getattr(self.service.state, "engine", None)
        if (
            engine is None or cycle.more_body or cycle.disconnected
            or cycle.waiting_for_100_continue or not self._authorised(engine, scope)
            or not _within(scope, len(cycle.body), engine.settings.max_body_bytes)
        ):  # fmt: skip
            await cycle.run_asgi(app)
            return
        start = time.perf_counter()
        request = self._parse(engine, scope, bytes(cycle.body))
        if request is None:
            await cycle.run_asgi(app)
            return
        cycle.body = bytearray()  # as uvicorn's receive: no body kept with an idle connection
        try:
            outcome = await engine.apply(*request)
        except Exception as error:  # answered by the app's own handlers (never run again)
            receive, send = cast(Receive, cycle.receive), cast(Send, cycle.send)  # typed apart
            status = await self._error(scope, receive, send, error)
        else:
            status = 200
            await _write_json(cycle, outcome.json())
        http_histogram(ROUTE, "POST", f"{status // 100}xx").observe(time.perf_counter() - start)

    def _parse(self, engine: Engine, scope: Scope, body: bytes) -> tuple[Event, int, bool] | None:
        """``(event, k, exclude_seen)``, or None when the full app must answer (422)."""
        query = self._query(scope["query_string"], engine.settings.default_k)
        event = _event(body) if query is not None else None
        if query is None or event is None:
            return None
        return event, *query

    @staticmethod
    def _authorised(engine: Engine, scope: Scope) -> bool:
        key = engine.settings.api_key
        if key is None:
            return True
        given = _header(scope, b"x-api-key")
        return given is not None and secrets.compare_digest(given, key.get_secret_value().encode())

    @staticmethod
    async def _body(scope: Scope, receive: Receive, limit: int) -> bytes | None:
        """The whole body when ``Content-Length`` is present and within ``limit``."""
        declared = _header(scope, b"content-length")
        length = None if declared is None else declared_length(declared)
        if length is None or length > limit:
            return None
        chunks = []
        while True:
            message = await receive()
            if message["type"] != "http.request":  # the client went away
                return None
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                return b"".join(chunks)

    def _query(self, raw: bytes, default_k: int) -> tuple[int, bool] | None:
        """``(k, exclude_seen)``, or None when invalid (the full app then answers 422)."""
        if raw in self._queries:
            return self._queries[raw]
        try:
            parsed: tuple[int, bool] | None = parse_event_query(
                dict(parse_qsl(raw.decode("latin-1"), keep_blank_values=True)), default_k
            )
        except RequestValidationError:
            parsed = None
        if len(self._queries) < QUERY_CACHE_SIZE:
            self._queries[raw] = parsed
        return parsed

    async def _error(self, scope: Scope, receive: Receive, send: Send, error: Exception) -> int:
        """Answer ``error`` with the app's handler for its type; returns the status sent."""
        handlers = self.service.exception_handlers
        handler = next((handlers[kind] for kind in type(error).__mro__ if kind in handlers), None)
        if handler is None:  # unreachable: the service registers a handler for Exception
            raise error
        response = handler(Request(scope, receive), error)
        if inspect.isawaitable(response):
            response = await response
        await response(scope, receive, send)
        return int(response.status_code)


def _route_path(scope: Scope) -> str:
    """The path the router matches: without the ``root_path`` a proxy mounts the app under."""
    path: str = scope["path"]
    root: str = scope.get("root_path", "")
    return path[len(root) :] if root and path.startswith(root) else path


def _header(scope: Scope, name: bytes) -> bytes | None:
    for key, value in scope["headers"]:
        if key == name:
            return bytes(value)
    return None


def _within(scope: Scope, received: int, limit: int) -> bool:
    """``Content-Length`` is present, within ``limit`` and matches the ``received`` body."""
    declared = _header(scope, b"content-length")
    length = None if declared is None else declared_length(declared)
    return length is not None and length == received <= limit


async def _write_json(cycle: RequestResponseCycle, payload: bytes) -> None:
    """A 200 ``application/json`` response on ``cycle``'s connection, completing the cycle as
    its ``send`` would (keep-alive or close, the next pipelined request, flow control)."""
    if cycle.flow.write_paused and not cycle.disconnected:
        await cycle.flow.drain()
    if cycle.disconnected:  # as uvicorn's send: the client left, nothing to answer
        return
    cycle.response_started = True
    head = [b"HTTP/1.1 200 OK\r\n"]
    for name, value in cycle.default_headers:
        head += [name, b": ", value, b"\r\n"]
    head.append(b"content-type: application/json\r\ncontent-length: %d\r\n" % len(payload))
    if not cycle.keep_alive:
        head.append(b"connection: close\r\n")
    head += [b"\r\n", payload]
    transport = cycle.transport
    if isinstance(transport, CoalescingTransport):  # one buffer already: no need to wait
        transport.write_whole(b"".join(head))
    else:
        transport.write(b"".join(head))
    cycle.response_complete = True
    cycle.message_event.set()
    if not cycle.keep_alive:
        cycle.transport.close()
    cycle.on_response()


def _event(body: bytes) -> Event | None:
    try:
        return Event.model_validate_json(body)
    except ValidationError:
        return None
