"""``POST /events`` answered ahead of the FastAPI stack (service.fast_events, service.outcome) and
the buffered histograms (service.telemetry): same documents, same errors, same metrics."""

import math
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient
from prometheus_client import CollectorRegistry, Histogram

from service import telemetry
from service.outcome import Applied
from tests.service.conftest import ClientFactory


def http_count(route: str, method: str, status: str) -> float:
    telemetry.flush_buffers()
    child = telemetry.HTTP_DURATION.labels(route, method, status)
    return float(sum(bucket.get() for bucket in child._buckets))


@pytest.mark.parametrize(
    "applied",
    [
        Applied("u", None, 3, "v1", [("item-1", 0.5), ("item-2", -1.25e-3)]),
        Applied("u", "duplicate", 3, "v1", [("a", 1.0)]),
        Applied("u", "unknown_item", 0, "v1", None),
        Applied("ü\u2603", None, 1, "v2", []),
    ],
)
def test_outcome_json_is_the_event_result_document(applied: Applied) -> None:
    assert applied.json() == applied.result().model_dump_json(exclude_none=True).encode()


def test_each_fast_request_is_timed_once_under_the_route_template(client: TestClient) -> None:
    before_ok = http_count("/events", "POST", "2xx")
    before_bad = http_count("/events", "POST", "4xx")
    for n in range(3):
        response = client.post("/events", json={"user_id": "f1", "item_id": f"item-{n + 1}"})
        assert response.status_code == 200
    assert client.post("/events", json={"user_id": "f1"}).status_code == 422
    assert http_count("/events", "POST", "2xx") - before_ok == 3
    assert http_count("/events", "POST", "4xx") - before_bad == 1


@pytest.mark.parametrize("query", ["k=ten", "k=1001", "exclude_seen=maybe"])
def test_a_bad_query_is_422_every_time(client: TestClient, query: str) -> None:
    """Parsed queries are remembered: the second request must still be refused."""
    for _ in range(2):
        response = client.post(f"/events?{query}", json={"user_id": "f2", "item_id": "item-1"})
        assert response.status_code == 422
        assert response.json()["message"].startswith("query.")


def test_query_parameters_reach_the_engine(client: TestClient) -> None:
    event = {"user_id": "f3", "item_id": "item-1"}
    assert "recommendations" not in client.post("/events?k=0", json=event).json()
    seen = client.post("/events?k=200&exclude_seen=false", json=event).json()
    assert "item-1" in [item["item_id"] for item in seen["recommendations"]]
    masked = client.post("/events?k=200&exclude_seen=true", json=event).json()
    assert "item-1" not in [item["item_id"] for item in masked["recommendations"]]


def test_the_api_key_is_checked_on_the_fast_path(make_client: ClientFactory) -> None:
    event = {"user_id": "f4", "item_id": "item-1"}
    with make_client(api_key="s3cret") as client:
        assert client.post("/events", json=event, headers={"X-API-Key": "s3cre"}).status_code == 401
        right = client.post("/events", json=event, headers={"X-API-Key": "s3cret"})
        assert right.status_code == 200
        assert right.json()["events_applied"] == 1


def test_a_body_without_content_length_is_served_by_the_full_app(client: TestClient) -> None:
    def chunks() -> Iterator[bytes]:
        yield b'{"user_id": "f5", '
        yield b'"item_id": "item-2"}'

    response = client.post(
        "/events", content=chunks(), headers={"Content-Type": "application/json"}
    )
    assert response.status_code == 200
    assert response.json()["events_applied"] == 1


def test_buffered_histogram_matches_prometheus_observe() -> None:
    registry = CollectorRegistry()
    direct = Histogram("direct", "d", buckets=telemetry.LATENCY_BUCKETS, registry=registry)
    buffered_target = Histogram("buf", "b", buckets=telemetry.LATENCY_BUCKETS, registry=registry)
    buffered = telemetry.BufferedHistogram(buffered_target)
    # Values on, between and beyond the bucket bounds.
    values = [0.0, 0.00025, 0.0003, 0.001, 0.0099, 0.01, 0.7, 2.5, 3.0, 100.0] * 30
    for value in values:
        direct.observe(value)
        buffered.observe(value)
    buffered.flush()
    assert [b.get() for b in buffered_target._buckets] == [b.get() for b in direct._buckets]
    assert math.isclose(buffered_target._sum.get(), direct._sum.get())
