"""Redis: the key layout, the two per-event scripts, the client, and the per-user store."""

from service.store.client import create_redis
from service.store.keys import LAYOUT_VERSION, user_keys
from service.store.records import Limits, Snapshot, Write, WriteResult, WriteStatus
from service.store.user_store import UserStore

__all__ = [
    "LAYOUT_VERSION",
    "Limits",
    "Snapshot",
    "UserStore",
    "Write",
    "WriteResult",
    "WriteStatus",
    "create_redis",
    "user_keys",
]
