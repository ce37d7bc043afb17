"""The HTTP stack's own cost: ``POST /events?k=10`` through the service's FastAPI stack with no
engine behind it, under the same open-loop load as the service.

The app here is the service's HTTP layer as it is (its ``Event`` body, ``k`` and
``exclude_seen`` query parameters, the API-key dependency, its error handlers and both of its
middlewares) around a route that answers a fixed recommendation document of ten items instead
of calling the engine. What this process carries at a given p99, and the CPU it spends per
request, is the ceiling the HTTP stack alone puts on one worker: the service cannot carry more
on the same server, whatever the model and Redis cost.

Run from a repository checkout:

    python -m benchmarks.framework_floor --servers uvicorn,granian --rates 2000,3000,4000,5000
"""

import json
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

import orjson
import typer
from fastapi import APIRouter, FastAPI, Query, Response

from benchmarks.loadgen.servers import HOST, Server, require, stop, wait_ready
from benchmarks.loadgen.sweep import Row, SweepSpec, knee, measure_rates
from benchmarks.loadgen.workload import event_requests
from benchmarks.openloop import table
from cli.embedded_redis import free_port
from service.api.deps import EngineDep, WriteAccess
from service.api.errors import install_error_handlers
from service.api.middleware import BodySizeLimitMiddleware, HTTPMetricsMiddleware
from service.schemas import Event
from service.settings import MAX_K, Settings

FACTORY = "benchmarks.framework_floor:floor_app"
BARE_FACTORY = "benchmarks.framework_floor:bare_floor_app"
ITEMS = [f"item-{i}" for i in range(3416)]
ANSWER = orjson.dumps(
    {
        "user_id": "user-0",
        "applied": True,
        "events_applied": 11,
        "model_version": "floor",
        "recommendations": [{"item_id": f"item-{i}", "score": 1.0 - i / 10} for i in range(10)],
    }
)
"""What every event is answered with: the size and shape of the service's answer at k=10."""

router = APIRouter()


@router.post("/events", dependencies=[WriteAccess])
async def post_event(
    event: Event,
    engine: EngineDep,
    k: Annotated[int | None, Query(ge=0, le=MAX_K)] = None,
    exclude_seen: Annotated[bool, Query()] = True,
) -> Response:
    """The service's route signature (its dependencies resolved); a fixed answer instead of the
    engine call."""
    return Response(ANSWER, media_type="application/json")


@router.get("/readyz")
async def readyz() -> dict[str, str]:
    return {"status": "ready"}


def bare_floor_app() -> FastAPI:
    """The route and its error handlers on FastAPI alone, without the service's middlewares."""
    app = FastAPI(title="HTTP floor")
    app.state.settings = Settings(redis_url="redis://unused")
    app.state.engine = None  # resolved by the route's engine dependency, never called
    install_error_handlers(app)
    app.include_router(router)
    return app


def floor_app() -> FastAPI:
    """The service's HTTP layer (error handlers, middlewares, route signature), no engine."""
    app = bare_floor_app()
    app.add_middleware(BodySizeLimitMiddleware, max_bytes=app.state.settings.max_body_bytes)
    app.add_middleware(HTTPMetricsMiddleware)
    return app


def command(server: Server, port: int, factory: str) -> list[str]:
    """``server`` serving ``factory`` with the flags the service runs with."""
    if server is Server.UVICORN:
        return [
            sys.executable, "-m", "uvicorn", "--factory", factory, "--host", HOST,
            "--port", str(port), "--loop", "uvloop", "--http", "httptools",
            "--no-access-log", "--log-level", "warning",
        ]  # fmt: skip
    return [
        sys.executable, "-m", "granian", "--interface", "asgi", "--factory", factory,
        "--host", HOST, "--port", str(port), "--workers", "1", "--loop", "uvloop", "--no-ws",
        "--no-access-log", "--log-level", "warning",
    ]  # fmt: skip


@contextmanager
def running(server: Server, port: int, factory: str) -> Iterator[subprocess.Popen[bytes]]:
    require(server)
    process = subprocess.Popen(command(server, port, factory))
    try:
        wait_ready(process, port, 1, 60.0)
        yield process
    finally:
        stop(process)


def main(
    servers: Annotated[str, typer.Option(help="Comma list: uvicorn, granian.")] = "uvicorn",
    rates: Annotated[str, typer.Option(help="Offered requests/s, rising.")] = "2000,3000,4000",
    duration: Annotated[float, typer.Option(min=1)] = 8.0,
    warmup: Annotated[float, typer.Option(min=0)] = 2.0,
    middleware: Annotated[
        bool, typer.Option(help="Keep the service's two middlewares (timing, body limit).")
    ] = True,
    out: Annotated[Path | None, typer.Option(help="Write the rows here as JSON.")] = None,
) -> None:
    """Offer rising rates to the service's HTTP layer alone; one table per server."""
    spec = SweepSpec(rates=tuple(float(r) for r in rates.split(",")), duration=duration,
                     warmup=warmup)  # fmt: skip
    requests = event_requests(ITEMS, spec.users, spec.k)
    results: dict[str, list[Row]] = {}
    for name in servers.split(","):
        server = Server(name)
        port = free_port()
        factory = FACTORY if middleware else BARE_FACTORY
        with running(server, port, factory) as process:
            print(f"## {server}: {factory} (HTTP layer only)")
            rows = measure_rates(
                [process.pid], [port], requests, spec, lambda row: print(json.dumps(row))
            )
        results[server] = rows
        print(table(rows))
        print(f"knee (p99 ≤ {spec.slo_p99_ms} ms): {knee(rows, spec.slo_p99_ms)} requests/s")
    if out is not None:
        out.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    typer.run(main)
