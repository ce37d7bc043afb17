"""Producers and a consumer for the stream-ingestion tests: plain ``XADD`` as any producer
would send it, and the consumer run in-process on the engine of the app."""

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

import redis
from redis.cluster import RedisCluster

from service.ingest.consumer import Consumer
from service.settings import Settings
from service.store import create_redis
from service.store.streams import IngestStreams, ingest_key, shard_of
from tests.service.engines import started_engine

T = TypeVar("T")
SyncRedis = redis.Redis | RedisCluster


def produce(client: SyncRedis, events: list[dict[str, str]], shards: int = 16) -> list[str]:
    """``XADD`` each event to its user's shard, in order; the entry ids."""
    ids = []
    for event in events:
        key = ingest_key("lrurec", shard_of(event["user_id"], shards))
        ids.append(client.xadd(key, event).decode())  # type: ignore[arg-type, union-attr]
    return ids


def events_applied(client: SyncRedis, user_id: str) -> int:
    value = client.hget(f"lrurec:v1:{{{user_id}}}:state", "events_applied")
    return int(value) if value is not None else 0


def wait_until(condition: Callable[[], bool], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "not reached in time"
        time.sleep(0.05)


async def with_consumer(
    settings: Settings, body: Callable[[Consumer], Awaitable[T]], run: bool = True
) -> T:
    """Run a consumer on ``settings`` while ``body(consumer)`` runs; stop it gracefully. With
    ``run=False`` the consumer is built but reads nothing: ``body`` drives it."""
    engine, close = await started_engine(settings)
    assert settings.redis_url is not None
    client = create_redis(settings.redis_url, 2.0, 1, 32, settings.redis_cluster)
    consumer = Consumer(
        engine, IngestStreams(client, settings.key_prefix, settings.ingest_shards), settings, "c1"
    )
    stop = asyncio.Event()
    running = asyncio.create_task(consumer.run(stop)) if run else None
    try:
        return await body(consumer)
    finally:
        stop.set()
        if running is not None:
            await running
        await client.aclose()
        await close()
