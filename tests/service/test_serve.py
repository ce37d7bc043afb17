"""``lrurec serve --workers 2`` as a real subprocess on a "fresh machine" (no artifact, no Redis
configured): the demo artifact is built, one embedded Redis is shared by both workers, writes
race across worker processes, metrics are aggregated over both workers, and nothing is left
running after shutdown."""

import os
import signal
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import httpx
import psutil
import pytest
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import REPO
from tests.service.conftest import Server, lrurec_serve

pytestmark = pytest.mark.slow

N_EVENTS = 32
DEMO_ITEMS = [
    row.split("\t")[0]
    for row in (REPO / "cli" / "demo_catalogue.tsv").read_text().splitlines()[1:]
    if row
]


@dataclass
class TwoWorkers(Server):
    metrics_dir: Path


@pytest.fixture
def two_workers(tmp_path: Path) -> Iterator[TwoWorkers]:
    metrics_dir = tmp_path / "metrics"
    metrics_dir.mkdir()
    (metrics_dir / "counter_999999.db").write_bytes(b"stale file of an earlier run")
    environment = {
        "LRUREC_METRICS_DIR": str(metrics_dir),
        "XDG_CACHE_HOME": str(tmp_path / "cache"),  # the demo artifact is built here
    }
    with lrurec_serve("--workers", "2", environment=environment) as server:
        yield TwoWorkers(server.base_url, server.process, metrics_dir)


def post_event(base_url: str, n: int) -> dict[str, object]:
    """One event on a fresh connection, so the kernel spreads them over both workers."""
    event = {"user_id": "shared", "item_id": DEMO_ITEMS[n % len(DEMO_ITEMS)], "event_id": f"e{n}"}
    response = httpx.post(f"{base_url}/events", json=event, params={"k": 5}, timeout=30.0)
    assert response.status_code == 200, response.text
    body: dict[str, object] = response.json()
    return body


def applied_total(base_url: str) -> float:
    text = httpx.get(f"{base_url}/metrics", timeout=10.0).text
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "lrurec_events_total" and sample.labels == {"outcome": "applied"}:
                return sample.value
    raise AssertionError("lrurec_events_total{outcome=applied} missing")


def applied_per_worker(metrics_dir: Path) -> dict[str, float]:
    """Each worker's own applied-event count, read from its multiprocess file."""
    counts = {}
    for path in sorted(metrics_dir.glob("counter_*.db")):
        merged = MultiProcessCollector.merge([str(path)], accumulate=False)  # type: ignore[no-untyped-call]
        for metric in merged:
            for sample in metric.samples:
                if sample.name == "lrurec_events_total" and sample.labels == {"outcome": "applied"}:
                    counts[path.stem.removeprefix("counter_")] = sample.value
    return counts


def redis_processes(root: int) -> list[psutil.Process]:
    children = psutil.Process(root).children(recursive=True)
    return [child for child in children if "redis-server" in child.name()]


def test_two_workers_share_redis_and_aggregate_metrics(
    two_workers: TwoWorkers, tmp_path: Path
) -> None:
    assert not (two_workers.metrics_dir / "counter_999999.db").exists()  # emptied at start
    assert (tmp_path / "cache" / "lrurec" / "demo" / "config.json").is_file()
    embedded = redis_processes(two_workers.process.pid)
    assert len(embedded) == 1  # started once, by the parent

    with ThreadPoolExecutor(max_workers=N_EVENTS) as pool:
        results = list(pool.map(lambda n: post_event(two_workers.base_url, n), range(N_EVENTS)))
    assert all(result["applied"] for result in results)
    assert sorted(int(str(r["events_applied"])) for r in results) == list(range(1, N_EVENTS + 1))
    recommended = httpx.get(f"{two_workers.base_url}/recommendations/shared", timeout=10.0).json()
    assert recommended["source"] == "model"
    assert {item["item_id"] for item in recommended["items"]} <= set(DEMO_ITEMS)

    # The kernel hands connections to whichever worker accepts first, so a burst can land on
    # one worker; keep sending (bounded) until both have applied events.
    total = N_EVENTS
    per_worker = applied_per_worker(two_workers.metrics_dir)
    with ThreadPoolExecutor(max_workers=16) as pool:
        while min(per_worker.values(), default=0) == 0 and total < 20 * N_EVENTS:
            list(pool.map(lambda n: post_event(two_workers.base_url, n), range(total, total + 16)))
            total += 16
            per_worker = applied_per_worker(two_workers.metrics_dir)
    assert len(per_worker) == 2
    assert all(count > 0 for count in per_worker.values()), per_worker  # both served events
    assert sum(per_worker.values()) == total
    for _ in range(6):  # whichever worker answers the scrape reports the total of both
        assert applied_total(two_workers.base_url) == total

    two_workers.process.send_signal(signal.SIGINT)
    assert two_workers.process.wait(timeout=30) == 0
    assert all(not p.is_running() or p.status() == psutil.STATUS_ZOMBIE for p in embedded)


def test_workers_and_redis_end_with_a_killed_supervisor(two_workers: TwoWorkers) -> None:
    """SIGKILL gives `lrurec serve` no chance to stop its workers; the parent-death signal
    each worker asked for at start-up does (else they go on serving, unsupervised)."""
    children = psutil.Process(two_workers.process.pid).children(recursive=True)
    workers = [child for child in children if "redis-server" not in child.name()]
    assert len(workers) >= 2
    os.kill(two_workers.process.pid, signal.SIGKILL)
    two_workers.process.wait()
    _, alive = psutil.wait_procs(children, timeout=30)
    assert not alive, [(process.pid, process.cmdline()) for process in alive]
    with pytest.raises(httpx.TransportError):
        httpx.get(f"{two_workers.base_url}/readyz", timeout=2.0)
