"""Hand-rolled request parsing for the hot ``POST /events`` route.

FastAPI's per-request dependency solving, parameter validation and response serialisation cost
more CPU than the model step (profiled in benchmarks/RESULTS.md, issue 5), so the route reads
the raw body and query itself. Validation is still pydantic's (``Event.model_validate_json``,
the same schema), and failures are raised as ``RequestValidationError`` with FastAPI's
``("body" | "query", field)`` locations, so the 422 response names the field exactly as before.
"""

from collections.abc import Mapping
from typing import Any

from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from service.schemas import Event
from service.settings import MAX_K


class EventQuery(BaseModel):
    """Query parameters of ``POST /events`` (documented on the route)."""

    model_config = ConfigDict(extra="ignore")

    k: int | None = Field(default=None, ge=0, le=MAX_K)
    exclude_seen: bool = True


def _located(error: ValidationError, where: str) -> RequestValidationError:
    errors: list[Any] = [
        {**detail, "loc": (where, *detail["loc"])} for detail in error.errors(include_url=False)
    ]
    return RequestValidationError(errors)


def parse_event(body: bytes) -> Event:
    """The JSON body as an :class:`Event`; 422 (``body.<field>``) when invalid."""
    try:
        return Event.model_validate_json(body)
    except ValidationError as error:
        raise _located(error, "body") from None


def parse_event_query(params: Mapping[str, str], default_k: int) -> tuple[int, bool]:
    """``(k, exclude_seen)`` from the query string; 422 (``query.<name>``) when invalid."""
    if not params:  # the common case: nothing to validate
        return default_k, True
    try:
        query = EventQuery.model_validate(dict(params))
    except ValidationError as error:
        raise _located(error, "query") from None
    return (default_k if query.k is None else query.k), query.exclude_seen
