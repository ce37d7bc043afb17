"""HTTP routes: validate, call the engine, return; errors are mapped in service.api.errors."""

from typing import Annotated, Any

from fastapi import APIRouter, Header, Path, Query, Response
from fastapi.concurrency import run_in_threadpool

from service import telemetry
from service.api.deps import EngineDep, WriteAccess
from service.engine.batch import apply_batch
from service.errors import (
    REDIS_DOWN_MESSAGE,
    ContentionError,
    InvalidInputError,
    RedisUnavailableError,
)
from service.schemas import (
    MAX_ID_LENGTH,
    USER_ID_PATTERN,
    BatchResult,
    Deleted,
    ErrorBody,
    Event,
    EventBatch,
    EventResult,
    Health,
    Recommendations,
    UserInfo,
)
from service.settings import MAX_K
from service.telemetry import render_metrics

router = APIRouter()

ERROR_DESCRIPTIONS = {
    401: "Missing or wrong X-API-Key header (when LRUREC_API_KEY is set).",
    404: "Not found: a user with no stored events, or a path that names no user id (one "
    "with a line break in it does not reach the route).",
    413: "Body larger than LRUREC_MAX_BODY_BYTES.",
    422: "Invalid body or query; the message names the field.",
    503: "Redis unavailable or too many concurrent writers for a user; retry after the "
    "Retry-After header's seconds.",
}


def errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI entries for the error answers a route can give (all shaped as ErrorBody)."""
    return {code: {"model": ErrorBody, "description": ERROR_DESCRIPTIONS[code]} for code in codes}


# Routes take ``{user_id:path}``: an id may contain "/" (events carry any id without control
# characters), and such a user must stay readable and deletable.
UserId = Annotated[str, Path(min_length=1, max_length=MAX_ID_LENGTH, pattern=USER_ID_PATTERN)]
ExcludeSeen = Annotated[bool, Query(description="Leave out the user's recent items.")]


@router.post(
    "/events", response_model=EventResult, response_model_exclude_none=True,
    dependencies=[WriteAccess], tags=["events"], responses=errors(401, 413, 422, 503),
)  # fmt: skip
async def post_event(
    event: Event, engine: EngineDep,
    k: Annotated[
        int | None, Query(ge=0, le=MAX_K, description="Items to return; 0 skips scoring.")
    ] = None,
    exclude_seen: ExcludeSeen = True,
) -> Response:  # fmt: skip
    """Apply one event (one model step) and return the user's fresh top-k."""
    outcome = await engine.apply(event, engine.settings.default_k if k is None else k, exclude_seen)
    # The document is written by the outcome itself (orjson): the same JSON as the declared
    # EventResult, without building one pydantic model per recommended item.
    return Response(outcome.json(), media_type="application/json")


@router.post(
    "/events/batch", response_model_exclude_none=True, dependencies=[WriteAccess], tags=["events"],
    responses=errors(401, 413, 422, 503),
)  # fmt: skip
async def post_events_batch(
    batch: EventBatch, engine: EngineDep,
    k: Annotated[int, Query(ge=0, le=MAX_K, description="Top-k per event; 0 = none.")] = 0,
    exclude_seen: ExcludeSeen = True,
) -> BatchResult:  # fmt: skip
    """Apply up to 1,000 events, in order per user; one result per event."""
    limit = engine.settings.max_batch_size
    if len(batch.events) > limit:
        raise InvalidInputError(f"body.events: at most {limit} events per batch")
    telemetry.BATCH_SIZE.observe(len(batch.events))
    results, failure = await apply_batch(engine, batch.events, k, exclude_seen)
    if failure is not None:
        failed = sum(result.reason == failure for result in results)
        summary = f"{failed} of {len(results)} events were not processed (see results)."
        dumped = {"results": [result.model_dump(exclude_none=True) for result in results]}
        if failure == "contention":
            raise ContentionError(f"Too many concurrent writers for a user. {summary}", dumped)
        raise RedisUnavailableError(f"{REDIS_DOWN_MESSAGE} {summary}", dumped)
    return BatchResult(results=results)


@router.get(
    "/recommendations/{user_id:path}", tags=["recommendations"], responses=errors(404, 422, 503)
)
async def get_recommendations(
    user_id: UserId, engine: EngineDep,
    k: Annotated[int | None, Query(ge=1, le=MAX_K, description="Items to return.")] = None,
    exclude_seen: ExcludeSeen = True,
) -> Recommendations:  # fmt: skip
    """Top-k items for a user from the stored state (cold start for a new user)."""
    return await engine.recommend(
        user_id, engine.settings.default_k if k is None else k, exclude_seen
    )


@router.get(
    "/users/{user_id:path}", dependencies=[WriteAccess], tags=["users"],
    responses=errors(401, 404, 422, 503),
)  # fmt: skip
async def get_user(user_id: UserId, engine: EngineDep) -> UserInfo:
    """A user's event counts, recent items, state model version and last update."""
    return await engine.user_info(user_id)


@router.delete(
    "/users/{user_id:path}", dependencies=[WriteAccess], tags=["users"],
    responses=errors(401, 404, 422, 503),
)  # fmt: skip
async def delete_user(user_id: UserId, engine: EngineDep) -> Deleted:
    """Forget a user: state, recent items and event ids."""
    return Deleted(user_id=user_id, deleted=await engine.delete_user(user_id))


@router.get("/healthz", tags=["operations"], response_model_exclude_none=True)
async def healthz() -> Health:
    """The process is alive."""
    return Health(status="ok")


@router.get("/readyz", tags=["operations"], responses={503: {"model": Health}})
async def readyz(engine: EngineDep, response: Response) -> Health:
    """Ready: the model is loaded and Redis answers PING (503 otherwise)."""
    ok = await engine.ready()
    response.status_code = 200 if ok else 503
    return Health(
        status="ready" if ok else "not_ready", model_version=engine.model_version, redis=ok
    )


@router.get("/metrics", tags=["operations"], response_class=Response)
async def metrics(accept: Annotated[str | None, Header()] = None) -> Response:
    """Prometheus metrics (all workers' when several run)."""
    # A route rather than a mount: a mounted app answers /metrics with a redirect to /metrics/.
    # Encoding reads every worker's files in multiprocess mode, so it runs in a thread.
    body, content_type = await run_in_threadpool(render_metrics, accept)
    return Response(body, media_type=content_type)
