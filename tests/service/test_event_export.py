"""``lrurec events export`` on a real Redis (single node and cluster): one row per (user, event
id), each user's rows in time order, readable by ``lrurec train --format events``."""

import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from cli.main import app
from tests.conftest import RedisTarget
from training.data import read_events

pytestmark = pytest.mark.redis_topologies

runner = CliRunner(env={"COLUMNS": "300"})


def export(target: RedisTarget, out: Path, *options: str) -> str:
    topology = "--redis-cluster" if target.cluster else "--no-redis-cluster"
    command = ["events", "export", "--redis-url", target.url, topology, "--out", str(out)]
    result = runner.invoke(app, [*command, *options])
    assert result.exit_code == 0, result.output
    return result.output


def test_the_export_has_one_row_per_event_in_time_order_and_trains(
    client: TestClient, redis_target: RedisTarget, tmp_path: Path
) -> None:
    events = [
        {"user_id": "u1", "item_id": "item-3", "event_id": "a", "timestamp": 300.0},
        {"user_id": "u1", "item_id": "item-1", "event_id": "b", "timestamp": 100.0},
        {"user_id": "u1", "item_id": "item-1", "event_id": "b", "timestamp": 100.0},  # a retry
        {"user_id": "u1", "item_id": "new-item", "event_id": "c", "timestamp": 200.0},
        {"user_id": "u2", "item_id": "item-5", "timestamp": 50.0},
        {"user_id": "u2", "item_id": "item-5", "timestamp": 60.0},  # no id: both kept
    ]
    for event in events:
        assert client.post("/events", json=event, params={"k": 0}).status_code == 200
    out = tmp_path / "events.parquet"
    assert "1 repeated deliveries dropped" in export(redis_target, out)
    table = pq.read_table(out)
    assert table.column_names == ["user_id", "item_id", "timestamp", "event_id"]
    rows = sorted(zip(*(table.column(c).to_pylist() for c in table.column_names), strict=True))
    assert rows == [
        ("u1", "item-1", 100.0, "b"), ("u1", "item-3", 300.0, "a"),
        ("u1", "new-item", 200.0, "c"), ("u2", "item-5", 50.0, ""), ("u2", "item-5", 60.0, ""),
    ]  # fmt: skip
    users = table.column("user_id").to_pylist()
    times = table.column("timestamp").to_pylist()
    for user in set(users):  # contiguous, in time order
        mine = [t for u, t in zip(users, times, strict=True) if u == user]
        assert mine == sorted(mine)
        first = users.index(user)
        assert users[first : first + len(mine)] == [user] * len(mine)
    assert read_events(out) == {"u1": ["item-1", "new-item", "item-3"], "u2": ["item-5", "item-5"]}

    later = tmp_path / "later.parquet"
    export(redis_target, later, "--since", str(time.time() + 60))
    assert pq.read_table(later).num_rows == 0
