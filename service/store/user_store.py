"""All Redis I/O of the service: one-round-trip reads and the atomic per-user write script
(key layout in :mod:`service.store.keys`, scripts in :mod:`service.store.scripts`)."""

from collections.abc import Awaitable, Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import msgpack
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.exceptions import NoScriptError, RedisClusterException, RedisError, ResponseError

from service import telemetry
from service.store.client import ClusterUnreachableError, RedisClient, ReplicationTimeoutError
from service.store.keys import UserKeys, user_keys
from service.store.records import (
    Arg,
    Limits,
    Snapshot,
    Write,
    WriteResult,
    snapshot,
    write_args,
    write_result,
)
from service.store.scripts import APPLY, APPLY_BATCH, LOAD, LOAD_BATCH, script_text

PendingWrite = tuple[str, Write, bool | None]
"""``(user_id, write, refresh)`` of :meth:`UserStore.write_many`."""
LoggedWrite = tuple[str, Write, str | None, float]
"""``(user_id, write, event-log stream or None, timestamp)`` of :meth:`UserStore.write_batch`."""
BATCH_SCRIPT_CALLS = 128
"""Events per batch-script call: Redis runs a script to its end before serving anyone else,
so a long batch goes out as several calls (one pipeline), each holding Redis ~1-2 ms."""
Call = tuple[Sequence[str], list[Arg]]
"""One script call of a pipeline: its keys and arguments."""
Sender = Callable[[list[Call]], Awaitable[list[Any]]]
"""Sends script calls in one pipeline and returns their replies (errors in place)."""


def _packed(value: Any) -> bytes:
    """``value`` in msgpack's original format: the cmsgpack built into Redis's Lua (6.2 and
    later) rejects the newer str8 and bin types, which msgpack uses only with bin types on."""
    packed: bytes = msgpack.packb(value, use_bin_type=False)
    return packed


def _batch_result(reply: list[Any]) -> WriteResult | RedisError:
    """One write's ``{status, events_applied, version}`` of apply_batch.lua; status -1: the
    write failed, with the error as its second element."""
    if int(reply[0]) < 0:
        message = reply[1].decode() if isinstance(reply[1], bytes) else str(reply[1])
        return ResponseError(message)
    return write_result(reply, None)


@contextmanager
def redis_call(operation: str) -> Iterator[None]:
    """Time one Redis operation; a cluster's "no node for this slot" becomes a
    :class:`RedisError` like any other outage (the cluster client raises it outside that
    hierarchy), so it is answered 503 and retried, never a 500."""
    with telemetry.redis_timer(operation):
        try:
            yield
        except RedisClusterException as error:
            raise ClusterUnreachableError(str(error)) from error


@dataclass(frozen=True)
class Replication:
    """Acknowledge a write only once ``replicas`` replicas of its master have it (Redis
    ``WAIT``, sent on the write's own connection), waiting at most ``timeout_ms``."""

    replicas: int = 0
    timeout_ms: int = 500


class UserStore:
    """Per-user state, history and event ids in Redis (a single node or a cluster: every call
    touches the keys of one user, which share one hash slot)."""

    def __init__(
        self,
        client: RedisClient,
        prefix: str,
        limits: Limits,
        replication: Replication = Replication(),
    ) -> None:
        self._client = client
        self._prefix = prefix
        self._limits = limits
        self._replication = replication
        self._apply = client.register_script(script_text(APPLY))
        self._load = client.register_script(script_text(LOAD))
        self._apply_batch = client.register_script(script_text(APPLY_BATCH))
        self._load_batch = client.register_script(script_text(LOAD_BATCH))

    @property
    def client(self) -> RedisClient:
        """The Redis client (shared with the event log and the model watcher)."""
        return self._client

    @property
    def max_len(self) -> int:
        """Recent items kept per user (the history list is trimmed to this length)."""
        return self._limits.max_len

    @property
    def batched(self) -> bool:
        """Whether many users' reads and writes go out as a few script calls
        (:meth:`write_batch`): on a single Redis. A cluster spreads users over slots, and one
        script may touch one slot only, so there each user's call is sent on its own."""
        return not isinstance(self._client, RedisCluster)

    def keys(self, user_id: str) -> UserKeys:
        """The (state, history, event-id) keys of ``user_id``, all in one hash slot."""
        return user_keys(self._prefix, user_id)

    async def load(
        self, user_id: str, event_id: str | None = None, history: bool = True
    ) -> Snapshot:
        """Read the record, the history (if ``history``) and whether ``event_id`` was seen."""
        args: list[Arg] = ["1" if history else "0", event_id or ""]
        with redis_call("load"):
            reply = await self._load(keys=self.keys(user_id), args=args)
        return snapshot(reply, history)

    async def write(
        self, user_id: str, write: Write, operation: str = "apply", refresh: bool | None = None
    ) -> WriteResult:
        """Run the atomic check-and-write script; nothing changes unless it returns WRITTEN.

        With ``refresh`` set, a conflict's result carries the current record (with the history
        when ``refresh`` is True), as :meth:`load` would return it without an event id.
        """
        if self._replication.replicas:  # the WAIT must follow on the write's connection
            [result] = await self.write_many([(user_id, write, refresh)], operation)
            if isinstance(result, RedisError):
                raise result
            return result
        args = write_args(write, self._limits, refresh)
        with redis_call(operation):
            reply = await self._apply(keys=self.keys(user_id), args=args)
        return write_result(reply, refresh)

    async def load_many(self, user_ids: Sequence[str]) -> list[Snapshot | RedisError]:
        """:meth:`load` of each user without the history or an event id, in one round trip
        (a pipeline of per-user scripts; on a single Redis, of batch-script calls). A read's
        own error is returned in its place; a failure of the connection raises."""
        if self.batched:
            return await self._load_batched(user_ids)
        args: list[Arg] = ["0", ""]
        calls: list[Call] = [(self.keys(user), args) for user in user_ids]
        with redis_call("load"):
            replies = await self._scripted(LOAD, calls, self._evalsha_pipelined(self._load.sha))
        return [
            reply if isinstance(reply, RedisError) else snapshot(reply, history=False)
            for reply in replies
        ]

    async def _load_batched(self, user_ids: Sequence[str]) -> list[Snapshot | RedisError]:
        chunks = [user_ids[n : n + BATCH_SCRIPT_CALLS]
                  for n in range(0, len(user_ids), BATCH_SCRIPT_CALLS)]  # fmt: skip
        calls: list[Call] = [([self.keys(user)[0] for user in chunk], []) for chunk in chunks]
        send = self._evalsha_pipelined(self._load_batch.sha)
        with redis_call("load"):
            replies = await self._scripted(LOAD_BATCH, calls, send)
        snapshots: list[Snapshot | RedisError] = []
        for chunk, reply in zip(chunks, replies, strict=True):
            if isinstance(reply, RedisError):
                snapshots.extend([reply] * len(chunk))
            else:
                snapshots.extend(snapshot(reply[n : n + 9], history=False)
                                 for n in range(0, len(reply), 9))  # fmt: skip
        return snapshots

    async def write_many(
        self, writes: list[PendingWrite], operation: str = "apply"
    ) -> list[WriteResult | RedisError]:
        """:meth:`write` of each ``(user_id, write, refresh)`` in one non-transactional
        pipeline (one round trip). A write's own error is returned in its place; a failure of
        the connection raises (some writes may then have landed: each is atomic on its own)."""
        calls: list[Call] = [
            (self.keys(user), write_args(write, self._limits, refresh))
            for user, write, refresh in writes
        ]
        with redis_call(operation):
            replies = await self._scripted(APPLY, calls, self._pipelined(self._apply.sha))
        return [
            reply if isinstance(reply, RedisError) else write_result(reply, refresh)
            for reply, (_, _, refresh) in zip(replies, writes, strict=True)
        ]

    async def write_batch(
        self, writes: Sequence[LoggedWrite], log_maxlen: int, logged_version: str,
        operation: str = "apply",
    ) -> list[WriteResult | RedisError]:  # fmt: skip
        """:meth:`write_many` without refresh, on a single Redis (:attr:`batched`), with each
        write that lands (written or a duplicate) appended to its event-log stream in the same
        script (``log_maxlen == 0``: not logged): a few script calls in one round trip
        instead of two commands per event. A user's writes run in the order given."""
        if not self.batched:
            raise RuntimeError("write_batch needs a single Redis: one script, many slots")
        calls: list[Call] = []
        for start in range(0, len(writes), BATCH_SCRIPT_CALLS):
            users: dict[str, int] = {}
            streams: dict[str, int] = {}
            rows = []
            for user_id, write, stream, timestamp in writes[start : start + BATCH_SCRIPT_CALLS]:
                user = users.setdefault(user_id, len(users) + 1)
                logged = 0 if stream is None else streams.setdefault(stream, len(streams) + 1)
                rows.append([user, logged, user_id, repr(timestamp),
                             *write_args(write, self._limits, None)])  # fmt: skip
            keys = [key for user_id in users for key in self.keys(user_id)]
            header = _packed([len(users), log_maxlen, logged_version])
            calls.append(([*keys, *streams], [header, _packed(rows)]))
        with redis_call(operation):
            replies = await self._scripted(
                APPLY_BATCH, calls, self._pipelined(self._apply_batch.sha)
            )
        results: list[WriteResult | RedisError] = []
        for n, reply in enumerate(replies):
            count = min(BATCH_SCRIPT_CALLS, len(writes) - n * BATCH_SCRIPT_CALLS)
            if isinstance(reply, RedisError):
                results.extend([reply] * count)
            else:
                results.extend(_batch_result(reply[i : i + 3]) for i in range(0, len(reply), 3))
        return results

    async def _scripted(self, script: str, calls: list[Call], send: Sender) -> list[Any]:
        """``send(calls)``'s replies; calls refused with ``NOSCRIPT`` (Redis restarted or its
        scripts were flushed) are sent again once the script is loaded. Script errors stay in
        place as :class:`RedisError`; any other exception raises."""
        replies = await send(calls)
        missing = [n for n, reply in enumerate(replies) if isinstance(reply, NoScriptError)]
        if missing:
            await self._client.script_load(script_text(script))
            resent = await send([calls[n] for n in missing])
            for n, reply in zip(missing, resent, strict=True):
                replies[n] = reply
        for reply in replies:
            if isinstance(reply, BaseException) and not isinstance(reply, RedisError):
                raise reply
        return replies

    def _evalsha_pipelined(self, sha: str) -> Sender:
        async def send(calls: list[Call]) -> list[Any]:
            pipe = self._client.pipeline(transaction=False)
            for keys, args in calls:
                pipe.evalsha(sha, len(keys), *keys, *args)
            replies: list[Any] = await pipe.execute(raise_on_error=False)
            return replies

        return send

    def _pipelined(self, sha: str) -> Sender:
        """Sends write-script calls: their replies, where, with replication, a reply whose
        master's replicas did not all confirm it in time is replaced by a
        :class:`ReplicationTimeoutError`."""

        async def send(calls: list[Call]) -> list[Any]:
            return await self._pipelined_writes(sha, calls)

        return send

    async def _pipelined_writes(self, sha: str, calls: list[Call]) -> list[Any]:
        pipe = self._client.pipeline(transaction=False)
        for keys, args in calls:
            pipe.evalsha(sha, len(keys), *keys, *args)
        masters = await self._queue_waits(pipe, calls)
        replies: list[Any] = await pipe.execute(raise_on_error=False)
        if not masters:
            return replies
        confirmed = dict(zip(dict.fromkeys(masters), replies[len(calls) :], strict=True))
        required = self._replication.replicas
        for n, master in enumerate(masters):
            acknowledged = confirmed[master]
            if isinstance(replies[n], RedisError):
                continue  # the script's own error (e.g. NoScriptError, resent by the caller)
            if not isinstance(acknowledged, int) or acknowledged < required:
                replies[n] = ReplicationTimeoutError(
                    f"{acknowledged} of {required} replicas confirmed the write within "
                    f"{self._replication.timeout_ms} ms"
                )
        return replies[: len(calls)]

    async def _queue_waits(self, pipe: Any, calls: list[Call]) -> list[str]:
        """Queue one ``WAIT`` per master written to, after its writes (a pipeline sends each
        master's commands on one connection, and ``WAIT`` counts that connection's writes);
        the master of each call ("" for a single node), or nothing without replication."""
        if not self._replication.replicas or not calls:
            return []
        wait = ("WAIT", self._replication.replicas, self._replication.timeout_ms)
        if not isinstance(self._client, RedisCluster):
            pipe.execute_command(*wait)
            return [""] * len(calls)
        await self._client.initialize()  # the slot map (a no-op once known)
        nodes: dict[str, ClusterNode] = {}
        masters = []
        for keys, _ in calls:
            node = self._client.get_node_from_key(keys[0])
            if node is None:
                raise ClusterUnreachableError(f"no node serves the slot of {keys[0]!r}")
            nodes.setdefault(node.name, node)
            masters.append(node.name)
        for node in nodes.values():
            pipe.execute_command(*wait, target_nodes=node)
        return masters

    async def delete(self, user_id: str) -> bool:
        """Forget a user (state, history, event ids); True if anything existed."""
        with redis_call("delete"):
            removed = await self._client.delete(*self.keys(user_id))
        return int(removed) > 0

    async def ping(self) -> bool:
        with redis_call("ping"):
            return bool(await self._client.ping())
