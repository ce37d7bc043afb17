"""The FastAPI application: ``create_app(settings)`` and the lifespan that loads everything once."""

import asyncio
import gc
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

import numpy as np
import torch
from fastapi import FastAPI
from starlette.types import Receive, Scope, Send
from threadpoolctl import threadpool_limits

from model import load_artifact
from service import telemetry
from service.embedded_redis import EmbeddedRedis
from service.engine import Engine
from service.errors import install_error_handlers
from service.fast_events import EventsFastPath
from service.ingest import Ingest
from service.limits import BodySizeLimitMiddleware
from service.parent_death import end_worker_with_supervisor
from service.quantized_onnx import with_quantized_scoring
from service.routes import router
from service.runtime import build_backend
from service.settings import Settings, get_settings
from service.store import UserStore, create_redis

logger = logging.getLogger("service")

DESCRIPTION = """Real-time sequential recommendations with LRURec. Each user's fixed-size
recurrent state lives in Redis; every event advances it by one model step (O(1) in the
history length) and can return the fresh top-k in the same response."""


def _build_engine(
    settings: Settings, redis_url: str
) -> tuple[Engine, str, Callable[[], Awaitable[None]]]:
    if settings.artifact is None:
        raise RuntimeError(
            "no artifact configured: set LRUREC_ARTIFACT (or run `lrurec serve`, which builds "
            "a demo artifact)"
        )
    artifact = load_artifact(settings.artifact, device=settings.device)
    backend, stepper = build_backend(settings.backend, artifact, settings.device)
    logger.info("model backend: %s (LRUREC_BACKEND=%s)", backend, settings.backend)
    stepper = with_quantized_scoring(stepper, artifact, settings)  # large catalogues: exact int8
    client = create_redis(
        redis_url, settings.redis_timeout_seconds, settings.redis_retries,
        settings.redis_max_connections,
    )  # fmt: skip
    max_len = int(artifact.config.get("max_len", artifact.model.config.max_len))
    store = UserStore(
        client, settings.key_prefix, max_len, settings.max_event_ids, settings.user_ttl_seconds
    )

    async def close() -> None:
        await store.aclose()
        await client.aclose()

    return Engine(store, stepper, artifact, settings), backend, close


def limit_threads(threads: int) -> None:
    """Hold torch and numpy's BLAS (OpenBLAS) to ``threads`` in this process.

    OpenBLAS otherwise starts one thread per core: measured on this 2-core VM, a [64, 3416]
    score product took 15 ms instead of 0.4 ms while another process held the cores, as each
    worker's BLAS threads waited on each other. Called where the app is built, in the thread
    that serves it under uvicorn (the main one): a limit set from another thread (where test
    clients run the lifespan) did not always hold here, and torch's is per thread.
    """
    torch.set_num_threads(threads)
    threadpool_limits(threads, user_api="blas")


def _warm_up(engine: Engine) -> None:
    """One step and one top-k so the first request pays no lazy initialisation."""
    hidden, _ = engine.stepper.step(
        np.ones(1, dtype=np.int64), np.zeros((1, *engine.stepper.state_shape), dtype=np.float32)
    )
    engine.stepper.top_k(hidden, 10, [[]])


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    """Load the artifact, open Redis (or start an embedded one), build the engine; undo on exit."""
    settings: Settings = app.state.settings
    async with AsyncExitStack() as stack:
        redis_url = settings.redis_url
        if redis_url is None:
            embedded = stack.enter_context(EmbeddedRedis())
            redis_url = embedded.url
            logger.info("started embedded redis-server on %s", redis_url)
        engine, backend, close_redis = _build_engine(settings, redis_url)
        stack.push_async_callback(close_redis)
        app.state.engine = engine
        _warm_up(engine)
        if settings.ingest_port is not None:
            ingest = app.state.ingest = Ingest(app)
            await ingest.start(settings.ingest_host, settings.ingest_port)
            stack.push_async_callback(ingest.aclose)  # before Redis closes: answers finish
        telemetry.set_model(engine.model_version, engine.model_type, backend, engine.n_items)
        await engine.ready()
        logger.info(
            "serving %s model %s (%d items) with Redis at %s",
            engine.model_type, engine.model_version, engine.n_items, redis_url,
        )  # fmt: skip
        # Move start-up objects out of the collector's reach: measured to cut p99 stalls from
        # full collections of the model/torch graph (~100 ms) to ~8 ms.
        gc.collect()
        gc.freeze()
        flusher = asyncio.create_task(telemetry.flush_periodically())
        stack.callback(flusher.cancel)
        try:
            yield
        finally:
            # No gc.unfreeze(): frozen objects stay frozen, so an app started again in this
            # process (tests) does not pay for a full collection of them a second time.
            telemetry.flush_buffers()
            telemetry.READY.set(0)
            telemetry.mark_worker_dead()


class ServiceApp(FastAPI):
    """FastAPI with ``POST /events`` answered ahead of its middleware (service.fast_events)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.fast_events = EventsFastPath(super().__call__, self)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        # Ahead of FastAPI's own per-request work too (root path, telemetry checks).
        if EventsFastPath.handles(scope):
            scope["app"] = self
            await self.fast_events(scope, receive, send)
        else:
            await super().__call__(scope, receive, send)


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the app (and set the process's thread pools); nothing is loaded until the lifespan
    starts."""
    end_worker_with_supervisor()  # a worker of `lrurec serve --workers N` ends with it
    settings = settings or get_settings()
    limit_threads(settings.torch_threads)  # here, not in the lifespan: see limit_threads
    app = ServiceApp(title="LRURec service", description=DESCRIPTION, lifespan=lifespan)
    app.state.settings = settings
    install_error_handlers(app)
    app.include_router(router)
    # The last middleware added is the outermost: time everything, including 413s.
    app.add_middleware(BodySizeLimitMiddleware, max_bytes=settings.max_body_bytes)
    app.add_middleware(telemetry.HTTPMetricsMiddleware)
    return app
