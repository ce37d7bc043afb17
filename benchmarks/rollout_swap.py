"""A model switch under open-loop load: ``lrurec serve --workers 2`` serves model A while
``benchmarks.loadgen`` offers ``POST /events?k=10`` at a fixed rate; the same run is made
twice, without and with ``lrurec publish`` of model B a third of the way in. Reports failed
requests and latency percentiles of both runs, and the time from publish until 20 readiness
answers in a row (from either worker) name B.

Both models have ML-1M's shape (3,416 items, d = 64, 2 layers; random weights).

    python -m benchmarks.rollout_swap
    python -m benchmarks.rollout_swap --rate 1000 --seconds 30
"""

import argparse
import asyncio
import os
import subprocess
import sys
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import httpx

from benchmarks.loadgen.artifacts import ML1M_ITEMS
from benchmarks.loadgen.generator import run_load
from benchmarks.loadgen.load_spec import LoadResult, LoadSpec
from benchmarks.loadgen.servers import HOST
from benchmarks.loadgen.workload import event_requests
from benchmarks.timing import machine_probe
from cli.embedded_redis import EmbeddedRedis, free_port
from model import LRURec, LRURecConfig, load_artifact, save_artifact

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "benchmarks" / "out" / "rollout"


def model_artifact(name: str, seed: int) -> Path:
    directory = OUT / name
    if not (directory / "config.json").is_file():
        import torch

        torch.manual_seed(seed)
        model = LRURec(LRURecConfig(n_items=ML1M_ITEMS, d_model=64, n_layers=2, max_len=200))
        items = [str(n) for n in range(1, ML1M_ITEMS + 1)]
        popularity = torch.ones(ML1M_ITEMS + 1)
        save_artifact(directory, model.eval(), items, popularity, {"source": "benchmark"})
    return directory


def every_worker_on(base_url: str, version: str, in_a_row: int = 20) -> bool:
    """``in_a_row`` readiness answers in a row name ``version`` (each may reach either worker)."""
    for _ in range(in_a_row):
        if httpx.get(f"{base_url}/readyz").json()["model_version"] != version:
            return False
    return True


async def loaded_run(
    port: int, spec: LoadSpec, swap: Callable[[], float] | None
) -> tuple[LoadResult, float | None]:
    """One open-loop run (benchmarks.loadgen); with ``swap``, it runs mid-way in a thread and
    returns the seconds from publish to every worker on B."""
    requests = event_requests([str(n) for n in range(1, ML1M_ITEMS + 1)], 2000, 10)
    load = asyncio.create_task(run_load([(HOST, port)], requests, spec))
    switched = None
    if swap is not None:
        await asyncio.sleep(spec.warmup + spec.duration / 3)
        switched = await asyncio.to_thread(swap)
    return await load, switched


def lrurec(*arguments: str) -> None:
    command = [sys.executable, "-c", "from cli.main import app; app()", *arguments]
    subprocess.run(command, cwd=REPO, check=True, capture_output=True)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rate", type=float, default=1000.0, help="events/s offered")
    parser.add_argument("--seconds", type=float, default=30.0)
    args = parser.parse_args()
    print(machine_probe())
    model_a, model_b = model_artifact("a", 0), model_artifact("b", 1)
    port = free_port()
    with EmbeddedRedis() as server:
        lrurec("publish", "--artifact", str(model_a), "--redis-url", server.url)
        env = {**os.environ, "LRUREC_MODEL_POLL_SECONDS": "5"}
        serve = subprocess.Popen(
            [sys.executable, "-c", "from cli.main import app; app()", "serve", "--artifact",
             str(model_a), "--redis-url", server.url, "--workers", "2", "--port", str(port),
             "--log-level", "warning", "--no-access-log"],
            cwd=REPO, env=env,
        )  # fmt: skip
        base_url = f"http://127.0.0.1:{port}"
        try:
            for _ in range(600):
                try:
                    if httpx.get(f"{base_url}/readyz").status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                time.sleep(0.2)
            spec = LoadSpec(rate=args.rate, duration=args.seconds, warmup=3.0, drain_timeout=15.0)
            baseline, _ = run_on_uvloop_pair(loaded_run(port, spec, None))

            def swap() -> float:
                published = time.monotonic()
                lrurec("publish", "--artifact", str(model_b), "--redis-url", server.url)
                version_b = load_artifact(str(model_b)).version
                while not every_worker_on(base_url, version_b):
                    time.sleep(0.05)
                return time.monotonic() - published

            swapped, switched = run_on_uvloop_pair(loaded_run(port, spec, swap))
        finally:
            serve.terminate()
            serve.wait(timeout=30)
    print(f"load average {os.getloadavg()}")
    print(f"offered {args.rate:,.0f} events/s (k=10) for {args.seconds:.0f} s, 2 workers")
    for name, result in (("without a switch", baseline), ("with a switch", swapped)):
        p50, p99 = result.percentile_ms(50), result.percentile_ms(99)
        print(f"{name}: {result.errors} failed, achieved {result.achieved_rate:,.0f}/s, "
              f"p50 {p50:.1f} ms, p99 {p99:.1f} ms")  # fmt: skip
    print(f"publish -> every worker on B: {switched:.1f} s")


def run_on_uvloop_pair(
    coroutine: Coroutine[Any, Any, tuple[LoadResult, float | None]],
) -> tuple[LoadResult, float | None]:
    """On uvloop, as benchmarks.loadgen runs its loads (asyncio's own loop where it is absent)."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coroutine)
    return uvloop.run(coroutine)


if __name__ == "__main__":
    main()
