"""``end_worker_with_supervisor`` acts only in a worker that ``lrurec serve --workers N``
started (its ending with a killed supervisor: ``tests/service/test_serve.py``)."""

import os
import subprocess
import sys

import pytest

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
