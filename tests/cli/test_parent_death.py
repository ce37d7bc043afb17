"""``end_worker_with_supervisor`` acts only in a worker that ``lrurec serve --workers N``
started (its ending with a killed supervisor: ``tests/service/test_serve.py``), and an embedded
Redis started from another thread lives as long as its process, no shorter and no longer."""

import os
import subprocess
import sys
import threading
import time

import psutil
import pytest
import redis

from cli.embedded_redis import EmbeddedRedis
from cli.parent_death import SUPERVISOR_PID_ENV
from tests.conftest import REPO

CHECK = (
    "import os, time\n"
    "from cli.parent_death import end_worker_with_supervisor\n"
    "end_worker_with_supervisor()\n"
    "time.sleep(0.2)  # a SIGTERM sent to itself would land by now\n"
    "print('alive', flush=True)\n"
)


@pytest.mark.parametrize("value", ["999999", "not-a-pid", str(os.getpid())])
def test_a_supervisor_pid_left_in_the_environment_is_ignored(value: str) -> None:
    """The last value is this test's own pid, the real parent of the process: still not a
    worker that multiprocessing started, so nothing is set up and nothing is sent."""
    result = subprocess.run(
        [sys.executable, "-c", CHECK], cwd=REPO, env={**os.environ, SUPERVISOR_PID_ENV: value},
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "alive"


def test_a_redis_started_from_a_thread_outlives_that_thread() -> None:
    """The parent-death signal follows the thread that forked the child: a node started from a
    short-lived thread (as a test's fault action does) must keep running after it ends."""
    with EmbeddedRedis() as server:
        server.stop()
        restarter = threading.Thread(target=server.start)
        restarter.start()
        restarter.join()
        time.sleep(0.5)  # a SIGTERM from the thread's end would have stopped it by now
        assert server.running
        client = redis.Redis.from_url(server.url)
        assert client.ping()
        client.close()


STARTS_REDIS_FROM_A_THREAD = (
    "import threading, time\n"
    "from cli.embedded_redis import EmbeddedRedis\n"
    "server = EmbeddedRedis()\n"
    "starter = threading.Thread(target=server.start)\n"
    "starter.start()\n"
    "starter.join()\n"
    "print(server.pid, flush=True)\n"
    "time.sleep(60)\n"
)


def test_a_redis_started_from_a_thread_ends_when_its_process_is_killed() -> None:
    parent = subprocess.Popen(
        [sys.executable, "-c", STARTS_REDIS_FROM_A_THREAD], cwd=REPO,
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert parent.stdout is not None
    child = int(parent.stdout.readline())
    assert process_alive(child)
    parent.kill()
    parent.wait()
    deadline = time.monotonic() + 10
    while process_alive(child) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not process_alive(child), "redis-server outlived the killed process that started it"


def process_alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie, dead but not yet reaped by init, counts as ended)."""
    try:
        return bool(psutil.Process(pid).status() != psutil.STATUS_ZOMBIE)
    except psutil.NoSuchProcess:
        return False
