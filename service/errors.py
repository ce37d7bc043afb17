"""Domain errors: each carries the HTTP status and machine-readable kind it is answered with
(service.api.errors renders them), so the engine raises them without knowing about HTTP."""

from typing import Any

REDIS_DOWN_MESSAGE = (
    "Redis is unreachable or timed out, so the request did not complete. Retry later with the "
    "same event_id: an event is applied at most once per event_id."
)


class ServiceError(Exception):
    """An error with a fixed HTTP status and a machine-readable kind."""

    status_code = 500
    kind = "internal"

    def __init__(self, message: str, extra: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.extra = extra or {}


class RedisUnavailableError(ServiceError):
    status_code = 503
    kind = "redis_unavailable"


class ContentionError(ServiceError):
    """Too many concurrent writers for one user; nothing was written."""

    status_code = 503
    kind = "contention"


class InvalidInputError(ServiceError):
    status_code = 422
    kind = "validation"


class UnauthorizedError(ServiceError):
    status_code = 401
    kind = "unauthorized"


class NotFoundError(ServiceError):
    status_code = 404
    kind = "not_found"
