"""uvicorn's httptools protocol with each response sent in one ``send()``.

uvicorn writes a response's head and body with two ``transport.write`` calls; on uvloop each goes
straight to a ``send()`` system call, so every response is two TCP segments, two system calls
here and two wake-ups of the client. On a 2-core VM those writes were the largest single share
of the worker's CPU at low load (~30 % of samples at 100 events/s). :class:`CoalescingTransport`
gathers the writes of one event-loop iteration and sends them together at its end.

``lrurec serve`` runs uvicorn with :data:`HTTP_PROTOCOL` (``--http`` on the uvicorn command line
takes only its built-in names).
"""

import asyncio
from typing import Any, cast

from uvicorn._types import ASGI3Application
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol, RequestResponseCycle

from service.fast_events import EventsFastPath
from service.telemetry import Scope


class CoalescingTransport:
    """A transport whose writes within one loop iteration leave as one ``send()``.

    Everything but ``write``/``writelines``/``close``/``abort`` is the wrapped transport's own.
    Buffered bytes go out before a close, so a ``Connection: close`` response is never cut.
    """

    __slots__ = ("_chunks", "_loop", "_transport")

    def __init__(self, transport: asyncio.Transport) -> None:
        self._transport = transport
        self._chunks: list[bytes] = []
        self._loop = asyncio.get_running_loop()

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self._chunks.append(bytes(data))
        if len(self._chunks) == 1:
            self._loop.call_soon(self.flush)

    def writelines(self, lines: Any) -> None:
        for data in lines:
            self.write(data)

    def flush(self) -> None:
        """Send what was written so far (a no-op once the transport is closing)."""
        if not self._chunks:
            return
        data = self._chunks[0] if len(self._chunks) == 1 else b"".join(self._chunks)
        self._chunks.clear()
        if not self._transport.is_closing():
            self._transport.write(data)

    def close(self) -> None:
        self.flush()
        self._transport.close()

    def abort(self) -> None:
        self._chunks.clear()
        self._transport.abort()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


class CoalescingHttpToolsProtocol(HttpToolsProtocol):
    """``HttpToolsProtocol`` writing through a :class:`CoalescingTransport`, with each
    ``POST /events`` handed to the app's :class:`EventsFastPath` as uvicorn's request cycle
    (:meth:`EventsFastPath.answer_cycle`) instead of an ASGI call."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        # Flow control (pause/resume reading and writing) stays on the real transport.
        self.transport = CoalescingTransport(transport)  # type: ignore[assignment]
        self.events = None if self.config.reset_contextvars else events_fast_path(self.app)

    def _start_asgi_task(self, cycle: RequestResponseCycle, app: ASGI3Application) -> None:
        # ``app`` is not ``self.app`` when uvicorn answers 503 over its concurrency limit.
        events = self.events if app is self.app else None
        if events is None or not events.handles(cast(Scope, cycle.scope)):
            super()._start_asgi_task(cycle, app)
            return
        task = self.loop.create_task(events.answer_cycle(cycle, app))
        task.add_done_callback(self.tasks.discard)
        self.tasks.add(task)


def events_fast_path(app: object, depth: int = 8) -> EventsFastPath | None:
    """The :class:`EventsFastPath` of the service inside uvicorn's wrappers around ``app``
    (proxy headers, message logging, ...: each keeps the next as ``.app``), if any."""
    for _ in range(depth):
        found = getattr(app, "fast_events", None)
        if isinstance(found, EventsFastPath):
            return found
        app = getattr(app, "app", None)
    return None


HTTP_PROTOCOL = CoalescingHttpToolsProtocol
"""The ``http`` protocol class ``lrurec serve`` passes to uvicorn."""
