"""Server CPU per event of ``POST /events?k=10`` at a fixed open-loop rate, for one or more trees.

CPU time per event (user + system of the service's processes, and separately of the
redis-server) is the number least disturbed by other jobs on a shared machine, so hot-path
changes are compared with it. Each ``--tree`` is a checkout of this repository (for example a
``git worktree`` of an older commit); its service runs as that tree serves it (``lrurec serve``,
or granian on the app factory with ``--server granian``) with the tree first on ``PYTHONPATH``,
and the trees are measured in alternating rounds so that a change in machine load hits all of
them alike. The load comes from ``benchmarks.loadgen`` of *this* tree.

    git worktree add /tmp/before <commit>
    python -m benchmarks.service_cpu --tree /tmp/before --tree . --rate 400 --rounds 3
    python -m benchmarks.service_cpu --rate 600 --setting LRUREC_STATE_CACHE_USERS=0,4096
"""

import argparse
import itertools
import os
import statistics
import time
from pathlib import Path

from benchmarks.loadgen.artifacts import ML1M_ITEMS, bench_artifact
from benchmarks.loadgen.cpu import process_cpu
from benchmarks.loadgen.generator import LoadSpec, run_load
from benchmarks.loadgen.servers import HOST, READY_TIMEOUT, Server, running_service, wait_ready
from benchmarks.loadgen.sweep import run_on_uvloop
from benchmarks.loadgen.workload import event_requests, prefill
from cli.embedded_redis import EmbeddedRedis, free_port

REPO = Path(__file__).resolve().parents[1]

Variant = tuple[Path, tuple[tuple[str, str], ...]]
"""A tree and the ``LRUREC_*`` settings its service runs with."""


def cpu(service: int, redis: int | None) -> tuple[float, float]:
    """(service, redis-server) user + system CPU seconds."""
    return sum(process_cpu([service]).values()), sum(process_cpu([redis] if redis else []).values())


def measure(
    tree: Path, settings: dict[str, str], args: argparse.Namespace, artifact: Path
) -> dict[str, float]:
    port = free_port()
    spec = LoadSpec(rate=args.rate, duration=args.duration, warmup=1.0, drain_timeout=15.0)
    settings = {"LRUREC_BACKEND": args.backend, **settings}
    with (
        EmbeddedRedis() as redis,
        running_service(args.server, artifact, 1, port, redis.url, settings, tree) as server,
    ):
        wait_ready(server, port, 1, READY_TIMEOUT)
        item_ids = [str(index) for index in range(1, ML1M_ITEMS + 1)]
        prefill(port, item_ids, args.users, 10)
        requests = event_requests(item_ids, args.users, args.k)
        before = cpu(server.pid, redis.pid)
        result = run_on_uvloop(run_load([(HOST, port)], requests, spec))
        after = cpu(server.pid, redis.pid)
    sent = args.rate * (spec.duration + spec.warmup)
    return {
        "service_ms": (after[0] - before[0]) / sent * 1e3,
        "redis_ms": (after[1] - before[1]) / sent * 1e3,
        "client_ms": result.client_cpu_seconds / sent * 1e3,
        "achieved": result.achieved_rate,
        "p50_ms": result.percentile_ms(50),
        "p99_ms": result.percentile_ms(99),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--tree", type=Path, action="append", help="repository checkout(s)")
    parser.add_argument("--backend", default="auto", help="LRUREC_BACKEND of the service")
    parser.add_argument("--rate", type=float, default=400.0, help="offered events/s")
    parser.add_argument("--duration", type=float, default=8.0, help="measured seconds")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds")
    parser.add_argument("--users", type=int, default=1000)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument(
        "--server", type=Server, choices=list(Server), default=Server.UVICORN,
        help="HTTP server of the service (granian needs `pip install granian`)",
    )  # fmt: skip
    parser.add_argument(
        "--setting", action="append", default=[], metavar="NAME=V1[,V2...]",
        help="an LRUREC_* setting; several values = one variant each (e.g. "
        "LRUREC_STATE_CACHE_USERS=0,4096); repeatable, variants are all combinations",
    )  # fmt: skip
    args = parser.parse_args()
    trees = [tree.resolve() for tree in (args.tree or [REPO])]
    artifact = bench_artifact(REPO / "benchmarks" / "out" / "service_bench", "lrurec")
    variants = _variants(trees, args)
    samples: dict[Variant, list[dict[str, float]]] = {v: [] for v in variants}
    for _ in range(args.rounds):
        for tree, settings in variants:
            samples[(tree, settings)].append(measure(tree, dict(settings), args, artifact))
            time.sleep(1.0)
    print(
        f"rate {args.rate:.0f}/s, backend {args.backend}, server {args.server}, "
        f"load {os.getloadavg()}"
    )
    print("| tree | settings | service CPU ms/event | redis-server CPU ms/event | client CPU "
          "ms/event | achieved/s | p50 ms | p99 ms |")  # fmt: skip
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for (tree, settings), rows in samples.items():
        med = {key: statistics.median(row[key] for row in rows) for key in rows[0]}
        named = " ".join(f"{name}={value}" for name, value in settings) or "(defaults)"
        print(
            f"| {tree} | {named} | {med['service_ms']:.3f} | {med['redis_ms']:.3f} | "
            f"{med['client_ms']:.3f} | {med['achieved']:.0f} | {med['p50_ms']:.1f} | "
            f"{med['p99_ms']:.1f} |"
        )


def _variants(trees: list[Path], args: argparse.Namespace) -> list[Variant]:
    """Every tree with every combination of the settings' values."""
    choices: list[list[tuple[str, str]]] = []
    for setting in args.setting:
        name, _, values = setting.partition("=")
        choices.append([(name, value) for value in values.split(",")])
    return [(tree, combo) for tree in trees for combo in itertools.product(*choices)]


if __name__ == "__main__":
    main()
