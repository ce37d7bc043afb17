"""A minimal pipelined Redis client for the two hot scripts (load, apply) of every event.

redis-py's asyncio client measured ~210 µs (read script) and ~260 µs (write script) of client
CPU per call on the service machine, more than the model step and top-k together: command
packing in Python, a pool checkout and a retry wrapper per call. Here one connection per worker
carries every call pipelined: commands are packed and replies parsed by hiredis (C), replies are
matched to callers in order, and a call is one write plus one future.

Same failure semantics as the redis-py client it stands in for (``service.store.create_redis``):
connection errors and timeouts are retried with jittered exponential backoff (safe: the load
script only reads and the write script is idempotent through its writer token) and then raised
as redis-py's ``ConnectionError``/``TimeoutError``, which the service maps to 503. A timed-out
connection is dropped (its replies can no longer be trusted to arrive) and reopened on the next
call. TLS and unix-socket URLs keep using redis-py (see :func:`fast_script_client`).
"""

import asyncio
import contextlib
from collections import deque
from collections.abc import Sequence
from typing import Any, Protocol, cast

import hiredis
import redis.asyncio as aioredis
from redis.backoff import ExponentialWithJitterBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

Arg = str | bytes | int | float


class _Sink(Protocol):
    """Where one reply goes: an ``asyncio.Future``, or one slot of :class:`_Replies`."""

    def done(self) -> bool: ...
    def set_result(self, result: Any, /) -> None: ...
    def set_exception(self, exception: BaseException, /) -> None: ...


class _Replies:
    """The replies of ``count`` pipelined commands, in order, as one future's list: a command
    error is kept in its slot (the others still stand), a connection failure fails the lot."""

    def __init__(self, count: int, future: "asyncio.Future[list[Any]]") -> None:
        self.count = count
        self.replies: list[Any] = []
        self.future = future

    def done(self) -> bool:
        return self.future.done()

    def set_result(self, result: Any) -> None:
        self.replies.append(result)
        if len(self.replies) == self.count:
            self.future.set_result(self.replies)

    def set_exception(self, exception: BaseException) -> None:
        if isinstance(exception, ResponseError):  # this command's error, not the connection's
            self.set_result(exception)
        elif not self.future.done():
            self.future.set_exception(exception)


class _Protocol(asyncio.Protocol):
    """Replies are matched to waiting futures in order (Redis answers in order)."""

    def __init__(self, timeout: float) -> None:
        self.reader = hiredis.Reader(replyError=ResponseError)
        self.pending: deque[tuple[_Sink, float]] = deque()
        """Waiting callers with the loop time by which their reply must arrive, oldest first."""
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.outbox: list[bytes] = []
        self.timeout = timeout
        self.watchdog: asyncio.TimerHandle | None = None

    def queue(self, packed: bytes) -> None:
        """Send at the end of this loop iteration, with every other command queued in it."""
        # One send() for the commands of all events handled in one iteration: under load this
        # saves syscalls here and wake-ups in redis-server.
        self.outbox.append(packed)
        if len(self.outbox) == 1:
            asyncio.get_running_loop().call_soon(self.flush)

    def flush(self) -> None:
        if self.outbox and self.transport is not None and not self.closed:
            self.transport.write(b"".join(self.outbox))
        self.outbox.clear()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement the interface without subclassing asyncio.Transport.
        self.transport = cast(asyncio.Transport, transport)

    def expect(self, sink: _Sink) -> None:
        """Wait for the next reply; the connection fails every caller if it is not in time."""
        loop = asyncio.get_running_loop()
        self.pending.append((sink, loop.time() + self.timeout))
        if self.watchdog is None:
            self.watchdog = loop.call_later(self.timeout, self.check_deadline)

    def check_deadline(self) -> None:
        """One timer per connection instead of one per call (``asyncio.timeout`` measured
        ~10-20 µs per call): replies come in order, so only the oldest caller can be late."""
        self.watchdog = None
        if not self.pending:
            return
        deadline = self.pending[0][1]
        loop = asyncio.get_running_loop()
        if loop.time() < deadline:
            self.watchdog = loop.call_at(deadline, self.check_deadline)
            return
        # Later replies would answer the wrong callers: drop the connection, fail everyone.
        self.fail(RedisTimeoutError("Redis did not answer in time"))

    def data_received(self, data: bytes) -> None:
        self.reader.feed(data)
        while (reply := self.reader.gets()) is not False:
            sink = self.pending.popleft()[0]
            if sink.done():  # its caller was cancelled
                continue
            if isinstance(reply, ResponseError):
                sink.set_exception(reply)
            else:
                sink.set_result(reply)

    def connection_lost(self, exc: Exception | None) -> None:
        self.fail(RedisConnectionError(f"Redis connection lost: {exc}"))

    def fail(self, error: Exception) -> None:
        """Close the connection and fail every waiting caller with ``error``."""
        if self.transport is not None and not self.closed:
            self.transport.close()
        self.closed = True
        self.outbox.clear()
        if self.watchdog is not None:
            self.watchdog.cancel()
            self.watchdog = None
        while self.pending:
            sink = self.pending.popleft()[0]
            if not sink.done():
                sink.set_exception(error)

    def close(self) -> None:
        self.fail(RedisConnectionError("Redis connection closed"))


class ScriptClient:
    """EVALSHA of registered Lua scripts over one pipelined connection per process."""

    def __init__(
        self, host: str, port: int, db: int, username: str | None, password: str | None,
        timeout_seconds: float, retries: int,
    ) -> None:  # fmt: skip
        self._address = (host, port)
        self._setup: list[tuple[Arg, ...]] = []
        if password is not None:
            auth: tuple[Arg, ...] = ("AUTH", password)
            self._setup.append(auth if username is None else ("AUTH", username, password))
        if db:
            self._setup.append(("SELECT", db))
        self._timeout = timeout_seconds
        self._retries = retries
        self._backoff = ExponentialWithJitterBackoff(cap=0.25, base=0.01)
        self._protocol: _Protocol | None = None
        self._connecting = asyncio.Lock()

    async def _connect(self) -> _Protocol:
        async with self._connecting:
            if self._protocol is None or self._protocol.closed:
                loop = asyncio.get_running_loop()
                try:
                    async with asyncio.timeout(self._timeout):
                        _, protocol = await loop.create_connection(
                            lambda: _Protocol(self._timeout), *self._address
                        )
                        for command in self._setup:
                            await self._send(protocol, command)
                except (OSError, TimeoutError, ResponseError, RedisTimeoutError) as error:
                    raise RedisConnectionError(f"cannot connect to Redis: {error}") from error
                self._protocol = protocol
        return self._protocol

    @staticmethod
    def _send(protocol: _Protocol, command: tuple[Arg, ...]) -> "asyncio.Future[Any]":
        assert protocol.transport is not None
        future = asyncio.get_running_loop().create_future()
        protocol.expect(future)
        # hiredis's stub types the tuple as one element; it takes any number of arguments.
        protocol.queue(hiredis.pack_command(command))  # type: ignore[arg-type]
        return future

    async def _call_once(self, command: tuple[Arg, ...]) -> Any:
        protocol = self._protocol
        if protocol is None or protocol.closed:
            protocol = await self._connect()
        # Timeouts come from the connection's watchdog (RedisTimeoutError).
        return await self._send(protocol, command)

    async def call(self, *command: Arg) -> Any:
        """Send one command; connection errors and timeouts are retried, then raised."""
        failures = 0
        while True:
            try:
                return await self._call_once(command)
            except (RedisConnectionError, RedisTimeoutError):
                failures += 1
                if failures > self._retries:
                    raise
                await asyncio.sleep(self._backoff.compute(failures))

    async def call_many(self, commands: list[tuple[Arg, ...]]) -> list[Any]:
        """Send ``commands`` pipelined in one write; their replies in order, a command's error
        (``ResponseError``) in its place. Connection errors and timeouts retry the whole list,
        so every command must be safe to run twice (the apply script is, by its writer token).
        """
        if not commands:
            return []
        failures = 0
        while True:
            try:
                protocol = self._protocol
                if protocol is None or protocol.closed:
                    protocol = await self._connect()
                assert protocol.transport is not None
                future: asyncio.Future[list[Any]] = asyncio.get_running_loop().create_future()
                replies = _Replies(len(commands), future)
                for command in commands:
                    protocol.expect(replies)
                    protocol.queue(hiredis.pack_command(command))  # type: ignore[arg-type]
                return await future
            except (RedisConnectionError, RedisTimeoutError):
                failures += 1
                if failures > self._retries:
                    raise
                await asyncio.sleep(self._backoff.compute(failures))

    async def evalsha_many(
        self, sha: str, script: str | bytes, calls: Sequence[tuple[tuple[str, ...], list[Arg]]]
    ) -> list[Any]:
        """:meth:`evalsha` of each ``(keys, args)`` in one pipelined write; a call's command
        error is returned in its place, not raised."""
        replies = await self.call_many([("EVALSHA", sha, len(k), *k, *a) for k, a in calls])
        missing = [i for i, reply in enumerate(replies) if _noscript(reply)]
        if missing:  # the server lost its scripts (restart, SCRIPT FLUSH): send the text
            texts = await self.call_many(
                [("EVAL", script, len(calls[i][0]), *calls[i][0], *calls[i][1]) for i in missing]
            )
            for i, reply in zip(missing, texts, strict=True):
                replies[i] = reply
        return replies

    async def evalsha(
        self, sha: str, script: str | bytes, keys: tuple[str, ...], args: list[Arg]
    ) -> Any:
        """Run a script by its SHA1, sending its text once if the server does not know it."""
        try:
            return await self.call("EVALSHA", sha, len(keys), *keys, *args)
        except ResponseError as error:
            if not str(error).startswith("NOSCRIPT"):
                raise
            return await self.call("EVAL", script, len(keys), *keys, *args)

    async def aclose(self) -> None:
        if self._protocol is not None:
            self._protocol.close()
            self._protocol = None


def _noscript(reply: Any) -> bool:
    return isinstance(reply, ResponseError) and str(reply).startswith("NOSCRIPT")


def fast_script_client(client: "aioredis.Redis") -> ScriptClient | None:
    """A :class:`ScriptClient` with ``client``'s server, timeout and retries; None for TLS or
    unix sockets (served by redis-py)."""
    pool = client.connection_pool
    kwargs = pool.connection_kwargs
    if pool.connection_class is not aioredis.Connection or "host" not in kwargs:
        return None
    timeout = kwargs.get("socket_timeout") or 5.0
    retry = kwargs.get("retry")
    retries = retry.get_retries() if retry is not None else 0
    with contextlib.suppress(TypeError, ValueError):
        return ScriptClient(
            str(kwargs["host"]), int(kwargs.get("port", 6379)), int(kwargs.get("db", 0) or 0),
            kwargs.get("username"), kwargs.get("password"), float(timeout), retries,
        )  # fmt: skip
    return None
