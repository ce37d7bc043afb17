"""The Dockerfile: lint-clean under hadolint, multi-stage, CPU torch, non-root, health-checked."""

import json
import re
import subprocess
from collections.abc import Callable
from fnmatch import fnmatch
from pathlib import Path

import pytest

Instruction = tuple[str, str]


def instructions(dockerfile: Path) -> list[Instruction]:
    """(KEYWORD, arguments) per instruction, continuation lines joined, comments dropped."""
    logical: list[str] = []
    pending = ""
    for line in dockerfile.read_text(encoding="utf-8").splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        pending += " " + stripped.removesuffix("\\").strip()
        if not stripped.endswith("\\"):
            logical.append(pending.strip())
            pending = ""
    return [(text.split(None, 1)[0].upper(), text.split(None, 1)[1]) for text in logical]


def stages(dockerfile: Path) -> dict[str, list[Instruction]]:
    """Instructions per named build stage, in file order."""
    result: dict[str, list[Instruction]] = {}
    current: list[Instruction] = []
    for keyword, args in instructions(dockerfile):
        if keyword == "FROM":
            match = re.search(r"\bAS\s+(\S+)", args, flags=re.IGNORECASE)
            assert match, f"every stage is named: FROM {args}"
            current = result.setdefault(match.group(1), [])
        current.append((keyword, args))
    return result


def hadolint(tool: Callable[[str], Path], dockerfile: Path) -> tuple[int, list[dict[str, str]]]:
    binary = tool("hadolint")
    # style threshold: even the mildest finding fails; no inline `# hadolint ignore` honoured.
    options = ["--format", "json", "--failure-threshold", "style", "--disable-ignore-pragma"]
    command = [str(binary), *options, str(dockerfile)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=60)
    return done.returncode, json.loads(done.stdout or "[]")


def test_hadolint_reports_nothing_on_the_dockerfile(
    tool: Callable[[str], Path], repo: Path
) -> None:
    returncode, findings = hadolint(tool, repo / "Dockerfile")
    assert findings == []
    assert returncode == 0


def test_hadolint_rejects_a_known_bad_dockerfile(
    tool: Callable[[str], Path], tmp_path: Path
) -> None:
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python\nRUN apt-get install curl && pip install fastapi\n")
    returncode, findings = hadolint(tool, bad)
    assert returncode != 0
    codes = {finding["code"] for finding in findings}
    assert {"DL3006", "DL3008", "DL3013", "DL3042"} <= codes


def test_builds_from_slim_python_311_in_several_stages(repo: Path) -> None:
    all_stages = stages(repo / "Dockerfile")
    assert list(all_stages)[-1] == "runtime", "the default (last) target is the runtime image"
    assert {"builder", "runtime-base", "runtime", "baked"} <= set(all_stages)
    args = dict(
        a.split("=", 1) for k, a in instructions(repo / "Dockerfile") if k == "ARG" and "=" in a
    )
    assert re.fullmatch(r"python:3\.11-slim(-\w+)?", args["PYTHON_IMAGE"])


def test_installs_the_pinned_cpu_torch_wheel(repo: Path) -> None:
    runs = " ".join(a for k, a in stages(repo / "Dockerfile")["builder"] if k == "RUN")
    assert "torch==2.13.0" in runs
    assert "--index-url https://download.pytorch.org/whl/cpu" in runs


def test_default_command_uses_only_real_serve_options(
    repo: Path, cli_options: Callable[[str], set[str]]
) -> None:
    (cmd,) = [json.loads(a) for k, a in stages(repo / "Dockerfile")["runtime-base"] if k == "CMD"]
    assert {word for word in cmd if word.startswith("--")} <= cli_options("serve")


def test_runtime_runs_unprivileged_with_a_readiness_healthcheck(repo: Path) -> None:
    base = stages(repo / "Dockerfile")["runtime-base"]
    users = [a for k, a in base if k == "USER"]
    assert users, "runtime stage sets USER"
    assert users[-1].split(":")[0] not in {"root", "0"}
    (healthcheck,) = [a for k, a in base if k == "HEALTHCHECK"]
    assert "/readyz" in healthcheck
    (entrypoint,) = [json.loads(a) for k, a in base if k == "ENTRYPOINT"]
    (cmd,) = [json.loads(a) for k, a in base if k == "CMD"]
    assert [*entrypoint, *cmd][:2] == ["lrurec", "serve"]
    assert "0.0.0.0" in cmd
    assert "8000" in cmd


@pytest.mark.parametrize("stage", ["runtime-base", "runtime", "baked"])
def test_final_images_carry_no_build_tools(repo: Path, stage: str) -> None:
    text = " ".join(a for _, a in stages(repo / "Dockerfile")[stage])
    for tool_name in ("apt-get", "gcc", "build-essential", "pip install"):
        assert tool_name not in text, f"{stage} must not install {tool_name}"


def dockerignored(path: str, patterns: list[str]) -> bool:
    """Docker's rule: the last matching pattern wins; `!` re-includes."""
    ignored = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        glob = pattern.removeprefix("!").rstrip("/")
        if fnmatch(path, glob) or fnmatch(path, glob + "/*"):
            ignored = not negate
    return ignored


def test_every_copied_source_exists_and_is_in_the_build_context(repo: Path) -> None:
    lines = (repo / ".dockerignore").read_text(encoding="utf-8").splitlines()
    patterns = [line.strip() for line in lines if line.strip() and not line.startswith("#")]
    assert dockerignored(".venv/bin/python", patterns), ".dockerignore keeps the venv out"
    for keyword, args in stages(repo / "Dockerfile")["builder"]:
        if keyword != "COPY":
            continue
        *sources, _destination = args.split()
        for source in sources:
            assert (repo / source).exists(), f"COPY source {source} is missing"
            assert not dockerignored(source.rstrip("/"), patterns), f"{source} is dockerignored"
