"""The HTTP API against a real Redis and a real (tiny, random-weight) model."""

from pathlib import Path
from urllib.parse import quote

import numpy as np
import pytest
import redis
import torch
from fastapi.testclient import TestClient
from threadpoolctl import threadpool_info, threadpool_limits

from tests.conftest import RedisTarget
from tests.service.conftest import ClientFactory
from tests.service.offline import load_model, stepped, stored_state, top_k

pytestmark = pytest.mark.redis_topologies


def post(client: TestClient, user: str, item: str, **params: object) -> dict[str, object]:
    response = client.post("/events", json={"user_id": user, "item_id": item}, params=params)
    assert response.status_code == 200, response.text
    body: dict[str, object] = response.json()
    return body


def test_event_is_one_step_and_returns_the_fresh_top_k(
    client: TestClient, tiny_artifact: Path, redis_client: "redis.Redis"
) -> None:
    model = load_model(tiny_artifact)
    post(client, "u1", "item-7", k=0)
    body = post(client, "u1", "item-3", k=5)
    hidden, state = stepped(model, [7, 3])
    expected = top_k(model, hidden, 5, exclude=[7, 3])
    assert body["applied"] is True
    assert body["events_applied"] == 2
    recommendations = body["recommendations"]
    assert isinstance(recommendations, list)
    assert [r["item_id"] for r in recommendations] == [f"item-{i}" for i, _ in expected]
    scores = [r["score"] for r in recommendations]
    np.testing.assert_allclose(scores, [s for _, s in expected], atol=1e-5)
    np.testing.assert_allclose(stored_state(redis_client, "u1"), state.flatten().numpy(), atol=1e-6)


def test_start_up_holds_torch_and_blas_to_the_thread_setting(make_client: ClientFactory) -> None:
    with threadpool_limits(2, user_api="blas"), make_client(torch_threads=1):  # restored after
        blas = [pool["num_threads"] for pool in threadpool_info() if pool["user_api"] == "blas"]
        assert blas
        assert set(blas) == {1}
        assert torch.get_num_threads() == 1


def test_k_zero_skips_scoring(client: TestClient) -> None:
    body = post(client, "u1", "item-1", k=0)
    assert "recommendations" not in body
    assert body["applied"] is True


def test_default_k_comes_from_settings(make_client: ClientFactory) -> None:
    with make_client(default_k=4) as client:
        body = post(client, "u1", "item-1")
        assert isinstance(body["recommendations"], list)
        assert len(body["recommendations"]) == 4
        assert len(client.get("/recommendations/u1").json()["items"]) == 4


def test_duplicate_event_id_is_not_applied_twice(
    client: TestClient, redis_client: "redis.Redis"
) -> None:
    event = {"user_id": "u1", "item_id": "item-2", "event_id": "evt-1"}
    first = client.post("/events", json=event).json()
    state_after_first = stored_state(redis_client, "u1")
    second = client.post("/events", json=event).json()
    assert first["applied"] is True
    assert (second["applied"], second["reason"]) == (False, "duplicate")
    assert second["events_applied"] == 1
    np.testing.assert_array_equal(stored_state(redis_client, "u1"), state_after_first)
    assert client.get("/users/u1").json()["recent_items"] == ["item-2"]
    other_user = client.post("/events", json={**event, "user_id": "u2"}).json()
    assert other_user["applied"] is True  # event ids are per user


def test_an_event_its_replicas_did_not_confirm_is_a_503_and_its_retry_applies_once(
    make_client: ClientFactory, redis_target: RedisTarget
) -> None:
    """More replicas asked for than the master has (none on the single node, one per cluster
    master): 503 with Retry-After; the write landed, so the retry is a duplicate."""
    replicas = 1 if redis_target.cluster else 0
    event = {"user_id": "u1", "item_id": "item-2", "event_id": "evt-1"}
    batch = {"events": [{**event, "event_id": "evt-2"}]}
    with make_client(redis_wait_replicas=replicas + 1, redis_wait_timeout_ms=50) as client:
        for path, body in (("/events", event), ("/events/batch", batch)):
            refused = client.post(path, json=body)
            assert refused.status_code == 503, refused.text
            assert refused.json()["error"] == "redis_unavailable"
            assert refused.headers["Retry-After"] == "1"
    with make_client(redis_wait_replicas=replicas) as client:
        retried = client.post("/events", json=event).json()
        assert (retried["applied"], retried["reason"]) == (False, "duplicate")
        [retried] = client.post("/events/batch", json=batch).json()["results"]
        assert (retried["applied"], retried["reason"]) == (False, "duplicate")
        assert client.get("/users/u1").json()["events_applied"] == 2


def test_unknown_item_is_kept_in_history_without_advancing_the_state(
    client: TestClient, redis_client: "redis.Redis"
) -> None:
    post(client, "u1", "item-4")
    before = stored_state(redis_client, "u1")
    body = post(client, "u1", "not-in-catalogue")
    assert (body["applied"], body["reason"], body["events_applied"]) == (False, "unknown_item", 1)
    np.testing.assert_array_equal(stored_state(redis_client, "u1"), before)
    info = client.get("/users/u1").json()
    assert info["recent_items"] == ["item-4", "not-in-catalogue"]
    assert (info["events_applied"], info["events_received"]) == (1, 2)


def test_new_user_gets_the_models_cold_start(client: TestClient, tiny_artifact: Path) -> None:
    model = load_model(tiny_artifact)
    body = client.get("/recommendations/nobody", params={"k": 6}).json()
    expected = top_k(model, model.cold_start_hidden().detach(), 6, exclude=[])
    assert body["source"] == "cold_start"
    assert [item["item_id"] for item in body["items"]] == [f"item-{i}" for i, _ in expected]


def test_popularity_cold_start_ranks_by_training_counts(
    make_client: ClientFactory, tiny_artifact: Path
) -> None:
    rows = (tiny_artifact / "items.tsv").read_text().splitlines()[1:]
    counts = [float(row.split("\t")[2]) for row in rows]
    order = sorted(range(1, len(counts) + 1), key=lambda i: -counts[i - 1])
    with make_client(cold_start="popularity") as client:
        body = client.get("/recommendations/nobody", params={"k": 5}).json()
        only_unknown = post(client, "u2", "unknown-item", k=5)
    assert body["source"] == "cold_start"
    assert [item["score"] for item in body["items"]] == [counts[i - 1] for i in order[:5]]
    recommendations = only_unknown["recommendations"]
    assert isinstance(recommendations, list)
    assert [r["item_id"] for r in recommendations] == [f"item-{i}" for i in order[:5]]


def test_exclude_seen_masks_the_users_recent_items(client: TestClient, tiny_artifact: Path) -> None:
    model = load_model(tiny_artifact)
    history = [5, 9, 5, 12]
    for index in history:
        post(client, "u1", f"item-{index}", k=0)
    hidden, _ = stepped(model, history)
    unmasked = top_k(model, hidden, 50 - 1, exclude=[])
    masked = client.get("/recommendations/u1", params={"k": 49}).json()["items"]
    everything = client.get("/recommendations/u1", params={"k": 49, "exclude_seen": False}).json()
    assert [item["item_id"] for item in everything["items"]] == [f"item-{i}" for i, _ in unmasked]
    assert {item["item_id"] for item in masked}.isdisjoint({"item-5", "item-9", "item-12"})
    assert len(masked) == 50 - 3  # fewer than k are left once the seen items are masked


def test_padding_column_is_never_recommended(client: TestClient) -> None:
    post(client, "u1", "item-1", k=0)
    items = client.get("/recommendations/u1", params={"k": 1000, "exclude_seen": False}).json()
    assert len(items["items"]) == 50
    assert {item["item_id"] for item in items["items"]} == {f"item-{i}" for i in range(1, 51)}


def test_delete_forgets_the_user(client: TestClient, redis_client: "redis.Redis") -> None:
    post(client, "u1", "item-1")
    assert client.delete("/users/u1").json() == {"user_id": "u1", "deleted": True}
    assert redis_client.keys("*u1*") == []
    assert client.get("/users/u1").status_code == 404
    assert client.get("/recommendations/u1").json()["source"] == "cold_start"
    assert client.delete("/users/u1").json()["deleted"] is False


@pytest.mark.parametrize("user_id", ["team/alice", "a/b/c/"])
def test_an_id_with_slashes_can_be_read_and_deleted(client: TestClient, user_id: str) -> None:
    post(client, user_id, "item-1")
    quoted = quote(user_id, safe="")
    assert client.get(f"/users/{quoted}").json()["events_applied"] == 1
    assert client.get(f"/recommendations/{quoted}").json()["user_id"] == user_id
    assert client.delete(f"/users/{quoted}").json() == {"user_id": user_id, "deleted": True}
    assert client.get(f"/users/{quoted}").status_code == 404


def test_a_user_id_from_undecodable_bytes_is_refused_not_read_as_another(
    client: TestClient,
) -> None:
    # %FF and %FE both decode to U+FFFD: accepted, they would name one and the same user.
    for path in ("/users/a%FFb", "/users/a%FEb", "/recommendations/a%FFb"):
        assert client.get(path).status_code == 422, path
    refused = client.post("/events", json={"user_id": "a\ufffdb", "item_id": "item-1"})
    assert refused.status_code == 422
    assert refused.json()["message"].startswith("body.user_id")
    kept = client.post("/events", json={"user_id": "ok", "item_id": "sku\ufffd"})
    assert kept.json()["reason"] == "unknown_item"  # item ids only travel in bodies: allowed


def test_user_info_reports_counts_history_and_version(client: TestClient) -> None:
    post(client, "u1", "item-1")
    post(client, "u1", "item-2")
    info = client.get("/users/u1").json()
    ready = client.get("/readyz").json()
    assert info["events_applied"] == 2
    assert info["recent_items"] == ["item-1", "item-2"]
    assert info["model_version"] == ready["model_version"]
    assert isinstance(info["updated_at"], float)


def test_history_keeps_at_most_max_len_items(
    make_client: ClientFactory, make_artifact: "object"
) -> None:
    artifact = make_artifact(max_len=4)  # type: ignore[operator]
    with make_client(artifact=artifact) as client:
        for index in range(1, 8):
            post(client, "u1", f"item-{index}", k=0)
        info = client.get("/users/u1").json()
    assert info["recent_items"] == ["item-4", "item-5", "item-6", "item-7"]
    assert info["events_applied"] == 7


def test_batch_applies_events_in_order_per_user(
    client: TestClient, tiny_artifact: Path, redis_client: "redis.Redis"
) -> None:
    model = load_model(tiny_artifact)
    sequences = {"a": [3, 1, 4, 1, 5], "b": [9, 2, 6], "c": [5, 3]}
    events = []
    for position in range(5):  # interleave users
        for user, items in sequences.items():
            if position < len(items):
                events.append({"user_id": user, "item_id": f"item-{items[position]}"})
    events.append({"user_id": "c", "item_id": "mystery"})
    body = client.post("/events/batch", json={"events": events}, params={"k": 3}).json()
    results = body["results"]
    assert [r["user_id"] for r in results] == [e["user_id"] for e in events]
    assert [r["events_applied"] for r in results if r["user_id"] == "a"] == [1, 2, 3, 4, 5]
    assert results[-1]["reason"] == "unknown_item"
    assert all(len(r["recommendations"]) == 3 for r in results)
    for user, items in sequences.items():
        _, state = stepped(model, items)
        expected_state = state.flatten().numpy()
        np.testing.assert_allclose(stored_state(redis_client, user), expected_state, atol=1e-6)


@pytest.mark.parametrize("path", ["/events", "/events/batch"])
@pytest.mark.parametrize(
    "body", [b'{"user_id": "\xff"}', b"[" * 100_000 + b"]" * 100_000, b'{"events": ['],
    ids=["not-utf-8", "nested-too-deep", "truncated"],
)  # fmt: skip
def test_a_body_that_is_not_json_is_a_422_naming_the_body(
    client: TestClient, path: str, body: bytes
) -> None:
    response = client.post(path, content=body, headers={"content-type": "application/json"})
    assert response.status_code == 422, response.text
    document = response.json()
    assert document["error"] == "validation"
    assert document["message"].startswith("body")


@pytest.mark.parametrize("timestamp", ["NaN", "1e400", "-1", '"2024-01-01T00:00:00Z"'])
def test_a_timestamp_is_a_finite_number_of_unix_seconds(client: TestClient, timestamp: str) -> None:
    body = f'{{"user_id": "t", "item_id": "item-1", "timestamp": {timestamp}}}'
    response = client.post("/events", content=body, headers={"content-type": "application/json"})
    assert response.status_code == 422, response.text
    assert response.json()["message"].startswith("body.timestamp")


def test_api_key_guards_write_and_admin_endpoints(make_client: ClientFactory) -> None:
    event = {"user_id": "u1", "item_id": "item-1"}
    wrong, right = {"X-API-Key": "wrong"}, {"X-API-Key": "s3cret"}
    with make_client(api_key="s3cret") as client:
        assert client.post("/events", json=event).status_code == 401
        assert client.post("/events", json=event, headers=wrong).status_code == 401
        assert client.post("/events", json=event, headers=right).status_code == 200
        batch = {"events": [event]}
        assert client.post("/events/batch", json=batch).status_code == 401
        assert client.delete("/users/u1").status_code == 401
        assert client.get("/users/u1").status_code == 401
        assert client.get("/users/u1", headers=right).status_code == 200
        assert client.get("/recommendations/u1").status_code == 200  # reads stay open
        assert client.get("/readyz").status_code == 200


def test_openapi_documents_every_route(client: TestClient) -> None:
    paths = client.get("/openapi.json").json()["paths"]
    for path in ("/events", "/events/batch", "/recommendations/{user_id}", "/users/{user_id}"):
        assert path in paths
    assert paths["/events"]["post"]["description"].startswith("Apply one event")


def test_health_and_readiness(client: TestClient) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}  # liveness: nothing else known
    ready = client.get("/readyz")
    assert ready.status_code == 200
    assert ready.json()["redis"] is True


@pytest.mark.parametrize("device", ["cuda"])
@pytest.mark.gpu
def test_serving_on_cuda_matches_cpu(make_client: ClientFactory, device: str) -> None:
    with make_client() as cpu_client:
        cpu = post(cpu_client, "cpu-user", "item-8", k=5)
    with make_client(device=device) as gpu_client:
        gpu = post(gpu_client, "gpu-user", "item-8", k=5)
    assert torch.cuda.is_available()
    cpu_items, gpu_items = cpu["recommendations"], gpu["recommendations"]
    assert isinstance(cpu_items, list)
    assert isinstance(gpu_items, list)
    assert [r["item_id"] for r in gpu_items] == [r["item_id"] for r in cpu_items]
