"""``lrurec publish``: check an artifact, then record it as the model every worker serves.

The workers poll the record (LRUREC_MODEL_POLL_SECONDS) and switch without a restart
(service/rollout.py). Rolling back is publishing the previous artifact.
"""

import asyncio
from pathlib import Path
from typing import Annotated

import typer

from cli.serve_command import checked_artifact, checked_redis
from service.rollout import load_model, publish
from service.settings import get_settings
from service.store import create_redis


async def _record(url: str, cluster: bool, prefix: str, path: Path, version: str) -> None:
    client = create_redis(url, 5.0, 2, 2, cluster)
    try:
        await publish(client, prefix, path, version)
    finally:
        await client.aclose()


def publish_command(
    artifact: Annotated[
        Path,
        typer.Option(
            help="Artifact directory, at the same path on every replica (a shared volume).",
            exists=True,
            file_okay=False,
        ),
    ],
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
) -> None:
    """Load and check ARTIFACT (files, config, one step and a top-k), then publish it.

    Every worker of every replica switches to it within LRUREC_MODEL_POLL_SECONDS (plus its
    load time), finishing the requests in flight on the model they started with.
    """
    settings = get_settings()
    url = redis_url or settings.redis_url
    if url is None:
        raise typer.BadParameter("give --redis-url or LRUREC_REDIS_URL", param_hint="--redis-url")
    cluster = settings.redis_cluster if redis_cluster is None else redis_cluster
    path = checked_artifact(artifact).resolve()
    checked_redis(url, cluster)
    try:
        loaded, _, backend = load_model(path, settings)  # includes a step and a top-k
    except Exception as error:
        raise typer.BadParameter(
            f"{path} does not load: {error}", param_hint="--artifact"
        ) from None
    asyncio.run(_record(url, cluster, settings.key_prefix, path, loaded.version))
    typer.echo(f"published model {loaded.version} ({loaded.config.get('model_type')}, "
               f"{len(loaded.item_ids):,} items, checked on {backend}) from {path}")  # fmt: skip
