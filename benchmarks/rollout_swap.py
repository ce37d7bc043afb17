"""A model switch under open-loop load: ``lrurec serve --workers 2`` serves model A, events
arrive at a fixed rate, ``lrurec publish`` records model B mid-run. After a 5 s warm-up at the
same rate, reports failed requests, latency percentiles before, during (publish until every
worker answers with B, plus 2 s) and after the switch, and the time from publish to every
worker on B.

Both models have ML-1M's shape (3,416 items, d = 64, 2 layers; random weights). Every answer
names the model that computed it (``model_version``), which tells when each worker switched.

    python -m benchmarks.rollout_swap
    python -m benchmarks.rollout_swap --rate 1000 --seconds 30 --publish-at 10
"""

import argparse
import asyncio
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np

from benchmarks.loadgen.artifacts import ML1M_ITEMS
from benchmarks.timing import machine_probe
from cli.embedded_redis import EmbeddedRedis, free_port
from model import LRURec, LRURecConfig, save_artifact

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


Answer = tuple[float, float, int, str]
"""(seconds after the start it was due, latency seconds, status, model version)."""


async def open_loop(base_url: str, rate: float, seconds: float) -> list[Answer]:
    answers: list[Answer] = []
    limits = httpx.Limits(max_connections=128)
    async with httpx.AsyncClient(base_url=base_url, timeout=10.0, limits=limits) as client:

        async def send(n: int, due: float, started: float) -> None:
            event = {"user_id": f"user-{n % 2000}", "item_id": str(n % ML1M_ITEMS + 1)}
            try:
                response = await client.post("/events", json=event, params={"k": 10})
                status = response.status_code
                version = response.json().get("model_version", "") if status == 200 else ""
            except httpx.HTTPError:
                status, version = 0, ""
            answers.append((due, time.monotonic() - started - due, status, version))

        tasks, started, sent = [], time.monotonic(), 0
        while (elapsed := time.monotonic() - started) < seconds:
            while sent < elapsed * rate:
                tasks.append(asyncio.create_task(send(sent, sent / rate, started)))
                sent += 1
            await asyncio.sleep(0.001)
        await asyncio.gather(*tasks)
    return answers


def lrurec(*arguments: str) -> None:
    command = [sys.executable, "-c", "from cli.main import app; app()", *arguments]
    subprocess.run(command, cwd=REPO, check=True, capture_output=True)


def percentiles(answers: list[Answer]) -> str:
    if not answers:
        return "no requests"
    latencies = np.array([latency for _, latency, _, _ in answers]) * 1000
    p50, p99 = np.percentile(latencies, [50, 99])
    return f"{len(answers):,} requests, p50 {p50:.1f} ms, p99 {p99:.1f} ms"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rate", type=float, default=1000.0, help="events/s offered")
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--publish-at", type=float, default=10.0, help="seconds into the run")
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
            asyncio.run(open_loop(base_url, args.rate, 5.0))  # warm-up: every worker compiled
            published: list[float] = []

            async def run() -> list[Answer]:
                load = asyncio.create_task(open_loop(base_url, args.rate, args.seconds))
                await asyncio.sleep(args.publish_at)
                published.append(time.monotonic())
                await asyncio.to_thread(
                    lrurec, "publish", "--artifact", str(model_b), "--redis-url", server.url
                )
                return await load

            started = time.monotonic()
            answers = asyncio.run(run())
        finally:
            serve.terminate()
            serve.wait(timeout=30)
    publish_at = published[0] - started
    versions = {version for *_, version in answers if version}
    version_b = next(v for *_, v in reversed(answers) if v)
    last_a = max((due for due, _, _, v in answers if v and v != version_b), default=publish_at)
    failed = sum(1 for _, _, status, _ in answers if status != 200)
    print(f"load average {os.getloadavg()}; {len(versions)} model versions answered")
    print(f"offered {args.rate:,.0f}/s for {args.seconds:.0f} s; publish at {publish_at:.1f} s; "
          f"last answer from A for an event due at {last_a:.1f} s: every worker on B "
          f"{last_a - publish_at:.1f} s after publish")  # fmt: skip
    print(f"failed requests: {failed}")
    print("before:", percentiles([a for a in answers if a[0] < publish_at]))
    print("during:", percentiles([a for a in answers if publish_at <= a[0] <= last_a + 2]))
    print("after: ", percentiles([a for a in answers if a[0] > last_a + 2]))


if __name__ == "__main__":
    main()
