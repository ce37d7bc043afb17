"""Service settings: the one place that reads the environment (prefix ``LRUREC_``)."""

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

MAX_K = 1000
"""Largest ``k`` a request may ask for (the issue's contract)."""

MAX_BATCH = 1000
"""Largest ``POST /events/batch`` the API accepts; ``max_batch_size`` may lower it."""


class Settings(BaseSettings):
    """Every knob of the serving process, validated once at start-up.

    Environment variables are the field names upper-cased with the ``LRUREC_`` prefix,
    e.g. ``LRUREC_REDIS_URL``, ``LRUREC_API_KEY``.
    """

    model_config = SettingsConfigDict(env_prefix="LRUREC_", extra="ignore", frozen=True)

    artifact: Path | None = Field(
        default=None, description="Artifact directory; `lrurec serve` builds a demo one if unset."
    )
    redis_url: str | None = Field(
        default=None,
        description="redis://, rediss:// or unix:// URL (required by the app; `lrurec serve` "
        "starts a private embedded redis-server on loopback when it is unset).",
    )
    redis_cluster: bool = Field(
        default=False,
        description="`redis_url` names a node of a Redis Cluster (any one; the others are "
        "discovered). Start-up fails with what to change when this disagrees with the node.",
    )
    redis_wait_replicas: int = Field(
        default=0,
        ge=0,
        le=16,
        description="Acknowledge an event only once this many replicas of its Redis master "
        "hold it (the `WAIT` command after each write; 0 = off: Redis replicates "
        "asynchronously, so a failover can lose writes acknowledged just before it). A write "
        "not confirmed within `redis_wait_timeout_ms` is answered 503, to be retried with its "
        "event id.",
    )
    redis_wait_timeout_ms: int = Field(default=500, ge=1, le=60_000)
    key_prefix: str = Field(default="lrurec", min_length=1, pattern=r"^[A-Za-z0-9_.-]+$")
    backend: str = Field(
        default="auto",
        description="Model runtime: `numba` (compiled step and top-k; LRURec on the CPU; the "
        "fastest per event), `onnx` (onnxruntime; LRURec; its intra-op threads follow "
        "`torch_threads`), `torch` (any model, CPU or CUDA), or `auto`: numba where it "
        "applies, torch otherwise.",
    )
    device: Literal["cpu", "cuda"] = "cpu"
    torch_threads: int = Field(
        default=1,
        ge=1,
        le=256,
        description="CPU threads per worker for torch, onnxruntime and numpy's BLAS (the "
        "numba kernels use one); 1 suits several workers on few cores.",
    )
    user_ttl_seconds: int = Field(
        default=30 * 24 * 3600,
        ge=0,
        description="Idle time before a user's keys expire; 0 = never.",
    )
    api_key: SecretStr | None = Field(
        default=None, description="If set, write and admin endpoints need header X-API-Key."
    )
    default_k: int = Field(default=10, ge=1, le=MAX_K)
    cold_start: Literal["model", "popularity"] = "model"
    max_batch_size: int = Field(default=MAX_BATCH, ge=1, le=MAX_BATCH)
    max_body_bytes: int = Field(default=1 << 20, ge=1024)
    max_event_ids: int = Field(
        default=1000, ge=1, description="Event ids remembered per user for de-duplication."
    )
    batch_events: bool = Field(
        default=True,
        description="Apply the concurrent events of users this worker wrote last in batches: "
        "one model call and one pipelined Redis round trip per event-loop iteration, or per "
        "batch that comes back under load (same results; false: each event on its own, the "
        "reference path).",
    )
    quantized_scoring: Literal["auto", "on", "off"] = Field(
        default="auto",
        description="Exact top-k through an int8 scan of the item table and a float32 re-score "
        "of the candidates (same results; measured 2.3x faster than onnxruntime's float32 scan "
        "at 1M items, batch 1); `auto` = on from `quantized_min_items` items, CPU only. "
        "Resident extra at 1M x 64 items: about 220 MB (int8 codes, onnxruntime's copy, a 64 MB "
        "score buffer) next to the 256 MB float32 table.",
    )
    quantized_min_items: int = Field(default=50_000, ge=1)
    state_cache_users: int = Field(
        default=4096,
        ge=0,
        description="Users whose record this worker keeps as it last wrote it, so their next "
        "event skips the Redis read (the write still checks version and writer token); "
        "0 = read every time. Memory: ~3 KB + max_len item ids per user.",
    )
    cas_max_retries: int = Field(default=32, ge=1, le=1000)
    batch_concurrency: int = Field(default=16, ge=1, le=256)
    redis_timeout_seconds: float = Field(default=2.0, gt=0)
    redis_retries: int = Field(default=2, ge=0, le=10)
    redis_max_connections: int = Field(default=64, ge=2)
    model_poll_seconds: float = Field(
        default=5.0,
        ge=0,
        description="How often each worker reads the model `lrurec publish` recorded as "
        "current (`<prefix>:model:current`) and switches to it when it changed; 0 = never.",
    )
    log_shards: int = Field(
        default=16,
        ge=1,
        le=1024,
        description="Event log streams `<prefix>:v1:log:{<shard>}` (shard = crc32(user id) % "
        "this); `lrurec events export` must be given the same number.",
    )
    log_maxlen: int = Field(
        default=100_000,
        ge=0,
        description="Entries kept per event-log shard, approximately (XADD MAXLEN ~); 0 = no "
        "log. Each entry costs about 75 B of Redis memory, so the default keeps about 1.6M "
        "events in about 120 MB.",
    )
    ingest_shards: int = Field(
        default=16,
        ge=1,
        le=1024,
        description="Ingest streams `<prefix>:v1:ingest:{<shard>}`; a user's events go to shard "
        "crc32(user id) % this. Producers and consumers must agree on it.",
    )
    ingest_claim_ms: int = Field(
        default=10_000,
        ge=100,
        description="`lrurec consume`: a shard whose owner has not renewed its lease for this "
        "long is taken over, with the entries it was delivered and did not acknowledge.",
    )
    ingest_batch_size: int = Field(
        default=256,
        ge=1,
        le=MAX_BATCH,
        description="`lrurec consume`: entries read from each shard at once (XREADGROUP COUNT).",
    )
    ingest_gc_threshold: int = Field(
        default=20_000,
        ge=0,
        description="`lrurec consume`: once the model is loaded, freeze the start-up objects "
        "and collect the young generation every this many net allocations (Python: 700); 0 "
        "leaves Python's collector as it is. About a fifth more events/s measured.",
    )
    ingest_block_ms: int = Field(
        default=100,
        ge=1,
        le=10_000,
        description="`lrurec consume`: how long a read waits for new entries.",
    )
    metrics_dir: Path | None = Field(
        default=None,
        description="Prometheus multiprocess directory for `lrurec serve --workers N` "
        "(emptied at start); a temporary one when unset.",
    )


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process's settings from the environment (cached; tests pass their own instead)."""
    return Settings()
