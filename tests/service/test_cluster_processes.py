"""Two ``lrurec serve`` processes of two workers each on one Redis Cluster: 64 concurrent
clients send 6,000 events with distinct ids for 20 users, then every event again. Every event
is applied exactly once, and each user's stored state is the offline model stepped over the
user's stored history."""

import asyncio
import itertools
from collections import Counter
from collections.abc import Iterator

import httpx
import numpy as np
import pytest
from redis.cluster import RedisCluster

from tests.conftest import ArtifactFactory
from tests.service.conftest import lrurec_serve
from tests.service.offline import load_model, stepped, stored_state

USERS, EVENTS, CLIENTS = 20, 6_000, 64
MAX_LEN = 512
"""History kept per user: more than its 300 events, so the history holds every one."""


def events() -> list[dict[str, str]]:
    return [
        {"user_id": f"u{n % USERS}", "item_id": f"item-{n * 7 % 50 + 1}", "event_id": f"e{n}"}
        for n in range(EVENTS)
    ]


async def send_all(base_urls: list[str], batch: list[dict[str, str]]) -> Counter[int]:
    """Each of ``CLIENTS`` clients sends its share of ``batch`` one request after another,
    alternating between the servers."""
    statuses: Counter[int] = Counter()
    limits = httpx.Limits(max_connections=CLIENTS)
    async with httpx.AsyncClient(timeout=30.0, limits=limits) as client:

        async def worker(share: list[dict[str, str]], servers: Iterator[str]) -> None:
            for event in share:
                response = await client.post(f"{next(servers)}/events?k=0", json=event)
                statuses[response.status_code] += 1

        await asyncio.gather(*(
            worker(batch[n::CLIENTS], itertools.cycle(base_urls[n % 2:] + base_urls[:n % 2]))
            for n in range(CLIENTS)
        ))  # fmt: skip
    return statuses


@pytest.mark.slow
def test_every_event_is_applied_exactly_once_across_processes_on_a_cluster(
    make_artifact: ArtifactFactory, redis_cluster_server: str
) -> None:
    artifact = make_artifact(max_len=MAX_LEN)
    cluster = RedisCluster.from_url(redis_cluster_server)
    cluster.flushall(target_nodes=RedisCluster.PRIMARIES)
    options = ("--artifact", str(artifact), "--redis-url", redis_cluster_server,
               "--redis-cluster", "--workers", "2")  # fmt: skip
    with lrurec_serve(*options) as first, lrurec_serve(*options) as second:
        urls = [first.base_url, second.base_url]
        sent = events()
        assert asyncio.run(send_all(urls, sent)) == {200: EVENTS}
        assert asyncio.run(send_all(urls, sent)) == {200: EVENTS}  # every event re-sent

        model = load_model(artifact)
        for user in range(USERS):
            info = httpx.get(f"{first.base_url}/users/u{user}").json()
            assert info["events_applied"] == EVENTS // USERS  # distinct ids sent
            history = info["recent_items"]
            assert len(history) == EVENTS // USERS
            _, expected = stepped(model, [int(item.split("-")[1]) for item in history])
            np.testing.assert_allclose(
                stored_state(cluster, f"u{user}"), expected.flatten().numpy(), atol=1e-5
            )
    cluster.close()
