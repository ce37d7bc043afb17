"""The ingest listener (``LRUREC_INGEST_PORT``): ``POST /events`` only, over a small HTTP/1.1
protocol of its own on the worker's engine, next to the full API on the main port.

Why a second listener: on one worker at 3,000 events/s, answering ``POST /events`` from a bare
parser on the same engine used 0.25-0.28 ms of the worker's CPU per event against 0.28-0.32 ms
through uvicorn, and p99 fell from 21-254 ms to 6-21 ms. The difference is a dozen steps of
1-10 µs each in uvicorn's per-request machinery and the hand-over around it (scope and request
cycle, per-header callbacks, checks, completion, a keep-alive timer per response), which two
attempts inside uvicorn's protocol did not remove (benchmarks/RESULTS.md, issue 5, session 8).
A producer streaming events uses this port; everything else (recommendations, users, batches,
metrics, docs) stays on the main one.

What it speaks: HTTP/1.1 and 1.0; keep-alive, closed after 5 s without a request;
pipelined requests answered in order; bodies by Content-Length or chunked, up to
``LRUREC_MAX_BODY_BYTES`` (413 beyond); ``Expect: 100-continue``. Same query parameters, API
key, documents and errors as ``POST /events`` on the main port (the app's own exception
handlers write the errors); 404 for any other path, 405 for another method. Every worker of
``lrurec serve`` listens on the port (``SO_REUSEPORT``: the kernel spreads connections).
"""

import asyncio
import logging
import secrets
import time
from email.utils import formatdate
from http import HTTPStatus
from typing import cast
from urllib.parse import parse_qsl

from fastapi import FastAPI, Request
from starlette.responses import Response

from service import telemetry
from service.engine import Engine
from service.errors import (
    BodyTooLargeError,
    MethodNotAllowedError,
    NotFoundError,
    UnauthorizedError,
)
from service.ingest_protocol import JSON_HEADERS, Headers, IngestProtocol, IngestRequest
from service.parsing import parse_event, parse_event_query

logger = logging.getLogger("service")

ROUTE = b"/events"
SHUTDOWN_SECONDS = 10.0
"""How long a shutdown waits for requests in progress before closing their connections."""
QUERY_CACHE_SIZE = 256


class Ingest:
    """The listener of one worker: its server, its connections, and the engine they feed.

    Args:
        app: the service (its state holds the engine and settings, its exception handlers
            answer errors).
    """

    def __init__(self, app: FastAPI) -> None:
        self.app = app
        self.engine: Engine = app.state.engine
        self.connections: set[IngestProtocol] = set()
        self.tasks: set[asyncio.Task[None]] = set()
        """Answers in progress (a request whose client left is still applied)."""
        self.server: asyncio.Server | None = None
        self._queries: dict[bytes, tuple[int, bool]] = {}
        self._date = (0, b"")

    async def start(self, host: str, port: int) -> None:
        loop = asyncio.get_running_loop()
        self.server = await loop.create_server(
            lambda: IngestProtocol(self), host, port, reuse_port=True
        )
        logger.info("ingest listener (POST /events) on %s:%d", host, port)

    async def aclose(self) -> None:
        """Stop accepting; close idle connections at once, answer the requests already read
        on the others (up to :data:`SHUTDOWN_SECONDS`, with ``connection: close`` on the
        last), then abort what is left."""
        if self.server is not None:
            self.server.close()
        for connection in list(self.connections):
            connection.shutdown()
        deadline = time.monotonic() + SHUTDOWN_SECONDS
        while self.tasks and (left := deadline - time.monotonic()) > 0:
            # Each answer starts the next queued one: wait until none is left.
            await asyncio.wait(set(self.tasks), timeout=left)
        for connection in list(self.connections):
            connection.abort()
        tasks = list(self.tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)  # unwound before Redis closes

    def date(self) -> bytes:
        """The ``date`` header's value, formatted once a second."""
        now = int(time.time())
        if self._date[0] != now:
            self._date = (now, formatdate(now, usegmt=True).encode())
        return self._date[1]

    def query(self, raw: bytes) -> tuple[int, bool]:
        """``(k, exclude_seen)`` of a query string; raises the 422 ``RequestValidationError``."""
        parsed = self._queries.get(raw)
        if parsed is None:
            params = dict(parse_qsl(raw.decode("latin-1"), keep_blank_values=True))
            parsed = parse_event_query(params, self.engine.settings.default_k)
            if len(self._queries) < QUERY_CACHE_SIZE:
                self._queries[raw] = parsed
        return parsed

    def check(self, request: IngestRequest) -> None:
        """Raise the error a request gets before anything is applied (404, 405, 413, 401)."""
        if request.path != ROUTE:
            raise NotFoundError("the ingest port serves POST /events only")
        if request.method != b"POST":
            raise MethodNotAllowedError("the ingest port serves POST /events only")
        if request.too_large:
            raise BodyTooLargeError(
                f"request body exceeds {self.engine.settings.max_body_bytes} bytes"
            )
        key = self.engine.settings.api_key
        if key is not None and not (
            request.api_key is not None
            and secrets.compare_digest(request.api_key, key.get_secret_value().encode())
        ):
            raise UnauthorizedError("missing or wrong X-API-Key header")

    async def answer(self, request: IngestRequest) -> tuple[int, bytes, Headers]:
        """``(status, body, headers)`` of the answer to a request, errors included (the app's
        own exception handlers write them); never raises but when cancelled."""
        start = time.perf_counter()
        try:
            self.check(request)
            k, exclude_seen = self.query(request.query)
            outcome = await self.engine.apply(parse_event(bytes(request.body)), k, exclude_seen)
            answer: tuple[int, bytes, Headers] = (200, outcome.json(), JSON_HEADERS)
        except Exception as error:
            answer = await self.error(error)
        # Labels as the main port's (route template or <unmatched>, telemetry.method_label),
        # bounded however odd the request.
        route = "/events" if request.path == ROUTE else "<unmatched>"
        post = request.method == b"POST"  # every event: no decoding
        method = "POST" if post else telemetry.method_label(request.method.decode("latin-1"))
        status = f"{answer[0] // 100}xx"
        telemetry.http_histogram(route, method, status).observe(time.perf_counter() - start)
        return answer

    def respond(self, status: int, body: bytes, headers: Headers, keep_alive: bool) -> bytes:
        """A whole response: status line, ``date``, ``headers`` (with the content length),
        ``connection: close`` unless kept alive, then ``body``."""
        head = [b"HTTP/1.1 %d %s\r\ndate: %s\r\n" % (status, _phrase(status), self.date())]
        for name, value in headers:
            head += [name, b": ", value, b"\r\n"]
        if headers is JSON_HEADERS:
            head.append(b"content-length: %d\r\n" % len(body))
        if not keep_alive:
            head.append(b"connection: close\r\n")
        head += [b"\r\n", body]
        return b"".join(head)

    async def error(self, error: Exception) -> tuple[int, bytes, Headers]:
        """The answer to ``error`` from the app's exception handler for its type."""
        handlers = self.app.exception_handlers
        handler = next(handlers[kind] for kind in type(error).__mro__ if kind in handlers)
        scope = {"type": "http", "method": "POST", "path": "/events", "query_string": b"",
                 "headers": []}  # fmt: skip
        answered = handler(Request(scope), error)
        response = cast(Response, await answered if asyncio.iscoroutine(answered) else answered)
        if response.status_code == 500:
            logger.error("exception answering POST /events (ingest port)", exc_info=error)
        return response.status_code, bytes(response.body), response.raw_headers


def _phrase(status: int) -> bytes:
    return HTTPStatus(status).phrase.encode()
