"""``lrurec bench``: service-level open-loop sweep, or the model-level benchmark."""

import json
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Annotated

import typer

from cli.bench.artifacts import ML1M_ITEMS, MODELS, bench_artifact
from cli.bench.sweep import Row, SweepSpec, knee, sweep_configuration

DEFAULT_RATES = "100,200,400,700,1000,1500,2000,2500,3000,4000"


def _model_level(extra: list[str]) -> None:
    # benchmarks/ is a repository directory, not part of the installed package: found from the
    # current directory when that is a checkout.
    if (Path.cwd() / "benchmarks" / "bench_model.py").is_file() and str(Path.cwd()) not in sys.path:
        sys.path.append(str(Path.cwd()))
    try:
        from benchmarks import bench_model
    except ImportError:
        typer.echo(
            "model-level benchmark skipped: benchmarks/bench_model.py is not importable "
            "(run from a repository checkout)"
        )
        return
    sys.argv = ["bench_model", *extra]
    bench_model.main()


def _table(rows: list[Row]) -> str:
    columns = list(rows[0])
    lines = ["| " + " | ".join(columns) + " |", "|" + " --- |" * len(columns)]
    lines += ["| " + " | ".join(str(row[c]) for c in columns) + " |" for row in rows]
    return "\n".join(lines)


def bench(
    ctx: typer.Context,
    model_level: Annotated[
        bool,
        typer.Option(
            "--model-level",
            help="Run benchmarks/bench_model.py (step+top-k vs SASRec recompute, "
            "catalogue scaling, cumulative-time figure); extra arguments go to it.",
        ),
    ] = False,
    service: Annotated[
        bool,
        typer.Option(
            "--service", help="Open-loop sweep of POST /events against `lrurec serve` subprocesses."
        ),
    ] = False,
    models: Annotated[str, typer.Option(help=f"Comma list from {MODELS}.")] = "lrurec,sasrec",
    workers: Annotated[str, typer.Option(help="Comma list of worker counts.")] = "1,2",
    rates: Annotated[
        str,
        typer.Option(
            help="Offered events/s, rising; a configuration stops at its first saturated rate."
        ),
    ] = DEFAULT_RATES,
    duration: Annotated[float, typer.Option(min=1, help="Measured seconds per rate.")] = 8.0,
    warmup: Annotated[float, typer.Option(min=0, help="Unmeasured seconds per rate.")] = 2.0,
    k: Annotated[int, typer.Option(min=0, help="Top-k returned per event.")] = 10,
    users: Annotated[int, typer.Option(min=1, help="Distinct users (pre-filled).")] = 1000,
    slo_p99_ms: Annotated[float, typer.Option(help="p99 objective defining the knee.")] = 15.0,
    schedule: Annotated[str, typer.Option(help="Arrivals: poisson or uniform.")] = "poisson",
    lrurec_backend: Annotated[
        str,
        typer.Option(
            help="LRUREC_BACKEND of the LRURec servers: numba (fastest on CPU), onnx or torch. "
            "SASRec recompute always runs in torch."
        ),
    ] = "numba",
    replicas: Annotated[
        int,
        typer.Option(
            min=0,
            help="Also run N single-worker `lrurec serve` replicas on their own ports sharing "
            "one redis-server, connections spread evenly (0 = skip). uvicorn's workers share "
            "one listening socket, so keep-alive connections can pile onto one worker.",
        ),
    ] = 2,
    micro_batch: Annotated[
        bool,
        typer.Option(
            help="LRUREC_MICRO_BATCH of every server: batch concurrent events' model calls."
        ),
    ] = False,
    ingest: Annotated[
        bool,
        typer.Option(
            help="Send the events to each server's ingest port (LRUREC_INGEST_PORT: POST "
            "/events over the service's own lean HTTP/1.1 protocol) instead of the main port."
        ),
    ] = False,
    keyed: Annotated[
        bool,
        typer.Option(
            help="Send each user's events over one connection, in order (as a consumer of a "
            "stream partitioned by user does), instead of over any free one. With several "
            "workers each connection stays on one of them, so a user's events meet the state "
            "that worker cached; unkeyed, they land on different workers and are read again.",
        ),
    ] = False,
    out: Annotated[Path, typer.Option(help="Artifacts and results JSON go here.")] = Path(
        "benchmarks/out/service_bench"
    ),
    plot: Annotated[
        Path | None, typer.Option(help="PNG of latency percentiles vs offered rate.")
    ] = None,
) -> None:
    """Benchmarks. --service: an open-loop load generator offers fixed arrival rates (latency
    counted from each request's intended send time, so queueing is never hidden) to `lrurec
    serve` with 1 and 2 workers, LRURec vs SASRec recompute (random weights, 3,416 items,
    max_len 200, embedded Redis on loopback), and reports achieved vs offered rate,
    p50/p90/p99/p99.9/max, errors and the knee. --model-level: per-event model timings."""
    if not (model_level or service):
        raise typer.BadParameter("choose --service and/or --model-level")
    if model_level:
        _model_level(list(ctx.args))
    if not service:
        return
    spec = SweepSpec(
        rates=tuple(float(rate) for rate in rates.split(",")),
        duration=duration,
        warmup=warmup,
        k=k,
        users=users,
        slo_p99_ms=slo_p99_ms,
        schedule=schedule,
        keyed=keyed,
    )
    layouts = [(f"{w} worker{'s' if int(w) > 1 else ''}", int(w), 1) for w in workers.split(",")]
    if replicas > 1:
        layouts.append((f"{replicas} replicas", 1, replicas))
    sweeps = _sweep_all(models.split(","), layouts, lrurec_backend, micro_batch, spec, out, ingest)
    # What produced the rows goes with them, so a sweep.json can be compared and re-run.
    setup = {**asdict(spec), "ingest": ingest, "micro_batch": micro_batch,
             "lrurec_backend": lrurec_backend}  # fmt: skip
    results = {
        f"{m}/{w}": {"rows": r, "knee": knee(r, slo_p99_ms), "setup": setup}
        for (m, w), r in sweeps.items()
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / "sweep.json").write_text(json.dumps(results, indent=2) + "\n")
    if plot is not None:
        from cli.bench.plot import plot_sweeps

        plot_sweeps(plot, sweeps, slo_p99_ms)
        typer.echo(f"plot: {plot}")


def _sweep_all(
    models: list[str], layouts: list[tuple[str, int, int]], lrurec_backend: str,
    micro_batch: bool, spec: SweepSpec, out: Path, ingest: bool = False,
) -> dict[tuple[str, str], list[Row]]:  # fmt: skip
    """Every (model, layout) configuration in turn, each printed as it completes.

    A layout is ``(label, workers per process, processes)``.
    """
    item_ids = [str(index) for index in range(1, ML1M_ITEMS + 1)]
    sweeps: dict[tuple[str, str], list[Row]] = {}
    for model in models:
        artifact = bench_artifact(out, model)
        backend = lrurec_backend if model == "lrurec" else "torch"
        for label, workers, replicas in layouts:
            batching = ", micro-batching" if micro_batch else ""
            batching += ", ingest port" if ingest else ""
            batching += ", keyed connections" if spec.keyed else ""
            typer.echo(f"\n## {model} ({backend}{batching}), {label}")
            settings = {"LRUREC_BACKEND": backend, "LRUREC_MICRO_BATCH": str(micro_batch).lower()}
            rows = sweep_configuration(
                artifact, workers, replicas, settings, item_ids, spec,
                lambda row: typer.echo(json.dumps(row)), ingest,
            )  # fmt: skip
            sweeps[(model, label)] = rows
            typer.echo(_table(rows))
            typer.echo(f"knee (p99 ≤ {spec.slo_p99_ms} ms): {knee(rows, spec.slo_p99_ms)} events/s")
    return sweeps
