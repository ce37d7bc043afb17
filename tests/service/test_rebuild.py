"""A state written by another model version is rebuilt once, lazily, from the stored history."""

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import redis

from tests.metrics import sample
from tests.service.conftest import ClientFactory
from tests.service.offline import load_model, state_key, stepped, stored_state, top_k

pytestmark = pytest.mark.redis_topologies

HISTORY = ["item-3", "item-8", "unknown-thing", "item-1"]
KNOWN = [3, 8, 1]


def rebuilds() -> float:
    return float(sample("lrurec_state_rebuilds_total"))


def seed_user_with_old_model(make_client: ClientFactory, old: Path, user: str) -> None:
    with make_client(artifact=old) as client:
        for item in HISTORY:
            assert (
                client.post("/events", json={"user_id": user, "item_id": item}).status_code == 200
            )


def test_recommendations_rebuild_a_stale_state_once(
    make_client: ClientFactory, make_artifact: Callable[..., Path], redis_client: "redis.Redis"
) -> None:
    old, new = make_artifact(seed=0), make_artifact(seed=1)
    seed_user_with_old_model(make_client, old, "u1")
    new_model = load_model(new)
    hidden, state = stepped(new_model, KNOWN)
    before = rebuilds()
    with make_client(artifact=new) as client:
        body = client.get("/recommendations/u1", params={"k": 5}).json()
        new_version = client.get("/readyz").json()["model_version"]
        assert rebuilds() == before + 1
        client.get("/recommendations/u1")
        assert rebuilds() == before + 1  # rebuilt once, then served from the new state
        info = client.get("/users/u1").json()
    assert body["source"] == "model"
    expected = top_k(new_model, hidden, 5, exclude=KNOWN)
    assert [item["item_id"] for item in body["items"]] == [f"item-{i}" for i, _ in expected]
    assert info["model_version"] == new_version
    assert info["recent_items"] == HISTORY  # the rebuild does not touch the history
    np.testing.assert_allclose(stored_state(redis_client, "u1"), state.flatten().numpy(), atol=1e-5)


def test_an_event_on_a_stale_state_rebuilds_then_steps(
    make_client: ClientFactory, make_artifact: Callable[..., Path], redis_client: "redis.Redis"
) -> None:
    old, new = make_artifact(seed=0), make_artifact(seed=1)
    seed_user_with_old_model(make_client, old, "u2")
    old_version = redis_client.hget(state_key("u2"), "model_version")
    before = rebuilds()
    with make_client(artifact=new) as client:
        body = client.post("/events", json={"user_id": "u2", "item_id": "item-5"}).json()
    assert body["applied"] is True
    assert body["events_applied"] == 4
    assert rebuilds() == before + 1
    assert redis_client.hget(state_key("u2"), "model_version") != old_version
    _, state = stepped(load_model(new), [*KNOWN, 5])
    np.testing.assert_allclose(stored_state(redis_client, "u2"), state.flatten().numpy(), atol=1e-5)
