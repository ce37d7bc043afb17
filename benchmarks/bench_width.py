"""Serving cost of the model's width: the numba backend's step + exact top-10 per event.

LRURec at ML-1M's shape (3,416 items, 2 layers; random weights: the arithmetic does not depend
on their values) at each ``--widths`` value, called as the service calls it (``step_top_k``
with 50 seen items excluded), at batch 1 and 64. The widths run in alternating rounds, so a
change in machine load hits all of them alike; the ratios to the first width are the numbers to
read. Also printed: the bytes of state the service stores per user.

Run:  python -m benchmarks.bench_width [--widths 64 128 256] [--rounds 5] [--threads 1]
"""

import argparse
import statistics

import torch

from benchmarks import model_cases as cases
from benchmarks.loadgen.artifacts import ML1M_ITEMS
from benchmarks.timing import machine_probe, median_seconds, repeats_for

BATCHES = (1, 64)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--widths", type=int, nargs="+", default=[64, 128, 256])
    parser.add_argument("--rounds", type=int, default=5, help="alternating rounds")
    parser.add_argument("--budget", type=float, default=0.4, help="seconds per case per round")
    parser.add_argument("--threads", type=int, default=1, help="torch and BLAS threads")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    events = {}
    state_bytes = {}
    for width in args.widths:
        model = cases.lrurec_model(ML1M_ITEMS, d_model=width)
        stepper = cases.service_stepper(model, "numba", args.threads)
        state_bytes[width] = 4 * torch.Size(model.state_shape).numel()  # stored as float32
        for batch in BATCHES:
            events[width, batch] = cases.lrurec_service_event(model, batch, stepper)

    samples: dict[tuple[int, int], list[float]] = {case: [] for case in events}
    for _ in range(args.rounds):
        for case, event in events.items():
            one = median_seconds(event, repeats=3)
            samples[case].append(median_seconds(event, repeats_for(args.budget, one)))

    print(machine_probe())
    print(f"threads={args.threads}, {args.rounds} alternating rounds, {ML1M_ITEMS:,} items")
    print("| width | state per user | batch | µs per call | µs per event | vs first width |")
    print("| ---: | ---: | ---: | ---: | ---: | ---: |")
    first = args.widths[0]
    for width in args.widths:
        for batch in BATCHES:
            seconds = statistics.median(samples[width, batch])
            base = statistics.median(samples[first, batch])
            print(f"| {width} | {state_bytes[width]:,} B | {batch} | {seconds * 1e6:,.1f} | "
                  f"{seconds * 1e6 / batch:,.1f} | ×{seconds / base:.2f} |")  # fmt: skip


if __name__ == "__main__":
    main()
