"""The worker's copy of the records it wrote (service.engine.state_cache): fewer reads, same
results.

Every test ends by comparing the stored state with the offline reference (the model stepped
through the stored history in order), so a write from a stale copy would show.
"""

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import redis
from fastapi.testclient import TestClient

from tests.conftest import TINY_ITEM_IDS, TINY_N_ITEMS, ArtifactFactory
from tests.metrics import sample
from tests.service.conftest import ClientFactory
from tests.service.offline import load_model, stepped, stored_state

pytestmark = pytest.mark.redis_topologies


def _count(operation: str) -> float:
    """Observations in ``lrurec_redis_seconds{operation}`` so far."""
    return sample("lrurec_redis_seconds_count", operation=operation)


def post(
    client: TestClient, user: str, item: str, event_id: str | None = None
) -> dict[str, object]:
    event = {"user_id": user, "item_id": item}
    if event_id is not None:
        event["event_id"] = event_id
    response = client.post("/events", json=event, params={"k": 3})
    assert response.status_code == 200, response.text
    body: dict[str, object] = response.json()
    return body


def assert_stored_state_is_history_stepped(
    client: TestClient, redis_client: "redis.Redis", artifact: Path, user: str, applied: int
) -> None:
    info = client.get(f"/users/{user}").json()
    assert info["events_applied"] == applied
    indices = [int(item.split("-")[1]) for item in info["recent_items"]]
    _, expected = stepped(load_model(artifact), indices)
    np.testing.assert_allclose(
        stored_state(redis_client, user), expected.flatten().numpy(), atol=1e-5
    )


def test_a_workers_later_events_for_a_user_skip_the_read(
    client: TestClient, redis_client: "redis.Redis", tiny_artifact: Path
) -> None:
    before = _count("load")
    fresh, miss = (
        sample("lrurec_state_cache_events_total", outcome="fresh"),
        sample("lrurec_state_cache_events_total", outcome="miss"),
    )
    for n in range(5):
        assert post(client, "c1", f"item-{n + 1}")["events_applied"] == n + 1
    assert _count("load") - before == 1  # only the first event read the record
    assert sample("lrurec_state_cache_events_total", outcome="miss") - miss == 1
    assert sample("lrurec_state_cache_events_total", outcome="fresh") - fresh == 4
    assert_stored_state_is_history_stepped(client, redis_client, tiny_artifact, "c1", 5)


def test_without_the_cache_every_event_reads(make_client: ClientFactory) -> None:
    with make_client(state_cache_users=0) as client:
        before = _count("load")
        for n in range(3):
            post(client, "c0", f"item-{n + 1}")
        assert _count("load") - before == 3


def test_a_copy_made_stale_by_another_worker_is_refused_and_replaced(
    make_client: ClientFactory, redis_client: "redis.Redis", tiny_artifact: Path
) -> None:
    with make_client() as first, make_client() as second:
        post(first, "c2", "item-1")
        post(first, "c2", "item-2")  # first now holds c2 at version 2
        post(second, "c2", "item-3")  # version 3, written by second
        retries = sample("lrurec_cas_retries_total")
        stale = sample("lrurec_state_cache_events_total", outcome="stale")
        body = post(first, "c2", "item-4")  # from the stale copy: refused, retried
        assert sample("lrurec_state_cache_events_total", outcome="stale") == stale + 1
        assert sample("lrurec_cas_retries_total") == retries  # a stale copy is not a race
        assert body["applied"] is True
        assert body["events_applied"] == 4
        assert_stored_state_is_history_stepped(first, redis_client, tiny_artifact, "c2", 4)


def test_a_user_deleted_and_rebuilt_to_the_same_version_is_not_overwritten_from_the_copy(
    make_client: ClientFactory, redis_client: "redis.Redis", tiny_artifact: Path
) -> None:
    with make_client() as first, make_client() as second:
        post(first, "c3", "item-1")
        post(first, "c3", "item-2")  # first's copy: version 2, items 1, 2
        assert second.delete("/users/c3").json()["deleted"] is True
        post(second, "c3", "item-5")
        post(second, "c3", "item-6")  # version 2 again, items 5, 6
        post(first, "c3", "item-7")  # same version, other writer token: must not use the copy
        info = first.get("/users/c3").json()
        assert info["recent_items"] == ["item-5", "item-6", "item-7"]
        assert_stored_state_is_history_stepped(first, redis_client, tiny_artifact, "c3", 3)


def test_a_duplicate_sent_to_the_worker_holding_the_copy_is_not_applied(
    client: TestClient, redis_client: "redis.Redis", tiny_artifact: Path
) -> None:
    first = post(client, "c4", "item-1", event_id="e1")
    post(client, "c4", "item-2")
    again = post(client, "c4", "item-1", event_id="e1")
    assert first["applied"] is True
    assert again["applied"] is False
    assert again["reason"] == "duplicate"
    assert again["events_applied"] == 2
    assert isinstance(again["recommendations"], list)
    assert len(again["recommendations"]) == 3
    assert_stored_state_is_history_stepped(client, redis_client, tiny_artifact, "c4", 2)


def test_using_the_copy_costs_no_retry_from_the_budget(
    make_client: ClientFactory, redis_client: "redis.Redis", tiny_artifact: Path
) -> None:
    """With one attempt allowed, a duplicate or a stale copy must still get its 200."""
    with make_client(cas_max_retries=1) as first, make_client(cas_max_retries=1) as second:
        post(first, "c6", "item-1", event_id="d1")
        again = post(first, "c6", "item-1", event_id="d1")  # the copy meets a duplicate
        assert again["reason"] == "duplicate"
        post(second, "c6", "item-2")  # first's copy is now stale
        body = post(first, "c6", "item-3")
        assert body["applied"] is True
        assert body["events_applied"] == 3
        assert_stored_state_is_history_stepped(first, redis_client, tiny_artifact, "c6", 3)


def test_concurrent_mixed_requests_are_each_answered_correctly(
    make_client: ClientFactory, redis_client: "redis.Redis", tiny_artifact: Path
) -> None:
    """New events, a duplicate, an unknown item, an invalid body and a stale copy, at once."""
    with make_client() as first, make_client() as second:
        post(first, "m-stale", "item-1")
        post(first, "m-dup", "item-1", event_id="seen")
        post(second, "m-stale", "item-2")  # first's copy of m-stale is now stale
        requests = [
            {"user_id": "m-stale", "item_id": "item-3"},
            {"user_id": "m-dup", "item_id": "item-1", "event_id": "seen"},
            {"user_id": "m-new", "item_id": "item-4"},
            {"user_id": "m-new2", "item_id": "not-an-item"},
            {"user_id": "m-bad"},  # no item_id
        ]
        with ThreadPoolExecutor(max_workers=len(requests)) as pool:
            answers = list(
                pool.map(lambda event: first.post("/events", json=event, params={"k": 2}), requests)
            )
        stale, duplicate, new, unknown, bad = (answer.json() for answer in answers)
        assert [answer.status_code for answer in answers] == [200, 200, 200, 200, 422]
        assert stale["applied"] is True
        assert stale["events_applied"] == 3
        assert duplicate["reason"] == "duplicate"
        assert duplicate["events_applied"] == 1
        assert new["applied"] is True
        assert new["events_applied"] == 1
        assert unknown["reason"] == "unknown_item"
        assert unknown["events_applied"] == 0
        assert "body.item_id" in bad["message"]
        assert_stored_state_is_history_stepped(first, redis_client, tiny_artifact, "m-stale", 3)


def test_seen_items_stay_excluded_as_the_history_is_trimmed(
    make_client: ClientFactory, make_artifact: ArtifactFactory
) -> None:
    """The worker keeps each user's seen item indices next to its copy (no mapping of the
    whole history per event); they must follow the stored list as it is trimmed."""
    rng = np.random.default_rng(5)
    every_item = set(TINY_ITEM_IDS)
    with make_client(artifact=make_artifact(max_len=6)) as client:
        for n in range(40):
            stored = client.get("/users/trim").json()["recent_items"] if n else []
            item = "not-an-item" if n % 7 == 3 else f"item-{rng.integers(1, TINY_N_ITEMS + 1)}"
            k = TINY_N_ITEMS if n % 2 else 5  # every item left (partial sort), or a few (fused)
            event = {"user_id": "trim", "item_id": item}
            answer = client.post("/events", json=event, params={"k": k})
            assert answer.status_code == 200, answer.text
            recommended = {entry["item_id"] for entry in answer.json()["recommendations"]}
            allowed = every_item - {*stored, item}
            if k == TINY_N_ITEMS:
                assert recommended == allowed, n
            else:
                assert recommended <= allowed, n
                assert len(recommended) == 5, n
