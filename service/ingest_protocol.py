"""One connection of the ingest listener (service.ingest): requests parsed by httptools as they
arrive and answered one at a time, in arrival order."""

import asyncio
import logging
from collections import deque
from collections.abc import Sequence
from typing import TYPE_CHECKING, cast

import httptools

from service.errors import error_response

if TYPE_CHECKING:  # the listener owns its connections; only its type is needed here
    from service.ingest import Ingest

logger = logging.getLogger("service")

IDLE_SECONDS = 5.0
"""A keep-alive connection without a request for this long is closed (uvicorn's default)."""
MAX_QUEUED = 64
"""Pipelined requests held per connection before it stops reading."""
Headers = Sequence[tuple[bytes, bytes]]
JSON_HEADERS: Headers = ((b"content-type", b"application/json"),)


class IngestRequest:
    """One request as read: target, body, and what its headers said."""

    __slots__ = ("api_key", "body", "keep_alive", "method", "too_large", "url")

    def __init__(self) -> None:
        self.url = b""
        self.method = b""
        self.body = bytearray()
        self.api_key: bytes | None = None
        self.keep_alive = True
        self.too_large = False


class IngestProtocol(asyncio.Protocol):
    """One connection of the ingest listener: requests parsed as they arrive, answered one at
    a time in arrival order (a pipelined request waits for the one before it)."""

    def __init__(self, ingest: "Ingest") -> None:
        self.ingest = ingest
        self.loop = asyncio.get_running_loop()
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self.reading = IngestRequest()
        self.queued: deque[IngestRequest] = deque()
        self.busy = False
        self.closing = False
        self.paused = False
        self.last_active = self.loop.time()
        self.idle_timer: asyncio.TimerHandle | None = None

    # asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self.ingest.connections.add(self)
        self._arm_idle_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self.ingest.connections.discard(self)
        self.transport = None
        if self.idle_timer is not None:
            self.idle_timer.cancel()
        # A request being applied finishes (its write is not undone); its answer is dropped.

    def data_received(self, data: bytes) -> None:
        self.last_active = self.loop.time()
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._fail(b"upgrades are not supported on the ingest port")
        except httptools.HttpParserError:
            self._fail(b"invalid HTTP request")

    # httptools callbacks
    def on_message_begin(self) -> None:
        self.reading = IngestRequest()

    def on_url(self, url: bytes) -> None:
        self.reading.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        lowered = name.lower()
        if lowered == b"x-api-key":
            self.reading.api_key = value
        elif lowered == b"expect" and value.lower() == b"100-continue" and self._idle():
            # Only when nothing is being answered: written now, an interim response would
            # come before the final one of a request ahead of it. A client that gets none
            # sends its body after a short wait (RFC 9110, 10.1.1).
            cast(asyncio.Transport, self.transport).write(b"HTTP/1.1 100 Continue\r\n\r\n")

    def on_headers_complete(self) -> None:
        request = self.reading
        request.method = self.parser.get_method()
        request.keep_alive = self.parser.should_keep_alive()

    def on_body(self, body: bytes) -> None:
        request = self.reading
        if request.too_large:
            return
        request.body += body
        if len(request.body) > self.ingest.engine.settings.max_body_bytes:
            request.too_large, request.body = True, bytearray()

    def on_message_complete(self) -> None:
        self.queued.append(self.reading)
        if len(self.queued) >= MAX_QUEUED and self.transport is not None:
            self.transport.pause_reading()
            self.paused = True
        if not self.busy:
            self._next()

    def _idle(self) -> bool:
        """Connected, and no request being answered or waiting."""
        return self.transport is not None and not self.busy and not self.queued

    # Answering
    def _next(self) -> None:
        """Start answering the oldest queued request, if any."""
        if not self.queued or self.transport is None:
            self.busy = False
            return
        self.busy = True
        request = self.queued.popleft()
        if self.paused and len(self.queued) < MAX_QUEUED // 2:
            self.transport.resume_reading()
            self.paused = False
        task = self.loop.create_task(self._answer(request))
        self.ingest.tasks.add(task)
        task.add_done_callback(self.ingest.tasks.discard)

    async def _answer(self, request: IngestRequest) -> None:
        try:
            status, body, headers = await self.ingest.answer(request)
        except Exception as error:  # a bug past the error handlers: answer, never hang
            logger.error("exception answering POST /events (ingest port)", exc_info=error)
            status, headers = 500, JSON_HEADERS
            body = bytes(error_response(500, "internal", "internal error").body)
            self.closing = True
        transport = self.transport
        if transport is None:  # the client left: nothing to answer
            return
        keep_alive = request.keep_alive and not self.closing
        transport.write(self.ingest.respond(status, body, headers, keep_alive))
        self.last_active = self.loop.time()
        if not keep_alive:
            transport.close()
            return
        self._next()

    def _fail(self, message: bytes) -> None:
        """Answer 400 to what could not be parsed and close (the stream has lost its request
        boundaries); with answers in progress, close after them instead."""
        self.closing = True
        if self.transport is not None and not self.busy:
            body = bytes(error_response(400, "http", message.decode()).body)
            self.transport.write(self.ingest.respond(400, body, JSON_HEADERS, False))
            self.transport.close()

    # Keep-alive and shutdown
    def _arm_idle_timer(self) -> None:
        self.idle_timer = self.loop.call_later(IDLE_SECONDS, self._idle_check)

    def _idle_check(self) -> None:
        """Close after :data:`IDLE_SECONDS` without a request; one timer per connection,
        re-armed for the time left (no timer per request)."""
        if self.transport is None:
            return
        idle = self.loop.time() - self.last_active
        if self.busy or self.queued:
            self.idle_timer = self.loop.call_later(IDLE_SECONDS, self._idle_check)
        elif idle < IDLE_SECONDS:
            self.idle_timer = self.loop.call_later(IDLE_SECONDS - idle, self._idle_check)
        else:
            self.transport.close()

    def shutdown(self) -> None:
        """Close now if idle; otherwise after the answers in progress."""
        self.closing = True
        if self.transport is not None and not self.busy and not self.queued:
            self.transport.close()

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()
