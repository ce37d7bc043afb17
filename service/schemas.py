"""Request and response bodies (pydantic v2); their field docs become the OpenAPI schema."""

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from service.settings import MAX_BATCH

MAX_ID_LENGTH = 256
"""Longest user, item or event id accepted (ids are Redis key parts and history entries)."""

# No control characters: ids end up in Redis keys, logs and the tab-separated vocabulary.
ID_PATTERN = r"^[^\x00-\x1f\x7f]+$"
Identifier = Annotated[
    str, StringConstraints(min_length=1, max_length=MAX_ID_LENGTH, pattern=ID_PATTERN)
]
# User ids are read back from URL paths, where undecodable bytes become U+FFFD: without it in
# ids, two different invalid-UTF-8 paths cannot read the same user.
USER_ID_PATTERN = r"^[^\x00-\x1f\x7f\ufffd]+$"
UserIdentifier = Annotated[
    str, StringConstraints(min_length=1, max_length=MAX_ID_LENGTH, pattern=USER_ID_PATTERN)
]

Reason = Literal["duplicate", "unknown_item", "redis_unavailable", "contention"]
Source = Literal["model", "cold_start"]


class Event(BaseModel):
    """One user action."""

    model_config = ConfigDict(extra="forbid")

    user_id: UserIdentifier
    item_id: Identifier = Field(description="External id from the artifact's vocabulary.")
    event_id: Identifier | None = Field(
        default=None, description="Idempotency key: an event id seen before is not applied again."
    )
    timestamp: float | None = Field(
        default=None, ge=0, allow_inf_nan=False, strict=True,  # strict: no true/false, no "1"
        description="Client time (unix seconds, a number); informational.",
    )  # fmt: skip


class EventBatch(BaseModel):
    """Events applied in order per user."""

    model_config = ConfigDict(extra="forbid")

    events: list[Event] = Field(min_length=1, max_length=MAX_BATCH)


class ScoredItem(BaseModel):
    item_id: str
    score: float


class EventResult(BaseModel):
    """Outcome of one event; ``recommendations`` is present when ``k > 0``."""

    user_id: str
    applied: bool
    reason: Reason | None = None
    events_applied: int | None = Field(
        description="Events applied to this user so far; null only in a failed batch entry."
    )
    model_version: str
    recommendations: list[ScoredItem] | None = None


class BatchResult(BaseModel):
    results: list[EventResult]


class Recommendations(BaseModel):
    user_id: str
    model_version: str
    source: Source
    items: list[ScoredItem]


class UserInfo(BaseModel):
    user_id: str
    events_applied: int = Field(description="Events that advanced the model state.")
    events_received: int = Field(description="Events stored, including unknown items.")
    recent_items: list[str] = Field(description="Most recent item ids, oldest first.")
    model_version: str | None = Field(description="Model version of the stored state.")
    updated_at: float | None = Field(description="Last write, unix seconds.")


class Deleted(BaseModel):
    user_id: str
    deleted: bool


class Health(BaseModel):
    status: Literal["ok", "ready", "not_ready"]
    model_version: str | None = None
    redis: bool | None = None


class ErrorBody(BaseModel):
    """Every error answer: a machine-readable kind and a message naming the cause (validation
    errors add ``detail``, batch failures ``results``)."""

    error: str = Field(examples=["validation", "redis_unavailable", "not_found"])
    message: str
