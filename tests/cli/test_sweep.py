"""The service sweep end to end (cli.bench.sweep): a real ``lrurec serve`` subprocess with its
embedded redis-server, pre-filled, then one low open-loop rate, on the main port and on the
ingest port (``--ingest``, also with each user's events on one connection: ``--keyed``); and the
``lrurec bench --service`` command's ``sweep.json``."""

import json
from pathlib import Path

import orjson
import pytest
from typer.testing import CliRunner

from cli.bench.sweep import (
    SweepSpec,
    event_requests,
    host_cpu,
    steal_pct,
    sweep_configuration,
    user_keys,
)
from cli.main import app
from tests.conftest import TINY_ITEM_IDS


@pytest.mark.parametrize(
    ("ingest", "keyed"), [(False, False), (True, False), (True, True)],
    ids=["main-port", "ingest-port", "ingest-port-keyed"],
)  # fmt: skip
def test_a_low_rate_is_carried_without_errors(
    tiny_artifact: Path, ingest: bool, keyed: bool
) -> None:
    spec = SweepSpec(
        rates=(40.0,), duration=1.5, warmup=0.5, k=3, users=5, connections=4, keyed=keyed
    )
    rows = sweep_configuration(
        tiny_artifact, 1, 1, {"LRUREC_BACKEND": "numba"}, list(TINY_ITEM_IDS), spec,
        lambda _: None, ingest,
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


def test_the_command_writes_each_configurations_rows_with_what_produced_them(
    tmp_path: Path,
) -> None:
    arguments = [
        "bench", "--service", "--models", "lrurec", "--workers", "1", "--replicas", "0",
        "--rates", "30", "--duration", "1", "--warmup", "0.5", "--users", "5", "--ingest",
        "--keyed", "--out", str(tmp_path),
    ]  # fmt: skip
    result = CliRunner().invoke(app, arguments)
    assert result.exit_code == 0, result.output
    (configuration,) = json.loads((tmp_path / "sweep.json").read_text()).values()
    (row,) = configuration["rows"]
    assert row["offered_rps"] == 30
    assert row["errors"] == 0
    assert configuration["setup"]["keyed"] is True
    assert configuration["setup"]["ingest"] is True
    assert configuration["setup"]["rates"] == [30.0]
