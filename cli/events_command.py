"""``lrurec events export``: the event log as a Parquet file that ``lrurec train --format events``
reads: columns ``user_id, item_id, timestamp, event_id``, one row per (user, event id), each
user's rows in time order.

Streaming: the log is read shard by shard, 10,000 entries per call, and each shard is written as
one Parquet row group. A user's entries are all in one shard, so de-duplication and ordering
need only one shard in memory at a time (about 1/16 of the log with the default 16 shards).
"""

import asyncio
from pathlib import Path
from typing import Annotated, Any

import typer
from tqdm import tqdm

from cli.serve_command import checked_redis
from service.settings import get_settings
from service.store import create_redis
from service.store.event_log import EventLog, LogEntry

app = typer.Typer(help="The event log: export what the service applied.", no_args_is_help=True)

COLUMNS = ("user_id", "item_id", "timestamp", "event_id")


def _parquet() -> Any:
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:  # the optional `train` extra
        raise typer.BadParameter(
            "writing Parquet needs pyarrow: pip install 'lrurec-service[train]'",
            param_hint="--out",
        ) from None
    return pa, pq


def shard_rows(entries: list[tuple[str, LogEntry]]) -> dict[str, list[Any]]:
    """One shard's log as columns: the first entry of each (user, event id) (every entry
    without an event id), each user's rows in time order (log order among equal times)."""
    seen: set[tuple[str, str]] = set()
    kept: list[tuple[str, float, int, LogEntry]] = []
    for position, (_, entry) in enumerate(entries):
        if entry.event_id:
            if (entry.user_id, entry.event_id) in seen:
                continue  # a retried event, logged twice
            seen.add((entry.user_id, entry.event_id))
        kept.append((entry.user_id, entry.timestamp, position, entry))
    kept.sort(key=lambda row: row[:3])
    return {
        "user_id": [row[3].user_id for row in kept],
        "item_id": [row[3].item_id for row in kept],
        "timestamp": [row[3].timestamp for row in kept],
        "event_id": [row[3].event_id for row in kept],
    }


async def _export(
    url: str, cluster: bool, prefix: str, shards: int, out: Path, since: float
) -> tuple[int, int]:
    pa, pq = _parquet()
    schema = pa.schema(
        [("user_id", pa.string()), ("item_id", pa.string()), ("timestamp", pa.float64()),
         ("event_id", pa.string())]
    )  # fmt: skip
    client = create_redis(url, 10.0, 2, 4, cluster)
    log = EventLog(client, prefix, shards, maxlen=0)
    read = written = 0
    try:
        total = sum([await log.length(shard) for shard in range(shards)])
        with (
            pq.ParquetWriter(out, schema) as writer,
            tqdm(total=total, unit="event", desc="export") as progress,
        ):
            for shard in range(shards):
                entries: list[tuple[str, LogEntry]] = []
                async for chunk in log.read(shard, since_ms=int(since * 1000)):
                    entries += chunk
                    progress.update(len(chunk))
                read += len(entries)
                columns = shard_rows(entries)
                written += len(columns["user_id"])
                writer.write_table(pa.table(columns, schema=schema))
    finally:
        await client.aclose()
    return read, written


@app.command("export")
def export(
    out: Annotated[Path, typer.Option(help="Parquet file to write.", dir_okay=False)],
    redis_url: Annotated[
        str | None,
        typer.Option(help="Redis URL. Default: LRUREC_REDIS_URL.", show_default=False),
    ] = None,
    redis_cluster: Annotated[
        bool | None,
        typer.Option(
            "--redis-cluster/--no-redis-cluster",
            help="The Redis URL names a node of a Redis Cluster. Default: LRUREC_REDIS_CLUSTER.",
            show_default=False,
        ),
    ] = None,
    since: Annotated[
        float, typer.Option(help="Only entries logged at or after this unix time (seconds).")
    ] = 0.0,
) -> None:
    """Export the event log to Parquet for `lrurec train --format events --data OUT`.

    One row per (user, event id): a retried event logged twice is exported once (events sent
    without an id are all kept). The key prefix and the number of shards come from
    LRUREC_KEY_PREFIX and LRUREC_LOG_SHARDS, as the service used them.
    """
    settings = get_settings()
    url = redis_url or settings.redis_url
    if url is None:
        raise typer.BadParameter("give --redis-url or LRUREC_REDIS_URL", param_hint="--redis-url")
    if since < 0:
        raise typer.BadParameter("a unix time is not negative", param_hint="--since")
    cluster = settings.redis_cluster if redis_cluster is None else redis_cluster
    checked_redis(url, cluster)
    _parquet()
    read, written = asyncio.run(
        _export(url, cluster, settings.key_prefix, settings.log_shards, out, since)
    )
    typer.echo(f"{out}: {written:,} events ({read - written:,} repeated deliveries dropped)")
