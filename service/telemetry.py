"""Prometheus metrics, each defined once here (names are the contract with deploy/grafana).

With several uvicorn workers, prometheus-client's multiprocess mode is on when the environment
variable ``PROMETHEUS_MULTIPROC_DIR`` is set before this module is imported (``lrurec serve``
sets it and empties the directory before starting the workers). ``/metrics`` then aggregates
every worker's files; gauges declare how (``livemax``/``livemin``: dead workers drop out).
"""

import functools
import os
from contextlib import AbstractContextManager
from pathlib import Path

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram, multiprocess
from prometheus_client.exposition import choose_encoder

MULTIPROCESS_ENV = "PROMETHEUS_MULTIPROC_DIR"

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
MODEL_STEP = Histogram(
    "lrurec_model_step_seconds", "One recurrent model step.", buckets=LATENCY_BUCKETS
)
SCORE = Histogram(
    "lrurec_score_seconds", "Scoring the catalogue plus top-k.", buckets=LATENCY_BUCKETS
)
MODEL_STEP_SCORE = Histogram(
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
MODEL_LOAD_FAILURES = Counter(
    "lrurec_model_load_failures_total",
    "Published models that failed to load (the previous model kept serving).",
)
MODEL_SWITCHES = Counter(
    "lrurec_model_switches_total", "Switches to a newly published model, by this worker."
)
READY = Gauge(
    "lrurec_ready", "1 when ready (model loaded, Redis answering).", multiprocess_mode="livemin"
)
INGEST_ENTRIES = Counter(
    "lrurec_ingest_entries_total",
    "Ingest stream entries by outcome: consumed (read), applied, duplicate, unknown_item, "
    "rejected (invalid: sent to the dead-letter stream), retried (Redis or the batch failed; "
    "read again).",
    ["outcome"],
)
INGEST_BATCH = Histogram(
    "lrurec_ingest_batch_size",
    "Entries per read: one XREADGROUP over a shard reader's shards.",
    buckets=BATCH_BUCKETS,
)
INGEST_LAG_ENTRIES = Gauge(
    "lrurec_ingest_lag_entries",
    "Entries of the shard not yet read by the consumer group (sampled; capped at 10,000).",
    ["shard"],
    multiprocess_mode="livemax",
)
INGEST_LAG_SECONDS = Gauge(
    "lrurec_ingest_lag_seconds",
    "Age of the oldest entry of the shard not yet read (0 when none; sampled).",
    ["shard"],
    multiprocess_mode="livemax",
)
INGEST_APPLY_SECONDS = Histogram(
    "lrurec_ingest_end_to_end_seconds",
    "From XADD (the entry id's time) to the event's state written, per applied entry.",
    buckets=LATENCY_BUCKETS,
)
INGEST_SHARDS = Gauge(
    "lrurec_ingest_shards_owned", "Ingest shards this consumer owns.", multiprocess_mode="livesum"
)
INGEST_OUTCOMES = ("consumed", "applied", "duplicate", "unknown_item", "rejected", "retried")

# Touch every labelled child so each series exists (at 0) from the first scrape.
for _outcome in EVENT_OUTCOMES:
    EVENTS.labels(_outcome)
for _kind in ERROR_KINDS:
    ERRORS.labels(_kind)
for _outcome in INGEST_OUTCOMES:
    INGEST_ENTRIES.labels(_outcome)
CACHE_FRESH, CACHE_STALE, CACHE_MISS = (STATE_CACHE.labels(o) for o in ("fresh", "stale", "miss"))
QUANTIZED_TWO_STAGE, QUANTIZED_FALLBACK = (
    QUANTIZED_ROWS.labels(p) for p in ("two_stage", "fallback")
)


@functools.cache
def http_histogram(route: str, method: str, status: str) -> Histogram:
    """The ``lrurec_http_request_duration_seconds`` child, looked up once.

    Bounded: route templates (never raw paths) × methods × status classes.
    """
    return HTTP_DURATION.labels(route, method, status)


@functools.cache
def event_counter(outcome: str) -> Counter:
    """The ``lrurec_events_total`` child of ``outcome``, looked up once."""
    return EVENTS.labels(outcome)


@functools.cache
def redis_histogram(operation: str) -> Histogram:
    """The ``lrurec_redis_seconds`` child of ``operation``, looked up once (``labels()`` costs
    microseconds per call)."""
    return REDIS_SECONDS.labels(operation)


def redis_timer(operation: str) -> AbstractContextManager[object]:
    """Context manager observing one Redis round trip into ``lrurec_redis_seconds``."""
    return redis_histogram(operation).time()


def multiprocess_enabled() -> bool:
    """Whether prometheus-client runs in multiprocess mode (its documented switch, read when
    it is imported)."""
    return MULTIPROCESS_ENV in os.environ


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

    In multiprocess mode a fresh registry reads every worker's files on each scrape.
    """
    encoder, content_type = choose_encoder(accept or "")
    return encoder(metrics_registry()), content_type


def metrics_registry() -> CollectorRegistry:
    """What a scrape reads: this process's registry, or in multiprocess mode a fresh one
    reading every worker's files."""
    if not multiprocess_enabled():
        return REGISTRY
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    return registry


def switch_model(
    old_version: str, model_version: str, model_type: str, backend: str, n_items: int
) -> None:
    """``lrurec_model_info`` names the new model; the old one's series drops to 0."""
    MODEL_SWITCHES.inc()
    set_model(model_version, model_type, backend, n_items)
    for metric in MODEL_INFO.collect():
        for sample in metric.samples:
            if sample.labels.get("model_version") == old_version:
                MODEL_INFO.labels(**sample.labels).set(0)


def set_model(model_version: str, model_type: str, backend: str, n_items: int) -> None:
    MODEL_INFO.labels(model_version, model_type, backend).set(1)
    MODEL_ITEMS.set(n_items)
