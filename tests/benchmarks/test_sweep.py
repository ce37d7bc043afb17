"""The service sweep end to end (benchmarks.loadgen.sweep): a real service subprocess under
uvicorn with a redis-server of its own, pre-filled, then one low open-loop rate, with and without
each user's events on one connection; the driver's ``sweep.json``; and the granian command line.
"""

import importlib.util
import json
from pathlib import Path

import orjson
import pytest
from typer.testing import CliRunner

from benchmarks.loadgen.cpu import host_cpu, steal_pct
from benchmarks.loadgen.servers import APP_FACTORY, Server, server_command
from benchmarks.loadgen.sweep import Layout, SweepSpec, sweep_configuration
from benchmarks.loadgen.workload import event_requests, user_keys
from benchmarks.openloop import app, layouts
from tests.conftest import TINY_ITEM_IDS


@pytest.mark.parametrize("keyed", [False, True], ids=["any-connection", "keyed"])
def test_a_low_rate_is_carried_without_errors(tiny_artifact: Path, keyed: bool) -> None:
    spec = SweepSpec(
        rates=(40.0,), duration=1.5, warmup=0.5, k=3, users=5, connections=4, keyed=keyed
    )
    rows = sweep_configuration(
        tiny_artifact, Layout("1 worker", 1), {"LRUREC_BACKEND": "numba"}, list(TINY_ITEM_IDS),
        spec, lambda _: None,
    )  # fmt: skip
    (row,) = rows
    assert row["errors"] == 0
    assert row["dropped"] == 0
    assert int(row["samples"]) > 30  # ≈ 40/s over 1.5 s
    assert float(row["server_cpu_ms_per_event"]) > 0  # the server, not the client, answered
    assert 0.0 <= float(row["steal_pct"]) <= 100.0


def test_steal_is_the_share_of_host_time_stolen_between_readings() -> None:
    assert steal_pct((10.0, 1000.0), (12.0, 1100.0)) == 2.0
    assert steal_pct((0.0, 50.0), (0.0, 50.0)) == 0.0  # no time passed: nothing to divide
    stolen, total = host_cpu()
    assert 0.0 <= stolen <= total
    assert total > 0


def test_every_event_of_a_user_gets_that_users_key() -> None:
    requests = event_requests(list(TINY_ITEM_IDS), users=7, k=3, count=200)
    keys = user_keys(requests)
    users = [orjson.loads(request.partition(b"\r\n\r\n")[2])["user_id"] for request in requests]
    key_of: dict[str, int] = {}
    for user, key in zip(users, keys, strict=True):
        assert key_of.setdefault(user, key) == key
    assert len(key_of) == 7
    assert len(set(key_of.values())) == 7


def test_replicas_add_a_layout_only_when_more_than_one() -> None:
    assert [layout.label for layout in layouts("1,2", 0)] == ["1 worker", "2 workers"]
    assert layouts("1", 3)[-1] == Layout("3 replicas", 1, 3)
    assert len(layouts("1", 1)) == 1


def test_uvicorn_runs_lrurec_serve_and_granian_the_app_factory(tmp_path: Path) -> None:
    uvicorn = server_command(Server.UVICORN, tmp_path, 2, 9000, "redis://r")
    assert uvicorn[3:4] == ["serve"]
    assert {"--workers", "2", "--redis-url", "redis://r", "--no-access-log"} <= set(uvicorn)
    granian = server_command(Server.GRANIAN, tmp_path, 2, 9000, "redis://r")
    assert granian[1:3] == ["-m", "granian"]
    assert granian[granian.index("--factory") + 1] == APP_FACTORY
    assert granian[granian.index("--interface") + 1] == "asgi"
    assert "redis://r" not in granian  # granian's workers read LRUREC_REDIS_URL instead


@pytest.mark.skipif(importlib.util.find_spec("granian") is None, reason="granian not installed")
def test_granian_carries_a_low_rate_without_errors(tiny_artifact: Path) -> None:
    spec = SweepSpec(
        rates=(40.0,), duration=1.5, warmup=0.5, k=3, users=5, connections=4,
        server=Server.GRANIAN,
    )  # fmt: skip
    (row,) = sweep_configuration(
        tiny_artifact, Layout("1 worker", 1), {"LRUREC_BACKEND": "numba"}, list(TINY_ITEM_IDS),
        spec, lambda _: None,
    )  # fmt: skip
    assert row["errors"] == row["dropped"] == 0
    assert int(row["samples"]) > 30


def test_the_driver_writes_each_configurations_rows_with_what_produced_them(
    tmp_path: Path,
) -> None:
    arguments = [
        "--models", "lrurec", "--workers", "1", "--replicas", "0", "--rates", "30",
        "--duration", "1", "--warmup", "0.5", "--users", "5", "--keyed", "--out", str(tmp_path),
    ]  # fmt: skip
    result = CliRunner().invoke(app, arguments)
    assert result.exit_code == 0, result.output
    (configuration,) = json.loads((tmp_path / "sweep.json").read_text()).values()
    (row,) = configuration["rows"]
    assert row["offered_rps"] == 30
    assert row["errors"] == 0
    assert configuration["setup"]["keyed"] is True
    assert configuration["setup"]["server"] == "uvicorn"
    assert configuration["setup"]["rates"] == [30.0]
    assert (tmp_path / "latency.png").is_file()
