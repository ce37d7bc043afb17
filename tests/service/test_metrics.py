"""``/metrics`` exposes every name of the contract in docs/operator.md (Metrics), and the
counters move."""

import re

import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from service import telemetry

CONTRACT = {
    "lrurec_http_request_duration_seconds": "histogram",
    "lrurec_model_step_seconds": "histogram",
    "lrurec_score_seconds": "histogram",
    "lrurec_model_step_score_seconds": "histogram",
    "lrurec_redis_seconds": "histogram",
    "lrurec_batch_size": "histogram",
    "lrurec_events_total": "counter",
    "lrurec_cas_retries_total": "counter",
    "lrurec_state_cache_events_total": "counter",
    "lrurec_cold_starts_total": "counter",
    "lrurec_state_rebuilds_total": "counter",
    "lrurec_errors_total": "counter",
    "lrurec_quantized_rows_total": "counter",
    "lrurec_model_info": "gauge",
    "lrurec_model_items": "gauge",
    "lrurec_ready": "gauge",
}


def scrape(client: TestClient) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of ``/metrics`` keyed by (sample name, sorted labels)."""
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    samples = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(
    samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str
) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def test_every_contract_name_is_exposed_with_its_type(client: TestClient) -> None:
    text = client.get("/metrics").text
    families = {family.name: family.type for family in text_string_to_metric_families(text)}
    for name, kind in CONTRACT.items():
        family = name.removesuffix("_total") if kind == "counter" else name
        assert families.get(family) == kind, name
    buckets = re.findall(r'lrurec_model_step_seconds_bucket\{le="([^"]+)"\}', text)
    assert [float(b) for b in buckets[:-1]] == list(telemetry.LATENCY_BUCKETS)


def test_counters_and_histograms_move_with_traffic(client: TestClient) -> None:
    before = scrape(client)
    client.post("/events", json={"user_id": "m1", "item_id": "item-1", "event_id": "x"})
    client.post("/events", json={"user_id": "m1", "item_id": "item-1", "event_id": "x"})
    client.post("/events", json={"user_id": "m1", "item_id": "nope"})
    client.post("/events", json={"user_id": "m1"})
    client.get("/recommendations/somebody-new")
    client.post("/events/batch", json={"events": [{"user_id": "m2", "item_id": "item-2"}] * 3})
    after = scrape(client)

    def delta(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert delta("lrurec_events_total", outcome="applied") == 4
    assert delta("lrurec_events_total", outcome="duplicate") == 1
    assert delta("lrurec_events_total", outcome="unknown_item") == 1
    assert delta("lrurec_events_total", outcome="rejected") == 1
    assert delta("lrurec_errors_total", kind="validation") == 1
    assert delta("lrurec_cold_starts_total") >= 1
    # 4 applied events, plus the duplicate's step: from the worker's copy of m1 the duplicate
    # is only found by the write, which refuses it (service.engine.state_cache). Single events with
    # k > 0 step and rank in one fused call; the batch's k = 0 events only step.
    assert delta("lrurec_model_step_score_seconds_count") == 2
    assert delta("lrurec_model_step_seconds_count") == 3
    # Ranked apart: the unknown item's stored state, the duplicate's and the new user's.
    assert delta("lrurec_score_seconds_count") == 3
    assert delta("lrurec_batch_size_count") == 1
    assert delta("lrurec_batch_size_sum") == 3
    # Reads: m1's first event, the duplicate (this worker's copy may predate it), the GET and
    # m2's first event; the other events start from the worker's copy (service.engine.state_cache).
    assert delta("lrurec_redis_seconds_count", operation="load") >= 4
    assert delta("lrurec_redis_seconds_count", operation="apply") >= 5
    route = {"route": "/recommendations/{user_id}", "method": "GET", "status": "2xx"}
    assert delta("lrurec_http_request_duration_seconds_count", **route) == 1
    bad = {"route": "/events", "method": "POST", "status": "4xx"}
    assert delta("lrurec_http_request_duration_seconds_count", **bad) == 1


def test_model_gauges_describe_the_loaded_artifact(client: TestClient) -> None:
    samples = scrape(client)
    version = client.get("/readyz").json()["model_version"]
    info = {"model_version": version, "model_type": "lrurec", "backend": "numba"}  # auto
    assert value(samples, "lrurec_model_info", **info) == 1
    assert value(samples, "lrurec_model_items") == 50
    assert value(samples, "lrurec_ready") == 1


@pytest.mark.parametrize("path", ["/users/someone-{n}", "/recommendations/someone-{n}"])
def test_routes_are_labelled_by_template_not_by_user(client: TestClient, path: str) -> None:
    for n in range(3):
        client.get(path.format(n=n))
    text = client.get("/metrics").text
    assert "someone-" not in text


def test_documentation_routes_are_labelled_by_their_path(client: TestClient) -> None:
    # FastAPI records only its own routes in the scope; /docs and /openapi.json are plain
    # Starlette routes, found by their endpoint.
    before = scrape(client)
    assert client.get("/docs").status_code == 200
    assert client.get("/openapi.json").status_code == 200
    assert client.get("/no-such-page").status_code == 404
    after = scrape(client)

    def delta(route: str, status: str) -> float:
        labels = {"route": route, "method": "GET", "status": status}
        name = "lrurec_http_request_duration_seconds_count"
        return value(after, name, **labels) - value(before, name, **labels)

    assert delta("/docs", "2xx") == 1
    assert delta("/openapi.json", "2xx") == 1
    assert delta("<unmatched>", "2xx") == 0
    assert delta("<unmatched>", "4xx") == 1


def test_unknown_methods_are_counted_as_other(client: TestClient) -> None:
    before = scrape(client)
    for method in ("BREW", "WHEN"):  # any token is a method to some HTTP parsers
        assert client.request(method, "/healthz").status_code == 405
    after = scrape(client)
    labels = {"route": "/healthz", "method": "OTHER", "status": "4xx"}
    name = "lrurec_http_request_duration_seconds_count"
    assert value(after, name, **labels) - value(before, name, **labels) == 2
    assert not any(dict(key[1]).get("method") in ("BREW", "WHEN") for key in after)
