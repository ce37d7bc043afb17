"""Issue 5 model-level benchmark: LRURec step + top-10 against SASRec recompute, side by side.

Three parts, all in one process:

1. Per-event latency and throughput at 3,416 items (ML-1M): LRURec in torch and in ONNX Runtime,
   SASRec recompute at L = 50, 200, 1,000, each at batch 1 and 64. The cases are timed in
   alternating rounds, so a change in machine load hits all of them alike; ratios compare
   throughputs (events/s) measured in the same rounds.
2. Catalogue scaling: LRURec step + exact top-10 at 3,416, 100k and 1M items (torch: chunked
   top-k, scores never larger than batch × 65,536 floats; ONNX Runtime: in-graph scores + TopK).
3. Cumulative time over 2,048 incremental events of one user (the LRURec paper's Figure 1 right),
   LRURec (torch, ONNX Runtime) vs SASRec recompute at L = 50, saved as a PNG.

Run:  python -m benchmarks.bench_model [--threads 1] [--rounds 5] [--figure benchmarks/fig.png]
Prints markdown tables and the targets met or missed; RESULTS.md records them with the command.
"""

import argparse
import os
import statistics
import time
from pathlib import Path

import torch

from benchmarks import model_cases as cases
from benchmarks.model_figure import plot_cumulative

ML1M_ITEMS = 3416
BATCHES = (1, 64)
LENGTHS = (50, 200, 1000)
CATALOGUES = (3416, 100_000, 1_000_000)
TARGET_RATIO = {50: 7.3, 200: 20.0, 1000: 80.0}
TARGET_EVENT_US = 60.0
TARGET_1M_MS = 10.0
Key = tuple[str, int]


def sample(event: cases.Event, budget_s: float, max_calls: int) -> list[float]:
    """Per-call seconds of ``event`` for about ``budget_s`` (at least one call)."""
    samples: list[float] = []
    deadline = time.perf_counter() + budget_s
    while len(samples) < max_calls and (not samples or time.perf_counter() < deadline):
        start = time.perf_counter()
        event()
        samples.append(time.perf_counter() - start)
    return samples


def run_rounds(
    events: dict[Key, cases.Event], rounds: int, budget_s: float
) -> dict[Key, list[float]]:
    """Alternate all cases ``rounds`` times; return every case's per-call samples."""
    for event in events.values():  # warm-up: allocator, lazy init, folded constants
        sample(event, budget_s / 4, 20)
    samples: dict[Key, list[float]] = {key: [] for key in events}
    for _ in range(rounds):
        for key, event in events.items():
            samples[key] += sample(event, budget_s, 5000)
    return samples


def per_event_part(threads: int, rounds: int, budget_s: float) -> dict[Key, float]:
    """Part 1: median seconds per call of every (case, batch)."""
    lrurec = cases.lrurec_model(ML1M_ITEMS)
    session = cases.lrurec_onnx_session(lrurec, threads)
    events: dict[Key, cases.Event] = {}
    for batch in BATCHES:
        events[("LRURec torch", batch)] = cases.lrurec_torch_event(lrurec, batch)
        events[("LRURec onnxruntime", batch)] = cases.lrurec_onnx_event(lrurec, batch, session)
    for length in LENGTHS:
        sasrec = cases.sasrec_model(ML1M_ITEMS, length)
        for batch in BATCHES:
            events[(f"SASRec L={length}", batch)] = cases.sasrec_event(sasrec, batch)
    with torch.inference_mode():
        samples = run_rounds(events, rounds, budget_s)
    return {key: statistics.median(values) for key, values in samples.items()}


def print_per_event(medians: dict[Key, float]) -> None:
    print("\n### Per event at 3,416 items (step + exact top-10)\n")
    print("| case | batch | median per call (µs) | per event (µs) | events/s |")
    print("| --- | --- | --- | --- | --- |")
    for (name, batch), seconds in medians.items():
        print(
            f"| {name} | {batch} | {seconds * 1e6:,.0f} | {seconds * 1e6 / batch:,.1f} "
            f"| {batch / seconds:,.0f} |"
        )
    print("\n| throughput ratio over SASRec recompute | batch | L = 50 | L = 200 | L = 1,000 |")
    print("| --- | --- | --- | --- | --- |")
    for backend in ("torch", "onnxruntime"):
        for batch in BATCHES:
            lrurec = medians[(f"LRURec {backend}", batch)]
            ratios = [medians[(f"SASRec L={length}", batch)] / lrurec for length in LENGTHS]
            cells = " | ".join(f"×{ratio:,.1f}" for ratio in ratios)
            print(f"| LRURec {backend} | {batch} | {cells} |")


def catalogue_part(threads: int, rounds: int, budget_s: float) -> dict[Key, float]:
    """Part 2: median seconds of step + exact top-10 per (backend @ catalogue, batch)."""
    medians: dict[Key, float] = {}
    for n_items in CATALOGUES:
        model = cases.lrurec_model(n_items)
        session = cases.lrurec_onnx_session(model, threads)
        events: dict[Key, cases.Event] = {}
        for batch in BATCHES:
            events[(f"torch chunked @ {n_items:,}", batch)] = cases.lrurec_torch_event(model, batch)
            events[(f"onnxruntime @ {n_items:,}", batch)] = cases.lrurec_onnx_event(
                model, batch, session
            )
        with torch.inference_mode():
            samples = run_rounds(events, rounds, budget_s)
        medians |= {key: statistics.median(values) for key, values in samples.items()}
        del session, model, events
    return medians


def print_catalogue(medians: dict[Key, float]) -> None:
    print("\n### Catalogue scaling (LRURec step + exact top-10)\n")
    print("| backend @ items | batch | median per call (ms) | per event (µs) |")
    print("| --- | --- | --- | --- |")
    for (name, batch), seconds in medians.items():
        print(f"| {name} | {batch} | {seconds * 1e3:,.3f} | {seconds * 1e6 / batch:,.1f} |")


def print_targets(per_event: dict[Key, float], catalogue: dict[Key, float]) -> None:
    print("\n### Targets\n")
    for backend in ("torch", "onnxruntime"):
        us = per_event[(f"LRURec {backend}", 1)] * 1e6
        verdict = "met" if us <= TARGET_EVENT_US else "MISSED"
        print(f"- LRURec {backend} step + top-10, batch 1: {us:.1f} µs (≤ 60 µs: {verdict})")
    for length, target in TARGET_RATIO.items():
        for batch in BATCHES:
            sasrec = per_event[(f"SASRec L={length}", batch)]
            ratios = {
                b: sasrec / per_event[(f"LRURec {b}", batch)] for b in ("torch", "onnxruntime")
            }
            verdicts = ", ".join(
                f"{b} ×{r:,.1f} ({'met' if r >= target else 'MISSED'})" for b, r in ratios.items()
            )
            print(f"- ratio at L = {length}, batch {batch} (≥ ×{target}): {verdicts}")
    for name in ("torch chunked", "onnxruntime"):
        ms = catalogue[(f"{name} @ 1,000,000", 1)] * 1e3
        verdict = "met" if ms <= TARGET_1M_MS else "MISSED"
        print(f"- 1M items, {name}, batch 1: {ms:.2f} ms (≤ 10 ms: {verdict})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=1, help="torch and onnxruntime threads")
    parser.add_argument("--rounds", type=int, default=5, help="alternating rounds per part")
    parser.add_argument("--budget", type=float, default=0.4, help="seconds per case per round")
    parser.add_argument("--events", type=int, default=2048, help="events in the figure")
    parser.add_argument("--figure", type=Path, default=Path("benchmarks/cumulative_time.png"))
    parser.add_argument("--skip-catalogue", action="store_true", help="skip part 2")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} thread(s), {os.cpu_count()} CPUs")
    print(f"load average at start {os.getloadavg()}")
    per_event = per_event_part(args.threads, args.rounds, args.budget)
    print_per_event(per_event)
    catalogue: dict[Key, float] = {}
    if not args.skip_catalogue:
        catalogue = catalogue_part(args.threads, args.rounds, args.budget)
        print_catalogue(catalogue)
    totals = plot_cumulative(args.figure, args.events, args.threads)
    print(f"\n### Cumulative time over {args.events} incremental events (batch 1)\n")
    for name, seconds in totals.items():
        print(
            f"- {name}: {seconds * 1e3:,.1f} ms in total, "
            f"{seconds / args.events * 1e6:.1f} µs/event"
        )
    print(f"- figure: {args.figure}")
    if catalogue:
        print_targets(per_event, catalogue)
    print(f"\nload average at end {os.getloadavg()}")


if __name__ == "__main__":
    main()
