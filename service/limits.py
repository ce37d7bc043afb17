"""Request body size limit as pure ASGI middleware: oversized bodies get 413 before parsing."""

import sys

from service.errors import error_response
from service.telemetry import ASGIApp, Message, Receive, Scope, Send

MAX_LENGTH_DIGITS = 18
"""Significant digits of a Content-Length read as a number; longer ones exceed any limit."""


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
        headers = dict(scope["headers"])
        declared = headers.get(b"content-length")
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
