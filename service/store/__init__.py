"""Redis: the key layout, the two per-event scripts, the client, and the per-user store."""

from service.store.client import (
    ClusterUnreachableError,
    RedisClient,
    ReplicationTimeoutError,
    TopologyMismatchError,
    check_topology,
    create_redis,
)
from service.store.keys import LAYOUT_VERSION, user_keys
from service.store.records import Limits, Snapshot, Write, WriteResult, WriteStatus
from service.store.user_store import Replication, UserStore

__all__ = [
    "LAYOUT_VERSION",
    "ClusterUnreachableError",
    "Limits",
    "RedisClient",
    "Replication",
    "ReplicationTimeoutError",
    "Snapshot",
    "TopologyMismatchError",
    "UserStore",
    "Write",
    "WriteResult",
    "WriteStatus",
    "check_topology",
    "create_redis",
    "user_keys",
]
