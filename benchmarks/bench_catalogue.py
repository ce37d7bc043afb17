"""Catalogue scaling: LRURec step + EXACT top-10 at 100k and 1M items, fp32 vs int8.

Cases, each at batch 1 and 64, timed in alternating rounds (so machine load hits them alike):

- ``exact fp32 (onnxruntime)``: the step graph with in-graph scores and TopK (the fastest exact
  scan so far; it materialises ``[batch, v]`` float32 scores);
- ``exact fp32 (torch chunked)``: onnxruntime step + :func:`model.inference.topk.chunked_top_k`;
- ``int8 two-stage``: onnxruntime step + :class:`model.inference.quantized_scoring.TwoStageTopK`
  with the service's onnxruntime ``MatMulInteger`` kernel (exact: int8 scan, fp32 re-score of
  candidates).

Item tables (the candidate count depends on the score distribution):

- ``normal``: rows ~ N(0, σ²) and bias ~ N(μ_b, σ_b²) with the trained model's σ, μ_b, σ_b;
- ``ml1m``: the trained ML-1M item embeddings (``--trained``) tiled to the catalogue size, each
  copy perturbed by ``--noise`` × σ (a tiled table has ~300 near-copies of every item: hard).

The rest of the model (LRU blocks) is the trained one, so hidden vectors have realistic norms.
Per-stage times, candidate counts and the fallback rate come from ``--queries`` users with a
random 50-event history each, whose items are excluded (as the service's ``exclude_seen``).

Run:  python -m benchmarks.bench_catalogue [--items 100000 1000000] [--tables normal ml1m]
"""

import argparse
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
import torch.nn.functional as F

from benchmarks import model_cases as cases
from model import LRURec, LRURecConfig, load_artifact
from model.inference.export import export_onnx
from model.inference.quantized_scoring import ScoringStats, TwoStageTopK
from model.inference.quantized_table import quantize_queries
from model.inference.topk import chunked_top_k
from service.app import limit_threads
from service.runtimes.quantized import OnnxIntKernel

K = 10
HISTORY = 50
Event = Callable[[], object]


def rss_mb() -> float:
    """Resident set size of this process (Linux ``/proc``), MB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def build_model(trained: LRURec, kind: str, n_items: int, noise: float, seed: int) -> LRURec:
    """The trained LRURec with an ``n_items`` table of the given ``kind``."""
    config = LRURecConfig(**{**trained.config.to_dict(), "n_items": n_items})
    model = LRURec(config).eval()
    state = {
        k: v for k, v in trained.state_dict().items() if k not in ("embedding.weight", "item_bias")
    }
    model.load_state_dict(state, strict=False)
    source, bias = trained.embedding.weight.detach()[1:], trained.item_bias.detach()[1:]
    generator = torch.Generator().manual_seed(seed)
    sigma, mu_b, sigma_b = float(source.std()), float(bias.mean()), float(bias.std())
    if kind == "normal":
        table = torch.randn(n_items, source.shape[1], generator=generator) * sigma
        item_bias = mu_b + torch.randn(n_items, generator=generator) * sigma_b
    else:
        copies = torch.arange(n_items) % source.shape[0]
        table = source[copies] + torch.randn(n_items, source.shape[1], generator=generator) * (
            noise * sigma
        )
        item_bias = bias[copies] + torch.randn(n_items, generator=generator) * (noise * sigma_b)
    with torch.no_grad():
        model.embedding.weight[1:] = table
        model.item_bias[1:] = item_bias
    return model


def users(model: LRURec, count: int, seed: int) -> tuple[np.ndarray, np.ndarray, list[list[int]]]:
    """(next items [count], states [count, ...], histories) of users with 50 random events."""
    history = cases.random_items(model.config.n_items, (count, HISTORY), seed)
    with torch.inference_mode():
        _, states = model.prefill(history)
    items = cases.random_items(model.config.n_items, (count,), seed + 1)
    return items.numpy(), np.ascontiguousarray(states.numpy()), history.tolist()


def sample(
    events: dict[str, Event], rounds: int, budget_s: float
) -> dict[str, tuple[float, float]]:
    """Median (wall, thread CPU) seconds per call of each event, alternating in rounds."""
    samples: dict[str, list[tuple[float, float]]] = {name: [] for name in events}
    for event in events.values():
        event()
    for _ in range(rounds):
        for name, event in events.items():
            deadline = time.perf_counter() + budget_s
            while not samples[name] or time.perf_counter() < deadline:
                start, cpu = time.perf_counter(), time.thread_time()
                event()
                samples[name].append((time.perf_counter() - start, time.thread_time() - cpu))
                if len(samples[name]) % 50 == 0 and time.perf_counter() > deadline:
                    break
    return {
        name: (statistics.median(w for w, _ in s), statistics.median(c for _, c in s))
        for name, s in samples.items()
    }


def stage_times(
    scorer: TwoStageTopK, hidden: torch.Tensor, exclude: list[list[int]]
) -> dict[str, float]:
    """Median CPU ms per query of quantise / kernel / select / re-score at batch 1."""
    times: dict[str, list[float]] = {
        "quantise": [],
        "int8 kernel": [],
        "select": [],
        "re-score": [],
    }
    for row in range(hidden.shape[0]):
        h = hidden[row : row + 1]
        excluded = np.unique(np.asarray(exclude[row], dtype=np.int64))
        t0 = time.thread_time()
        queries = quantize_queries(h, scorer.quantized)
        t1 = time.thread_time()
        scores = scorer.kernel(queries.codes)[0]
        t2 = time.thread_time()
        outliers = np.setdiff1d(scorer.quantized.outliers, excluded)
        found = scorer.candidates(scores, excluded, float(queries.unit[0]), float(queries.bound[0]),
                                  scorer.exact(h[0], outliers).double().numpy(), K)  # fmt: skip
        t3 = time.thread_time()
        if found is not None:
            torch.topk(scorer.exact(h[0], np.concatenate([found, outliers])), K)
        t4 = time.thread_time()
        for name, value in zip(times, (t1 - t0, t2 - t1, t3 - t2, t4 - t3), strict=True):
            times[name].append(value * 1e3)
    return {name: statistics.median(values) for name, values in times.items()}


def run_case(trained: LRURec, kind: str, n_items: int, args: argparse.Namespace) -> None:
    model = build_model(trained, kind, n_items, args.noise, seed=n_items)
    table, bias = model.embedding.weight.detach(), model.item_bias.detach()
    step = cases.ort_session(export_onnx(model, graph="state"), args.threads)
    full = cases.lrurec_onnx_session(model, args.threads)
    before = rss_mb()
    started = time.perf_counter()
    scorer = TwoStageTopK(
        table,
        bias,
        kernel=lambda q, rows: OnnxIntKernel(q, rows, args.threads),
        buffer_bytes=args.buffer_mb << 20,
    )
    build_s, resident = time.perf_counter() - started, rss_mb() - before
    print(f"\n#### {kind} table, {n_items:,} items\n")
    print(f"- int8 build {build_s:.1f} s; codes {scorer.quantized.codes.nbytes / 1e6:.1f} MB, "
          f"RSS +{resident:.0f} MB after build (codes + onnxruntime's packed copy + buffer); "
          f"{scorer.quantized.outliers.shape[0]} outliers; rows per kernel call "
          f"{scorer.rows_per_call}")  # fmt: skip
    items, states, histories = users(model, args.queries, seed=n_items)
    with torch.inference_mode():
        hidden = torch.from_numpy(step.run(None, {"items": items, "state": states})[0])
        widest = max(args.batches)
        scorer(hidden[:widest], K, histories[:widest])  # touches the int32 score buffer
    print(f"- RSS +{rss_mb() - before:.0f} MB over the start of the int8 build after one "
          f"int8 call at batch {widest}: the int8 path's resident extra")  # fmt: skip
    scorer.stats = ScoringStats()
    with torch.inference_mode():
        expected = chunked_top_k(hidden, table, bias, K, exclude=histories)[1]
        got = scorer(hidden, K, histories)[1]
    counts = np.asarray(scorer.stats.candidates)
    same = bool(torch.equal(got, expected))
    print(f"- {args.queries} queries: same top-{K} as the exact scan: {same}; "
          f"fallbacks {scorer.stats.fallbacks}/{scorer.stats.rows}; candidates median "
          f"{np.median(counts):.0f}, p90 {np.percentile(counts, 90):.0f}, p99 "
          f"{np.percentile(counts, 99):.0f}, max {counts.max()}")  # fmt: skip
    with torch.inference_mode():
        stages = stage_times(scorer, hidden[: min(64, args.queries)], histories)
    print("- int8 stages at batch 1 (median CPU ms): "
          + ", ".join(f"{name} {ms:.3f}" for name, ms in stages.items()))  # fmt: skip
    print("\n| case | batch | per call (ms) | CPU per call (ms) |\n| --- | --- | --- | --- |")
    for batch in args.batches:
        events = batch_events(
            model, step, full, scorer, items[:batch], states[:batch], histories[:batch]
        )
        with torch.inference_mode():
            timings = sample(events, args.rounds, args.budget)
        for name, (wall, cpu) in timings.items():
            print(f"| {name} | {batch} | {wall * 1e3:,.2f} | {cpu * 1e3:,.2f} |")


def batch_events(
    model: LRURec,
    step: ort.InferenceSession,
    full: ort.InferenceSession,
    scorer: TwoStageTopK,
    items: np.ndarray,
    states: np.ndarray,
    seen: list[list[int]],
) -> dict[str, Event]:
    """The timed cases for one batch: step + exact top-10 each."""
    feeds = {"items": items, "state": states}
    table, bias = model.embedding.weight.detach(), model.item_bias.detach()
    rows, columns = cases_exclusions(seen)

    def hidden() -> torch.Tensor:
        return torch.from_numpy(step.run(["hidden"], feeds)[0])

    # As service.runtimes.torch_runtime.TorchStepper.top_k: full scores, then topk.
    def service_torch() -> object:
        scores = F.linear(hidden(), table, bias)
        scores[:, 0] = -torch.inf
        scores[rows, columns] = -torch.inf
        return torch.topk(scores, K, dim=1)

    return {
        "exact fp32 (onnxruntime in-graph TopK, no exclusions)": lambda: full.run(
            ["top_scores", "top_items"], feeds
        ),
        "exact fp32 (service torch: full scores + topk)": service_torch,
        "exact fp32 (torch chunked)": lambda: chunked_top_k(hidden(), table, bias, K, exclude=seen),
        "int8 two-stage": lambda: scorer(hidden(), K, seen),
    }


def cases_exclusions(seen: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Flat (row, column) index tensors of the excluded items."""
    rows = [row for row, items in enumerate(seen) for _ in items]
    return torch.tensor(rows), torch.tensor([item for items in seen for item in items])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--items", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 64])
    parser.add_argument(
        "--tables", nargs="+", default=["normal", "ml1m"], choices=["normal", "ml1m"]
    )
    parser.add_argument("--trained", type=Path, default=Path("runs/ml1m-lrurec"))
    parser.add_argument("--noise", type=float, default=0.1, help="ml1m copies: noise / σ")
    parser.add_argument("--queries", type=int, default=256)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--buffer-mb", type=int, default=64, help="int32 score buffer bound")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--budget", type=float, default=1.0, help="seconds per case per round")
    args = parser.parse_args()
    limit_threads(args.threads)  # as the service does: torch and numpy's BLAS
    if not (args.trained / "model.safetensors").is_file():
        parser.error(f"trained artifact not found: {args.trained} (train one, or pass --trained)")
    trained = load_artifact(args.trained).model
    assert isinstance(trained, LRURec)
    print(f"torch {torch.__version__}, {args.threads} thread(s), k = {K}, noise {args.noise}")
    for kind in args.tables:
        for n_items in args.items:
            run_case(trained, kind, n_items, args)


if __name__ == "__main__":
    main()
