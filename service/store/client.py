"""The one Redis client of the service: redis-py's asyncio client (hiredis parses replies),
for a single Redis or, with ``cluster``, a Redis Cluster (``redis.asyncio.RedisCluster``, which
follows ``MOVED``/``ASK`` redirections and failovers itself)."""

from typing import TypeAlias

import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialWithJitterBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisClusterException, RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

RedisClient: TypeAlias = "aioredis.Redis | RedisCluster"


class ClusterUnreachableError(RedisConnectionError):
    """The cluster client found no node serving a slot (it raises these outside ``RedisError``:
    ``RedisClusterUnreachableError``, ``SlotNotCoveredError``); one more outage, like a lost
    connection."""


class ReplicationTimeoutError(RedisTimeoutError):
    """A write landed on its master but fewer replicas than ``LRUREC_REDIS_WAIT_REPLICAS``
    confirmed it in time: not acknowledged, so the client retries it (with its event id, a
    retry is not applied twice)."""


class TopologyMismatchError(RuntimeError):
    """``LRUREC_REDIS_CLUSTER`` disagrees with what the Redis at ``LRUREC_REDIS_URL`` is."""


def create_redis(
    url: str, timeout_seconds: float, retries: int, max_connections: int, cluster: bool = False
) -> RedisClient:
    """A client whose commands retry transient errors with jittered exponential backoff.

    Single node: the pool blocks (up to ``timeout_seconds``) instead of failing when all
    connections are busy, so a burst queues rather than erroring. Cluster: ``url`` names any
    node, the others are discovered; ``max_connections`` applies per node.
    """
    retry = Retry(ExponentialWithJitterBackoff(cap=0.25, base=0.01), retries)
    if cluster:
        return RedisCluster.from_url(
            url,
            max_connections=max_connections,
            socket_timeout=timeout_seconds,
            socket_connect_timeout=timeout_seconds,
            retry=retry,
        )
    pool = aioredis.BlockingConnectionPool.from_url(
        url,
        max_connections=max_connections,
        timeout=timeout_seconds,
        socket_timeout=timeout_seconds,
        socket_connect_timeout=timeout_seconds,
        retry=retry,
    )
    return aioredis.Redis.from_pool(pool)


async def check_topology(client: RedisClient, cluster: bool) -> None:
    """Refuse to start on the wrong kind of Redis, with what to change.

    A single-node client on a cluster node would answer ``MOVED`` for most users; a cluster
    client cannot start on a node without cluster mode. An unreachable Redis is not a mismatch:
    the service starts and reports not ready until Redis answers.
    """
    if isinstance(client, RedisCluster):
        try:
            await client.initialize()
        except RedisClusterException as error:
            if "cluster mode is not enabled" in str(error).lower():
                raise TopologyMismatchError(
                    "LRUREC_REDIS_CLUSTER is true but the Redis at LRUREC_REDIS_URL is not a "
                    "cluster node (cluster mode is not enabled on it): unset "
                    "LRUREC_REDIS_CLUSTER (or drop --redis-cluster), or name a cluster node"
                ) from None
        return
    try:
        enabled = int((await client.info("cluster")).get("cluster_enabled", 0))
    except (RedisError, ValueError):
        return
    if enabled and not cluster:
        raise TopologyMismatchError(
            "the Redis at LRUREC_REDIS_URL is a Redis Cluster node: set "
            "LRUREC_REDIS_CLUSTER=true (or pass --redis-cluster) so that every user's keys are "
            "sent to the node serving their slot"
        )
