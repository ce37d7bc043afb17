"""The embedded redis-server starts, serves, stops, and never outlives its owner."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import redis
from fastapi.testclient import TestClient

from service.embedded_redis import EmbeddedRedis
from service.main import create_app
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


def test_app_without_redis_url_runs_its_own_and_stops_it(tiny_artifact: Path) -> None:
    before = redis_children()
    with TestClient(create_app(Settings(artifact=tiny_artifact, redis_url=None))) as client:
        started = redis_children() - before
        assert len(started) == 1
        response = client.post("/events", json={"user_id": "u", "item_id": "item-2"})
        assert response.json()["applied"] is True
        assert client.get("/readyz").status_code == 200
    assert all(wait_gone(pid) for pid in started)


def test_server_dies_with_a_killed_owner() -> None:
    """SIGKILL gives the owner no chance to clean up; the kernel's parent-death signal does."""
    script = (
        "import sys, time\n"
        "from service.embedded_redis import EmbeddedRedis\n"
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
