"""Issue 7 benchmark: seconds per training step and targets per second on ML-1M, before/after.

Variants (LRURec, d = 64, 2 layers, full softmax over 3,417 classes, AdamW + clip):
  naive      official-style step: 128 windows padded to 200, logits at all 25,600 positions,
             log-depth parallel scan;
  +targets   the same batch, logits only where there is a target;
  +loop      plus the loop scan (model/scan.py: loop_scan), the CPU training default;
  bucketed   what `lrurec train` runs: length-bucketed batches of ~128 windows' tokens.
Targets per second is the comparable number: batches differ in how many targets they hold.

Run:  python -m benchmarks.bench_train_step [--threads 2] [--steps 3]
"""

import argparse
import statistics
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

import model.layers
from model import LRURec, LRURecConfig
from model.scan import loop_scan, parallel_scan
from training.batching import bucket_batches, collate, left_pad, make_windows
from training.data import load_dataset, split_leave_one_out
from training.trainer import next_item_loss

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "ml-1m" / "sequences.txt"


@contextmanager
def scan_implementation(scan: Callable[..., torch.Tensor]) -> Iterator[None]:
    # LRULayer looks the name up at call time, so swapping the module global switches scans.
    namespace = vars(model.layers)
    original = namespace["loop_scan"]
    namespace["loop_scan"] = scan
    try:
        yield
    finally:
        namespace["loop_scan"] = original


def all_positions_loss(net: LRURec, inputs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    logits = net.score(net(inputs))  # [b, L, v]: the official code scores padding too
    return F.cross_entropy(logits.flatten(0, 1), labels.flatten(), ignore_index=0)


def time_steps(
    net: LRURec,
    batches: list[tuple[torch.Tensor, torch.Tensor]],
    loss_fn: Callable[[LRURec, torch.Tensor, torch.Tensor], torch.Tensor],
) -> tuple[float, float]:
    """Median seconds per step and targets per second over ``batches`` (first one warms up)."""
    optimizer = torch.optim.AdamW(net.parameters(), lr=1e-3, eps=1e-9)
    seconds, targets = [], []
    for index, (inputs, labels) in enumerate(batches):
        start = time.perf_counter()
        loss = loss_fn(net, inputs, labels)
        optimizer.zero_grad()
        loss.backward()  # type: ignore[no-untyped-call]
        torch.nn.utils.clip_grad_norm_(net.parameters(), 5.0)
        optimizer.step()
        if index:
            seconds.append(time.perf_counter() - start)
            targets.append(int((labels > 0).sum()))
    return statistics.median(seconds), sum(targets) / sum(seconds)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--steps", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    dataset = load_dataset(DATA, "sequences", min_count=1)
    windows = make_windows(split_leave_one_out(dataset.sequences).train, 200)
    rng = np.random.default_rng(0)
    fixed = []
    for _ in range(args.steps + 1):
        chosen = rng.choice(len(windows.labels), size=128, replace=False)
        fixed.append(
            (
                left_pad([windows.inputs[j] for j in chosen], 200),
                left_pad([windows.labels[j] for j in chosen], 200),
            )
        )
    bucketed = [collate(windows, b) for b in bucket_batches(windows.lengths, 128, 0)]
    bucketed = bucketed[: args.steps + 1]
    torch.manual_seed(0)
    net = LRURec(LRURecConfig(n_items=dataset.n_items)).train()
    rows = []
    with scan_implementation(parallel_scan):
        rows.append(("naive", *time_steps(net, fixed, all_positions_loss)))
        rows.append(("+targets", *time_steps(net, fixed, next_item_loss)))
    with scan_implementation(loop_scan):
        rows.append(("+loop", *time_steps(net, fixed, next_item_loss)))
        rows.append(("bucketed", *time_steps(net, bucketed, next_item_loss)))
    epoch_targets = windows.n_targets
    print(f"threads={args.threads}, median of {args.steps} steps, {epoch_targets} targets/epoch")
    print("| variant | s/step | targets/s | s/epoch (est.) |")
    print("| --- | ---: | ---: | ---: |")
    for name, per_step, per_second in rows:
        epoch = epoch_targets / per_second
        print(f"| {name} | {per_step:.2f} | {per_second:,.0f} | {epoch:,.0f} |")


if __name__ == "__main__":
    main()
