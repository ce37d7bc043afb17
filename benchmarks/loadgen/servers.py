"""The service under test: one process tree on loopback, under uvicorn or granian.

``uvicorn`` runs ``lrurec serve`` (the product's own launcher); ``granian`` runs the app factory
under granian's ASGI server, which needs the ``granian`` package only when chosen. Either way
the service gets its artifact and an external Redis URL, so every worker of one configuration
shares one redis-server that the caller started (and accounts for apart).
"""

import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from enum import StrEnum
from pathlib import Path
from urllib.error import URLError

HOST = "127.0.0.1"
APP_FACTORY = "service.app:create_app"
"""The service's ASGI app factory, ``module:function``, as granian imports it."""
LAUNCH_LRUREC = "from cli.main import app; app()"
READY_TIMEOUT = 180.0
"""Seconds a service may take to load its model (and compile its kernels) before it answers."""


class Server(StrEnum):
    """The HTTP server the service runs under."""

    UVICORN = "uvicorn"
    GRANIAN = "granian"


def http_json(port: int, method: str, path: str, body: bytes | None = None) -> object:
    """One JSON request to the service on ``HOST:port``; its decoded answer."""
    request = urllib.request.Request(
        f"http://{HOST}:{port}{path}", data=body, method=method,
        headers={"Content-Type": "application/json"},
    )  # fmt: skip
    with urllib.request.urlopen(request, timeout=60) as response:
        return json.loads(response.read())


def server_command(
    server: Server, artifact: Path, workers: int, port: int, redis_url: str
) -> list[str]:
    """The command line that serves ``artifact`` on ``HOST:port`` with ``workers`` processes."""
    if server is Server.UVICORN:
        return [
            sys.executable, "-c", LAUNCH_LRUREC, "serve", "--host", HOST, "--port", str(port),
            "--workers", str(workers), "--artifact", str(artifact), "--redis-url", redis_url,
            "--no-access-log", "--log-level", "warning",
        ]  # fmt: skip
    return [
        sys.executable, "-m", "granian", "--interface", "asgi", "--factory", APP_FACTORY,
        "--host", HOST, "--port", str(port), "--workers", str(workers), "--loop", "uvloop",
        "--no-ws", "--no-access-log", "--log-level", "warning",
    ]  # fmt: skip


def require(server: Server) -> None:
    """Fail early, with the fix, when ``server`` is not installed."""
    if server is Server.GRANIAN and importlib.util.find_spec("granian") is None:
        raise RuntimeError("--server granian needs the granian package: pip install granian")


@contextmanager
def running_service(
    server: Server, artifact: Path, workers: int, port: int, redis_url: str,
    settings: dict[str, str], tree: Path | None = None,
) -> Iterator[subprocess.Popen[bytes]]:  # fmt: skip
    """The service in a subprocess, with extra ``LRUREC_*`` environment ``settings``; stopped on
    exit. ``tree``: a checkout to serve from (first on ``PYTHONPATH``) instead of this one."""
    require(server)
    env = {**os.environ, **settings}
    env |= {"LRUREC_ARTIFACT": str(artifact), "LRUREC_REDIS_URL": redis_url}
    if tree is not None:
        env["PYTHONPATH"] = str(tree)
    with tempfile.TemporaryDirectory(prefix="lrurec-bench-metrics-") as metrics_dir:
        if server is Server.GRANIAN and workers > 1:
            # Aggregated metrics across workers, as `lrurec serve --workers N` sets them up.
            env["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir
        command = server_command(server, artifact, workers, port, redis_url)
        process = subprocess.Popen(command, env=env, cwd=tree)
        try:
            yield process
        finally:
            stop(process)


def wait_ready(server: subprocess.Popen[bytes], port: int, workers: int, timeout: float) -> None:
    """Until ``/readyz`` answers 200 (several times for several workers) or ``timeout``."""
    deadline = time.monotonic() + timeout
    answers = 0
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"the service exited with status {server.returncode}")
        try:
            http_json(port, "GET", "/readyz")
            answers += 1
            if answers >= 4 * workers:
                return
        except (URLError, ConnectionError, OSError):
            answers = 0
        time.sleep(0.5)
    raise RuntimeError(f"the service is not ready on port {port} after {timeout:.0f} s")


def stop(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM, then SIGKILL after 30 s; reaped either way."""
    if process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
