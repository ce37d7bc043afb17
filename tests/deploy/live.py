"""Real processes for the live dashboard test: the service, a Prometheus scraping it, and load.

Every process is started in its own session and stopped by its process-group id, so no worker
or server outlives the test.
"""

import contextlib
import itertools
import os
import signal
import socket
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import yaml

from tests.deploy.promql import ALERTS, REPO

SCRAPE_SECONDS = 1


def scraped_after(prometheus: httpx.Client, metric: str, moment: float) -> bool:
    """Whether Prometheus holds a sample of ``metric`` scraped after ``moment`` (Unix seconds)."""
    response = prometheus.get("/api/v1/query", params={"query": f"timestamp({metric})"})
    if response.status_code != 200:  # 503 while Prometheus is still starting up
        return False
    result = response.json()["data"]["result"]
    return bool(result) and float(result[0]["value"][1]) > moment


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass
class Running:
    """A started process and the file its output goes to."""

    process: subprocess.Popen[bytes]
    log: Path

    def wait_until(self, check: Callable[[], bool], timeout: float, what: str) -> None:
        """Poll ``check`` until true; fail early if the process exits, showing its log's tail."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self.process.poll() is None:
            with contextlib.suppress(httpx.HTTPError):
                if check():
                    return
            time.sleep(0.2)
        tail = self.log.read_text(encoding="utf-8", errors="replace")[-3000:]
        code = self.process.poll()
        state = "still running" if code is None else f"exited with {code}"
        raise TimeoutError(f"{what} not reached within {timeout}s ({state}); log tail:\n{tail}")


@contextlib.contextmanager
def running(command: list[str], log: Path, env: dict[str, str] | None = None) -> Iterator[Running]:
    """Run ``command`` in its own process group for the duration of the block."""
    with log.open("wb") as output:
        process = subprocess.Popen(
            command, stdout=output, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
    try:
        yield Running(process, log)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def prometheus_config(target: str, directory: Path) -> Path:
    """deploy/prometheus/prometheus.yml pointed at ``target`` (its ``lrurec`` job), scraping and
    evaluating every 1 s."""
    config: dict[str, Any] = yaml.safe_load(
        (REPO / "deploy/prometheus/prometheus.yml").read_text(encoding="utf-8")
    )
    interval = f"{SCRAPE_SECONDS}s"
    config["global"].update(
        scrape_interval=interval, scrape_timeout=interval, evaluation_interval=interval
    )
    config["rule_files"] = [str(ALERTS)]
    (job,) = [job for job in config["scrape_configs"] if job["job_name"] == "lrurec"]
    job["static_configs"][0]["targets"] = [target]
    config["scrape_configs"] = [job]
    path = directory / "prometheus.yml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    return path


class Load:
    """A short mixed workload; remembers what the service answered to compare with the metrics."""

    def __init__(self, client: httpx.Client, items: list[str]) -> None:
        self.client = client
        self.items = items
        self.outcomes: Counter[str] = Counter()
        self.statuses: Counter[int] = Counter()
        self._serial = itertools.count()
        self._lock = threading.Lock()  # the hot-user events are posted from several threads

    def _post_event(self, user: str, item: str, event_id: str) -> None:
        body = {"user_id": user, "item_id": item, "event_id": event_id}
        response = self.client.post("/events", json=body, params={"k": 5})
        self._record(response)
        if response.status_code == 200:
            self._count([response.json()])

    def _count(self, results: list[dict[str, Any]]) -> None:
        with self._lock:
            for result in results:
                self.outcomes[result.get("reason") or "applied"] += 1

    def _record(self, response: httpx.Response) -> None:
        with self._lock:
            self.statuses[response.status_code] += 1

    def round(self, pool: ThreadPoolExecutor) -> None:
        """One round of every kind of request the dashboard has a panel for."""
        n = next(self._serial)
        user = f"user-{n % 7}"
        item = self.items[n % len(self.items)]
        self._post_event(user, item, f"e{n}")
        self._post_event(user, item, f"e{n}")  # duplicate event id
        self._post_event(user, "not-in-the-catalogue", f"u{n}")  # unknown item
        # Eight events for one user at once: optimistic writes conflict and retry.
        same = f"hot-{n}"
        list(pool.map(lambda i: self._post_event(same, self.items[i], f"h{n}-{i}"), range(8)))
        batch = [{"user_id": f"batch-{n}", "item_id": it} for it in self.items[:5]]
        response = self.client.post("/events/batch", json={"events": batch})
        self._record(response)
        if response.status_code == 200:
            self._count(response.json()["results"])
        self._record(self.client.get(f"/recommendations/{user}", params={"k": 10}))
        self._record(self.client.get(f"/recommendations/new-{n}"))  # cold start
        self._record(self.client.get(f"/users/{user}"))
        self._record(self.client.delete(f"/users/batch-{n}"))
        self._record(self.client.post("/events", json={"user_id": "", "item_id": item}))  # 422
        with self._lock:
            self.outcomes["rejected"] += 1  # the service counts a malformed event as rejected
        self._record(self.client.get("/recommendations/x", params={"k": 0}))  # 422

    def run(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        with ThreadPoolExecutor(max_workers=8) as pool:
            while time.monotonic() < deadline:
                self.round(pool)
