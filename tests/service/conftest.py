"""Service fixtures: the real app (real lifespan) on the session's Redis and a tiny artifact,
and ``lrurec serve`` as a real subprocess (:func:`lrurec_serve`)."""

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient

from cli.embedded_redis import free_port
from service.app import create_app
from service.settings import Settings
from tests.conftest import REPO, TINY_N_ITEMS, RedisTarget

ClientFactory = Callable[..., AbstractContextManager[TestClient]]


@pytest.fixture
def settings(tiny_artifact: Path, redis_target: RedisTarget) -> Settings:
    return Settings(
        artifact=tiny_artifact, redis_url=redis_target.url, redis_cluster=redis_target.cluster
    )


@pytest.fixture
def make_client(settings: Settings) -> ClientFactory:
    """``with make_client(**setting_overrides) as client:`` runs a fresh app's lifespan."""

    @contextmanager
    def make(**overrides: Any) -> Iterator[TestClient]:
        updated = Settings.model_validate({**settings.model_dump(), **overrides})
        with TestClient(create_app(updated)) as client:
            yield client

    return make


@pytest.fixture
def client(make_client: ClientFactory) -> Iterator[TestClient]:
    with make_client() as test_client:
        yield test_client


@pytest.fixture(scope="module")
def histories() -> np.ndarray:
    """Left-padded histories ``[6, 12]`` over the tiny catalogue, the last one empty."""
    generator = np.random.default_rng(0)
    items = generator.integers(1, TINY_N_ITEMS + 1, size=(6, 12))
    items[:, :4] = 0  # left padding, as the engine sends it
    items[5] = 0  # an empty history
    return items.astype(np.int64)


@dataclass
class Server:
    """A running ``lrurec serve`` process and the URL it answers on."""

    base_url: str
    process: subprocess.Popen[bytes]


def wait_ready(server: Server, timeout: float = 90.0) -> None:
    """Poll ``/readyz`` until it answers 200; fail at once if the process exits."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert server.process.poll() is None, "lrurec serve exited during start-up"
        try:
            if httpx.get(f"{server.base_url}/readyz", timeout=1.0).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise AssertionError(f"lrurec serve not ready within {timeout}s")


@contextmanager
def lrurec_serve(*options: str, environment: Mapping[str, str] | None = None) -> Iterator[Server]:
    """``lrurec serve --port <free> *options`` as a subprocess, ready when entered.

    The child sees this environment without any ``LRUREC_*`` or ``PROMETHEUS_MULTIPROC_DIR``
    variable, plus ``environment``. On exit it is stopped with SIGINT (SIGKILL after 30 s)
    unless a test has ended it already.
    """
    child = {k: v for k, v in os.environ.items() if not k.startswith("LRUREC_")}
    child.pop("PROMETHEUS_MULTIPROC_DIR", None)
    child.update(environment or {})
    port = free_port()
    command = [
        sys.executable, "-c", "from cli.main import app; app()", "serve",
        "--port", str(port), "--log-level", "warning", "--no-access-log", *options,
    ]  # fmt: skip
    process = subprocess.Popen(command, cwd=REPO, env=child)
    server = Server(f"http://127.0.0.1:{port}", process)
    try:
        wait_ready(server)
        yield server
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGINT)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
