"""deploy/grafana/dashboards/lrurec.json: well formed, every panel queries the provisioned
Prometheus with valid PromQL over metrics the service really exports, and covers all of them.
"""

import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.deploy.promql import (
    exported_families,
    exported_names,
    load_dashboard,
    metric_names,
    queries,
    query_panels,
    substitute,
    variable_values,
)

# What a panel must show (the issue's list) -> a metric family one of its queries must use.
REQUIRED = {
    "latency": "lrurec_http_request_duration_seconds",
    "events": "lrurec_events",
    "cas": "lrurec_cas_retries",
    "cold": "lrurec_cold_starts",
    "rebuild": "lrurec_state_rebuilds",
    "step": "lrurec_model_step_seconds",
    "redis": "lrurec_redis_seconds",
    "version": "lrurec_model_info",
    "ready": "lrurec_ready",
}


@pytest.fixture(scope="module")
def dashboard() -> dict[str, Any]:
    return load_dashboard()


def static_variables(dashboard: dict[str, Any]) -> dict[str, str]:
    """Grafana's variables as it would substitute them for a 15 s scrape interval."""
    return {**variable_values(dashboard), "__rate_interval": "1m", "__interval": "15s"}


def test_metric_name_extraction_on_known_expressions() -> None:
    expr = (
        'histogram_quantile(0.9, sum by (le, route) (rate(a_bucket{route="/x{y}", le!="1"}[5m])))'
        " / on (instance) group_left (v) b offset 5m > bool 1e-9 or vector(0) unless c:rec"
    )
    assert metric_names(expr) == {"a_bucket", "b", "c:rec"}
    assert metric_names("sum(rate(x_total[$__rate_interval]))") == {"x_total"}


def test_dashboard_is_a_provisionable_grafana_dashboard(dashboard: dict[str, Any]) -> None:
    assert dashboard["uid"] == "lrurec-service"
    assert dashboard["title"]
    assert isinstance(dashboard["schemaVersion"], int)
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids)), "panel ids are unique"
    for panel in dashboard["panels"]:
        grid = panel["gridPos"]
        assert grid["x"] >= 0, panel["title"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]


def test_panels_do_not_overlap(dashboard: dict[str, Any]) -> None:
    cells: dict[tuple[int, int], str] = {}
    for panel in dashboard["panels"]:
        grid = panel["gridPos"]
        for x in range(grid["x"], grid["x"] + grid["w"]):
            for y in range(grid["y"], grid["y"] + grid["h"]):
                assert (x, y) not in cells, f"{panel['title']} overlaps {cells[(x, y)]}"
                cells[(x, y)] = panel["title"]


def test_every_panel_has_the_provisioned_datasource_and_a_query(
    dashboard: dict[str, Any], repo: Path
) -> None:
    provisioned = yaml.safe_load(
        (repo / "deploy/grafana/provisioning/datasources/prometheus.yml").read_text("utf-8")
    )["datasources"][0]
    expected = {"type": provisioned["type"], "uid": provisioned["uid"]}
    panels = query_panels(dashboard)
    assert len(panels) >= 10
    for panel in panels:
        assert panel["datasource"] == expected, panel["title"]
        assert panel["targets"], f"{panel['title']} has no query"
        for target in panel["targets"]:
            assert target["datasource"] == expected, panel["title"]
            assert target["expr"].strip(), panel["title"]
            assert panel.get("description"), f"{panel['title']} says what it means"


def test_queries_use_only_metrics_the_service_exports(dashboard: dict[str, Any]) -> None:
    allowed = exported_names()
    for query in queries(dashboard):
        names = metric_names(substitute(query.expr, static_variables(dashboard)))
        assert names, f"{query.panel}/{query.ref_id} selects no metric"
        assert names <= allowed, f"{query.panel}: unknown metrics {names - allowed}"


def test_every_exported_metric_is_on_the_dashboard(dashboard: dict[str, Any]) -> None:
    used = set().union(
        *(metric_names(substitute(q.expr, static_variables(dashboard))) for q in queries(dashboard))
    )
    for family in exported_families():
        assert any(name.startswith(family) for name in used), f"{family} has no panel"


@pytest.mark.parametrize(("topic", "family"), sorted(REQUIRED.items()))
def test_the_issue_panels_exist(dashboard: dict[str, Any], topic: str, family: str) -> None:
    titles = [q.panel for q in queries(dashboard) if family in q.expr and topic in q.panel.lower()]
    assert titles, f"no panel about {topic!r} querying {family}"


def test_latency_panels_show_p50_p95_p99_per_route(dashboard: dict[str, Any]) -> None:
    per_route = [
        q.expr for q in queries(dashboard)
        if "lrurec_http_request_duration_seconds_bucket" in q.expr and "route" in q.expr
    ]  # fmt: skip
    for quantile in ("0.5", "0.95", "0.99"):
        assert any(f"histogram_quantile({quantile}," in expr for expr in per_route), quantile


def test_every_query_is_valid_promql(
    dashboard: dict[str, Any], tool: Callable[[str], Path], tmp_path: Path
) -> None:
    # promtool parses each expression of a rules file, so the queries become recording rules.
    variables = static_variables(dashboard)
    rules = [
        {"record": f"dashboard:query_{number}", "expr": substitute(q.expr, variables)}
        for number, q in enumerate(queries(dashboard))
    ]
    path = tmp_path / "dashboard_rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}), "utf-8")
    command = [str(tool("promtool")), "check", "rules", str(path)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"{len(rules)} rules found" in done.stdout
