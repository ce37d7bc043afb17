"""Talking HTTP/1.1 to the service over a real socket: the service under uvicorn with the
service's protocol (service.http_protocol) in a thread, raw requests, responses read by
Content-Length, and a spy on the path that answers ``POST /events`` from uvicorn's cycle."""

import asyncio
import json
import socket
import threading
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import uvicorn
from fastapi import FastAPI
from uvicorn.protocols.http.httptools_impl import RequestResponseCycle

from service.embedded_redis import free_port
from service.fast_events import EventsFastPath
from service.http_protocol import HTTP_PROTOCOL
from service.main import create_app
from service.settings import Settings

Answer = tuple[int, dict[str, str], bytes]


@contextmanager
def running(
    settings: Settings, log_level: str = "warning"
) -> Iterator[tuple[FastAPI, int, uvicorn.Server]]:
    """The service under uvicorn with ``HTTP_PROTOCOL`` in a thread, on a free port (with
    uvicorn's access log when ``log_level`` is ``info``); stopped on exit."""
    app = create_app(settings)
    port = free_port()
    config = uvicorn.Config(
        app, host="127.0.0.1", port=port, http=HTTP_PROTOCOL, log_level=log_level
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        assert thread.is_alive(), "uvicorn exited during start-up"
        assert time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.05)
    try:
        yield app, port, server
    finally:
        server.should_exit = True
        thread.join(timeout=30)


@contextmanager
def serving(settings: Settings, log_level: str = "warning") -> Iterator[tuple[FastAPI, int]]:
    """:func:`running`, without the server."""
    with running(settings, log_level) as (app, port, _):
        yield app, port


def spy_on_direct_calls(app: FastAPI) -> list[str]:
    """Paths of the requests the direct path is handed from now on (a spy on the instance)."""
    fast_path: EventsFastPath = app.fast_events  # type: ignore[attr-defined]
    answer = fast_path.answer_cycle
    calls: list[str] = []

    def spy(cycle: RequestResponseCycle, app: Any) -> Awaitable[None]:
        calls.append(cycle.scope["path"])
        return answer(cycle, app)

    fast_path.answer_cycle = spy  # type: ignore[method-assign,assignment]
    return calls


def request(path: str, body: Mapping[str, object] | bytes, *headers: str) -> bytes:
    payload = body if isinstance(body, bytes) else json.dumps(body).encode()
    head = [f"POST {path} HTTP/1.1", "Host: test", "Content-Type: application/json", *headers]
    if not any(header.lower().startswith("transfer-encoding") for header in headers):
        head.append(f"Content-Length: {len(payload)}")
    return ("\r\n".join(head) + "\r\n\r\n").encode() + payload


def read_answers(sock: socket.socket, count: int) -> list[Answer]:
    """``count`` responses (status, lower-cased headers, body) read by Content-Length."""
    buffer, answers = b"", list[Answer]()
    while len(answers) < count:
        while b"\r\n\r\n" not in buffer:
            chunk = sock.recv(65536)
            assert chunk, "the server closed the connection early"
            buffer += chunk
        head, buffer = buffer.split(b"\r\n\r\n", 1)
        status_line, *lines = head.decode().split("\r\n")
        if status_line.split()[1] == "100":  # "100 Continue" precedes the answer
            continue
        headers = dict(line.lower().split(": ", 1) for line in lines)
        length = int(headers["content-length"])
        while len(buffer) < length:
            buffer += sock.recv(65536)
        answers.append((int(status_line.split()[1]), headers, buffer[:length]))
        buffer = buffer[length:]
    return answers


def exchange(port: int, payload: bytes, count: int = 1) -> list[Answer]:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(payload)
        return read_answers(sock, count)


def wait_until(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    """Poll ``condition`` every 10 ms until it holds (fails after ``timeout`` s)."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(0.01)


def hold_events(app: FastAPI) -> threading.Event:
    """Make every event wait in the engine until the returned event is set."""
    engine = app.state.engine
    apply = engine.apply
    release = threading.Event()

    async def held(*arguments: Any) -> Any:
        await asyncio.to_thread(release.wait, 30)  # set from the test's thread
        return await apply(*arguments)

    engine.apply = held
    return release


def events_applied(port: int, user_id: str) -> int:
    """The user's ``events_applied`` as ``GET /users/{id}`` reports it (0 before any)."""
    head = f"GET /users/{user_id} HTTP/1.1\r\nHost: t\r\n\r\n".encode()
    ((status, _, body),) = exchange(port, head)
    if status == 404:  # nothing stored yet
        return 0
    assert status == 200, body
    return int(json.loads(body)["events_applied"])
