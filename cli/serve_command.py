"""``lrurec serve``: run the HTTP service under uvicorn, with embedded defaults for a fresh machine.

Without ``--redis-url``/``LRUREC_REDIS_URL`` a private redis-server is started on loopback (once,
shared by every worker) and stopped on exit; without ``--artifact``/``LRUREC_ARTIFACT`` the small
demo artifact is built (seconds) and served.
"""

import asyncio
import os
import pickle
import tempfile
from contextlib import ExitStack
from enum import StrEnum
from multiprocessing.connection import wait
from pathlib import Path
from typing import Annotated

import typer
import uvicorn
from fastapi import FastAPI
from redis.connection import ConnectionPool
from uvicorn.supervisors import multiprocess

from cli.embedded_redis import EmbeddedRedis
from cli.parent_death import SUPERVISOR_PID_ENV, end_worker_with_supervisor
from model.artifact import missing_files
from service.app import create_app
from service.settings import get_settings
from service.store import TopologyMismatchError, check_topology, create_redis
from service.telemetry import prepare_multiprocess_dir

APP_FACTORY = "cli.serve_command:worker_app"
"""What each uvicorn worker imports and calls to build its app."""
WORKER_HEALTHCHECK_SECONDS = 60


class WorkerProcess(multiprocess.Process):
    """uvicorn's handle on one worker, whose ping ends as soon as the worker exits.

    The supervisor holds both ends of the pipe it pings a worker on, so a worker that dies
    (SIGKILL, OOM) while a ping waits for its answer never closes that pipe: uvicorn's own
    ping then waits all of ``WORKER_HEALTHCHECK_SECONDS`` before the worker is replaced.
    """

    def ping(self, timeout: float = 5) -> bool:
        try:
            self.parent_conn.send(b"ping")
            if self.parent_conn not in wait([self.parent_conn, self.process.sentinel], timeout):
                return False  # no answer in time, or the worker exited first
            self.parent_conn.recv()
            return True
        except (OSError, EOFError, pickle.UnpicklingError):
            return False


class LogLevel(StrEnum):
    """uvicorn's log levels."""

    CRITICAL = "critical"
    ERROR = "error"
    WARNING = "warning"
    INFO = "info"
    DEBUG = "debug"
    TRACE = "trace"


def _demo_artifact() -> Path:
    from cli.demo import ensure_demo_artifact  # built only when no artifact is configured

    typer.echo("no artifact configured: serving the demo artifact (built once, then cached)")
    return ensure_demo_artifact()


def checked_artifact(artifact: Path | None) -> Path:
    """``artifact`` (the demo artifact when None) if it holds an exported model (checked
    here, not as a traceback from every worker's start-up)."""
    artifact = artifact or _demo_artifact()
    if missing := missing_files(artifact):
        raise typer.BadParameter(
            f"{artifact} is not a serving artifact (no {', '.join(missing)}); "
            "write one with `lrurec train --out DIR`",
            param_hint="--artifact / LRUREC_ARTIFACT",
        )
    return artifact


def _check_redis_url(url: str) -> None:
    try:
        ConnectionPool.from_url(url)  # parses only; nothing is connected
    except ValueError as error:
        raise typer.BadParameter(str(error), param_hint="--redis-url / LRUREC_REDIS_URL") from None


async def _check_topology(url: str, cluster: bool) -> None:
    client = create_redis(url, timeout_seconds=2.0, retries=0, max_connections=2, cluster=cluster)
    try:
        await check_topology(client, cluster)
    finally:
        await client.aclose()


def _checked_topology(url: str, cluster: bool) -> None:
    """Stop here, once, when ``--redis-cluster`` disagrees with the node (not as a traceback
    from every worker's start-up)."""
    try:
        asyncio.run(_check_topology(url, cluster))
    except TopologyMismatchError as error:
        raise typer.BadParameter(str(error), param_hint="--redis-cluster / --redis-url") from None


def checked_redis(url: str, cluster: bool) -> None:
    """A URL that parses, naming the kind of Redis ``cluster`` says."""
    _check_redis_url(url)
    _checked_topology(url, cluster)


def serve(
    host: Annotated[str, typer.Option(help="Interface to bind.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=0, max=65535, help="TCP port.")] = 8000,
    workers: Annotated[
        int, typer.Option(min=1, help="uvicorn worker processes (metrics are aggregated).")
    ] = 1,
    artifact: Annotated[
        Path | None,
        typer.Option(
            help="Artifact directory. Default: LRUREC_ARTIFACT, else a demo artifact.",
            exists=True,
            file_okay=False,
            show_default=False,
        ),
    ] = None,
    redis_url: Annotated[
        str | None,
        typer.Option(
            help="Redis URL. Default: LRUREC_REDIS_URL, else an embedded redis-server on "
            "loopback that lives as long as this command.",
            show_default=False,
        ),
    ] = None,
    redis_cluster: Annotated[
        bool | None,
        typer.Option(
            "--redis-cluster/--no-redis-cluster",
            help="The Redis URL names a node of a Redis Cluster. Default: LRUREC_REDIS_CLUSTER "
            "(false).",
            show_default=False,
        ),
    ] = None,
    log_level: Annotated[LogLevel, typer.Option(help="uvicorn log level.")] = LogLevel.INFO,
    access_log: Annotated[bool, typer.Option(help="Log every request.")] = True,
) -> None:
    """Serve real-time recommendations over HTTP (see /docs once it runs).

    Every other setting is an LRUREC_* environment variable (docs/operator.md, "Settings"):
    LRUREC_BACKEND=auto|numba|onnx|torch (auto: numba for LRURec on the CPU, else torch),
    LRUREC_DEVICE=cpu|cuda, LRUREC_TORCH_THREADS, LRUREC_API_KEY, ...
    """
    settings = get_settings()
    artifact = checked_artifact(artifact or settings.artifact)
    with ExitStack() as stack:
        url = redis_url or settings.redis_url
        cluster = settings.redis_cluster if redis_cluster is None else redis_cluster
        if url is not None:
            checked_redis(url, cluster)
        elif cluster:
            raise typer.BadParameter(
                "a Redis Cluster needs --redis-url (or LRUREC_REDIS_URL) naming one of its nodes",
                param_hint="--redis-cluster",
            )
        else:
            url = stack.enter_context(EmbeddedRedis()).url
            typer.echo(f"embedded redis-server on {url} (stopped on exit; nothing persisted)")
        # Workers are fresh processes: they read their settings from the environment.
        environment = {
            "LRUREC_ARTIFACT": str(artifact.resolve()),
            "LRUREC_REDIS_URL": url,
            "LRUREC_REDIS_CLUSTER": str(cluster).lower(),
        }
        if workers > 1:
            metrics_dir = settings.metrics_dir or Path(
                stack.enter_context(tempfile.TemporaryDirectory(prefix="lrurec-metrics-"))
            )
            prepare_multiprocess_dir(metrics_dir)
            environment["PROMETHEUS_MULTIPROC_DIR"] = str(metrics_dir)
            environment[SUPERVISOR_PID_ENV] = str(os.getpid())  # its workers end with it
        else:
            os.environ.pop(SUPERVISOR_PID_ENV, None)  # one inherited from elsewhere: not ours
        os.environ.update(environment)
        get_settings.cache_clear()
        typer.echo(f"serving {artifact} on http://{host}:{port} with {workers} worker(s)")
        typer.echo("loading the model (the first start also compiles its kernels: up to a minute)")
        # What uvicorn's supervisor (--workers N) starts and pings for each worker:
        multiprocess.Process = WorkerProcess  # type: ignore[misc]
        uvicorn.run(
            APP_FACTORY, factory=True, host=host, port=port, workers=workers,
            log_level=log_level.value, access_log=access_log,
            # A spawned worker answers the supervisor's ping only after importing torch and the
            # app; on a busy 2-core machine that measured ~10 s, beyond uvicorn's 5 s default,
            # and the supervisor killed and respawned workers forever.
            timeout_worker_healthcheck=WORKER_HEALTHCHECK_SECONDS,
        )  # fmt: skip


def worker_app() -> FastAPI:
    """The app of one uvicorn worker; a worker of ``--workers N`` ends with the supervisor."""
    end_worker_with_supervisor()
    return create_app()
