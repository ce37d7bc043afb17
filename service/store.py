"""All Redis I/O: the key layout, one-round-trip reads and the atomic per-user write script.

Layout (``P`` = key prefix, ``v1`` = layout version; every key of a user shares the hash tag
``{user}``, so one user's keys live in one Redis Cluster slot and the script may touch them all):

    P:v1:{user}:state   hash  state (float32 bytes), hidden (float32 bytes), model_version,
                              version (write counter, the CAS token), token (last writer),
                              events_applied, events_received, updated_at (unix seconds)
    P:v1:{user}:hist    list  recent external item ids, oldest first, at most max_len
    P:v1:{user}:eids    zset  seen event ids scored by the write version, at most max_event_ids
"""

import asyncio
import time
from dataclasses import dataclass
from enum import IntEnum
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialWithJitterBackoff
from redis.commands.core import AsyncScript
from redis.exceptions import RedisError

from service import telemetry
from service.resp import Arg, fast_script_client

LAYOUT_VERSION = "v1"

# Checks the event id and the version, then writes everything at once: Redis runs a script
# atomically, so a failure or a concurrent writer can never leave a half-applied event.
# ARGV[14], when set, is the token the caller's copy of the record was written with: a writer
# that skipped the read (service.engine's state cache) then also conflicts when the user was
# deleted and rebuilt up to the same version meanwhile. ARGV[15] ('', '0', '1') asks for the
# current record (with the history for '1') in a conflict's reply.
APPLY_SCRIPT = """
local state_key, hist_key, eids_key = KEYS[1], KEYS[2], KEYS[3]
local token, event_id, item = ARGV[2], ARGV[3], ARGV[4]
local fields = redis.call('HMGET', state_key, 'version', 'token', 'events_applied')
local version = tonumber(fields[1] or '0')
local applied = tonumber(fields[3] or '0')
if fields[2] == token then
  return {3, applied, version}
end
if event_id ~= '' and redis.call('ZSCORE', eids_key, event_id) then
  return {2, applied, version}
end
if version ~= tonumber(ARGV[1]) or (ARGV[14] ~= '' and fields[2] ~= ARGV[14]) then
  if ARGV[15] == '' then
    return {0, applied, version}
  end
  -- The current record, so the caller retries without another round trip to read it.
  local r = redis.call('HMGET', state_key, 'state', 'hidden', 'model_version',
                       'events_received', 'updated_at')
  local hist = ''
  if ARGV[15] == '1' then
    hist = table.concat(redis.call('LRANGE', hist_key, 0, -1), '\\n')
  end
  return {0, applied, version, r[1] or '', r[2] or '', r[3] or '', r[4] or '', r[5] or '', hist}
end
version = version + 1
applied = applied + tonumber(ARGV[8])
redis.call('HSET', state_key, 'version', version, 'token', token,
           'events_applied', applied, 'updated_at', ARGV[10])
if ARGV[5] ~= '' then
  redis.call('HSET', state_key, 'state', ARGV[5], 'hidden', ARGV[6], 'model_version', ARGV[7])
end
if ARGV[9] == '1' then
  redis.call('HINCRBY', state_key, 'events_received', 1)
end
if item ~= '' then
  redis.call('RPUSH', hist_key, item)
  redis.call('LTRIM', hist_key, -tonumber(ARGV[11]), -1)
end
if event_id ~= '' then
  redis.call('ZADD', eids_key, version, event_id)
  redis.call('ZREMRANGEBYRANK', eids_key, 0, -tonumber(ARGV[13]) - 1)
end
local ttl = tonumber(ARGV[12])
if ttl > 0 then
  redis.call('EXPIRE', state_key, ttl)
  redis.call('EXPIRE', hist_key, ttl)
  redis.call('EXPIRE', eids_key, ttl)
end
return {1, applied, version}
"""

# One round trip for everything an event needs. The history comes back as one newline-joined
# string (ids never contain control characters) and only when asked for: parsing a list reply
# element by element cost more than the model step at ML-1M history lengths.
LOAD_SCRIPT = """
local fields = redis.call('HMGET', KEYS[1], 'version', 'state', 'hidden', 'model_version',
                          'events_applied', 'events_received', 'updated_at')
local reply = {}
for i = 1, 7 do reply[i] = fields[i] or '' end
reply[8] = ''
if ARGV[1] == '1' then
  reply[8] = table.concat(redis.call('LRANGE', KEYS[2], 0, -1), '\\n')
end
reply[9] = '0'
if ARGV[2] ~= '' and redis.call('ZSCORE', KEYS[3], ARGV[2]) then reply[9] = '1' end
return reply
"""


class WriteStatus(IntEnum):
    """Outcome of :meth:`UserStore.write` (the script's first return value)."""

    CONFLICT = 0
    WRITTEN = 1
    DUPLICATE = 2
    ALREADY_WRITTEN = 3
    """This writer's token is already stored: a retried call whose first reply was lost."""


WRITE_STATUSES = tuple(WriteStatus)
"""Statuses by value (0…3): indexing is a fraction of an enum call, once per event."""


@dataclass(frozen=True)
class Snapshot:
    """One user's record as read in one round trip; ``version == 0`` means no record."""

    version: int
    state: bytes | None
    hidden: bytes | None
    model_version: str | None
    events_applied: int
    events_received: int
    updated_at: float | None
    history: list[str]
    history_loaded: bool
    """False when the history was not requested (``history`` is then empty, not unknown)."""
    duplicate: bool


@dataclass(frozen=True)
class Write:
    """What one event (or a rebuild) changes; empty ``item``/``state`` leave them untouched."""

    expected_version: int
    token: str
    event_id: str = ""
    item: str = ""
    state: bytes = b""
    hidden: bytes = b""
    model_version: str = ""
    applied: bool = False
    received: bool = False
    expected_token: str = ""
    """When set, the stored record must also carry this writer token (see APPLY_SCRIPT)."""


@dataclass(frozen=True)
class WriteResult:
    status: WriteStatus
    events_applied: int
    version: int
    record: Snapshot | None = None
    """On a conflict, the current record when :meth:`UserStore.write` was asked for it."""


def _snapshot(reply: list[Any], history: bool) -> Snapshot:
    """A :class:`Snapshot` from the load script's nine-element reply."""
    version, state, hidden, model_version, applied, received, updated, items, seen = reply
    return Snapshot(
        version=int(version or 0),
        state=state or None,
        hidden=hidden or None,
        model_version=model_version.decode() if model_version else None,
        events_applied=int(applied or 0),
        events_received=int(received or 0),
        updated_at=float(updated) if updated else None,
        history=items.decode().split("\n") if items else [],
        history_loaded=history,
        duplicate=seen == b"1",
    )


def _write_result(reply: list[Any], refresh: bool | None) -> WriteResult:
    """A :class:`WriteResult` from the apply script's reply (3 elements, 9 on a refreshed
    conflict)."""
    result = WriteResult(WRITE_STATUSES[int(reply[0])], int(reply[1]), int(reply[2]))
    if len(reply) == 3:
        return result
    state, hidden, model_version, received, updated, items = reply[3:]
    record = _snapshot(
        [reply[2], state, hidden, model_version, reply[1], received, updated, items, b"0"],
        bool(refresh),
    )
    return WriteResult(result.status, result.events_applied, result.version, record)


def _text(script: "AsyncScript") -> str | bytes:
    """A registered script's source, as the script client sends it."""
    text = script.script
    return bytes(text) if isinstance(text, memoryview) else text


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


class UserStore:
    """Per-user state, history and event ids in Redis (see the module docstring for keys)."""

    def __init__(
        self, client: "aioredis.Redis", prefix: str, max_len: int, max_event_ids: int, ttl: int,
        script_connection: bool = True,
    ) -> None:  # fmt: skip
        """``script_connection=False`` keeps every call on redis-py (what TLS and unix-socket
        URLs get anyway)."""
        self._client = client
        self._prefix = f"{prefix}:{LAYOUT_VERSION}"
        self._max_len = max_len
        self._max_event_ids = max_event_ids
        self._ttl = ttl
        self._apply = client.register_script(APPLY_SCRIPT)
        self._load = client.register_script(LOAD_SCRIPT)
        # The two per-event scripts go through a pipelined hiredis connection (service.resp):
        # redis-py's client cost ~0.47 ms of CPU per event for them, the largest single share.
        self._fast = fast_script_client(client) if script_connection else None

    @property
    def max_len(self) -> int:
        """Recent items kept per user (the history list is trimmed to this length)."""
        return self._max_len

    async def _run(self, script: "AsyncScript", keys: tuple[str, str, str], args: list[Arg]) -> Any:
        if self._fast is not None:
            return await self._fast.evalsha(script.sha, _text(script), keys, args)
        return await script(keys=keys, args=args)

    async def aclose(self) -> None:
        """Close the script connection (the redis-py client is closed by its owner)."""
        if self._fast is not None:
            await self._fast.aclose()

    def keys(self, user_id: str) -> tuple[str, str, str]:
        """The (state, history, event-id) keys of ``user_id``, all in one hash slot."""
        base = f"{self._prefix}:{{{user_id}}}"
        return f"{base}:state", f"{base}:hist", f"{base}:eids"

    async def load(
        self, user_id: str, event_id: str | None = None, history: bool = True
    ) -> Snapshot:
        """Read the record, the history (if ``history``) and whether ``event_id`` was seen."""
        args: list[Arg] = ["1" if history else "0", event_id or ""]
        with telemetry.redis_timer("load"):
            reply = await self._run(self._load, self.keys(user_id), args)
        return _snapshot(reply, history)

    async def write(
        self, user_id: str, write: Write, operation: str = "apply", refresh: bool | None = None
    ) -> WriteResult:
        """Run the atomic check-and-write script; nothing changes unless it returns WRITTEN.

        With ``refresh`` set, a conflict's result carries the current record (with the history
        when ``refresh`` is True), as :meth:`load` would return it without an event id.
        """
        with telemetry.redis_timer(operation):
            reply = await self._run(
                self._apply, self.keys(user_id), self._write_args(write, refresh)
            )
        return _write_result(reply, refresh)

    async def write_many(
        self, writes: list[tuple[str, Write, bool | None]]
    ) -> list[WriteResult | RedisError]:
        """:meth:`write` of each ``(user_id, write, refresh)`` in one pipelined round trip (the
        script connection; concurrent calls through redis-py over TLS or a unix socket). A
        write's own error is returned in its place (on redis-py, also a connection error: the
        other writes may have landed); a failure of the pipelined connection raises."""
        calls = [
            (self.keys(user), self._write_args(write, refresh)) for user, write, refresh in writes
        ]
        with telemetry.redis_timer("apply"):
            if self._fast is not None:
                replies = await self._fast.evalsha_many(self._apply.sha, _text(self._apply), calls)
            else:
                replies = await asyncio.gather(
                    *(self._apply(keys=keys, args=args) for keys, args in calls),
                    return_exceptions=True,
                )
        results: list[WriteResult | RedisError] = []
        for reply, (_, _, refresh) in zip(replies, writes, strict=True):
            if isinstance(reply, RedisError):
                results.append(reply)
            elif isinstance(reply, BaseException):
                raise reply
            else:
                results.append(_write_result(reply, refresh))
        return results

    def _write_args(self, write: Write, refresh: bool | None) -> list[Arg]:
        return [
            write.expected_version, write.token, write.event_id, write.item,
            write.state, write.hidden, write.model_version,
            int(write.applied), int(write.received), f"{time.time():.6f}",
            self._max_len, self._ttl, self._max_event_ids, write.expected_token,
            "" if refresh is None else str(int(refresh)),
        ]  # fmt: skip

    async def delete(self, user_id: str) -> bool:
        """Forget a user (state, history, event ids); True if anything existed."""
        with telemetry.redis_timer("delete"):
            removed = await self._client.delete(*self.keys(user_id))
        return int(removed) > 0

    async def ping(self) -> bool:
        with telemetry.redis_timer("ping"):
            return bool(await self._client.ping())
