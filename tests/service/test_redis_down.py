"""Redis unreachable: every Redis-backed call is a clear 503 (never a 500), then recovery."""

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from cli.embedded_redis import EmbeddedRedis, free_port
from service.app import create_app
from service.settings import Settings
from tests.metrics import sample

EVENT = {"user_id": "u1", "item_id": "item-1", "event_id": "e1"}


@pytest.fixture
def private_redis() -> Iterator[EmbeddedRedis]:
    """A redis-server of this test's own, which the test stops and restarts."""
    with EmbeddedRedis() as server:
        yield server


def fast_failing_settings(artifact: Path, url: str) -> Settings:
    return Settings(artifact=artifact, redis_url=url, redis_timeout_seconds=0.5, redis_retries=1)


def assert_503(response: object, kind: str = "redis_unavailable") -> None:
    status = getattr(response, "status_code", None)
    assert status == 503, getattr(response, "text", "")
    body = response.json()  # type: ignore[attr-defined]
    assert body["error"] == kind
    assert "Redis" in body["message"]
    assert response.headers["Retry-After"] == "1"  # type: ignore[attr-defined]


def test_redis_down_gives_503_then_recovers(
    private_redis: EmbeddedRedis, tiny_artifact: Path
) -> None:
    errors_before = sample("lrurec_errors_total", kind="redis_unavailable")
    with TestClient(create_app(fast_failing_settings(tiny_artifact, private_redis.url))) as client:
        assert client.post("/events", json=EVENT).json()["applied"] is True
        private_redis.stop()

        assert_503(client.post("/events", json={**EVENT, "event_id": "e2"}))
        assert_503(client.get("/recommendations/u1"))
        assert_503(client.get("/users/u1"))
        assert_503(client.delete("/users/u1"))
        batch = client.post("/events/batch", json={"events": [EVENT, {**EVENT, "user_id": "u2"}]})
        assert_503(batch)
        assert [r["reason"] for r in batch.json()["results"]] == ["redis_unavailable"] * 2
        assert client.get("/readyz").status_code == 503
        assert client.get("/healthz").status_code == 200
        assert sample("lrurec_errors_total", kind="redis_unavailable") >= errors_before + 5

        private_redis.start()  # same port, empty (the embedded server does not persist)
        recovered = client.post("/events", json={**EVENT, "event_id": "e3"})
        assert recovered.status_code == 200
        assert recovered.json()["events_applied"] == 1
        assert client.get("/readyz").status_code == 200
        assert client.get("/users/u1").json()["recent_items"] == ["item-1"]


def test_service_starts_without_redis_and_becomes_ready_when_it_appears(
    tiny_artifact: Path,
) -> None:
    server = EmbeddedRedis(port=free_port())
    with TestClient(create_app(fast_failing_settings(tiny_artifact, server.url))) as client:
        assert client.get("/readyz").json() == {
            "status": "not_ready", "model_version": client.app.state.engine.model_version,  # type: ignore[attr-defined]
            "redis": False,
        }  # fmt: skip
        assert sample("lrurec_ready") == 0
        assert_503(client.post("/events", json=EVENT))
        with server:
            assert client.get("/readyz").status_code == 200
            assert sample("lrurec_ready") == 1
            assert client.post("/events", json=EVENT).status_code == 200
