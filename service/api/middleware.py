"""Pure ASGI middleware: request timing by route template, and the request body size limit."""

import sys
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from service import telemetry
from service.api.errors import error_response

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

HTTP_METHODS = frozenset(("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"))
"""Methods labelled as themselves (:func:`method_label`)."""

MAX_LENGTH_DIGITS = 18
"""Significant digits of a Content-Length read as a number; longer ones exceed any limit."""


def method_label(method: str) -> str:
    """``method``, or ``OTHER`` beyond :data:`HTTP_METHODS`, so a client cannot add series."""
    return method if method in HTTP_METHODS else "OTHER"


def route_label(scope: Scope) -> str:
    """The template of the route that answered (``<unmatched>``: none did).

    Its template without converters (``{user_id}``, not ``{user_id:path}``) is the label
    dashboards know. FastAPI's router stores its own routes in the (shared) scope; for plain
    Starlette routes (``/docs``, ``/openapi.json``) it stores only the endpoint, so their route
    is found among the app's by that endpoint.
    """
    path = getattr(scope.get("route"), "path_format", None)
    endpoint = scope.get("endpoint")
    if path is None and endpoint is not None:
        for route in getattr(scope.get("app"), "routes", ()):
            if getattr(route, "endpoint", None) is endpoint:
                path = getattr(route, "path_format", None)
                break
    return path or "<unmatched>"


class HTTPMetricsMiddleware:
    """Times every HTTP request by route template (never the raw path: no per-user labels)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500

        async def send_with_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_with_status)
        finally:
            method = method_label(scope["method"])
            telemetry.http_histogram(route_label(scope), method, f"{status // 100}xx").observe(
                time.perf_counter() - start
            )


def declared_length(value: bytes) -> int | None:
    """A ``Content-Length`` value as a number; None unless it is ASCII digits only.

    Lengths of more than :data:`MAX_LENGTH_DIGITS` significant digits read as ``sys.maxsize``
    (over any limit): the HTTP parser accepts thousands of leading zeros or digits, which
    ``int()`` refuses beyond 4,300.
    """
    if not value.isdigit():
        return None
    digits = value.lstrip(b"0")
    return int(digits or b"0") if len(digits) <= MAX_LENGTH_DIGITS else sys.maxsize


class BodySizeLimitMiddleware:
    """Reject bodies over ``max_bytes`` with 413, by Content-Length or while streaming.

    A body without Content-Length (chunked) is read up to the limit first and then replayed
    to the app, so the app never sees a truncated body.

    FastAPI's own ``max_body_size`` answers a declared oversized body with a plain-text 413,
    outside the app's error handlers and this timing middleware; this one answers with the
    service's JSON error and is counted like every other request.
    """

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def _reject(self, scope: Scope, receive: Receive, send: Send) -> None:
        response = error_response(
            413, "body_too_large", f"request body exceeds {self.max_bytes} bytes"
        )
        await response(scope, receive, send)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None:
            length = declared_length(declared)
            if length is None or length > self.max_bytes:
                await self._reject(scope, receive, send)
                return
            await self.app(scope, receive, send)
            return
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":  # client went away
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:
                await self._reject(scope, receive, send)
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        await self.app(scope, replay_body(b"".join(chunks), receive), send)


def replay_body(body: bytes, receive: Receive) -> Receive:
    """A ``receive`` that yields the already-read ``body`` once, then defers to ``receive``."""
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if sent:
            return await receive()
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    return replay
