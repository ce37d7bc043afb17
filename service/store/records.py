"""What the store reads and writes, as plain records, and their translation to and from the
scripts' arguments and replies."""

import time
from dataclasses import dataclass
from enum import IntEnum
from typing import Any

Arg = str | bytes | int
"""One script argument as redis-py encodes it."""


class WriteStatus(IntEnum):
    """Outcome of a write (the apply script's first return value)."""

    CONFLICT = 0
    WRITTEN = 1
    DUPLICATE = 2
    ALREADY_WRITTEN = 3
    """This writer's token is already stored: a retried call whose first reply was lost."""


WRITE_STATUSES = tuple(WriteStatus)
"""Statuses by value (0…3): indexing is a fraction of an enum call, once per event."""


@dataclass(frozen=True)
class Snapshot:
    """One user's record as read in one round trip; ``version == 0`` means no record."""

    version: int
    state: bytes | None
    hidden: bytes | None
    model_version: str | None
    events_applied: int
    events_received: int
    updated_at: float | None
    history: list[str]
    history_loaded: bool
    """False when the history was not requested (``history`` is then empty, not unknown)."""
    duplicate: bool


@dataclass(frozen=True)
class Write:
    """What one event (or a rebuild) changes; empty ``item``/``state`` leave them untouched."""

    expected_version: int
    token: str
    event_id: str = ""
    item: str = ""
    state: bytes = b""
    hidden: bytes = b""
    model_version: str = ""
    applied: bool = False
    received: bool = False
    expected_token: str = ""
    """When set, the stored record must also carry this writer token (see apply.lua)."""


@dataclass(frozen=True)
class WriteResult:
    status: WriteStatus
    events_applied: int
    version: int
    record: Snapshot | None = None
    """On a conflict, the current record when the write asked for it (``refresh``)."""


def snapshot(reply: list[Any], history: bool) -> Snapshot:
    """A :class:`Snapshot` from the load script's nine-element reply."""
    version, state, hidden, model_version, applied, received, updated, items, seen = reply
    return Snapshot(
        version=int(version or 0),
        state=state or None,
        hidden=hidden or None,
        model_version=model_version.decode() if model_version else None,
        events_applied=int(applied or 0),
        events_received=int(received or 0),
        updated_at=float(updated) if updated else None,
        history=items.decode().split("\n") if items else [],
        history_loaded=history,
        duplicate=seen == b"1",
    )


def write_result(reply: list[Any], refresh: bool | None) -> WriteResult:
    """A :class:`WriteResult` from the apply script's reply (3 elements, 9 on a refreshed
    conflict)."""
    result = WriteResult(WRITE_STATUSES[int(reply[0])], int(reply[1]), int(reply[2]))
    if len(reply) == 3:
        return result
    state, hidden, model_version, received, updated, items = reply[3:]
    record = snapshot(
        [reply[2], state, hidden, model_version, reply[1], received, updated, items, b"0"],
        bool(refresh),
    )
    return WriteResult(result.status, result.events_applied, result.version, record)


@dataclass(frozen=True)
class Limits:
    """Per-user bounds every write enforces."""

    max_len: int
    """Recent items kept (the history list is trimmed to this length)."""
    max_event_ids: int
    ttl_seconds: int
    """Idle time before a user's keys expire; 0 = never."""


def write_args(write: Write, limits: Limits, refresh: bool | None) -> list[Arg]:
    """The apply script's ``ARGV`` for ``write`` (order documented in apply.lua)."""
    return [
        write.expected_version, write.token, write.event_id, write.item,
        write.state, write.hidden, write.model_version,
        int(write.applied), int(write.received), f"{time.time():.6f}",
        limits.max_len, limits.ttl_seconds, limits.max_event_ids, write.expected_token,
        "" if refresh is None else str(int(refresh)),
    ]  # fmt: skip
