"""All Redis I/O of the service: one-round-trip reads and the atomic per-user write script
(key layout in :mod:`service.store.keys`, scripts in :mod:`service.store.scripts`)."""

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.exceptions import NoScriptError, RedisClusterException, RedisError

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
from service.store.scripts import APPLY, LOAD, script_text

PendingWrite = tuple[str, Write, bool | None]
"""``(user_id, write, refresh)`` of :meth:`UserStore.write_many`."""


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

    @property
    def client(self) -> RedisClient:
        """The Redis client (shared with the event log and the model watcher)."""
        return self._client

    @property
    def max_len(self) -> int:
        """Recent items kept per user (the history list is trimmed to this length)."""
        return self._limits.max_len

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

    async def write_many(
        self, writes: list[PendingWrite], operation: str = "apply"
    ) -> list[WriteResult | RedisError]:
        """:meth:`write` of each ``(user_id, write, refresh)`` in one non-transactional
        pipeline (one round trip). A write's own error is returned in its place; a failure of
        the connection raises (some writes may then have landed: each is atomic on its own)."""
        calls = [
            (self.keys(user), write_args(write, self._limits, refresh))
            for user, write, refresh in writes
        ]
        with redis_call(operation):
            replies = await self._pipelined(calls)
            if any(isinstance(reply, NoScriptError) for reply in replies):
                # Redis restarted or its scripts were flushed: load the script, resend those.
                await self._client.script_load(script_text(APPLY))
                missing = [n for n, reply in enumerate(replies) if isinstance(reply, NoScriptError)]
                resent = await self._pipelined([calls[n] for n in missing])
                for n, reply in zip(missing, resent, strict=True):
                    replies[n] = reply
        results: list[WriteResult | RedisError] = []
        for reply, (_, _, refresh) in zip(replies, writes, strict=True):
            if isinstance(reply, RedisError):
                results.append(reply)
            elif isinstance(reply, BaseException):
                raise reply
            else:
                results.append(write_result(reply, refresh))
        return results

    async def _pipelined(self, calls: list[tuple[UserKeys, list[Arg]]]) -> list[Any]:
        """The scripts' replies; with replication, a reply whose master's replicas did not all
        confirm it in time is replaced by a :class:`ReplicationTimeoutError`."""
        pipe = self._client.pipeline(transaction=False)
        for keys, args in calls:
            pipe.evalsha(self._apply.sha, len(keys), *keys, *args)
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

    async def _queue_waits(self, pipe: Any, calls: list[tuple[UserKeys, list[Arg]]]) -> list[str]:
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
