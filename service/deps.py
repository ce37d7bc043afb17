"""Request dependencies: the engine and settings built in the lifespan, and the API-key check."""

import secrets
from typing import Annotated

from fastapi import Depends, Header, Request

from service.engine import Engine
from service.errors import UnauthorizedError
from service.settings import Settings


# Dependencies are ``async def`` on purpose: FastAPI runs plain ``def`` ones in the threadpool,
# a thread hop per request on the hot path.
async def get_engine(request: Request) -> Engine:
    engine: Engine = request.app.state.engine
    return engine


async def get_app_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


EngineDep = Annotated[Engine, Depends(get_engine)]
SettingsDep = Annotated[Settings, Depends(get_app_settings)]


async def require_api_key(
    settings: SettingsDep,
    x_api_key: Annotated[
        str | None, Header(description="Needed when LRUREC_API_KEY is set.")
    ] = None,
) -> None:
    """Reject write and admin calls without the configured key (no-op when none is set)."""
    if settings.api_key is None:
        return
    expected = settings.api_key.get_secret_value().encode()
    if x_api_key is None or not secrets.compare_digest(x_api_key.encode(), expected):
        raise UnauthorizedError("missing or wrong X-API-Key header")


WriteAccess = Depends(require_api_key)
