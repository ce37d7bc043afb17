"""The embedded redis-server starts, serves, stops, and never outlives its owner."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import redis
from fastapi.testclient import TestClient

from cli.embedded_redis import EmbeddedRedis
from service.app import create_app
from service.settings import Settings
from tests.conftest import REPO


def redis_children() -> set[int]:
    children = psutil.Process().children(recursive=True)
    return {child.pid for child in children if "redis-server" in child.name()}


def wait_gone(pid: int, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                return True
        except psutil.NoSuchProcess:
            return True
        time.sleep(0.05)
    return False


def test_start_serves_on_loopback_and_stop_leaves_no_process() -> None:
    server = EmbeddedRedis().start()
    pid = server.pid
    assert pid is not None
    try:
        client = redis.Redis.from_url(server.url)
        assert client.ping()
        assert client.config_get("bind")["bind"] == "127.0.0.1"
        assert client.config_get("save")["save"] == ""  # nothing persisted on disk
        client.close()
    finally:
        server.close()
    assert not server.running
    assert wait_gone(pid)
    assert pid not in redis_children()


def test_the_app_without_a_redis_url_refuses_to_start_and_says_what_to_set(
    tiny_artifact: Path,
) -> None:
    with (
        pytest.raises(RuntimeError, match="LRUREC_REDIS_URL"),
        TestClient(create_app(Settings(artifact=tiny_artifact, redis_url=None))),
    ):
        pass


def test_server_dies_with_a_killed_owner() -> None:
    """SIGKILL gives the owner no chance to clean up; the kernel's parent-death signal does."""
    script = (
        "import sys, time\n"
        "from cli.embedded_redis import EmbeddedRedis\n"
        "server = EmbeddedRedis().start()\n"
        "print(server.pid, flush=True)\n"
        "time.sleep(60)\n"
    )
    owner = subprocess.Popen(
        [sys.executable, "-c", script], cwd=REPO, stdout=subprocess.PIPE, text=True
    )
    try:
        assert owner.stdout is not None
        redis_pid = int(owner.stdout.readline())
        assert psutil.pid_exists(redis_pid)
    finally:
        os.kill(owner.pid, signal.SIGKILL)
        owner.wait()
    assert wait_gone(redis_pid)
