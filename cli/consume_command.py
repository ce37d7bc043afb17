"""``lrurec consume``: apply the events producers add to the ingest streams (Redis Streams,
consumer group ``lrurec``), with the settings of ``lrurec serve``.

A producer needs nothing of ours: ``XADD <prefix>:v1:ingest:{<shard>} * user_id U item_id I
[event_id E] [timestamp T]`` with shard = crc32(U) % LRUREC_INGEST_SHARDS (README, "Stream
ingestion").
"""

import asyncio
import logging
import multiprocessing
import os
import signal
import tempfile
from contextlib import ExitStack
from pathlib import Path
from typing import Annotated

import typer
from prometheus_client import start_http_server

from cli.consume_runner import consume as consume_forever
from cli.parent_death import SUPERVISOR_PID_ENV, end_worker_with_supervisor
from cli.serve_command import LogLevel, checked_artifact, checked_redis
from service import telemetry
from service.settings import get_settings


def _worker() -> None:
    """One of ``--workers N`` consumer processes (settings from the environment)."""
    end_worker_with_supervisor()
    logging.basicConfig(level=os.environ.get("LRUREC_CONSUME_LOG_LEVEL", "INFO").upper())
    asyncio.run(consume_forever(get_settings()))


def consume(
    redis_url: Annotated[
        str | None,
        typer.Option(help="Redis URL. Default: LRUREC_REDIS_URL.", show_default=False),
    ] = None,
    redis_cluster: Annotated[
        bool | None,
        typer.Option(
            "--redis-cluster/--no-redis-cluster",
            help="The Redis URL names a node of a Redis Cluster. Default: LRUREC_REDIS_CLUSTER.",
            show_default=False,
        ),
    ] = None,
    artifact: Annotated[
        Path | None,
        typer.Option(
            help="Artifact directory. Default: LRUREC_ARTIFACT, else the demo artifact.",
            exists=True,
            file_okay=False,
            show_default=False,
        ),
    ] = None,
    workers: Annotated[
        int, typer.Option(min=1, help="Consumer processes; the shards are shared among them.")
    ] = 1,
    metrics_port: Annotated[
        int | None,
        typer.Option(min=0, max=65535, help="Serve Prometheus metrics on this port."),
    ] = None,
    log_level: Annotated[LogLevel, typer.Option(help="Log level.")] = LogLevel.INFO,
) -> None:
    """Apply events from the ingest streams, in order per user, each event id at most once.

    Every shard is read by one consumer at a time; start several `lrurec consume` processes
    (or --workers N) to share them. SIGTERM or Ctrl-C stops after the batches in flight.
    Other settings are LRUREC_* environment variables (LRUREC_INGEST_SHARDS,
    LRUREC_INGEST_CLAIM_MS, LRUREC_INGEST_BATCH_SIZE, ...; docs/operator.md).
    """
    settings = get_settings()
    artifact_path = checked_artifact(artifact or settings.artifact)
    url = redis_url or settings.redis_url
    if url is None:
        raise typer.BadParameter(
            "the consumer reads the producers' Redis: give --redis-url or LRUREC_REDIS_URL",
            param_hint="--redis-url",
        )
    cluster = settings.redis_cluster if redis_cluster is None else redis_cluster
    checked_redis(url, cluster)
    logging.basicConfig(level=log_level.value.upper() if log_level != LogLevel.TRACE else "DEBUG")
    environment = {
        "LRUREC_ARTIFACT": str(artifact_path.resolve()),
        "LRUREC_REDIS_URL": url,
        "LRUREC_REDIS_CLUSTER": str(cluster).lower(),
        "LRUREC_CONSUME_LOG_LEVEL": "DEBUG" if log_level == LogLevel.TRACE else log_level.value,
    }
    with ExitStack() as stack:
        if workers > 1:
            metrics_dir = settings.metrics_dir or Path(
                stack.enter_context(tempfile.TemporaryDirectory(prefix="lrurec-metrics-"))
            )
            telemetry.prepare_multiprocess_dir(metrics_dir)
            environment[telemetry.MULTIPROCESS_ENV] = str(metrics_dir)
            environment[SUPERVISOR_PID_ENV] = str(os.getpid())
        os.environ.update(environment)
        get_settings.cache_clear()
        if metrics_port is not None:
            start_http_server(metrics_port, registry=telemetry.metrics_registry())
        typer.echo(f"consuming {settings.ingest_shards} shards with {workers} consumer(s)")
        if workers == 1:
            asyncio.run(consume_forever(get_settings()))
            return
        _supervise(workers)


def _supervise(workers: int) -> None:
    """Start the consumer processes; on SIGTERM/SIGINT stop them gracefully and wait."""
    context = multiprocessing.get_context("spawn")
    processes = [context.Process(target=_worker, name=f"consumer-{n}") for n in range(workers)]
    for process in processes:
        process.start()

    def forward(signum: int, _: object) -> None:
        for process in processes:
            if process.pid is not None and process.is_alive():
                os.kill(process.pid, signal.SIGTERM)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    for process in processes:
        process.join()
