"""Wiring only: ``create_app(settings)`` and the lifespan that loads everything once."""

import asyncio
import gc
import logging
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager

import torch
from fastapi import FastAPI
from threadpoolctl import threadpool_limits

from service import telemetry
from service.api.errors import install_error_handlers
from service.api.middleware import BodySizeLimitMiddleware, HTTPMetricsMiddleware
from service.api.routes import router
from service.engine.engine import Engine
from service.rollout import ModelWatcher, engine_for, load_model
from service.settings import Settings, get_settings
from service.store import Limits, Replication, UserStore, check_topology, create_redis
from service.store.event_log import EventLog

logger = logging.getLogger("service")

DESCRIPTION = """Real-time sequential recommendations with LRURec. Each user's fixed-size
recurrent state lives in Redis; every event advances it by one model step (O(1) in the
history length) and can return the fresh top-k in the same response."""


def limit_threads(threads: int) -> None:
    """Hold torch and numpy's BLAS (OpenBLAS) to ``threads`` in this process.

    OpenBLAS otherwise starts one thread per core: measured on a 2-core VM, a [64, 3416] score
    product took 15 ms instead of 0.4 ms while another process held the cores, as each worker's
    BLAS threads waited on each other. Called where the app is built, in the thread that serves
    it under uvicorn (the main one): torch's limit is per thread.
    """
    torch.set_num_threads(threads)
    threadpool_limits(threads, user_api="blas")


async def build_engine(settings: Settings, stack: AsyncExitStack) -> tuple[Engine, str]:
    """Load the artifact, build its backend and open Redis; ``stack`` closes the client."""
    if settings.artifact is None:
        raise RuntimeError(
            "no artifact configured: set LRUREC_ARTIFACT (or run `lrurec serve`, which builds "
            "a demo artifact)"
        )
    if settings.redis_url is None:
        raise RuntimeError(
            "no Redis configured: set LRUREC_REDIS_URL (or run `lrurec serve`, which starts an "
            "embedded redis-server)"
        )
    loaded = load_model(settings.artifact, settings)
    artifact = loaded[0]
    client = create_redis(
        settings.redis_url, settings.redis_timeout_seconds, settings.redis_retries,
        settings.redis_max_connections, settings.redis_cluster,
    )  # fmt: skip
    stack.push_async_callback(client.aclose)
    await check_topology(client, settings.redis_cluster)
    max_len = int(artifact.config.get("max_len", artifact.model.config.max_len))
    limits = Limits(max_len, settings.max_event_ids, settings.user_ttl_seconds)
    replication = Replication(settings.redis_wait_replicas, settings.redis_wait_timeout_ms)
    store = UserStore(client, settings.key_prefix, limits, replication)
    event_log = EventLog(client, settings.key_prefix, settings.log_shards, settings.log_maxlen)
    return engine_for(loaded, store, settings, event_log), loaded[2]


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    """Build the engine, check Redis, serve; undo on exit."""
    settings: Settings = app.state.settings
    async with AsyncExitStack() as stack:
        engine, backend = await build_engine(settings, stack)
        app.state.engine = engine
        telemetry.set_model(engine.model_version, engine.model_type, backend, engine.n_items)
        await engine.ready()
        if settings.model_poll_seconds > 0:
            await start_watcher(app, engine, settings, stack)
        logger.info(
            "serving %s model %s (%d items), Redis at %s",
            engine.model_type, engine.model_version, engine.n_items, settings.redis_url,
        )  # fmt: skip
        # Move start-up objects out of the collector's reach: measured to cut p99 stalls from
        # full collections of the model/torch graph (~100 ms) to ~8 ms.
        gc.collect()
        gc.freeze()
        try:
            yield
        finally:
            telemetry.READY.set(0)
            telemetry.mark_worker_dead()


async def start_watcher(
    app: FastAPI, engine: Engine, settings: Settings, stack: AsyncExitStack
) -> None:
    """Poll the published model in the background; a switch replaces ``app.state.engine``."""

    def switch(new: Engine, backend: str) -> None:
        app.state.engine = new  # requests in flight keep the engine they started with

    watcher = ModelWatcher(engine.store.client, settings, lambda: app.state.engine, switch)
    stop = asyncio.Event()
    task = asyncio.create_task(watcher.run(stop))

    async def halt() -> None:
        stop.set()
        await task

    stack.push_async_callback(halt)


def create_app(settings: Settings | None = None) -> FastAPI:
    """The application (nothing is loaded until its lifespan starts)."""
    settings = settings or get_settings()
    limit_threads(settings.torch_threads)  # here, not in the lifespan: see limit_threads
    app = FastAPI(title="LRURec service", description=DESCRIPTION, lifespan=lifespan)
    app.state.settings = settings
    install_error_handlers(app, router.routes)  # the routes name a 405's allowed methods
    app.include_router(router)
    # The last middleware added is the outermost: time everything, including 413s.
    app.add_middleware(BodySizeLimitMiddleware, max_bytes=settings.max_body_bytes)
    app.add_middleware(HTTPMetricsMiddleware)
    return app
