"""The pipelined script client on a real redis-server: order, NOSCRIPT, timeouts, reconnects."""

import asyncio
import hashlib
from collections.abc import Awaitable, Callable, Iterator
from typing import TypeVar

import pytest
import redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from service.embedded_redis import EmbeddedRedis
from service.resp import ScriptClient, fast_script_client
from service.store import create_redis

T = TypeVar("T")
ECHO = "return {ARGV[1], redis.call('INCR', KEYS[1])}"
ECHO_SHA = hashlib.sha1(ECHO.encode()).hexdigest()


def run(url: str, body: Callable[[ScriptClient], Awaitable[T]], timeout: float = 2.0) -> T:
    async def main() -> T:
        client = fast_script_client(create_redis(url, timeout, retries=1, max_connections=4))
        assert client is not None
        try:
            return await body(client)
        finally:
            await client.aclose()

    return asyncio.run(main())


@pytest.fixture
def private_redis() -> Iterator[EmbeddedRedis]:
    with EmbeddedRedis() as server:
        yield server


def test_concurrent_calls_get_their_own_replies_in_order(
    redis_url: str, redis_client: "redis.Redis"
) -> None:
    async def body(client: ScriptClient) -> list[object]:
        calls = [client.evalsha(ECHO_SHA, ECHO, ("n",), [f"call-{i}"]) for i in range(300)]
        return list(await asyncio.gather(*calls))

    replies = run(redis_url, body)
    assert [reply[0] for reply in replies] == [f"call-{i}".encode() for i in range(300)]  # type: ignore[index]
    assert sorted(reply[1] for reply in replies) == list(range(1, 301))  # type: ignore[index]
    assert redis_client.get("n") == b"300"


def test_an_unknown_script_is_sent_once_then_run_by_sha(
    redis_url: str, redis_client: "redis.Redis"
) -> None:
    redis_client.script_flush()

    async def body(client: ScriptClient) -> object:
        await client.evalsha(ECHO_SHA, ECHO, ("n",), ["first"])  # NOSCRIPT, then EVAL
        return await client.call("EVALSHA", ECHO_SHA, 1, "n", "second")

    assert run(redis_url, body) == [b"second", 2]


def test_script_errors_surface_as_response_errors(redis_url: str) -> None:
    async def body(client: ScriptClient) -> object:
        return await client.evalsha("0" * 40, "return redis.call('NOPE')", ("k",), [])

    with pytest.raises(ResponseError, match=r"NOPE|Unknown"):
        run(redis_url, body)


def test_a_stalled_server_times_out_then_the_client_recovers(
    redis_url: str, redis_client: "redis.Redis"
) -> None:
    async def body(client: ScriptClient) -> object:
        assert await client.call("PING") == b"PONG"
        redis_client.client_pause(1500, all=True)
        with pytest.raises(RedisTimeoutError):
            await client.call("GET", "k")  # two tries of 0.3 s, both inside the pause
        await asyncio.sleep(1.5)
        return await client.call("ECHO", "back")

    assert run(redis_url, body, timeout=0.3) == b"back"


def test_a_restarted_server_is_reconnected_and_a_stopped_one_is_a_connection_error(
    private_redis: EmbeddedRedis,
) -> None:
    async def body(client: ScriptClient) -> object:
        assert await client.call("SET", "k", "v") == b"OK"
        private_redis.stop()
        with pytest.raises(RedisConnectionError):
            await client.call("GET", "k")
        private_redis.start()  # same port, empty
        return await client.call("GET", "k")

    assert run(private_redis.url, body, timeout=0.5) is None


def test_a_pipelined_list_keeps_each_commands_reply_or_error_in_its_place(
    redis_url: str, redis_client: "redis.Redis"
) -> None:
    redis_client.script_flush()  # the first EVALSHA of the list meets NOSCRIPT: sent as EVAL

    async def body(client: ScriptClient) -> list[object]:
        calls: list[tuple[tuple[str, ...], list[str | bytes | int | float]]] = [
            (("m",), [f"call-{i}"]) for i in range(5)
        ]
        replies = await client.evalsha_many(ECHO_SHA, ECHO, calls)
        errors = await client.call_many([("SET", "s", "v"), ("INCR", "s"), ("GET", "s")])
        assert await client.call_many([]) == []  # nothing to send: answered at once
        return [*replies, *errors]

    replies = run(redis_url, body)
    assert replies[:5] == [[f"call-{i}".encode(), i + 1] for i in range(5)]
    assert replies[5] == b"OK"
    assert isinstance(replies[6], ResponseError)  # INCR of a string: this command's error only
    assert replies[7] == b"v"


def test_a_pipelined_list_to_a_stopped_server_is_a_connection_error(
    private_redis: EmbeddedRedis,
) -> None:
    async def body(client: ScriptClient) -> object:
        assert await client.call_many([("SET", "k", "v")]) == [b"OK"]
        private_redis.stop()
        with pytest.raises(RedisConnectionError):
            await client.call_many([("GET", "k"), ("GET", "k")])
        private_redis.start()
        return await client.call_many([("GET", "k"), ("ECHO", "back")])

    assert run(private_redis.url, body, timeout=0.5) == [None, b"back"]


def test_tls_and_unix_socket_urls_keep_redis_py() -> None:
    assert fast_script_client(create_redis("rediss://localhost:6380/0", 1.0, 1, 4)) is None
    assert fast_script_client(create_redis("unix:///tmp/redis.sock", 1.0, 1, 4)) is None
    client = fast_script_client(create_redis("redis://:pw@localhost:6390/3", 1.0, 1, 4))
    assert client is not None
