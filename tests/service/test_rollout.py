"""Model rollout without a restart, on a real Redis (single node and cluster): ``lrurec
publish`` checks and records an artifact, a running app switches to it by itself, keeps the
old model when the new one does not load, and rolls back by publishing the old one again."""

import time
from collections.abc import Callable
from pathlib import Path

import orjson
import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from cli.main import app
from service.rollout import current_key
from tests.conftest import ArtifactFactory, RedisTarget
from tests.metrics import sample
from tests.service.conftest import ClientFactory
from tests.service.ingest import SyncRedis

pytestmark = pytest.mark.redis_topologies

runner = CliRunner(env={"COLUMNS": "300"})


def publish(target: RedisTarget, artifact: Path) -> str:
    topology = "--redis-cluster" if target.cluster else "--no-redis-cluster"
    result = runner.invoke(
        app, ["publish", "--artifact", str(artifact), "--redis-url", target.url, topology]
    )
    assert result.exit_code == 0, result.output
    return result.output


def serving(client: TestClient) -> str:
    version: str = client.get("/readyz").json()["model_version"]
    return version


def wait_for(check: Callable[[], bool], seconds: float = 30.0) -> None:
    deadline = time.monotonic() + seconds
    while not check():
        assert time.monotonic() < deadline, "not reached in time"
        time.sleep(0.05)


def test_a_published_model_is_served_without_a_restart_and_rolled_back(
    make_client: ClientFactory, make_artifact: ArtifactFactory, redis_target: RedisTarget
) -> None:
    first, second = make_artifact(seed=0), make_artifact(seed=1)
    with make_client(artifact=first, model_poll_seconds=0.1) as client:
        old = serving(client)
        answer = client.post("/events", json={"user_id": "u1", "item_id": "item-3"}).json()
        assert answer["model_version"] == old
        assert "published model" in publish(redis_target, second)
        wait_for(lambda: serving(client) != old)
        new = serving(client)
        answer = client.post("/events", json={"user_id": "u1", "item_id": "item-4"}).json()
        assert answer["model_version"] == new
        assert client.get("/users/u1").json()["model_version"] == new  # rebuilt from history
        assert sample("lrurec_model_info", model_version=new, model_type="lrurec",
                      backend="numba") == 1  # fmt: skip
        assert sample("lrurec_model_info", model_version=old, model_type="lrurec",
                      backend="numba") == 0  # fmt: skip
        publish(redis_target, first)  # rolling back
        wait_for(lambda: serving(client) == old)


def test_a_model_that_fails_to_load_leaves_the_old_one_serving(
    make_client: ClientFactory, redis_client: SyncRedis, tmp_path: Path
) -> None:
    with make_client(model_poll_seconds=0.1) as client:
        old = serving(client)
        failures = sample("lrurec_model_load_failures_total")
        record = {"path": str(tmp_path / "gone"), "model_version": "f00", "published_at": 0}
        redis_client.set(current_key("lrurec"), orjson.dumps(record))
        wait_for(lambda: sample("lrurec_model_load_failures_total") == failures + 1)
        time.sleep(0.3)  # several more polls: not retried until something else is published
        assert sample("lrurec_model_load_failures_total") == failures + 1
        assert serving(client) == old
        assert client.post("/events", json={"user_id": "u", "item_id": "item-1"}).status_code == 200


def test_publish_refuses_what_is_not_an_artifact(redis_target: RedisTarget, tmp_path: Path) -> None:
    command = ["publish", "--artifact", str(tmp_path), "--redis-url", redis_target.url]
    result = runner.invoke(app, command)
    assert result.exit_code == 2
    assert "is not a serving artifact" in result.output
