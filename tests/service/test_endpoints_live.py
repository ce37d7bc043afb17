"""Every HTTP endpoint once, through a real ``lrurec serve`` process on a real port.

One server for the module: the tiny artifact, its own embedded redis-server, an API key (so the
401 path is real) and a small body limit (so a 413 needs only a few KiB). Each test uses its own
user ids; the metrics test compares counters before and after its own requests.
"""

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import TINY_ITEM_IDS
from tests.service.conftest import Server, lrurec_serve

pytestmark = pytest.mark.slow  # the server's start-up; the tests themselves take milliseconds

API_KEY = "live-s3cret"
KEY = {"X-API-Key": API_KEY}
MAX_BODY_BYTES = 4096
ROUTES = {
    "/events": {"post"},
    "/events/batch": {"post"},
    "/recommendations/{user_id}": {"get"},
    "/users/{user_id}": {"get", "delete"},
    "/healthz": {"get"},
    "/readyz": {"get"},
    "/metrics": {"get"},
}


@pytest.fixture(scope="module")
def server(tiny_artifact: Path) -> Iterator[Server]:
    environment = {"LRUREC_API_KEY": API_KEY, "LRUREC_MAX_BODY_BYTES": str(MAX_BODY_BYTES)}
    with lrurec_serve("--artifact", str(tiny_artifact), environment=environment) as running:
        yield running


@pytest.fixture(scope="module")
def http(server: Server) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.base_url, timeout=10.0) as client:
        yield client


@pytest.fixture(scope="module")
def model_version(tiny_artifact: Path) -> str:
    version: str = json.loads((tiny_artifact / "config.json").read_text())["model_version"]
    return version


def post_event(http: httpx.Client, user: str, item: str, **fields: Any) -> dict[str, Any]:
    event = {"user_id": user, "item_id": item, **fields}
    response = http.post("/events", json=event, params={"k": 5}, headers=KEY)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def user_info(http: httpx.Client, user: str) -> dict[str, Any]:
    response = http.get(f"/users/{quote(user, safe='')}", headers=KEY)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def scrape(http: httpx.Client) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every sample of ``/metrics`` by (name, labels)."""
    response = http.get("/metrics")
    assert response.status_code == 200
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }


def value(
    samples: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str
) -> float:
    key = (name, frozenset(labels.items()))
    assert key in samples, f"{name}{labels} missing from /metrics"
    return samples[key]


def assert_unauthorized(response: httpx.Response) -> None:
    assert response.status_code == 401, response.text
    assert response.json()["error"] == "unauthorized"


def test_healthz_is_ok(http: httpx.Client) -> None:
    response = http.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


def test_readyz_names_the_served_model(http: httpx.Client, model_version: str) -> None:
    response = http.get("/readyz")
    assert response.status_code == 200
    assert response.json() == {"status": "ready", "model_version": model_version, "redis": True}


def test_post_event_advances_the_user_and_returns_the_fresh_top_k(
    http: httpx.Client, model_version: str
) -> None:
    first = post_event(http, "live-event", "item-7")
    assert first["applied"] is True
    assert first["events_applied"] == 1
    assert first["model_version"] == model_version
    assert "reason" not in first  # excluded when None
    second = post_event(http, "live-event", "item-3")
    assert second["events_applied"] == 2
    items = [entry["item_id"] for entry in second["recommendations"]]
    assert len(items) == 5
    assert set(items) <= set(TINY_ITEM_IDS) - {"item-7", "item-3"}  # seen items are left out
    scores = [entry["score"] for entry in second["recommendations"]]
    assert scores == sorted(scores, reverse=True)
    assert first["recommendations"] != second["recommendations"]  # the state moved

    unscored = http.post(
        "/events", json={"user_id": "live-event", "item_id": "item-9"}, params={"k": 0}, headers=KEY
    )
    assert unscored.status_code == 200
    assert "recommendations" not in unscored.json()
    assert user_info(http, "live-event")["recent_items"] == ["item-7", "item-3", "item-9"]


def test_an_event_id_is_applied_once(http: httpx.Client) -> None:
    first = post_event(http, "live-dedup", "item-1", event_id="once")
    again = post_event(http, "live-dedup", "item-2", event_id="once")
    assert first["applied"] is True
    assert again["applied"] is False
    assert again["reason"] == "duplicate"
    assert again["events_applied"] == 1
    info = user_info(http, "live-dedup")
    assert info["events_applied"] == 1
    assert info["recent_items"] == ["item-1"]


def test_write_routes_need_the_api_key(http: httpx.Client) -> None:
    event = {"user_id": "live-nokey", "item_id": "item-1"}
    assert_unauthorized(http.post("/events", json=event))
    assert_unauthorized(http.post("/events", json=event, headers={"X-API-Key": "wrong"}))
    assert_unauthorized(http.post("/events/batch", json={"events": [event]}))
    assert_unauthorized(http.get("/users/live-nokey"))
    assert_unauthorized(http.delete("/users/live-nokey"))
    # Nothing of the refused writes was applied.
    assert http.get("/users/live-nokey", headers=KEY).status_code == 404
    # Reads and operations stay open.
    assert http.get("/recommendations/live-nokey").status_code == 200
    assert http.get("/metrics").status_code == 200


def test_post_events_batch_applies_in_order_with_one_result_per_event(
    http: httpx.Client, model_version: str
) -> None:
    events = [
        {"user_id": "live-batch-a", "item_id": "item-1", "event_id": "a1"},
        {"user_id": "live-batch-b", "item_id": "item-2"},
        {"user_id": "live-batch-a", "item_id": "item-4"},
        {"user_id": "live-batch-a", "item_id": "item-5", "event_id": "a1"},  # duplicate
        {"user_id": "live-batch-b", "item_id": "not-in-the-catalogue"},
    ]
    response = http.post("/events/batch", json={"events": events}, params={"k": 2}, headers=KEY)
    assert response.status_code == 200, response.text
    results = response.json()["results"]
    assert [r["user_id"] for r in results] == [e["user_id"] for e in events]
    assert [r["applied"] for r in results] == [True, True, True, False, False]
    assert [r.get("reason") for r in results] == [None, None, None, "duplicate", "unknown_item"]
    assert [r["events_applied"] for r in results[:3]] == [1, 1, 2]
    assert all(r["model_version"] == model_version for r in results)
    assert all(len(r["recommendations"]) == 2 for r in results[:3])
    assert user_info(http, "live-batch-a")["recent_items"] == ["item-1", "item-4"]
    b = user_info(http, "live-batch-b")
    assert (b["events_applied"], b["events_received"]) == (1, 2)  # unknown items are kept


def test_get_recommendations_is_cold_start_then_the_model(
    http: httpx.Client, model_version: str
) -> None:
    cold = http.get("/recommendations/live-recs", params={"k": 4})
    assert cold.status_code == 200
    body = cold.json()
    assert body["user_id"] == "live-recs"
    assert body["model_version"] == model_version
    assert body["source"] == "cold_start"
    assert len(body["items"]) == 4

    post_event(http, "live-recs", "item-11")
    warm = http.get("/recommendations/live-recs", params={"k": 4}).json()
    assert warm["source"] == "model"
    assert len(warm["items"]) == 4
    assert "item-11" not in {entry["item_id"] for entry in warm["items"]}
    assert warm["items"] != body["items"]
    default = http.get("/recommendations/live-recs").json()
    assert len(default["items"]) == 10  # the default k
    everything = http.get(
        "/recommendations/live-recs", params={"k": len(TINY_ITEM_IDS), "exclude_seen": "false"}
    ).json()
    assert "item-11" in {entry["item_id"] for entry in everything["items"]}


def test_get_user_reports_counts_recent_items_and_version(
    http: httpx.Client, model_version: str
) -> None:
    missing = http.get("/users/live-info", headers=KEY)
    assert missing.status_code == 404
    assert missing.json()["error"] == "not_found"
    before = time.time()
    post_event(http, "live-info", "item-20")
    post_event(http, "live-info", "item-21")
    info = user_info(http, "live-info")
    assert info["user_id"] == "live-info"
    assert (info["events_applied"], info["events_received"]) == (2, 2)
    assert info["recent_items"] == ["item-20", "item-21"]
    assert info["model_version"] == model_version
    assert before - 1 <= info["updated_at"] <= time.time() + 1


@pytest.mark.parametrize("user_id", ["team/alice", "a/b/c/"])
def test_a_user_id_with_slashes_round_trips_through_get_and_delete_users(
    http: httpx.Client, user_id: str
) -> None:
    post_event(http, user_id, "item-1")
    for path in (quote(user_id, safe=""), user_id):  # %2F-escaped, and as plain slashes
        info = http.get(f"/users/{path}", headers=KEY)
        assert info.status_code == 200, (path, info.text)
        assert info.json()["user_id"] == user_id
        recommended = http.get(f"/recommendations/{path}").json()
        assert (recommended["user_id"], recommended["source"]) == (user_id, "model")
    deleted = http.delete(f"/users/{quote(user_id, safe='')}", headers=KEY)
    assert deleted.status_code == 200
    assert deleted.json() == {"user_id": user_id, "deleted": True}
    assert http.get(f"/users/{quote(user_id, safe='')}", headers=KEY).status_code == 404


def test_delete_user_forgets_state_history_and_event_ids(http: httpx.Client) -> None:
    post_event(http, "live-delete", "item-30", event_id="d1")
    deleted = http.delete("/users/live-delete", headers=KEY)
    assert deleted.status_code == 200
    assert deleted.json() == {"user_id": "live-delete", "deleted": True}
    assert http.get("/users/live-delete", headers=KEY).status_code == 404
    assert http.get("/recommendations/live-delete").json()["source"] == "cold_start"
    again = http.delete("/users/live-delete", headers=KEY)
    assert again.json() == {"user_id": "live-delete", "deleted": False}
    assert post_event(http, "live-delete", "item-30", event_id="d1")["applied"] is True


def test_a_bad_body_or_query_is_a_422_naming_the_field(http: httpx.Client) -> None:
    missing = http.post("/events", json={"user_id": "live-422"}, headers=KEY)
    assert missing.status_code == 422
    body = missing.json()
    assert body["error"] == "validation"
    assert body["message"].startswith("body.item_id:"), body["message"]
    assert [entry["loc"] for entry in body["detail"]] == [["body", "item_id"]]

    bad_k = http.post(
        "/events", json={"user_id": "live-422", "item_id": "item-1"}, params={"k": -1}, headers=KEY
    )
    assert bad_k.status_code == 422
    assert bad_k.json()["message"].startswith("query.k:")
    empty = http.post("/events/batch", json={"events": []}, headers=KEY)
    assert empty.status_code == 422
    assert empty.json()["message"].startswith("body.events:")
    assert http.get("/users/live-422", headers=KEY).status_code == 404  # nothing applied


def test_an_oversized_body_is_a_413_declared_or_streamed(http: httpx.Client) -> None:
    event = {"user_id": "live-413", "item_id": "item-1"}
    padding = [dict(event, event_id=f"padding-{n:04d}") for n in range(MAX_BODY_BYTES // 40)]
    payload = json.dumps({"events": padding}).encode()
    assert len(payload) > MAX_BODY_BYTES
    declared = http.post(
        "/events/batch", content=payload, headers={**KEY, "Content-Type": "application/json"}
    )
    assert declared.status_code == 413
    assert declared.json()["error"] == "body_too_large"

    def chunks() -> Iterator[bytes]:  # no Content-Length: sent chunked
        for start in range(0, len(payload), 1024):
            yield payload[start : start + 1024]

    streamed = http.post(
        "/events/batch", content=chunks(), headers={**KEY, "Content-Type": "application/json"}
    )
    assert "content-length" not in streamed.request.headers
    assert streamed.status_code == 413
    assert streamed.json()["error"] == "body_too_large"
    assert http.get("/users/live-413", headers=KEY).status_code == 404  # nothing applied


def test_metrics_count_outcomes_errors_and_requests(http: httpx.Client, model_version: str) -> None:
    before = scrape(http)
    post_event(http, "live-metrics", "item-1", event_id="m1")
    post_event(http, "live-metrics", "item-2")
    post_event(http, "live-metrics", "item-3", event_id="m1")  # duplicate
    assert http.post("/events", json={"user_id": "live-metrics"}, headers=KEY).status_code == 422
    assert http.post("/events", json={"user_id": "x", "item_id": "item-1"}).status_code == 401
    after = scrape(http)

    def increase(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert increase("lrurec_events_total", outcome="applied") == 2
    assert increase("lrurec_events_total", outcome="duplicate") == 1
    assert increase("lrurec_events_total", outcome="rejected") == 1
    assert increase("lrurec_errors_total", kind="validation") == 1
    assert increase("lrurec_errors_total", kind="unauthorized") == 1
    events_route = {"route": "/events", "method": "POST"}
    assert increase("lrurec_http_request_duration_seconds_count", **events_route, status="2xx") == 3
    assert increase("lrurec_http_request_duration_seconds_count", **events_route, status="4xx") == 2
    assert value(after, "lrurec_ready") == 1
    assert value(after, "lrurec_model_items") == len(TINY_ITEM_IDS)
    info = [labels for name, labels in after if name == "lrurec_model_info"]
    assert [dict(labels)["model_version"] for labels in info] == [model_version]

    openmetrics = http.get("/metrics", headers={"Accept": "application/openmetrics-text"})
    assert openmetrics.headers["content-type"].startswith("application/openmetrics-text")
    assert openmetrics.text.rstrip().endswith("# EOF")


def test_openapi_json_documents_every_route(http: httpx.Client) -> None:
    response = http.get("/openapi.json")
    assert response.status_code == 200
    document = response.json()
    assert document["openapi"].startswith("3.")
    assert document["info"]["title"] == "LRURec service"
    documented = {path: set(methods) for path, methods in document["paths"].items()}
    assert documented == ROUTES
    event_schema = document["components"]["schemas"]["Event"]
    assert set(event_schema["required"]) == {"user_id", "item_id"}


@pytest.mark.parametrize(
    ("path", "marker"),
    [("/docs", "swagger-ui"), ("/redoc", "redoc"), ("/docs/oauth2-redirect", "oauth2")],
)
def test_interactive_docs_are_served(http: httpx.Client, path: str, marker: str) -> None:
    response = http.get(path)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    assert marker in response.text.lower()
    if path != "/docs/oauth2-redirect":
        assert "/openapi.json" in response.text


def test_an_unknown_route_is_a_json_404(http: httpx.Client) -> None:
    response = http.get("/no-such-route")
    assert response.status_code == 404
    assert response.json()["error"] == "not_found"
