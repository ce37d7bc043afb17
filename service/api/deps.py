"""Request dependencies: the engine built in the lifespan, and the API-key check.

Kept to two, both ``async def``: FastAPI runs plain ``def`` dependencies in the threadpool (a
thread hop per request), and every dependency costs per-request resolution work; settings are
reached through ``engine.settings`` rather than a third dependency.
"""

import secrets
from typing import Annotated

from fastapi import Depends, Header, Request

from service.engine.engine import Engine
from service.errors import UnauthorizedError
from service.settings import Settings


async def get_engine(request: Request) -> Engine:
    engine: Engine = request.app.state.engine
    return engine


EngineDep = Annotated[Engine, Depends(get_engine)]


async def require_api_key(
    request: Request,
    x_api_key: Annotated[
        str | None, Header(description="Needed when LRUREC_API_KEY is set.")
    ] = None,
) -> None:
    """Reject write and admin calls without the configured key (no-op when none is set)."""
    settings: Settings = request.app.state.settings
    if settings.api_key is None:
        return
    expected = settings.api_key.get_secret_value().encode()
    if x_api_key is None or not secrets.compare_digest(x_api_key.encode(), expected):
        raise UnauthorizedError("missing or wrong X-API-Key header")


WriteAccess = Depends(require_api_key)
