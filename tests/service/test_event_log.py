"""The event log on a real Redis (single node and cluster): every acknowledged event is in its
user's shard, duplicates and unknown items included; a failed append is a 503 whose retry is
logged; the log can be turned off."""

import pytest
from fastapi.testclient import TestClient

from service.store.event_log import log_key
from service.store.streams import shard_of
from tests.conftest import RedisTarget
from tests.service.conftest import ClientFactory
from tests.service.ingest import SyncRedis

pytestmark = pytest.mark.redis_topologies


def logged(client: SyncRedis, user: str) -> list[dict[str, str]]:
    raw = client.xrange(log_key("lrurec", shard_of(user, 16)))
    entries = [{k.decode(): v.decode() for k, v in fields.items()} for _, fields in raw]  # type: ignore[union-attr]
    return [entry for entry in entries if entry["user_id"] == user]


def test_every_acknowledged_event_is_logged_with_its_fields(
    client: TestClient, redis_client: SyncRedis, redis_target: RedisTarget
) -> None:
    events = [
        {"user_id": "u1", "item_id": "item-2", "event_id": "e1", "timestamp": 1700000000.5},
        {"user_id": "u1", "item_id": "item-2", "event_id": "e1", "timestamp": 1700000000.5},
        {"user_id": "u1", "item_id": "brand-new", "event_id": "e2"},  # unknown to the model
        {"user_id": "u2", "item_id": "item-3"},  # no event id
    ]
    answers = [client.post("/events", json=event, params={"k": 0}).json() for event in events]
    assert [answer.get("reason") for answer in answers] == [None, "duplicate", "unknown_item", None]
    first = logged(redis_client, "u1")
    assert [(e["item_id"], e["event_id"]) for e in first] == [
        ("item-2", "e1"), ("item-2", "e1"), ("brand-new", "e2"),
    ]  # fmt: skip
    assert first[0]["timestamp"] == "1700000000.5"
    assert first[0]["model_version"] == answers[0]["model_version"]
    [second] = logged(redis_client, "u2")
    assert second["event_id"] == ""
    assert float(second["timestamp"]) > 1700000000  # the server's clock when none was sent


def test_an_event_whose_append_failed_is_a_503_and_its_retry_is_logged(
    client: TestClient, redis_client: SyncRedis
) -> None:
    key = log_key("lrurec", shard_of("u1", 16))
    redis_client.set(key, "not a stream")  # XADD now fails (WRONGTYPE)
    event = {"user_id": "u1", "item_id": "item-4", "event_id": "e9"}
    refused = client.post("/events", json=event)
    assert refused.status_code == 503, refused.text
    assert refused.headers["Retry-After"] == "1"
    redis_client.delete(key)
    retried = client.post("/events", json=event).json()
    assert (retried["applied"], retried["reason"]) == (False, "duplicate")  # state written once
    assert [entry["event_id"] for entry in logged(redis_client, "u1")] == ["e9"]


def test_the_log_can_be_turned_off(make_client: ClientFactory, redis_client: SyncRedis) -> None:
    with make_client(log_maxlen=0) as client:
        assert (
            client.post("/events", json={"user_id": "u1", "item_id": "item-1"}).status_code == 200
        )
    assert logged(redis_client, "u1") == []
