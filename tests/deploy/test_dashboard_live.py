"""The dashboard against the real thing: `lrurec serve` (2 workers, real redis-server) under a
short load, scraped every second by a real Prometheus (Debian's `prometheus` binary) running
deploy/prometheus's config and alert rules. Every dashboard query must evaluate and return data.
"""

import math
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import torch

from cli.embedded_redis import EmbeddedRedis
from model import LRURec, LRURecConfig, save_artifact
from tests.deploy.live import (
    SCRAPE_SECONDS,
    Load,
    free_port,
    prometheus_config,
    running,
    scraped_after,
)
from tests.deploy.promql import alert_rules, load_dashboard, queries, substitute, variable_values

pytestmark = [pytest.mark.slow, pytest.mark.redis]

LOAD_SECONDS = 5.0
ITEMS = [f"item-{i}" for i in range(1, 41)]
# Grafana: $__rate_interval = max($__interval + scrape interval, 4 x scrape interval); with 1 s
# steps and 1 s scrapes that is 4 s.
RATE_INTERVAL = f"{max(1 + SCRAPE_SECONDS, 4 * SCRAPE_SECONDS)}s"
INGEST_PANELS = "Ingest"
OWN_ROUTES = 'route!~"/metrics|/readyz|/healthz"'  # requests the load generator did not send


@dataclass
class Stack:
    prometheus: httpx.Client
    target: str
    load: Load
    load_start: float
    load_end: float
    settled: float
    """When queries are evaluated: a whole scrape interval after a scrape that followed the load,
    so even an observation recorded just after its response was sent has been scraped."""

    def query(self, expr: str) -> list[dict[str, Any]]:
        """Instant query; raises on any Prometheus error."""
        params = {"query": expr, "time": str(self.settled)}
        body = self.prometheus.get("/api/v1/query", params=params).json()
        assert body["status"] == "success", f"{expr}: {body}"
        result: list[dict[str, Any]] = body["data"]["result"]
        return result

    def query_range(self, expr: str) -> list[dict[str, Any]]:
        """Range query over the load, 1 s steps, as a Grafana time series panel asks for it."""
        params = {
            "query": expr, "start": str(self.load_start), "step": "1",
            "end": str(self.settled),
        }  # fmt: skip
        body = self.prometheus.get("/api/v1/query_range", params=params).json()
        assert body["status"] == "success", f"{expr}: {body}"
        result: list[dict[str, Any]] = body["data"]["result"]
        return result


def build_artifact(directory: Path) -> Path:
    torch.manual_seed(0)
    model = LRURec(LRURecConfig(n_items=len(ITEMS), d_model=16, n_layers=2, max_len=32)).eval()
    popularity = torch.arange(len(ITEMS) + 1, dtype=torch.float32)
    save_artifact(directory, model, ITEMS, popularity, {"source": "tests/deploy"})
    return directory


@pytest.fixture(scope="module")
def stack(tool: Callable[[str], Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    prometheus_bin, lrurec_bin = tool("prometheus"), tool("lrurec")
    tmp = tmp_path_factory.mktemp("live")
    artifact = build_artifact(tmp / "artifact")
    env = {k: v for k, v in os.environ.items() if not k.startswith("LRUREC_")}
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)  # `lrurec serve` sets it for its workers
    env["LRUREC_METRICS_DIR"] = str(tmp / "multiproc")
    port, prometheus_port = free_port(), free_port()
    serve = [
        str(lrurec_bin), "serve", "--host", "127.0.0.1", "--port", str(port), "--workers", "2",
        "--artifact", str(artifact),
    ]  # fmt: skip
    prometheus = [
        str(prometheus_bin), f"--config.file={prometheus_config(f'127.0.0.1:{port}', tmp)}",
        f"--storage.tsdb.path={tmp / 'tsdb'}", f"--web.listen-address=127.0.0.1:{prometheus_port}",
        "--log.level=warn",
    ]  # fmt: skip
    with (
        EmbeddedRedis() as redis,
        running([*serve, "--redis-url", redis.url], tmp / "service.log", env) as server,
        httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as service,
        running(prometheus, tmp / "prometheus.log") as scraper,
        httpx.Client(base_url=f"http://127.0.0.1:{prometheus_port}", timeout=10) as api,
    ):
        # Generous: two workers import torch on a machine that may be busy with training.
        server.wait_until(lambda: service.get("/readyz").status_code == 200, 240, "/readyz 200")
        first_scrape = "a first scrape of the service"
        scraper.wait_until(lambda: scraped_after(api, "lrurec_ready", 0), 60, first_scrape)
        load = Load(service, ITEMS)
        start = time.time()
        load.run(LOAD_SECONDS)
        end = time.time()
        # The last scrape (and rule evaluation) must see the whole load.
        after_load = "a scrape after the load"
        scraper.wait_until(lambda: scraped_after(api, "lrurec_ready", end), 15, after_load)
        time.sleep(SCRAPE_SECONDS)
        yield Stack(api, f"127.0.0.1:{port}", load, start, end, time.time())


def values(result: list[dict[str, Any]]) -> list[float]:
    """Every sample value of an instant (``value``) or range (``values``) result."""
    samples = [s["value"] for s in result if "value" in s]
    samples += [v for s in result for v in s.get("values", [])]
    return [float(value) for _, value in samples]


def test_every_dashboard_query_evaluates_and_returns_data(stack: Stack) -> None:
    dashboard = load_dashboard()
    variables = {**variable_values(dashboard), "__rate_interval": RATE_INTERVAL}
    problems = []
    for query in queries(dashboard):
        if query.panel.startswith(INGEST_PANELS):
            continue  # `lrurec consume` exports these: tests/deploy/test_ingest_dashboard_live.py
        expr = substitute(query.expr, variables)
        result = stack.query(expr) if query.instant else stack.query_range(expr)
        finite = [v for v in values(result) if math.isfinite(v)]
        if not finite:
            problems.append(f"{query.panel} [{query.ref_id}]: no finite data from {expr}")
    assert not problems, "\n".join(problems)
    assert len(queries(dashboard)) >= 20


def test_instance_variable_lists_the_scraped_service(stack: Stack) -> None:
    params = {"match[]": "lrurec_ready"}
    body = stack.prometheus.get("/api/v1/label/instance/values", params=params).json()
    assert body["data"] == [stack.target]


def test_counters_aggregate_both_workers_exactly(stack: Stack) -> None:
    # Two uvicorn workers served the load; /metrics must add up every worker's files.
    outcomes = stack.query("sum by (outcome) (lrurec_events_total)")
    counted = {s["metric"]["outcome"]: round(float(s["value"][1])) for s in outcomes}
    for outcome in ("applied", "duplicate", "unknown_item", "rejected"):
        assert stack.load.outcomes[outcome] > 0, outcome
        assert counted[outcome] == stack.load.outcomes[outcome], outcome
    (requests,) = stack.query(f"sum(lrurec_http_request_duration_seconds_count{{{OWN_ROUTES}}})")
    assert round(float(requests["value"][1])) == sum(stack.load.statuses.values())
    (client_errors,) = stack.query(
        f'sum(lrurec_http_request_duration_seconds_count{{{OWN_ROUTES}, status="4xx"}})'
    )
    sent_4xx = sum(n for status, n in stack.load.statuses.items() if 400 <= status < 500)
    assert round(float(client_errors["value"][1])) == sent_4xx > 0
    assert 500 not in stack.load.statuses


def test_gauges_are_one_series_per_instance(stack: Stack) -> None:
    (ready,) = stack.query("lrurec_ready")
    assert float(ready["value"][1]) == 1
    (items,) = stack.query("lrurec_model_items")
    assert float(items["value"][1]) == len(ITEMS)
    (info,) = stack.query("lrurec_model_info")
    assert info["metric"]["model_type"] == "lrurec"
    assert info["metric"]["backend"] in {"numba", "onnx", "torch"}


def test_alert_rules_evaluate_cleanly_and_stay_quiet(stack: Stack) -> None:
    groups = stack.prometheus.get("/api/v1/rules").json()["data"]["groups"]
    rules = {rule["name"]: rule for group in groups for rule in group["rules"]}
    assert set(rules) == {rule["alert"] for rule in alert_rules()}
    for name, rule in rules.items():
        assert rule["health"] == "ok", f"{name}: {rule.get('lastError')}"
    for quiet in ("LRURecDown", "LRURecNotReady", "LRURecHighErrorRate", "LRURecRedisUnavailable"):
        assert rules[quiet]["state"] == "inactive", quiet


def test_returning_data_is_a_real_check(stack: Stack) -> None:
    # The same query shapes over a metric the service does not export come back empty.
    assert stack.query_range(f"sum(rate(lrurec_no_such_metric_total[{RATE_INTERVAL}]))") == []
    assert stack.query("max(lrurec_no_such_gauge)") == []
