"""deploy/prometheus: promtool accepts the config and alert rules; rules use only real metrics."""

import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from tests.deploy.promql import ALERTS, alert_rules, exported_names, metric_names

# Series Prometheus itself attaches to every target (not exported by the service).
SYNTHETIC = {"up"}


def promtool(tool: Callable[[str], Path], *args: str) -> subprocess.CompletedProcess[str]:
    command = [str(tool("promtool")), *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=60)


def test_promtool_accepts_the_scrape_config_and_its_rule_files(
    tool: Callable[[str], Path], repo: Path
) -> None:
    done = promtool(tool, "check", "config", str(repo / "deploy/prometheus/prometheus.yml"))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "1 rule files found" in done.stdout + done.stderr


def test_promtool_accepts_the_alert_rules(tool: Callable[[str], Path]) -> None:
    done = promtool(tool, "check", "rules", str(ALERTS))
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"{len(alert_rules())} rules found" in done.stdout


@pytest.mark.parametrize(
    ("old", "new"),
    [
        ('expr: up{job="lrurec"} == 0', 'expr: up{job="lrurec" == 0'),  # PromQL syntax error
        ("for: 1m", "for: one minute"),  # bad duration
    ],
)
def test_promtool_rejects_broken_rules(
    tool: Callable[[str], Path], tmp_path: Path, old: str, new: str
) -> None:
    text = ALERTS.read_text(encoding="utf-8")
    assert old in text
    broken = tmp_path / "alerts.yml"
    broken.write_text(text.replace(old, new, 1), encoding="utf-8")
    done = promtool(tool, "check", "rules", str(broken))
    assert done.returncode != 0


def test_alerts_cover_latency_errors_and_readiness() -> None:
    names = {rule["alert"] for rule in alert_rules()}
    assert {"LRURecHighP99Latency", "LRURecHighErrorRate", "LRURecNotReady", "LRURecDown"} <= names
    for rule in alert_rules():
        assert rule["labels"]["severity"] in {"page", "ticket"}
        assert rule["annotations"]["summary"]


def test_alerts_use_only_metrics_the_service_exports() -> None:
    allowed = exported_names() | SYNTHETIC
    for rule in alert_rules():
        unknown = metric_names(rule["expr"]) - allowed
        assert not unknown, f"{rule['alert']} uses unknown metrics {unknown}"


def test_scrape_target_is_the_compose_service(repo: Path) -> None:
    config = yaml.safe_load((repo / "deploy/prometheus/prometheus.yml").read_text(encoding="utf-8"))
    (job,) = [job for job in config["scrape_configs"] if job["job_name"] == "lrurec"]
    assert job["metrics_path"] == "/metrics"
    assert job["static_configs"][0]["targets"] == ["lrurec:8000"]
    provisioning = repo / "deploy/grafana/provisioning/datasources/prometheus.yml"
    datasource = yaml.safe_load(provisioning.read_text(encoding="utf-8"))["datasources"][0]
    # $__rate_interval is only right when Grafana knows the real scrape interval.
    assert datasource["jsonData"]["timeInterval"] == config["global"]["scrape_interval"]
