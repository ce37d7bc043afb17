"""The one Redis client of the service: redis-py's asyncio client (hiredis parses replies)."""

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialWithJitterBackoff


def create_redis(
    url: str, timeout_seconds: float, retries: int, max_connections: int
) -> "aioredis.Redis":
    """A client whose connections retry transient errors with jittered exponential backoff.

    The pool blocks (up to ``timeout_seconds``) instead of failing when all connections are
    busy, so a burst queues rather than erroring.
    """
    pool = aioredis.BlockingConnectionPool.from_url(
        url,
        max_connections=max_connections,
        timeout=timeout_seconds,
        socket_timeout=timeout_seconds,
        socket_connect_timeout=timeout_seconds,
        retry=Retry(ExponentialWithJitterBackoff(cap=0.25, base=0.01), retries),
    )
    return aioredis.Redis.from_pool(pool)
