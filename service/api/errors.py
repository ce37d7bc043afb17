"""The HTTP mapping of every failure: a JSON ``{error, message}`` body, never a 500 for anything
a client or Redis can cause."""

import logging
from collections.abc import Mapping, Sequence
from functools import partial
from typing import Any

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from redis.exceptions import ClusterError, RedisError, TryAgainError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect
from starlette.responses import Response
from starlette.routing import BaseRoute, Match, Route

from service import telemetry
from service.errors import REDIS_DOWN_MESSAGE, ServiceError

logger = logging.getLogger(__name__)

CLIENT_CLOSED_REQUEST = 499
"""Status recorded for a request whose client left before sending all of it (nginx's code): a
client's doing, so a 4xx in the metrics, not a server error."""


def error_response(
    status_code: int,
    kind: str,
    message: str,
    extra: dict[str, Any] | None = None,
    headers: Mapping[str, str] | None = None,
) -> Response:
    """The JSON error body every failure uses; counts it in ``lrurec_errors_total``."""
    telemetry.ERRORS.labels(kind).inc()
    body = orjson.dumps({"error": kind, "message": message, **(extra or {})})
    headers = {**(headers or {}), **({"Retry-After": "1"} if status_code == 503 else {})}
    return Response(body, status_code=status_code, media_type="application/json", headers=headers)


def client_left() -> Response:
    """The answer, never delivered, to a request whose client left before the end of its body
    (timed as a 4xx, not counted as an error)."""
    logger.debug("client disconnected before the end of its request body")
    return Response(status_code=CLIENT_CLOSED_REQUEST)


def describe_validation(errors: Sequence[Any]) -> str:
    """``"body.user_id: Field required; query.k: ..."``: every message names its field."""
    parts = []
    for error in errors:
        location = ".".join(str(part) for part in error.get("loc", ()))
        parts.append(f"{location}: {error.get('msg', 'invalid')}")
    return "; ".join(parts) or "invalid request"


async def _service_error(_: Request, exc: Exception) -> Response:
    assert isinstance(exc, ServiceError)
    return error_response(exc.status_code, exc.kind, exc.message, exc.extra)


async def _validation_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    if request.url.path.startswith("/events") and request.method == "POST":
        telemetry.EVENTS.labels("rejected").inc()
    details = [
        {"loc": list(e.get("loc", ())), "msg": e.get("msg"), "type": e.get("type")}
        for e in exc.errors()
    ]
    return error_response(422, "validation", describe_validation(exc.errors()), {"detail": details})


async def _redis_down(_: Request, exc: Exception) -> Response:
    logger.warning("Redis unreachable: %s", exc)
    return error_response(503, "redis_unavailable", REDIS_DOWN_MESSAGE)


async def _redis_error(_: Request, exc: Exception) -> Response:
    logger.error("Redis error: %s", exc)
    return error_response(503, "redis_error", f"Redis refused the operation: {exc}")


async def _http_error(request: Request, exc: Exception, routes: Sequence[BaseRoute]) -> Response:
    assert isinstance(exc, StarletteHTTPException)
    if exc.status_code == 400 and isinstance(exc.__cause__, ClientDisconnect):
        return client_left()
    if exc.status_code == 400 and isinstance(exc.__cause__, ValueError | RecursionError):
        # FastAPI could not decode the body at all (bad UTF-8, nesting too deep): invalid JSON,
        # answered 422 naming the body like every other malformed body.
        message = f"Invalid JSON: {exc.__cause__}"
        invalid = {"loc": ("body",), "msg": message, "type": "json_invalid"}
        return await _validation_error(request, RequestValidationError([invalid]))
    kind = {404: "not_found", 405: "method_not_allowed", 413: "body_too_large"}.get(
        exc.status_code, "http"
    )
    headers = exc.headers
    if exc.status_code == 405:
        headers = {**(headers or {}), "Allow": allowed_methods(routes, request)}
    return error_response(exc.status_code, kind, str(exc.detail), headers=headers)


def allowed_methods(routes: Sequence[BaseRoute], request: Request) -> str:
    """Every method the request's path answers to, for a 405's ``Allow`` (RFC 9110).

    Starlette names only the first route that matched the path, while ``/users/{id}`` has a
    GET and a DELETE route.
    """
    methods: set[str] = set()
    for route in routes:
        match, _ = route.matches({**request.scope, "method": ""})
        if match is not Match.NONE and isinstance(route, Route):
            methods |= route.methods or set()
    return ", ".join(sorted(methods))


async def _internal_error(_: Request, exc: Exception) -> Response:
    logger.exception("unhandled error", exc_info=exc)
    return error_response(500, "internal", "internal error; see the service log")


def install_error_handlers(app: FastAPI, routes: Sequence[BaseRoute] = ()) -> None:
    """Map domain, validation, HTTP and Redis errors to JSON responses; a 405 lists the methods
    of ``routes`` that match its path."""
    app.add_exception_handler(ServiceError, _service_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, partial(_http_error, routes=routes))
    app.add_exception_handler(RedisConnectionError, _redis_down)
    app.add_exception_handler(RedisTimeoutError, _redis_down)
    # A cluster failing over (CLUSTERDOWN, MASTERDOWN, TRYAGAIN during a slot move): transient.
    app.add_exception_handler(ClusterError, _redis_down)
    app.add_exception_handler(TryAgainError, _redis_down)
    app.add_exception_handler(RedisError, _redis_error)
    app.add_exception_handler(Exception, _internal_error)
