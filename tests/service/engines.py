"""An engine built as the app's lifespan builds it, for tests that drive it without HTTP."""

from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack

from service.app import build_engine
from service.engine.engine import Engine
from service.settings import Settings


async def started_engine(settings: Settings) -> tuple[Engine, Callable[[], Awaitable[None]]]:
    """``(engine, close)``: the engine on ``settings``' artifact and Redis, and what closes it."""
    stack = AsyncExitStack()
    engine, _ = await build_engine(settings, stack)
    return engine, stack.aclose
