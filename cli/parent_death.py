"""Processes of the service end with the process that started them, even when it is killed
with SIGKILL and can clean nothing up: Linux's parent-death signal (``PR_SET_PDEATHSIG``).
Elsewhere nothing is set up, and a killed parent leaves its children running.

The kernel sends that signal when the *thread* that forked the child exits, not the process.
:func:`popen_ending_with_process` therefore starts children from one launcher thread that lives
as long as the process, so a child started from a short-lived thread (a thread pool's worker,
``asyncio.to_thread``) is not stopped when that thread ends.
"""

import ctypes
import multiprocessing
import os
import signal
import subprocess
import sys
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import IO

SUPERVISOR_PID_ENV = "LRUREC_SERVE_SUPERVISOR_PID"
"""Set by ``lrurec serve --workers N`` (N > 1) to its own pid: its workers end with it."""
_PR_SET_PDEATHSIG = 1

_launcher = ThreadPoolExecutor(max_workers=1, thread_name_prefix="child-launcher")
"""Its one thread is never idle-stopped; it ends only when the interpreter shuts down."""


def end_with_parent(expected_parent: int | None = None) -> None:
    """Have the kernel send this process SIGTERM when its parent exits (Linux only).

    Args:
        expected_parent: the parent's pid; if the parent is another process already (it died
            before this call, and this one was re-parented), SIGTERM is sent at once.
    """
    if not sys.platform.startswith("linux"):
        return
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    if expected_parent is not None and os.getppid() != expected_parent:
        os.kill(os.getpid(), signal.SIGTERM)


def end_worker_with_supervisor() -> None:
    """In a worker of ``lrurec serve --workers N``: end with the supervising process.

    Only in a process that multiprocessing started from the process the variable names: a
    value left in the environment of anything else (a test, one worker, another server) is
    ignored, not obeyed by a process whose parent is someone else.
    """
    supervisor = os.environ.get(SUPERVISOR_PID_ENV, "")
    parent = multiprocessing.parent_process()
    if parent is not None and supervisor.isdigit() and parent.pid == int(supervisor):
        end_with_parent(parent.pid)


def popen_ending_with_process(
    command: Sequence[str], log: IO[bytes] | None = None
) -> "subprocess.Popen[bytes]":
    """Start ``command`` (output to ``log``) as a child that ends with this process
    (:func:`end_with_parent`), whichever thread asks for it."""

    def launch() -> "subprocess.Popen[bytes]":
        return subprocess.Popen(
            list(command), stdout=log, stderr=subprocess.STDOUT, preexec_fn=end_with_parent
        )

    return _launcher.submit(launch).result()
