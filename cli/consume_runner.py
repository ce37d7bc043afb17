"""One ``lrurec consume`` process: the engine of ``POST /events`` (same artifact, backend and Redis
settings), the ingest streams, and :class:`~service.ingest.consumer.Consumer` until SIGTERM
or SIGINT."""

import asyncio
import logging
import os
import signal
import socket
from contextlib import AsyncExitStack

from service import telemetry
from service.app import build_engine, limit_threads
from service.engine.engine import Engine
from service.gc_tuning import thaw_frozen_objects, tune_garbage_collector
from service.ingest.consumer import Consumer
from service.rollout import ModelWatcher
from service.settings import Settings
from service.store import create_redis
from service.store.streams import IngestStreams

logger = logging.getLogger(__name__)


def consumer_name() -> str:
    """Unique per process: host name and pid."""
    return f"{socket.gethostname()}-{os.getpid()}"


async def consume(settings: Settings, stop: asyncio.Event | None = None) -> None:
    """Consume until ``stop`` is set, or until SIGTERM/SIGINT when ``stop`` is None."""
    limit_threads(settings.torch_threads)  # as `serve` does; idle BLAS threads spin otherwise
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    async with AsyncExitStack() as stack:
        engine, backend = await build_engine(settings, stack)
        telemetry.set_model(engine.model_version, engine.model_type, backend, engine.n_items)
        assert settings.redis_url is not None  # build_engine checked it
        client = create_redis(
            settings.redis_url, settings.redis_timeout_seconds, settings.redis_retries,
            settings.redis_max_connections, settings.redis_cluster,
        )  # fmt: skip
        stack.push_async_callback(client.aclose)
        streams = IngestStreams(client, settings.key_prefix, settings.ingest_shards)
        consumer = Consumer(engine, streams, settings, consumer_name())
        tune_garbage_collector(settings.ingest_gc_threshold)  # start-up is done
        logger.info("consumer %s: %d shards, model %s", consumer.name,
                    streams.shards, engine.model_version)  # fmt: skip
        if settings.model_poll_seconds > 0:  # follow `lrurec publish`, as the service does

            def switch(new: Engine, backend: str) -> None:
                consumer.engine = new  # batches in flight finish on the old model
                thaw_frozen_objects()  # so the old model can be freed

            watcher = ModelWatcher(client, settings, lambda: consumer.engine, switch)
            watching = asyncio.create_task(watcher.run(stop))
            stack.push_async_callback(lambda: watching)
        await consumer.run(stop)
        logger.info("consumer %s stopped", consumer.name)
