"""The dashboard's stream-ingestion panels against the real thing: `lrurec consume` (a real
redis-server, entries added while it runs, some invalid) scraped every second by a real
Prometheus on deploy/prometheus's config. Every ingest query must evaluate and return data.
"""

import math
import os
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
import redis

from cli.embedded_redis import EmbeddedRedis
from service.store.streams import ingest_key, shard_of
from tests.deploy.live import SCRAPE_SECONDS, free_port, prometheus_config, running, scraped_after
from tests.deploy.promql import load_dashboard, queries, substitute, variable_values
from tests.deploy.test_dashboard_live import INGEST_PANELS, RATE_INTERVAL, build_artifact, values

pytestmark = [pytest.mark.slow, pytest.mark.redis]

PRODUCE_SECONDS = 5.0
OWNED = "lrurec_ingest_shards_owned > 0"
"""Shards the consumer owns: above 0 once its model is loaded (a cold start compiles kernels)."""


def produce(url: str, seconds: float) -> int:
    """About 200 entries per second over 20 users, one in 20 invalid (no item)."""
    client = redis.Redis.from_url(url)
    sent, end = 0, time.monotonic() + seconds
    while time.monotonic() < end:
        user = f"u{sent % 20}"
        fields = {"user_id": user} if sent % 20 == 19 else {"user_id": user, "item_id": "item-3"}
        client.xadd(ingest_key("lrurec", shard_of(user, 16)), fields)  # type: ignore[arg-type]
        sent += 1
        time.sleep(0.005)
    client.close()
    return sent


def test_every_ingest_panel_query_returns_data(tool: Callable[[str], Path], tmp_path: Path) -> None:
    prometheus_bin, lrurec_bin = tool("prometheus"), tool("lrurec")
    artifact = build_artifact(tmp_path / "artifact")
    env = {k: v for k, v in os.environ.items() if not k.startswith("LRUREC_")}
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    metrics_port, prometheus_port = free_port(), free_port()
    config = prometheus_config(f"127.0.0.1:{metrics_port}", tmp_path)
    prometheus = [
        str(prometheus_bin), f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
        f"--web.listen-address=127.0.0.1:{prometheus_port}", "--log.level=warn",
    ]  # fmt: skip
    with (
        EmbeddedRedis() as server,
        running(
            [str(lrurec_bin), "consume", "--artifact", str(artifact), "--redis-url", server.url,
             "--metrics-port", str(metrics_port), "--log-level", "warning"],
            tmp_path / "consume.log", env,
        ) as consumer,
        running(prometheus, tmp_path / "prometheus.log") as scraper,
        httpx.Client(base_url=f"http://127.0.0.1:{prometheus_port}", timeout=10) as api,
    ):  # fmt: skip
        first_scrape = "a first scrape of the consumer"
        consumer.wait_until(lambda: scraped_after(api, OWNED, 0), 120, first_scrape)
        start = time.time()
        assert produce(server.url, PRODUCE_SECONDS) > 200
        end = time.time()
        after_entries = "a scrape after the entries"
        scraper.wait_until(lambda: scraped_after(api, OWNED, end + 1), 15, after_entries)
        time.sleep(SCRAPE_SECONDS)
        settled = time.time()

        dashboard = load_dashboard()
        variables = {**variable_values(dashboard), "__rate_interval": RATE_INTERVAL}
        ingest = [q for q in queries(dashboard) if q.panel.startswith(INGEST_PANELS)]
        assert len(ingest) >= 7
        problems = []
        for query in ingest:
            expr = substitute(query.expr, variables)
            params = {"query": expr, "start": str(start), "end": str(settled), "step": "1"}
            body = api.get("/api/v1/query_range", params=params).json()
            assert body["status"] == "success", f"{expr}: {body}"
            if not [v for v in values(body["data"]["result"]) if math.isfinite(v)]:
                problems.append(f"{query.panel} [{query.ref_id}]: no finite data from {expr}")
        assert not problems, "\n".join(problems)
        params = {
            "query": 'sum(lrurec_ingest_entries_total{outcome="rejected"})',
            "time": str(settled),
        }
        (rejected,) = api.get("/api/v1/query", params=params).json()["data"]["result"]
        assert float(rejected["value"][1]) > 0  # the invalid entries were counted
