"""Server CPU per event of ``POST /events?k=10`` at a fixed open-loop rate, for one or more trees.

CPU time per event (user + system of the uvicorn worker, and separately of its embedded
redis-server) is the number least disturbed by other jobs on a shared machine, so hot-path
changes are compared with it. Each ``--tree`` is a checkout of this repository (for example a
``git worktree`` of an older commit); its service runs under plain uvicorn with that tree first on
``PYTHONPATH``, and the trees are measured in alternating rounds so that a change in machine load
hits all of them alike. The load comes from ``cli.bench.loadgen`` of *this* tree.

    git worktree add /tmp/before <commit>
    python -m benchmarks.service_cpu --tree /tmp/before --tree . --rate 400 --rounds 3
    python -m benchmarks.service_cpu --rate 600 --setting LRUREC_STATE_CACHE_USERS=0,4096
"""

import argparse
import itertools
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import psutil

from cli.bench.artifacts import bench_artifact
from cli.bench.loadgen import LoadSpec, run_load
from cli.bench.sweep import HOST, event_requests, prefill, run_on_uvloop, wait_ready
from service.embedded_redis import free_port

REPO = Path(__file__).resolve().parents[1]
SERVE = """
import sys, uvicorn
try:
    from service.http_protocol import HTTP_PROTOCOL as http
except ImportError:
    http = "auto"
uvicorn.run("service.main:create_app", factory=True, port=int(sys.argv[1]), http=http,
            access_log=False, log_level="warning")
"""


Variant = tuple[Path, tuple[tuple[str, str], ...]]
"""A tree and the ``LRUREC_*`` settings its service runs with."""


def start(
    tree: Path, artifact: Path, backend: str, port: int, settings: dict[str, str]
) -> subprocess.Popen[bytes]:
    env = {
        **os.environ, "PYTHONPATH": str(tree), "LRUREC_ARTIFACT": str(artifact),
        "LRUREC_BACKEND": backend, **settings,
    }  # fmt: skip
    env.pop("LRUREC_REDIS_URL", None)  # the app starts its own embedded redis-server
    # uvicorn as `lrurec serve` runs it: with the tree's own HTTP protocol class when it has one.
    command = [sys.executable, "-c", SERVE, str(port)]
    return subprocess.Popen(command, cwd=tree, env=env)


def cpu(process: psutil.Process) -> tuple[float, float]:
    """(worker, children) user + system CPU seconds."""
    own = process.cpu_times()
    children = sum(sum(c.cpu_times()[:2]) for c in process.children(recursive=True))
    return own.user + own.system, children


def measure(
    tree: Path, settings: dict[str, str], args: argparse.Namespace, artifact: Path
) -> dict[str, float]:
    port = free_port()
    server = start(tree, artifact, args.backend, port, settings)
    try:
        wait_ready(server, port, 1, timeout=180.0)
        item_ids = [str(index) for index in range(1, 3417)]
        prefill(port, item_ids, args.users, 10)
        requests = event_requests(item_ids, args.users, args.k)
        process = psutil.Process(server.pid)
        spec = LoadSpec(rate=args.rate, duration=args.duration, warmup=1.0, drain_timeout=15.0)
        before = cpu(process)
        result = run_on_uvloop(run_load([(HOST, port)], requests, spec))
        after = cpu(process)
    finally:
        server.terminate()
        server.wait(timeout=30)
    sent = args.rate * (spec.duration + spec.warmup)
    return {
        "worker_ms": (after[0] - before[0]) / sent * 1e3,
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
        "--micro-batch", choices=["off", "on", "both"], default=None,
        help="LRUREC_MICRO_BATCH of the service; both = measure each tree with and without",
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
    print(f"rate {args.rate:.0f}/s, backend {args.backend}, load {os.getloadavg()}")
    print("| tree | settings | worker CPU ms/event | redis-server CPU ms/event | client CPU "
          "ms/event | achieved/s | p50 ms | p99 ms |")  # fmt: skip
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for (tree, settings), rows in samples.items():
        med = {key: statistics.median(row[key] for row in rows) for key in rows[0]}
        named = " ".join(f"{name}={value}" for name, value in settings) or "(defaults)"
        print(
            f"| {tree} | {named} | {med['worker_ms']:.3f} | {med['redis_ms']:.3f} | "
            f"{med['client_ms']:.3f} | {med['achieved']:.0f} | {med['p50_ms']:.1f} | "
            f"{med['p99_ms']:.1f} |"
        )


def _variants(trees: list[Path], args: argparse.Namespace) -> list[Variant]:
    """Every tree with every combination of the settings' values."""
    choices: list[list[tuple[str, str]]] = []
    if args.micro_batch is not None:
        values = {"off": ["false"], "on": ["true"], "both": ["false", "true"]}[args.micro_batch]
        choices.append([("LRUREC_MICRO_BATCH", value) for value in values])
    for setting in args.setting:
        name, _, values = setting.partition("=")
        choices.append([(name, value) for value in values.split(",")])
    return [(tree, combo) for tree in trees for combo in itertools.product(*choices)]


if __name__ == "__main__":
    main()
