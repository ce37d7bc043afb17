"""The Redis key layout (``P`` = key prefix, ``v1`` = layout version).

Every key of a user shares the hash tag ``{user}``, so one user's keys live in one Redis
Cluster slot and one script may touch them all:

    P:v1:{user}:state   hash  state (float32 bytes), hidden (float32 bytes), model_version,
                              version (write counter, the CAS token), token (last writer),
                              events_applied, events_received, updated_at (unix seconds)
    P:v1:{user}:hist    list  recent external item ids, oldest first, at most max_len
    P:v1:{user}:eids    zset  seen event ids scored by the write version, at most max_event_ids
"""

LAYOUT_VERSION = "v1"

UserKeys = tuple[str, str, str]
"""A user's ``(state, history, event ids)`` keys."""


def user_keys(prefix: str, user_id: str) -> UserKeys:
    """The keys of ``user_id`` under ``prefix``, all in one hash slot."""
    base = f"{prefix}:{LAYOUT_VERSION}:{{{user_id}}}"
    return f"{base}:state", f"{base}:hist", f"{base}:eids"
