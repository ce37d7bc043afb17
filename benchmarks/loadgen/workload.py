"""What the service is offered: pre-filled user histories, then ``POST /events`` requests."""

import random
import zlib
from collections.abc import Sequence

import orjson

from benchmarks.loadgen.generator import post_requests
from benchmarks.loadgen.servers import HOST, http_json


def prefill(port: int, item_ids: list[str], users: int, events_per_user: int) -> None:
    """Give every user a history, so state reads and seen-item masking are realistic."""
    rng = random.Random(1)
    events = [
        {"user_id": f"user-{user}", "item_id": rng.choice(item_ids)}
        for _ in range(events_per_user)
        for user in range(users)
    ]
    for start in range(0, len(events), 1000):
        body = orjson.dumps({"events": events[start : start + 1000]})
        http_json(port, "POST", "/events/batch", body)


def event_requests(item_ids: list[str], users: int, k: int, count: int = 8192) -> list[bytes]:
    """Pre-encoded ``POST /events?k=k`` requests for random (user, item) pairs."""
    rng = random.Random(2)
    bodies = [
        orjson.dumps({"user_id": f"user-{rng.randrange(users)}", "item_id": rng.choice(item_ids)})
        for _ in range(count)
    ]
    return post_requests(HOST, f"/events?k={k}", bodies)


def user_keys(requests: Sequence[bytes]) -> list[int]:
    """A key per ``POST /events`` request, the same for every event of one user (its
    ``user_id``'s CRC-32), so a keyed run sends each user's events over one connection."""
    return [zlib.crc32(orjson.loads(request.partition(b"\r\n\r\n")[2])["user_id"].encode())
            for request in requests]  # fmt: skip
