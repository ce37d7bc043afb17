"""Per-event serving cost of RecBLR next to LRURec, in the same run.

One "event" is ``step`` (one item per user) + ``score`` over every item + top-10, with column 0
(padding) masked, at the production size (d = 64, 2 layers, 3,416 items). The two models are
timed in alternating rounds so that a change in machine load hits both alike; LRURec runs in
its serving form, :class:`model.inference.folded.FoldedLRURec`.

Run:  python -m benchmarks.bench_recblr_step [--threads 1] [--rounds 10] [--calls 200]
Prints a markdown table; copy it into benchmarks/RESULTS.md with the command.
"""

import argparse
import os
import statistics
import time
from collections.abc import Callable

import torch

from model import LRURec, LRURecConfig, RecBLR, RecBLRConfig
from model.inference.folded import FoldedLRURec

Served = FoldedLRURec | RecBLR

N_ITEMS = 3416
BATCHES = (1, 64)


def event_functions(model: Served, batch: int) -> tuple[Callable[[], object], Callable[[], object]]:
    """(step only, step + score + top-10) for ``batch`` users with a non-trivial state."""
    generator = torch.Generator().manual_seed(batch)
    history = torch.randint(1, N_ITEMS + 1, (batch, 50), generator=generator)
    _, state = model.prefill(history)
    items = torch.randint(1, N_ITEMS + 1, (batch,), generator=generator)

    def step() -> object:
        return model.step(items, state)

    def event() -> object:
        hidden, _ = model.step(items, state)
        scores = model.score(hidden)
        scores[:, 0] = -torch.inf
        return torch.topk(scores, 10)

    return step, event


def sample_microseconds(function: Callable[[], object], calls: int) -> list[float]:
    samples = []
    for _ in range(calls):
        start = time.perf_counter()
        function()
        samples.append((time.perf_counter() - start) * 1e6)
    return samples


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument("--rounds", type=int, default=10, help="alternating rounds per case")
    parser.add_argument("--calls", type=int, default=200, help="timed calls per round")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    models: dict[str, Served] = {
        "LRURec": FoldedLRURec.from_model(LRURec(LRURecConfig(n_items=N_ITEMS)).eval()),
        "RecBLR": RecBLR(RecBLRConfig(n_items=N_ITEMS)).eval(),
    }
    samples: dict[tuple[str, int, str], list[float]] = {}
    with torch.inference_mode():
        cases = {
            (name, batch): event_functions(model, batch)
            for name, model in models.items()
            for batch in BATCHES
        }
        for functions in cases.values():  # warm-up
            for function in functions:
                sample_microseconds(function, 50)
        for _ in range(args.rounds):
            for (name, batch), (step, event) in cases.items():
                samples.setdefault((name, batch, "step"), []).extend(
                    sample_microseconds(step, args.calls)
                )
                samples.setdefault((name, batch, "event"), []).extend(
                    sample_microseconds(event, args.calls)
                )
    print(f"torch {torch.__version__}, {args.threads} thread(s), load average {os.getloadavg()}")
    print(f"{args.rounds} rounds × {args.calls} calls per case; medians in µs\n")
    print("| model | state per user | batch | step | step + score + top-10 | per user |")
    print("| --- | --- | --- | --- | --- | --- |")
    for (name, batch), _ in cases.items():
        model = models[name]
        state_bytes = 4 * int(torch.tensor(model.state_shape).prod())
        step_us = statistics.median(samples[(name, batch, "step")])
        event_us = statistics.median(samples[(name, batch, "event")])
        print(
            f"| {name} | {state_bytes} B | {batch} | {step_us:.0f} | {event_us:.0f} "
            f"| {event_us / batch:.1f} |"
        )


if __name__ == "__main__":
    main()
