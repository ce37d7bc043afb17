"""``POST /events/batch``: many events, in order per user and users in parallel."""

import asyncio
from collections.abc import Sequence

from redis.exceptions import RedisError

from service import telemetry
from service.engine.engine import Engine
from service.errors import ContentionError
from service.schemas import Event, EventResult, Reason


async def apply_batch(
    engine: Engine,
    events: Sequence[Event],
    k: int,
    exclude_seen: bool,
    concurrency: int | None = None,
) -> tuple[list[EventResult], str | None]:
    """Apply events in order per user (users in parallel, at most ``concurrency`` at once,
    default ``LRUREC_BATCH_CONCURRENCY``); one result per event.

    Returns:
        ``(results, failure)``. ``failure`` is the error kind when Redis failed part-way: the
        failed event and that user's later events are then reported ``applied: false`` with
        the reason, and every other result is exact.
    """
    positions: dict[str, list[int]] = {}
    for position, event in enumerate(events):
        positions.setdefault(event.user_id, []).append(position)
    results: list[EventResult | None] = [None] * len(events)
    limit = asyncio.Semaphore(concurrency or engine.settings.batch_concurrency)
    failures: list[str] = []

    async def run_user(user_positions: list[int]) -> None:
        async with limit:
            for n, position in enumerate(user_positions):
                try:
                    results[position] = await engine.apply_event(events[position], k, exclude_seen)
                except (RedisError, ContentionError) as exc:
                    reason: Reason = (
                        "contention" if isinstance(exc, ContentionError) else "redis_unavailable"
                    )
                    failures.append(reason)
                    # apply_event counted the failed event; its successors never ran.
                    telemetry.EVENTS.labels("rejected").inc(len(user_positions) - n - 1)
                    for later in user_positions[n:]:
                        results[later] = _not_applied(engine, events[later], reason)
                    return

    await asyncio.gather(*(run_user(p) for p in positions.values()))
    complete = [result for result in results if result is not None]
    return complete, (failures[0] if failures else None)


def _not_applied(engine: Engine, event: Event, reason: Reason) -> EventResult:
    return EventResult(
        user_id=event.user_id,
        applied=False,
        reason=reason,
        events_applied=None,
        model_version=engine.model_version,
    )
