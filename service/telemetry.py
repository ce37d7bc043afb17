"""Prometheus metrics, each defined once here (names are the contract with deploy/grafana).

With several uvicorn workers, prometheus-client's multiprocess mode is on when the environment
variable ``PROMETHEUS_MULTIPROC_DIR`` is set before this module is imported (``lrurec serve``
sets it and empties the directory before starting the workers). ``/metrics`` then aggregates
every worker's files; gauges declare how (``livemax``/``livemin``: dead workers drop out).
"""

import asyncio
import bisect
import functools
import os
import time
from collections.abc import Awaitable, Callable, MutableMapping
from pathlib import Path
from typing import Any

from prometheus_client import (
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    multiprocess,
    values,
)
from prometheus_client.exposition import choose_encoder

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

LATENCY_BUCKETS = (
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
EVENT_OUTCOMES = ("applied", "duplicate", "unknown_item", "rejected")
ERROR_KINDS = (
    "redis_unavailable", "redis_error", "contention", "validation",
    "body_too_large", "unauthorized", "not_found", "internal",
)  # fmt: skip

HTTP_DURATION = Histogram(
    "lrurec_http_request_duration_seconds",
    "HTTP request duration by route template, method and status class.",
    ["route", "method", "status"],
    buckets=LATENCY_BUCKETS,
)
MODEL_STEP_SECONDS = Histogram(
    "lrurec_model_step_seconds", "One recurrent model step.", buckets=LATENCY_BUCKETS
)
SCORE_SECONDS = Histogram(
    "lrurec_score_seconds", "Scoring the catalogue plus top-k.", buckets=LATENCY_BUCKETS
)
MODEL_STEP_SCORE_SECONDS = Histogram(
    "lrurec_model_step_score_seconds",
    "One recurrent step, then scoring plus top-k, as one fused model call (an event with k > 0).",
    buckets=LATENCY_BUCKETS,
)
REDIS_SECONDS = Histogram(
    "lrurec_redis_seconds", "Redis round trip by operation.", ["operation"], buckets=LATENCY_BUCKETS
)
BATCH_SIZE = Histogram("lrurec_batch_size", "Events per batch request.", buckets=BATCH_BUCKETS)
EVENTS = Counter("lrurec_events_total", "Events received by outcome.", ["outcome"])
CAS_RETRIES = Counter("lrurec_cas_retries_total", "Per-user writes retried after a conflict.")
STATE_CACHE = Counter(
    "lrurec_state_cache_events_total",
    "Events by use of the worker's copy of the user's record: fresh (no read), stale (the "
    "write was refused and retried; not a CAS retry), miss (read from Redis).",
    ["outcome"],
)
COLD_STARTS = Counter("lrurec_cold_starts_total", "Recommendations served to users without state.")
STATE_REBUILDS = Counter(
    "lrurec_state_rebuilds_total", "States rebuilt from history after a model-version change."
)
ERRORS = Counter("lrurec_errors_total", "Failed requests by kind.", ["kind"])
QUANTIZED_ROWS = Counter(
    "lrurec_quantized_rows_total",
    "Rows ranked by the exact int8 two-stage top-k, by path: two_stage, or fallback (the "
    "exact float32 scan, when too many items could still be in the top k).",
    ["path"],
)
MODEL_INFO = Gauge(
    "lrurec_model_info",
    "Always 1; the labels name the loaded model and the backend running it.",
    ["model_version", "model_type", "backend"],
    multiprocess_mode="livemax",
)
MODEL_ITEMS = Gauge(
    "lrurec_model_items", "Items in the loaded model's catalogue.", multiprocess_mode="livemax"
)
READY = Gauge(
    "lrurec_ready", "1 when ready (model loaded, Redis answering).", multiprocess_mode="livemin"
)

# Touch every labelled child so each series exists (at 0) from the first scrape.
for _outcome in EVENT_OUTCOMES:
    EVENTS.labels(_outcome)
for _kind in ERROR_KINDS:
    ERRORS.labels(_kind)
CACHE_FRESH, CACHE_STALE, CACHE_MISS = (STATE_CACHE.labels(o) for o in ("fresh", "stale", "miss"))
QUANTIZED_TWO_STAGE, QUANTIZED_FALLBACK = (
    QUANTIZED_ROWS.labels(p) for p in ("two_stage", "fallback")
)


FLUSH_EVERY = 256
"""Observations a :class:`BufferedHistogram` holds before adding them to its histogram."""
FLUSH_SECONDS = 1.0
"""Period of :func:`flush_periodically` (bounds how stale another worker's scrape can be)."""


class BufferedHistogram:
    """A histogram child whose observations are counted in plain ints and added in bulk.

    ``Histogram.observe`` takes a lock twice and scans the buckets in Python (~4 µs; five per
    event). Here an observation is a ``bisect`` and two additions; the counts reach the
    Prometheus child every :data:`FLUSH_EVERY` observations, on every scrape of this process
    (the ``/metrics`` route) and every :data:`FLUSH_SECONDS` (:func:`flush_periodically`).
    Not thread-safe, by design: every observation and every flush runs on the event-loop thread.
    """

    __slots__ = ("_bounds", "_child", "_counts", "_pending", "_sum")

    def __init__(self, child: Histogram) -> None:
        self._child = child
        self._bounds: list[float] = list(child._upper_bounds)
        self._counts = [0] * len(self._bounds)
        self._sum = 0.0
        self._pending = 0
        _BUFFERS.append(self)

    def observe(self, amount: float) -> None:
        # bisect_left: the first bucket whose upper bound is >= amount, as Histogram.observe.
        self._counts[bisect.bisect_left(self._bounds, amount)] += 1
        self._sum += amount
        self._pending += 1
        if self._pending >= FLUSH_EVERY:
            self.flush()

    def time(self) -> "_Stopwatch":
        """Context manager observing the seconds its block took."""
        return _Stopwatch(self)

    def flush(self) -> None:
        if not self._pending:
            return
        for bucket, count in zip(self._child._buckets, self._counts, strict=True):
            if count:
                bucket.inc(count)
        self._child._sum.inc(self._sum)
        self._counts = [0] * len(self._bounds)
        self._sum = 0.0
        self._pending = 0


class _Stopwatch:
    __slots__ = ("_histogram", "_start")

    def __init__(self, histogram: BufferedHistogram) -> None:
        self._histogram = histogram
        self._start = 0.0

    def __enter__(self) -> None:
        self._start = time.perf_counter()

    def __exit__(self, *_: object) -> None:
        self._histogram.observe(time.perf_counter() - self._start)


_BUFFERS: list[BufferedHistogram] = []


def flush_buffers() -> None:
    """Add every buffered observation of this process to its histogram."""
    for buffer in _BUFFERS:
        buffer.flush()


async def flush_periodically() -> None:
    """Flush the buffers every :data:`FLUSH_SECONDS` (run as a task for the app's lifetime)."""
    try:
        while True:
            await asyncio.sleep(FLUSH_SECONDS)
            flush_buffers()
    finally:
        flush_buffers()


MODEL_STEP = BufferedHistogram(MODEL_STEP_SECONDS)
SCORE = BufferedHistogram(SCORE_SECONDS)
MODEL_STEP_SCORE = BufferedHistogram(MODEL_STEP_SCORE_SECONDS)


@functools.cache
def _redis_histogram(operation: str) -> BufferedHistogram:
    # The labelled child, looked up once: labels() costs microseconds on every event otherwise.
    return BufferedHistogram(REDIS_SECONDS.labels(operation))


@functools.cache
def http_histogram(route: str, method: str, status: str) -> BufferedHistogram:
    """The ``lrurec_http_request_duration_seconds`` child, looked up once.

    Bounded: route templates (never raw paths) × methods × status classes.
    """
    return BufferedHistogram(HTTP_DURATION.labels(route, method, status))


@functools.cache
def event_counter(outcome: str) -> Counter:
    """The ``lrurec_events_total`` child of ``outcome``, looked up once."""
    return EVENTS.labels(outcome)


def redis_timer(operation: str) -> "_Stopwatch":
    """Context manager observing one Redis round trip into ``lrurec_redis_seconds``."""
    return _redis_histogram(operation).time()


def multiprocess_enabled() -> bool:
    """Whether prometheus-client chose multiprocess values (decided at its import)."""
    return values.ValueClass is not values.MutexValue


def prepare_multiprocess_dir(directory: Path) -> None:
    """Create ``directory`` and delete stale ``*.db`` files of earlier runs (before workers)."""
    directory.mkdir(parents=True, exist_ok=True)
    for stale in directory.glob("*.db"):
        stale.unlink()


def mark_worker_dead() -> None:
    """Drop this worker's live gauges (multiprocess mode); call on shutdown."""
    if multiprocess_enabled():
        multiprocess.mark_process_dead(os.getpid())  # type: ignore[no-untyped-call]


def render_metrics(accept: str | None) -> tuple[bytes, str]:
    """Exposition text (Prometheus or OpenMetrics, per ``Accept``) and its content type.

    In multiprocess mode a fresh registry reads every worker's files on each scrape. Call
    :func:`flush_buffers` first, on the event-loop thread (this may run in another thread).
    """
    registry = REGISTRY
    if multiprocess_enabled():
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    encoder, content_type = choose_encoder(accept or "")
    return encoder(registry), content_type


def set_model(model_version: str, model_type: str, backend: str, n_items: int) -> None:
    MODEL_INFO.labels(model_version, model_type, backend).set(1)
    MODEL_ITEMS.set(n_items)


HTTP_METHODS = frozenset(("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"))
"""Methods labelled as themselves (:func:`method_label`)."""


def method_label(method: str) -> str:
    """``method``, or ``OTHER`` beyond :data:`HTTP_METHODS`, so a client cannot add series
    (HTTP parsers other than httptools accept any token as a method)."""
    return method if method in HTTP_METHODS else "OTHER"


class HTTPMetricsMiddleware:
    """Times every HTTP request by route template (never the raw path: no per-user labels)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500

        async def send_with_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_with_status)
        finally:
            method = method_label(scope["method"])
            http_histogram(route_label(scope), method, f"{status // 100}xx").observe(
                time.perf_counter() - start
            )


def route_label(scope: Scope) -> str:
    """The template of the route that answered (``<unmatched>``: none did).

    Its template without converters (``{user_id}``, not ``{user_id:path}``) is the label
    dashboards know. FastAPI's router stores its own routes in the (shared) scope; for plain
    Starlette routes (``/docs``, ``/openapi.json``) it stores only the endpoint, so their route
    is found among the app's by that endpoint.
    """
    path = getattr(scope.get("route"), "path_format", None)
    endpoint = scope.get("endpoint")
    if path is None and endpoint is not None:
        for route in getattr(scope.get("app"), "routes", ()):
            if getattr(route, "endpoint", None) is endpoint:
                path = getattr(route, "path_format", None)
                break
    return path or "<unmatched>"
