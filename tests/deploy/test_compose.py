"""docker-compose.yml: accepted by a real compose parser (docker-compose 1.29, offline) and wired
as the stack needs: durable Redis, a health-gated service, Prometheus/Grafana, training.
"""

import os
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from service.settings import Settings


def compose_config(
    tool: Callable[[str], Path], repo: Path, compose_file: Path
) -> subprocess.CompletedProcess[str]:
    """`docker-compose config`: parses, validates against the schema, interpolates; no engine."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("COMPOSE_", "DOCKER_"))}
    # Leave interpolation defaults in charge: no variable of the stack may leak in from the caller.
    env = {k: v for k, v in env.items() if not k.startswith(("LRUREC_", "GRAFANA_", "REDIS_"))}
    command = [str(tool("docker-compose")), "--project-directory", str(repo)]
    return subprocess.run(
        [*command, "-f", str(compose_file), "config"],
        capture_output=True, text=True, timeout=120, env=env, cwd=repo,
    )  # fmt: skip


@pytest.fixture(scope="module")
def resolved(tool: Callable[[str], Path], repo: Path) -> dict[str, Any]:
    """The stack as docker-compose resolved it (profiles, anchors and defaults applied)."""
    done = compose_config(tool, repo, repo / "docker-compose.yml")
    assert done.returncode == 0, done.stderr
    config: dict[str, Any] = yaml.safe_load(done.stdout)
    return config


def test_docker_compose_accepts_the_stack(resolved: dict[str, Any]) -> None:
    services = resolved["services"]
    assert {"redis", "lrurec", "prometheus", "grafana", "train"} <= set(services)


@pytest.mark.parametrize(
    ("breakage", "message"),
    [
        (("    restart: unless-stopped\n", "    restartt: unless-stopped\n"), "restartt"),
        (("        condition: service_healthy\n", "        condition: when_ready\n"), "when_ready"),
        (("services:\n", "services:\n  - oops\n"), "while parsing"),
    ],
)
def test_docker_compose_rejects_a_malformed_copy(
    tool: Callable[[str], Path], repo: Path, tmp_path: Path, breakage: tuple[str, str], message: str
) -> None:
    text = (repo / "docker-compose.yml").read_text(encoding="utf-8")
    old, new = breakage
    assert old in text
    broken = tmp_path / "docker-compose.yml"
    broken.write_text(text.replace(old, new, 1), encoding="utf-8")
    done = compose_config(tool, repo, broken)
    assert done.returncode != 0
    assert message in done.stderr


def test_redis_is_durable_and_never_evicts(resolved: dict[str, Any]) -> None:
    redis = resolved["services"]["redis"]
    command = " ".join(redis["command"])
    assert "--appendonly yes" in command
    assert "--appendfsync everysec" in command
    assert "--maxmemory-policy noeviction" in command
    assert "redis-cli" in redis["healthcheck"]["test"]
    assert any(volume.endswith(":/data:rw") for volume in redis["volumes"])


def test_service_waits_for_healthy_redis_and_is_configured_by_environment(
    resolved: dict[str, Any],
) -> None:
    service = resolved["services"]["lrurec"]
    assert service["depends_on"]["redis"]["condition"] == "service_healthy"
    assert "/readyz" in " ".join(service["healthcheck"]["test"])
    assert service["environment"]["LRUREC_REDIS_URL"] == "redis://redis:6379/0"
    assert "lrurec serve" in " ".join(service["command"])
    known = {f"LRUREC_{name.upper()}" for name in Settings.model_fields}
    assert set(service["environment"]) <= known, "every variable is a real setting"
    # Settings must accept the values compose passes (a typo'd value fails here, not at start-up).
    values = {k.removeprefix("LRUREC_").lower(): v for k, v in service["environment"].items()}
    Settings(**values)


def flags(words: list[str]) -> set[str]:
    return {word for word in words if word.startswith("--")}


def test_commands_use_only_real_cli_options(
    resolved: dict[str, Any], cli_options: Callable[[str], set[str]]
) -> None:
    serve = resolved["services"]["lrurec"]["command"][0].split("lrurec serve", 1)[1].split()
    assert flags(serve) <= cli_options("serve")
    train = resolved["services"]["train"]["command"]
    assert flags(train) <= cli_options("train")
    assert {"--data", "--format", "--out"} <= flags(train)


def test_training_profile_writes_the_artifact_the_service_reads(resolved: dict[str, Any]) -> None:
    train, service = resolved["services"]["train"], resolved["services"]["lrurec"]
    assert train["profiles"] == ["train"]
    assert train["command"][0] == "train"
    out = train["command"][train["command"].index("--out") + 1]
    assert "artifacts:/artifacts:rw" in train["volumes"]
    assert "artifacts:/artifacts:ro" in service["volumes"]
    assert f"[ -f {out}/items.tsv ]" in service["command"][0]  # written after the weights
    assert f"LRUREC_ARTIFACT={out}" in service["command"][0]


def test_prometheus_and_grafana_mount_the_deploy_directory(
    resolved: dict[str, Any], repo: Path
) -> None:
    mounts = {
        name: {v.split(":")[1]: Path(v.split(":")[0]) for v in service["volumes"]}
        for name, service in resolved["services"].items()
        if name in {"prometheus", "grafana"}
    }
    assert mounts["prometheus"]["/etc/prometheus"] == repo / "deploy" / "prometheus"
    assert mounts["grafana"]["/etc/grafana/provisioning"] == repo / "deploy/grafana/provisioning"
    dashboards = mounts["grafana"]["/var/lib/grafana/dashboards"]
    assert dashboards == repo / "deploy" / "grafana" / "dashboards"
    environment = resolved["services"]["grafana"]["environment"]
    home = environment["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert (dashboards / Path(home).relative_to("/var/lib/grafana/dashboards")).is_file()
    provider = yaml.safe_load(
        (repo / "deploy/grafana/provisioning/dashboards/lrurec.yml").read_text(encoding="utf-8")
    )
    assert provider["providers"][0]["options"]["path"] == "/var/lib/grafana/dashboards"
