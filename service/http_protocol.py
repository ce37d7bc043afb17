"""uvicorn's httptools protocol as ``lrurec serve`` runs it: responses sent in one ``send()``
(:class:`service.coalescing_transport.CoalescingTransport`), and ``POST /events`` answered from
the request cycle without the ASGI round (:meth:`service.fast_events.EventsFastPath.answer_cycle`).

``lrurec serve`` runs uvicorn with :data:`HTTP_PROTOCOL` (``--http`` on the uvicorn command line
takes only its built-in names).
"""

import asyncio
import logging
from typing import cast

from uvicorn._types import ASGI3Application
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol, RequestResponseCycle

from service.coalescing_transport import CoalescingTransport
from service.fast_events import EventsFastPath
from service.telemetry import Scope


class CoalescingHttpToolsProtocol(HttpToolsProtocol):
    """``HttpToolsProtocol`` writing through a :class:`CoalescingTransport`, with each
    ``POST /events`` handed to the app's :class:`EventsFastPath` as uvicorn's request cycle
    (:meth:`EventsFastPath.answer_cycle`) instead of an ASGI call."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        # Flow control (pause/resume reading and writing) stays on the real transport.
        self.transport = CoalescingTransport(transport)  # type: ignore[assignment]
        # uvicorn writes its access-log line from the ASGI ``send``, which the direct path skips.
        logged = self.access_log and self.access_logger.isEnabledFor(logging.INFO)
        direct = not (self.config.reset_contextvars or logged)
        self.events = events_fast_path(self.app) if direct else None

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
