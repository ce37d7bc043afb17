"""The supervisor of ``lrurec serve --workers N`` learns that a worker died while it waited
for the worker's answer to a ping when the worker exits, not when the ping times out."""

import multiprocessing
import time

import uvicorn

from cli.serve_command import WORKER_HEALTHCHECK_SECONDS, WorkerProcess


def test_a_worker_that_exits_during_a_ping_fails_it_at_once() -> None:
    worker = WorkerProcess(uvicorn.Config("cli.serve_command:worker_app"), sockets=[])
    worker.process = multiprocessing.get_context("spawn").Process(target=time.sleep, args=(1.0,))
    worker.start()  # never answers a ping, and exits after a second
    started = time.monotonic()
    assert not worker.is_alive(timeout=WORKER_HEALTHCHECK_SECONDS)
    assert time.monotonic() - started < WORKER_HEALTHCHECK_SECONDS / 4
    worker.join()
    assert worker.exitcode == 0
