"""One connection of the ingest listener (service.ingest): requests parsed by httptools as they
arrive and answered one at a time, in arrival order."""

import asyncio
import logging
from collections import deque
from collections.abc import Sequence
from typing import TYPE_CHECKING, cast

import httptools

from service.errors import ServiceError, error_response
from service.limits import declared_length

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

    __slots__ = (
        "api_key", "body", "expect_continue", "head_done", "keep_alive", "method", "path",
        "query", "too_large", "url",
    )  # fmt: skip

    def __init__(self) -> None:
        self.url = b""
        self.path = b""
        self.query = b""
        """``url``'s path and query string, split once its headers are read."""
        self.method = b""
        self.body = bytearray()
        self.api_key: bytes | None = None
        self.keep_alive = True
        self.too_large = False
        self.expect_continue = False
        self.head_done = False
        """Headers read: later ``on_header`` calls are chunked trailers, not headers."""


class IngestProtocol(asyncio.Protocol):
    """One connection of the ingest listener: requests parsed as they arrive, answered one at
    a time in arrival order (a pipelined request waits for the one before it).

    Flow control: reading pauses while :data:`MAX_QUEUED` requests wait, and no answer starts
    while the transport's write buffer is over its high-water mark (a client that does not
    read its answers stops being read). A request that fails before its body (an unknown path,
    a wrong key, a body over the limit by its Content-Length), or whose chunked body passes the
    limit, is answered at once and the connection closed, the rest of its body unread, when
    nothing is ahead of it; otherwise in its turn, its body read and discarded.
    """

    def __init__(self, ingest: "Ingest") -> None:
        self.ingest = ingest
        self.loop = asyncio.get_running_loop()
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self.reading = IngestRequest()
        self.queued: deque[IngestRequest] = deque()
        self.busy = False
        """A request is being answered (its task runs)."""
        self.closing = False
        """Close after the requests already read (shutdown, a bug)."""
        self.failed: bytes | None = None
        """Unparseable input: answered 400 after the requests read before it."""
        self.read_paused = False
        self.write_paused = False
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
        # A request being applied finishes (its write is not undone); its answer is dropped,
        # and the requests queued behind it are never applied.

    def pause_writing(self) -> None:
        self.write_paused = True

    def resume_writing(self) -> None:
        self.write_paused = False
        if not self.busy:
            self._next()

    def data_received(self, data: bytes) -> None:
        self.last_active = self.loop.time()
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._fail(b"upgrades are not supported on the ingest port")
        except httptools.HttpParserCallbackError as error:  # a bug here, not the client's
            logger.error("exception in the ingest port's parser callbacks", exc_info=error)
            self._fail(b"invalid HTTP request")
        except httptools.HttpParserError:
            self._fail(b"invalid HTTP request")

    # httptools callbacks
    def on_message_begin(self) -> None:
        self.reading = IngestRequest()

    def on_url(self, url: bytes) -> None:
        self.reading.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        request = self.reading
        if request.head_done:  # a chunked body's trailer: never a header
            return
        lowered = name.lower()
        if lowered == b"x-api-key":
            if request.api_key is None:  # the first, as the main port reads it
                request.api_key = value
        elif lowered == b"content-length":
            length = declared_length(value)
            limit = self.ingest.engine.settings.max_body_bytes
            request.too_large = length is None or length > limit
        elif lowered == b"expect" and value.lower() == b"100-continue":
            request.expect_continue = True

    def on_headers_complete(self) -> None:
        request, parser = self.reading, self.parser
        request.head_done = True
        request.path, _, request.query = request.url.partition(b"?")
        request.method = parser.get_method()
        http_1_0 = parser.get_http_version() == "1.0"
        # As uvicorn: an HTTP/1.0 connection closes after its answer.
        request.keep_alive = not http_1_0 and parser.should_keep_alive()
        if not (request.expect_continue or request.too_large) or self._refused_now(request):
            return
        if request.expect_continue and not http_1_0 and self._idle():
            # Only when nothing is being answered: an interim response written now would come
            # before the final one of a request ahead of it (a client that gets none sends
            # its body after a short wait, RFC 9110 10.1.1).
            cast(asyncio.Transport, self.transport).write(b"HTTP/1.1 100 Continue\r\n\r\n")

    def on_body(self, body: bytes) -> None:
        request = self.reading
        if request.too_large:
            return
        request.body += body
        if len(request.body) > self.ingest.engine.settings.max_body_bytes:
            request.too_large, request.body = True, bytearray()
            self._refused_now(request)  # chunked: the rest of the body is not waited for

    def on_message_complete(self) -> None:
        if self.failed is not None or self.transport is None or self.transport.is_closing():
            return  # refused before its body: answered already
        self.queued.append(self.reading)
        if len(self.queued) >= MAX_QUEUED:
            self._pause_reading()
        if not self.busy:
            self._next()

    def _idle(self) -> bool:
        """Connected, and no request being answered or waiting."""
        return self.transport is not None and not self.busy and not self.queued

    # Answering
    def _next(self) -> None:
        """Start answering the oldest queued request (none while writing is paused); with
        nothing left, send the 400 of unparseable input, or close when closing."""
        transport = self.transport
        if transport is None or self.write_paused:
            self.busy = False
            return
        if not self.queued:
            self.busy = False
            if self.failed is not None:
                self._write_400(self.failed)
            elif self.closing:
                transport.close()
            return
        self.busy = True
        request = self.queued.popleft()
        if self.read_paused and len(self.queued) < MAX_QUEUED // 2 and self.failed is None:
            transport.resume_reading()
            self.read_paused = False
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
        # The requests already read are answered before a shutdown closes the connection.
        last = self.closing and not self.queued and self.failed is None
        keep_alive = request.keep_alive and not last
        if request.method == b"HEAD":  # the headers of the answer, without its body
            if headers is JSON_HEADERS:
                headers = [*headers, (b"content-length", b"%d" % len(body))]
            body = b""
        transport.write(self.ingest.respond(status, body, headers, keep_alive))
        self.last_active = self.loop.time()
        if not keep_alive:
            transport.close()
            return
        self._next()

    def _refused_now(self, request: IngestRequest) -> bool:
        """Whether ``request`` was refused now, before the rest of its body is sent or read:
        it fails :meth:`Ingest.check` and nothing is ahead of it (else it waits its turn)."""
        if not self._idle():
            return False
        try:
            self.ingest.check(request)
        except ServiceError as error:
            self._refuse(error)
            return True
        return False

    def _refuse(self, error: ServiceError) -> None:
        """Answer ``error`` now and close: the request's body is neither waited for nor read."""
        body = bytes(error_response(error.status_code, error.kind, error.message).body)
        self._close_with(error.status_code, body)

    def _fail(self, message: bytes) -> None:
        """Unparseable input: 400 and close (the stream has lost its request boundaries), after
        the answers to the requests read before it."""
        if self.failed is not None:
            return
        self.failed = message
        self._pause_reading()
        if not self.busy:
            self._next()

    def _write_400(self, message: bytes) -> None:
        self._close_with(400, bytes(error_response(400, "http", message.decode()).body))

    def _close_with(self, status: int, body: bytes) -> None:
        if self.transport is not None:
            self.transport.write(self.ingest.respond(status, body, JSON_HEADERS, False))
            self.transport.close()

    def _pause_reading(self) -> None:
        if not self.read_paused and self.transport is not None:
            self.transport.pause_reading()
            self.read_paused = True

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
        """Close now if idle; otherwise after answering the requests already read."""
        self.closing = True
        if self._idle():
            cast(asyncio.Transport, self.transport).close()

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()
