"""Open-loop service benchmark: rising fixed arrival rates of ``POST /events`` against the service.

An open-loop load generator offers each rate (Poisson or uniform arrivals; latency counted from
each request's intended send time, so queueing is never hidden) to the service on loopback, for
every model × layout: LRURec against SASRec recompute (random weights, 3,416 items, max_len 200),
1 and 2 workers, and N single-worker replicas on their own ports sharing one redis-server. Each
row reports achieved vs offered rate, p50/p90/p99/p99.9/max, errors, server CPU per event and
the share of host CPU stolen; each configuration its knee. Results go to ``<out>/sweep.json``
with what produced them, the latency plot to ``<out>/latency.png``.

Run from a repository checkout:

    python -m benchmarks.openloop --models lrurec --workers 1 --replicas 0 \\
        --rates 3000,3000,3000 --duration 8 --warmup 2 --out benchmarks/out/service_bench
"""

import json
from dataclasses import asdict
from pathlib import Path
from typing import Annotated

import typer

from benchmarks.loadgen.artifacts import ML1M_ITEMS, MODELS, bench_artifact
from benchmarks.loadgen.plot import plot_sweeps
from benchmarks.loadgen.servers import Server
from benchmarks.loadgen.sweep import Layout, Row, SweepSpec, knee, sweep_configuration

DEFAULT_RATES = "100,200,400,700,1000,1500,2000,2500,3000,4000"


def table(rows: list[Row]) -> str:
    """``rows`` as a Markdown table."""
    columns = list(rows[0])
    lines = ["| " + " | ".join(columns) + " |", "|" + " --- |" * len(columns)]
    lines += ["| " + " | ".join(str(row[c]) for c in columns) + " |" for row in rows]
    return "\n".join(lines)


def layouts(workers: str, replicas: int) -> list[Layout]:
    """One layout per worker count of ``workers`` (a comma list), and ``replicas`` if > 1."""
    found = [Layout(f"{w} worker{'s' if int(w) > 1 else ''}", int(w)) for w in workers.split(",")]
    if replicas > 1:
        found.append(Layout(f"{replicas} replicas", 1, replicas))
    return found


def openloop(
    models: Annotated[str, typer.Option(help=f"Comma list from {MODELS}.")] = "lrurec,sasrec",
    workers: Annotated[
        str, typer.Option(help="Comma list of worker counts, one service each.")
    ] = "1,2",
    replicas: Annotated[
        int,
        typer.Option(
            min=0,
            help="Also run N single-worker services on their own ports sharing one "
            "redis-server, connections spread evenly (0 or 1 = skip). A server's workers share "
            "one listening socket, so keep-alive connections can pile onto one worker.",
        ),
    ] = 2,
    server: Annotated[
        Server,
        typer.Option(
            help="HTTP server of the service: uvicorn (`lrurec serve`) or granian (its ASGI "
            "interface on the app factory; needs `pip install granian`)."
        ),
    ] = Server.UVICORN,
    rates: Annotated[
        str,
        typer.Option(
            help="Offered events/s, rising; a configuration stops at its first saturated rate."
        ),
    ] = DEFAULT_RATES,
    duration: Annotated[float, typer.Option(min=1, help="Measured seconds per rate.")] = 8.0,
    warmup: Annotated[float, typer.Option(min=0, help="Unmeasured seconds per rate.")] = 2.0,
    schedule: Annotated[str, typer.Option(help="Arrivals: poisson or uniform.")] = "poisson",
    keyed: Annotated[
        bool,
        typer.Option(
            help="Send each user's events over one connection, in order (as a consumer of a "
            "stream partitioned by user does), instead of over any free one. With several "
            "workers each connection stays on one of them, so a user's events meet the state "
            "that worker cached; unkeyed, they land on different workers and are read again.",
        ),
    ] = False,
    k: Annotated[int, typer.Option(min=0, help="Top-k returned per event.")] = 10,
    users: Annotated[int, typer.Option(min=1, help="Distinct users (pre-filled).")] = 1000,
    slo_p99_ms: Annotated[float, typer.Option(help="p99 objective defining the knee.")] = 15.0,
    lrurec_backend: Annotated[
        str,
        typer.Option(
            help="LRUREC_BACKEND of the LRURec services: numba (fastest on CPU), onnx or torch. "
            "SASRec recompute always runs in torch."
        ),
    ] = "numba",
    out: Annotated[
        Path, typer.Option(help="Artifacts, sweep.json and latency.png go here.")
    ] = Path("benchmarks/out/service_bench"),
    plot: Annotated[
        Path | None,
        typer.Option(help="PNG of latency percentiles vs offered rate. Default: <out>/latency.png"),
    ] = None,
) -> None:
    """Open-loop sweep of POST /events: achieved rate, latency percentiles and server CPU per
    event at each offered rate, and the knee (the highest rate sustained with p99 within
    --slo-p99-ms), per model and layout."""
    spec = SweepSpec(
        rates=tuple(float(rate) for rate in rates.split(",")), duration=duration, warmup=warmup,
        k=k, users=users, slo_p99_ms=slo_p99_ms, schedule=schedule, keyed=keyed, server=server,
    )  # fmt: skip
    sweeps = sweep_all(models.split(","), layouts(workers, replicas), lrurec_backend, spec, out)
    # What produced the rows goes with them, so a sweep.json can be compared and re-run.
    setup = {**asdict(spec), "lrurec_backend": lrurec_backend}
    results = {
        f"{m}/{w}": {"rows": r, "knee": knee(r, slo_p99_ms), "setup": setup}
        for (m, w), r in sweeps.items()
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / "sweep.json").write_text(json.dumps(results, indent=2) + "\n")
    plot_sweeps(plot or out / "latency.png", sweeps, slo_p99_ms)
    typer.echo(f"results: {out / 'sweep.json'}, plot: {plot or out / 'latency.png'}")


def sweep_all(
    models: list[str], configurations: list[Layout], lrurec_backend: str, spec: SweepSpec,
    out: Path,
) -> dict[tuple[str, str], list[Row]]:  # fmt: skip
    """Every (model, layout) configuration in turn, each printed as it completes."""
    item_ids = [str(index) for index in range(1, ML1M_ITEMS + 1)]
    sweeps: dict[tuple[str, str], list[Row]] = {}
    for model in models:
        artifact = bench_artifact(out, model)
        backend = lrurec_backend if model == "lrurec" else "torch"
        for layout in configurations:
            keyed = ", keyed connections" if spec.keyed else ""
            typer.echo(f"\n## {model} ({backend}, {spec.server}{keyed}), {layout.label}")
            rows = sweep_configuration(
                artifact, layout, {"LRUREC_BACKEND": backend}, item_ids, spec,
                lambda row: typer.echo(json.dumps(row)),
            )  # fmt: skip
            sweeps[(model, layout.label)] = rows
            typer.echo(table(rows))
            typer.echo(f"knee (p99 ≤ {spec.slo_p99_ms} ms): {knee(rows, spec.slo_p99_ms)} events/s")
    return sweeps


app = typer.Typer(add_completion=False, pretty_exceptions_show_locals=False)
app.command(help=__doc__)(openloop)

if __name__ == "__main__":
    app()
