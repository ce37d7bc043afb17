"""deploy/k8s: schema-valid under kubernetes-validate (strict) and wired together consistently."""

import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from service.settings import Settings

# The oldest Kubernetes we claim to support (autoscaling/v2 and policy/v1 are GA since 1.23/1.21)
# and the newest schema the installed kubernetes-validate ships.
VERSIONS = ["1.27.0", "latest"]


def manifests(repo: Path) -> list[Path]:
    return sorted((repo / "deploy" / "k8s").glob("*.yaml"))


def validate(tool: Callable[[str], Path], files: list[Path], version: str) -> str:
    """Run kubernetes-validate --strict; return its output, raising on failure."""
    command = [str(tool("kubernetes-validate")), "--strict", "--quiet"]
    if version != "latest":
        command += ["--kubernetes-version", version]
    done = subprocess.run([*command, *map(str, files)], capture_output=True, text=True, timeout=120)
    if done.returncode != 0:
        raise AssertionError(done.stdout + done.stderr)
    return done.stdout + done.stderr


@pytest.fixture(scope="module")
def resources(repo: Path) -> dict[str, dict[str, Any]]:
    """kind -> resource, every document of every manifest (one resource per kind+name)."""
    found: dict[str, dict[str, Any]] = {}
    for path in manifests(repo):
        for document in yaml.safe_load_all(path.read_text(encoding="utf-8")):
            key = f"{document['kind']}/{document['metadata']['name']}"
            assert key not in found, f"{key} defined twice"
            found[key] = document
    return found


@pytest.mark.parametrize("version", VERSIONS)
def test_every_manifest_validates_strictly(
    tool: Callable[[str], Path], repo: Path, version: str
) -> None:
    files = manifests(repo)
    expected = {"deployment.yaml", "service.yaml", "hpa.yaml", "configmap.yaml", "pdb.yaml"}
    assert expected <= {path.name for path in files}
    validate(tool, files, version)


def test_kubernetes_validate_rejects_a_broken_deployment(
    tool: Callable[[str], Path], repo: Path, tmp_path: Path
) -> None:
    document = yaml.safe_load((repo / "deploy/k8s/deployment.yaml").read_text(encoding="utf-8"))
    container = document["spec"]["template"]["spec"]["containers"][0]
    container["readinessProbe"]["httpGet"]["port"] = {"name": "http"}  # must be int or string
    container["resourcess"] = container.pop("resources")  # unknown field: strict mode refuses
    broken = tmp_path / "deployment.yaml"
    broken.write_text(yaml.safe_dump(document), encoding="utf-8")
    with pytest.raises(AssertionError, match="did not validate"):
        validate(tool, [broken], "latest")


def container(resources: dict[str, dict[str, Any]]) -> dict[str, Any]:
    spec = resources["Deployment/lrurec"]["spec"]["template"]["spec"]
    (main,) = spec["containers"]
    return dict(main)


def test_deployment_probes_resources_and_replicas(resources: dict[str, dict[str, Any]]) -> None:
    deployment, main = resources["Deployment/lrurec"], container(resources)
    assert deployment["spec"]["replicas"] >= 2
    assert main["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert main["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert {"cpu", "memory"} <= set(main["resources"]["requests"])
    assert "memory" in main["resources"]["limits"]
    ports = {port["name"]: port["containerPort"] for port in main["ports"]}
    assert ports["http"] == 8000
    assert main["args"][:1] == ["serve"]
    pod = deployment["spec"]["template"]
    assert pod["spec"]["securityContext"]["runAsNonRoot"] is True
    assert pod["metadata"]["annotations"]["prometheus.io/port"] == str(ports["http"])


def test_container_args_are_real_serve_options(
    resources: dict[str, dict[str, Any]], cli_options: Callable[[str], set[str]]
) -> None:
    args = container(resources)["args"]
    assert {arg for arg in args if arg.startswith("--")} <= cli_options("serve")


def test_service_hpa_and_budget_select_the_deployment(resources: dict[str, dict[str, Any]]) -> None:
    deployment = resources["Deployment/lrurec"]
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    service = resources["Service/lrurec"]
    assert service["spec"]["selector"].items() <= pod_labels.items()
    assert service["spec"]["ports"][0]["targetPort"] == "http"
    budget = resources["PodDisruptionBudget/lrurec"]
    assert budget["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    assert budget["spec"]["minAvailable"] < deployment["spec"]["replicas"]
    hpa = resources["HorizontalPodAutoscaler/lrurec"]["spec"]
    target = {"apiVersion": "apps/v1", "kind": "Deployment", "name": "lrurec"}
    assert hpa["scaleTargetRef"] == target
    assert hpa["minReplicas"] == deployment["spec"]["replicas"] <= hpa["maxReplicas"]


def test_configmap_holds_only_real_settings_and_points_at_external_redis(
    resources: dict[str, dict[str, Any]],
) -> None:
    data = resources["ConfigMap/lrurec"]["data"]
    assert {"configMapRef": {"name": "lrurec"}} in container(resources)["envFrom"]
    known = {f"LRUREC_{name.upper()}" for name in Settings.model_fields}
    assert set(data) <= known, f"not settings: {set(data) - known}"
    Settings(**{key.removeprefix("LRUREC_").lower(): value for key, value in data.items()})
    redis = resources["Service/lrurec-redis"]["spec"]
    assert redis["type"] == "ExternalName"
    assert data["LRUREC_REDIS_URL"].startswith("redis://lrurec-redis:")


def test_readme_explains_redis_cluster_and_the_user_hash_tag(repo: Path) -> None:
    text = (repo / "deploy" / "k8s" / "README.md").read_text(encoding="utf-8")
    assert "Redis Cluster" in text
    assert "{user}" in text or "hash tag" in text
