"""The service refuses to start on the wrong kind of Redis, saying what to change."""

import asyncio
from pathlib import Path

import pytest

from service.settings import Settings
from service.store import TopologyMismatchError
from tests.service.engines import started_engine


def start(settings: Settings) -> None:
    async def main() -> None:
        _, close = await started_engine(settings)
        await close()

    asyncio.run(main())


def test_the_cluster_setting_on_a_single_node_fails_at_start_up(
    tiny_artifact: Path, redis_url: str
) -> None:
    settings = Settings(artifact=tiny_artifact, redis_url=redis_url, redis_cluster=True)
    with pytest.raises(TopologyMismatchError, match="not a cluster node"):
        start(settings)


def test_a_cluster_node_without_the_cluster_setting_fails_at_start_up(
    tiny_artifact: Path, redis_cluster_server: str
) -> None:
    settings = Settings(artifact=tiny_artifact, redis_url=redis_cluster_server)
    with pytest.raises(TopologyMismatchError, match="LRUREC_REDIS_CLUSTER=true"):
        start(settings)


def test_matching_settings_start(
    tiny_artifact: Path, redis_url: str, redis_cluster_server: str
) -> None:
    start(Settings(artifact=tiny_artifact, redis_url=redis_url))
    start(Settings(artifact=tiny_artifact, redis_url=redis_cluster_server, redis_cluster=True))
