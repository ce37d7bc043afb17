"""Every client error is a 4xx JSON ``{error, message}`` naming the problem; nothing is written."""

import sys
from collections.abc import Iterator
from typing import Any

import orjson
import pytest
import redis
from fastapi.testclient import TestClient

from service.api.middleware import declared_length
from tests.service.conftest import ClientFactory

LONG_ID = "x" * 257
GOOD = {"user_id": "u1", "item_id": "item-1"}


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"item_id": "item-1"}, "body.user_id"),
        ({"user_id": "u1"}, "body.item_id"),
        ({**GOOD, "user_id": ""}, "body.user_id"),
        ({**GOOD, "user_id": LONG_ID}, "body.user_id"),
        ({**GOOD, "item_id": LONG_ID}, "body.item_id"),
        ({**GOOD, "event_id": LONG_ID}, "body.event_id"),
        ({**GOOD, "user_id": "bad\nid"}, "body.user_id"),
        ({**GOOD, "user_id": 17}, "body.user_id"),
        ({**GOOD, "timestamp": "yesterday"}, "body.timestamp"),
        ({**GOOD, "timestamp": "1700000000"}, "body.timestamp"),
        ({**GOOD, "timestamp": False}, "body.timestamp"),
        ({**GOOD, "timestamp": -1}, "body.timestamp"),
        ({**GOOD, "colour": "red"}, "body.colour"),
    ],
)
def test_malformed_event_is_422_naming_the_field(
    client: TestClient, redis_client: "redis.Redis", body: dict[str, Any], field: str
) -> None:
    response = client.post("/events", json=body)
    assert response.status_code == 422
    error = response.json()
    assert error["error"] == "validation"
    assert field in error["message"]
    assert redis_client.dbsize() == 0


@pytest.mark.parametrize(
    ("method", "url", "params", "field"),
    [
        ("POST", "/events", {"k": 1001}, "query.k"),
        ("POST", "/events", {"k": -1}, "query.k"),
        ("POST", "/events", {"k": "ten"}, "query.k"),
        ("GET", "/recommendations/u1", {"k": 0}, "query.k"),
        ("GET", "/recommendations/u1", {"k": 1001}, "query.k"),
        ("GET", "/recommendations/u1", {"exclude_seen": "maybe"}, "query.exclude_seen"),
        ("GET", f"/recommendations/{LONG_ID}", {}, "path.user_id"),
        ("GET", f"/users/{LONG_ID}", {}, "path.user_id"),
        ("DELETE", f"/users/{LONG_ID}", {}, "path.user_id"),
    ],
)
def test_out_of_range_parameters_are_422(
    client: TestClient, method: str, url: str, params: dict[str, Any], field: str
) -> None:
    body = GOOD if method == "POST" else None
    response = client.request(method, url, params=params, json=body)
    assert response.status_code == 422
    assert field in response.json()["message"]


def test_invalid_json_is_422(client: TestClient) -> None:
    response = client.post(
        "/events", content=b"{not json", headers={"Content-Type": "application/json"}
    )
    assert response.status_code == 422
    assert response.json()["error"] == "validation"


@pytest.mark.parametrize(
    ("events", "status"),
    [([], 422), ([GOOD] * 1001, 422), ([GOOD, {"user_id": "u2"}], 422)],
)
def test_bad_batches_are_rejected_whole(
    client: TestClient, redis_client: "redis.Redis", events: list[dict[str, Any]], status: int
) -> None:
    response = client.post("/events/batch", json={"events": events})
    assert response.status_code == status
    assert "body.events" in response.json()["message"]
    assert redis_client.dbsize() == 0


def test_batch_over_the_configured_limit_is_422(
    make_client: ClientFactory, redis_client: "redis.Redis"
) -> None:
    with make_client(max_batch_size=2) as client:
        response = client.post("/events/batch", json={"events": [GOOD] * 3})
    assert response.status_code == 422
    assert "at most 2" in response.json()["message"]
    assert redis_client.dbsize() == 0


def test_oversized_body_is_413(make_client: ClientFactory, redis_client: "redis.Redis") -> None:
    padding = {**GOOD, "event_id": "e" * 200}
    with make_client(max_body_bytes=4096) as client:
        declared = client.post("/events/batch", json={"events": [padding] * 40})
        assert declared.status_code == 413
        assert declared.json()["error"] == "body_too_large"

        def chunks() -> Iterator[bytes]:  # no Content-Length: counted while streaming
            event = orjson.dumps(padding)
            yield b'{"events": [' + b",".join([event] * 40) + b"]}"

        streamed = client.post(
            "/events/batch", content=chunks(), headers={"Content-Type": "application/json"}
        )
        assert streamed.status_code == 413
        small = client.post("/events", content=chunks_of(GOOD), headers=JSON)
        assert small.status_code == 200
    assert redis_client.exists("lrurec:v1:{u1}:state") == 1


JSON = {"Content-Type": "application/json"}


def chunks_of(body: dict[str, Any]) -> Iterator[bytes]:
    """A small body sent chunked (no Content-Length), which must pass the limit."""
    raw = orjson.dumps(body)
    yield raw[:5]
    yield raw[5:]


def test_unknown_route_and_wrong_method_are_json_4xx(client: TestClient) -> None:
    missing = client.get("/nope")
    assert missing.status_code == 404
    assert missing.json()["error"] == "not_found"
    wrong = client.put("/events", json=GOOD)
    assert wrong.status_code == 405
    assert wrong.json()["error"] == "method_not_allowed"
    assert wrong.headers["allow"] == "POST"


def test_method_not_allowed_names_every_method_of_the_path(client: TestClient) -> None:
    response = client.put("/users/u1")  # GET and DELETE are two routes on this path
    assert response.status_code == 405
    assert response.headers["allow"] == "DELETE, GET"


def test_unknown_user_info_is_404(client: TestClient) -> None:
    response = client.get("/users/ghost")
    assert response.status_code == 404
    assert "ghost" in response.json()["message"]


@pytest.mark.parametrize(
    ("value", "length"),
    [(b"38", 38), (b"0", 0), (b"0" * 5000 + b"38", 38), (b"9" * 19, sys.maxsize),
     (b"", None), (b"-1", None), (b"1e3", None), ("٣".encode(), None)],
)  # fmt: skip
def test_content_length_values_are_read_without_overflowing(
    value: bytes, length: int | None
) -> None:
    assert declared_length(value) == length
