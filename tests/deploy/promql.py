"""Read the Grafana dashboard and the alert rules as PromQL: expressions, variables, metric names.

Shared by the static dashboard tests and the live test against a real Prometheus.
"""

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]
DASHBOARD = REPO / "deploy" / "grafana" / "dashboards" / "lrurec.json"
ALERTS = REPO / "deploy" / "prometheus" / "alerts.yml"

# Grouping clauses hold label names, not metrics; strings, matchers and ranges hold neither.
_CLAUSE = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_MATCHERS = re.compile(r"\{[^}]*\}")
_RANGE = re.compile(r"\[[^\]]*\]")
_FUNCTION = re.compile(r"\b[a-zA-Z_][a-zA-Z0-9_]*\s*(?=\()")
_IDENTIFIER = re.compile(r"(?<![\w.$])[a-zA-Z_:][a-zA-Z0-9_:]*")
_KEYWORDS = frozenset(
    {"and", "or", "unless", "bool", "offset", "by", "without", "on", "ignoring",
     "group_left", "group_right", "inf", "nan", "atan2"}
)  # fmt: skip
_VARIABLE = re.compile(r"\$(?:\{([a-zA-Z0-9_]+)(?::[a-z]+)?\}|([a-zA-Z0-9_]+))")


@dataclass(frozen=True)
class Query:
    """One PromQL target of one dashboard panel."""

    panel: str
    ref_id: str
    expr: str
    instant: bool


def load_dashboard(path: Path = DASHBOARD) -> dict[str, Any]:
    """The dashboard JSON as a dict (raises on malformed JSON)."""
    dashboard: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return dashboard


def query_panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    """Every panel that draws data, rows' children included; rows themselves only lay out."""
    panels: list[dict[str, Any]] = []
    for panel in dashboard["panels"]:
        if panel.get("type") == "row":
            panels.extend(panel.get("panels", []))
        else:
            panels.append(panel)
    return panels


def queries(dashboard: dict[str, Any]) -> list[Query]:
    """Every PromQL target of the dashboard, in panel order."""
    return [
        Query(panel["title"], target["refId"], target["expr"], bool(target.get("instant")))
        for panel in query_panels(dashboard)
        for target in panel.get("targets", [])
    ]


def variable_values(dashboard: dict[str, Any]) -> dict[str, str]:
    """What "All" means for each template variable (its ``allValue``), as Grafana substitutes."""
    values: dict[str, str] = {}
    for variable in dashboard.get("templating", {}).get("list", []):
        if not variable.get("includeAll") or variable.get("allValue") is None:
            raise ValueError(f"variable {variable['name']!r} needs includeAll and an allValue")
        values[variable["name"]] = variable["allValue"]
    return values


def substitute(expr: str, variables: dict[str, str]) -> str:
    """Replace ``$name`` / ``${name}`` / ``${name:fmt}`` like Grafana; unknown names raise."""

    def replace(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(2)
        if name not in variables:
            raise KeyError(f"no value for Grafana variable ${name} in {expr!r}")
        return variables[name]

    return _VARIABLE.sub(replace, expr)


def metric_names(expr: str) -> set[str]:
    """Metric names an expression selects (functions, keywords and label names excluded)."""
    text = _STRING.sub('""', expr)
    text = _MATCHERS.sub("", text)
    text = _RANGE.sub("", text)
    text = _CLAUSE.sub("", text)
    text = _FUNCTION.sub("", text)
    return {name for name in _IDENTIFIER.findall(text) if name.lower() not in _KEYWORDS}


def alert_rules(path: Path = ALERTS) -> list[dict[str, Any]]:
    """Every rule of the Prometheus rules file, groups flattened."""
    document = yaml.safe_load(path.read_text(encoding="utf-8"))
    return [rule for group in document["groups"] for rule in group["rules"]]


_SUFFIXES = {
    "counter": ("_total",),
    "gauge": ("",),
    "histogram": ("_bucket", "_count", "_sum"),
    "summary": ("", "_count", "_sum"),
    "info": ("_info",),
}


def exported_families() -> dict[str, str]:
    """Metric family name -> type, for every metric ``service/telemetry.py`` defines."""
    from prometheus_client.metrics import MetricWrapperBase

    from service import telemetry

    families: dict[str, str] = {}
    for value in vars(telemetry).values():
        if isinstance(value, MetricWrapperBase):
            for family in value.describe():
                families[family.name] = family.type
    return families


def exported_names() -> set[str]:
    """Every sample name the service can expose (``_created`` series are not queried)."""
    return {
        name + suffix for name, kind in exported_families().items() for suffix in _SUFFIXES[kind]
    }
