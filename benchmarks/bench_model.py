"""Model-level benchmark: LRURec step + top-10 against SASRec recompute, side by side.

Three parts, all in one process:

1. Per-event latency and throughput at 3,416 items (ML-1M): LRURec in torch, in ONNX Runtime
   (one fused step + TopK graph through IO binding) and in numba (the compiled step and top-k
   kernels of the ``numba`` backend), the onnx and numba backends as the service calls them
   (``step`` then ``top_k`` with 50 seen items excluded), SASRec recompute at
   L = 50, 200, 1,000, each at batch 1 and 64. The cases are timed in
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
from typing import NamedTuple

import torch

from benchmarks import model_cases as cases
from benchmarks.model_figure import plot_cumulative
from benchmarks.timing import machine_probe
from service.app import limit_threads

ML1M_ITEMS = 3416
BATCHES = (1, 64)
LENGTHS = (50, 200, 1000)
BACKENDS = ("torch", "onnxruntime", "numba")
CATALOGUES = (3416, 100_000, 1_000_000)
TARGET_RATIO = {50: 7.3, 200: 20.0, 1000: 80.0}
TARGET_EVENT_US = 60.0
TARGET_1M_MS = 10.0
Key = tuple[str, int]


class Timing(NamedTuple):
    """Median seconds per call: wall clock, and CPU time of the calling thread.

    With one intra-op thread all the work runs on the calling thread, so ``cpu`` is what the
    call costs when it is not waiting for a core: on this shared machine, the better estimate of
    an idle machine's latency (``wall`` includes time preempted by other jobs).
    """

    wall: float
    cpu: float


def sample(event: cases.Event, budget_s: float, max_calls: int) -> list[tuple[float, float]]:
    """Per-call (wall, thread CPU) seconds of ``event`` for about ``budget_s`` (≥ 1 call)."""
    samples: list[tuple[float, float]] = []
    deadline = time.perf_counter() + budget_s
    while len(samples) < max_calls and (not samples or time.perf_counter() < deadline):
        start, start_cpu = time.perf_counter(), time.thread_time()
        event()
        samples.append((time.perf_counter() - start, time.thread_time() - start_cpu))
    return samples


def run_rounds(events: dict[Key, cases.Event], rounds: int, budget_s: float) -> dict[Key, Timing]:
    """Alternate all cases ``rounds`` times; return every case's median timings."""
    for event in events.values():  # warm-up: allocator, lazy init
        sample(event, budget_s / 4, 20)
    samples: dict[Key, list[tuple[float, float]]] = {key: [] for key in events}
    for _ in range(rounds):
        for key, event in events.items():
            samples[key] += sample(event, budget_s, 5000)
    return {
        key: Timing(
            statistics.median(w for w, _ in values), statistics.median(c for _, c in values)
        )
        for key, values in samples.items()
    }


def per_event_part(threads: int, rounds: int, budget_s: float) -> dict[Key, Timing]:
    """Part 1: median timings per call of every (case, batch)."""
    lrurec = cases.lrurec_model(ML1M_ITEMS)
    session = cases.lrurec_onnx_session(lrurec, threads)
    onnx = cases.service_stepper(lrurec, "onnx", threads)
    numba = cases.service_stepper(lrurec, "numba", threads)
    events: dict[Key, cases.Event] = {}
    for batch in BATCHES:
        events[("LRURec torch", batch)] = cases.lrurec_torch_event(lrurec, batch)
        events[("LRURec onnxruntime", batch)] = cases.lrurec_onnx_event(lrurec, batch, session)
        events[("LRURec numba", batch)] = cases.lrurec_service_event(lrurec, batch, numba, seen=0)
        events[("LRURec onnx service path", batch)] = cases.lrurec_service_event(
            lrurec, batch, onnx
        )
        events[("LRURec numba service path", batch)] = cases.lrurec_service_event(
            lrurec, batch, numba
        )
    for length in LENGTHS:
        sasrec = cases.sasrec_model(ML1M_ITEMS, length)
        for batch in BATCHES:
            events[(f"SASRec L={length}", batch)] = cases.sasrec_event(sasrec, batch)
    with torch.inference_mode():
        return run_rounds(events, rounds, budget_s)


def print_per_event(timings: dict[Key, Timing]) -> None:
    print("\n### Per event at 3,416 items (step + exact top-10)\n")
    print("| case | batch | per call (µs) | per event (µs) | events/s | CPU per call (µs) |")
    print("| --- | --- | --- | --- | --- | --- |")
    for (name, batch), (wall, cpu) in timings.items():
        print(
            f"| {name} | {batch} | {wall * 1e6:,.0f} | {wall * 1e6 / batch:,.1f} "
            f"| {batch / wall:,.0f} | {cpu * 1e6:,.0f} |"
        )
    print(
        "\n| throughput over SASRec recompute (wall; CPU) | batch | L = 50 | L = 200 | L = 1,000 |"
    )
    print("| --- | --- | --- | --- | --- |")
    for backend in BACKENDS:
        for batch in BATCHES:
            lrurec = timings[(f"LRURec {backend}", batch)]
            cells = []
            for length in LENGTHS:
                sasrec = timings[(f"SASRec L={length}", batch)]
                cells.append(f"×{sasrec.wall / lrurec.wall:,.1f}; ×{sasrec.cpu / lrurec.cpu:,.1f}")
            print(f"| LRURec {backend} | {batch} | {' | '.join(cells)} |")


def catalogue_part(threads: int, rounds: int, budget_s: float) -> dict[Key, Timing]:
    """Part 2: median timings of step + exact top-10 per (backend @ catalogue, batch)."""
    timings: dict[Key, Timing] = {}
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
            timings |= run_rounds(events, rounds, budget_s)
        del session, model, events
    return timings


def print_catalogue(timings: dict[Key, Timing]) -> None:
    print("\n### Catalogue scaling (LRURec step + exact top-10)\n")
    print("| backend @ items | batch | per call (ms) | per event (µs) | CPU per call (ms) |")
    print("| --- | --- | --- | --- | --- |")
    for (name, batch), (wall, cpu) in timings.items():
        print(
            f"| {name} | {batch} | {wall * 1e3:,.3f} | {wall * 1e6 / batch:,.1f} "
            f"| {cpu * 1e3:,.3f} |"
        )


def verdict(met: bool) -> str:
    return "met" if met else "MISSED"


def print_targets(per_event: dict[Key, Timing], catalogue: dict[Key, Timing]) -> None:
    print("\n### Targets (wall clock; CPU time in brackets)\n")
    for backend in BACKENDS:
        wall, cpu = (t * 1e6 for t in per_event[(f"LRURec {backend}", 1)])
        print(
            f"- LRURec {backend} step + top-10, batch 1: {wall:.1f} µs [{cpu:.1f} µs] "
            f"(≤ 60 µs: {verdict(wall <= TARGET_EVENT_US)} [{verdict(cpu <= TARGET_EVENT_US)}])"
        )
    for backend in ("onnx", "numba"):
        wall, cpu = (t * 1e6 for t in per_event[(f"LRURec {backend} service path", 1)])
        print(f"- (for reference) {backend} service path, step + top-10 without 50 seen, "
              f"batch 1: {wall:.1f} µs [{cpu:.1f} µs]")  # fmt: skip
    for length, target in TARGET_RATIO.items():
        for batch in BATCHES:
            sasrec = per_event[(f"SASRec L={length}", batch)]
            parts = []
            for backend in BACKENDS:
                lrurec = per_event[(f"LRURec {backend}", batch)]
                wall, cpu = sasrec.wall / lrurec.wall, sasrec.cpu / lrurec.cpu
                parts.append(
                    f"{backend} ×{wall:,.1f} {verdict(wall >= target)} "
                    f"[×{cpu:,.1f} {verdict(cpu >= target)}]"
                )
            print(f"- ratio at L = {length}, batch {batch} (≥ ×{target}): {'; '.join(parts)}")
    for name in ("torch chunked", "onnxruntime"):
        wall, cpu = (t * 1e3 for t in catalogue[(f"{name} @ 1,000,000", 1)])
        print(
            f"- 1M items, {name}, batch 1: {wall:.2f} ms [{cpu:.2f} ms] "
            f"(≤ 10 ms: {verdict(wall <= TARGET_1M_MS)} [{verdict(cpu <= TARGET_1M_MS)}])"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=1, help="torch, onnx, BLAS threads")
    parser.add_argument("--rounds", type=int, default=5, help="alternating rounds per part")
    parser.add_argument("--budget", type=float, default=0.4, help="seconds per case per round")
    parser.add_argument("--events", type=int, default=2048, help="events in the figure")
    parser.add_argument("--figure", type=Path, default=Path("benchmarks/cumulative_time.png"))
    parser.add_argument("--skip-catalogue", action="store_true", help="skip part 2")
    args = parser.parse_args()
    limit_threads(args.threads)  # as the service does: torch and numpy's BLAS
    print(f"torch {torch.__version__}, {args.threads} thread(s), {os.cpu_count()} CPUs")
    print(f"load average at start {os.getloadavg()}")
    print(machine_probe())
    per_event = per_event_part(args.threads, args.rounds, args.budget)
    print_per_event(per_event)
    catalogue: dict[Key, Timing] = {}
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
    print(machine_probe())


if __name__ == "__main__":
    main()
