"""``lrurec consume`` SIGKILLed mid-batch: another consumer takes the shards over once their
leases lapse, claims the entries the dead one was delivered and did not acknowledge, and every
entry is applied exactly once, in stream order per user."""

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
import redis

from service.store.streams import GROUP, ingest_key
from tests.conftest import REPO, TINY_ITEM_IDS, ArtifactFactory
from tests.service.ingest import events_applied, produce, wait_until

USERS, EVENTS = 30, 3000


@contextmanager
def lrurec_consume(
    artifact: str, redis_url: str, *options: str
) -> Iterator[subprocess.Popen[bytes]]:
    child = {k: v for k, v in os.environ.items() if not k.startswith("LRUREC_")}
    child.update({"LRUREC_INGEST_CLAIM_MS": "1000", "LRUREC_INGEST_BATCH_SIZE": "64"})
    command = [
        sys.executable, "-c", "from cli.main import app; app()", "consume",
        "--artifact", artifact, "--redis-url", redis_url, "--log-level", "warning", *options,
    ]  # fmt: skip
    process = subprocess.Popen(command, cwd=REPO, env=child)
    try:
        yield process
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            process.wait(timeout=30)


@pytest.mark.slow
def test_a_consumer_killed_mid_batch_loses_and_repeats_nothing(
    make_artifact: ArtifactFactory, redis_url: str, redis_client: "redis.Redis"
) -> None:
    artifact = str(make_artifact(max_len=1024))
    sent = [
        {"user_id": f"u{n % USERS}", "item_id": TINY_ITEM_IDS[(n * 7) % 50]} for n in range(EVENTS)
    ]
    produce(redis_client, sent)

    def applied() -> int:
        return sum(events_applied(redis_client, f"u{u}") for u in range(USERS))

    with lrurec_consume(artifact, redis_url) as first:
        wait_until(lambda: applied() >= EVENTS // 4)
        first.send_signal(signal.SIGKILL)
        first.wait()
    partly = applied()
    assert partly < EVENTS, "the first consumer finished before it was killed"

    with lrurec_consume(artifact, redis_url):
        wait_until(lambda: applied() >= EVENTS)
        wait_until(
            lambda: all(
                redis_client.xpending(ingest_key("lrurec", s), GROUP)["pending"] == 0
                for s in range(16)
            )
        )
    for u in range(USERS):
        expected = [event["item_id"] for event in sent if event["user_id"] == f"u{u}"]
        stored = redis_client.lrange(f"lrurec:v1:{{u{u}}}:hist", 0, -1)
        assert stored == [item.encode() for item in expected]  # once each, in order
        assert events_applied(redis_client, f"u{u}") == len(expected)


@pytest.mark.slow
def test_consumer_workers_share_the_shards_and_keep_each_users_order(
    make_artifact: ArtifactFactory, redis_url: str, redis_client: "redis.Redis"
) -> None:
    artifact = str(make_artifact(max_len=1024))
    sent = [
        {"user_id": f"u{n % USERS}", "item_id": TINY_ITEM_IDS[(n * 3) % 50]} for n in range(1500)
    ]

    def owners() -> set[bytes | str]:
        keys = [f"lrurec:v1:ingest-owner:{{{shard}}}" for shard in range(16)]
        return {owner for owner in redis_client.mget(keys) if owner is not None}

    with lrurec_consume(artifact, redis_url, "--workers", "2"):
        wait_until(lambda: len(owners()) == 2)  # both consumers own shards
        produce(redis_client, sent)
        wait_until(lambda: sum(events_applied(redis_client, f"u{u}") for u in range(USERS)) >= 1500)
    for u in range(USERS):
        expected = [event["item_id"].encode() for event in sent if event["user_id"] == f"u{u}"]
        assert redis_client.lrange(f"lrurec:v1:{{u{u}}}:hist", 0, -1) == expected
    assert owners() == set()  # a graceful stop releases every lease
