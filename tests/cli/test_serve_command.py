"""``lrurec serve`` refuses a bad setting with a clear message before anything starts."""

from pathlib import Path

import pytest
from typer.testing import CliRunner

from cli.main import app

runner = CliRunner(env={"COLUMNS": "300"})  # rich wraps the error box at the terminal width


@pytest.fixture(autouse=True)
def no_settings_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LRUREC_ARTIFACT", raising=False)
    monkeypatch.delenv("LRUREC_REDIS_URL", raising=False)
    monkeypatch.delenv("LRUREC_REDIS_CLUSTER", raising=False)


def test_a_directory_that_is_no_artifact_is_refused(tmp_path: Path) -> None:
    result = runner.invoke(app, ["serve", "--artifact", str(tmp_path)])
    assert result.exit_code == 2
    assert "is not a serving artifact" in result.output
    assert "config.json" in result.output


def test_a_redis_url_that_does_not_parse_is_refused(tiny_artifact: Path) -> None:
    result = runner.invoke(app, ["serve", "--artifact", str(tiny_artifact), "--redis-url", "x"])
    assert result.exit_code == 2
    assert "redis://" in result.output  # the message names the schemes it accepts


def test_the_log_level_is_one_of_uvicorns(tiny_artifact: Path) -> None:
    result = runner.invoke(app, ["serve", "--artifact", str(tiny_artifact), "--log-level", "loud"])
    assert result.exit_code == 2
    assert "'loud' is not one of" in result.output
    for level in ("critical", "error", "warning", "info", "debug", "trace"):
        assert level in result.output


def test_a_cluster_setting_on_a_single_redis_is_refused(
    tiny_artifact: Path, redis_url: str
) -> None:
    options = ["--artifact", str(tiny_artifact), "--redis-url", redis_url, "--redis-cluster"]
    result = runner.invoke(app, ["serve", *options])
    assert result.exit_code == 2
    assert "not a cluster node" in result.output


def test_a_cluster_node_without_the_cluster_setting_is_refused(
    tiny_artifact: Path, redis_cluster_server: str
) -> None:
    options = ["--artifact", str(tiny_artifact), "--redis-url", redis_cluster_server]
    result = runner.invoke(app, ["serve", *options])
    assert result.exit_code == 2
    assert "LRUREC_REDIS_CLUSTER=true" in result.output


def test_a_cluster_needs_a_url(tiny_artifact: Path) -> None:
    result = runner.invoke(app, ["serve", "--artifact", str(tiny_artifact), "--redis-cluster"])
    assert result.exit_code == 2
    assert "needs --redis-url" in result.output
