"""Seconds per training step and targets per second on ML-1M, for four ways to build a step.

Variants (LRURec, d = 64, 2 layers, full softmax over 3,417 classes, AdamW + clip):
  naive      official-style step: 128 windows padded to 200, logits at all 25,600 positions,
             log-depth parallel scan;
  +targets   the same batch, logits only where there is a target;
  +loop      plus the loop scan (model/scan.py: loop_scan), the CPU training default
             (``naive`` and ``+targets`` use the log-depth ``parallel_scan``);
  bucketed   what `lrurec train` runs: length-bucketed batches of ~128 (or 32) windows' tokens,
             with either scan.
Targets per second is the comparable number: batches differ in how many targets they hold.

Run:  python -m benchmarks.bench_train_step [--threads 2] [--steps 3]
"""

import argparse
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F

from model import LRURec, LRURecConfig
from training.batching import bucket_batches, collate, left_pad, make_windows
from training.data import load_dataset, split_leave_one_out
from training.trainer import next_item_loss

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "ml-1m" / "sequences.txt"


def all_positions_loss(net: LRURec, inputs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    logits = net.score(net(inputs))  # [b, L, v]: the official code scores padding too
    return F.cross_entropy(logits.flatten(0, 1), labels.flatten(), ignore_index=0)


Variant = tuple[
    str,
    Literal["parallel", "loop"],
    list[tuple[torch.Tensor, torch.Tensor]],
    Callable[[LRURec, torch.Tensor, torch.Tensor], torch.Tensor],
]


def one_step(
    net: LRURec,
    optimizer: torch.optim.Optimizer,
    batch: tuple[torch.Tensor, torch.Tensor],
    loss_fn: Callable[[LRURec, torch.Tensor, torch.Tensor], torch.Tensor],
) -> float:
    start = time.perf_counter()
    loss = loss_fn(net, *batch)
    optimizer.zero_grad()
    loss.backward()  # type: ignore[no-untyped-call]
    torch.nn.utils.clip_grad_norm_(net.parameters(), 5.0)
    optimizer.step()
    return time.perf_counter() - start


def time_variants(
    net: LRURec, variants: list[Variant], rounds: int
) -> list[tuple[str, float, float]]:
    """Median s/step and targets/s per variant, run in alternating rounds so that load from
    other processes hits every variant alike (round 0 is a warm-up)."""
    optimizer = torch.optim.AdamW(net.parameters(), lr=1e-3, eps=1e-9)
    seconds: dict[str, list[float]] = {name: [] for name, *_ in variants}
    targets: dict[str, int] = dict.fromkeys(seconds, 0)
    for round_index in range(rounds + 1):
        for name, scan, batches, loss_fn in variants:
            batch = batches[round_index % len(batches)]
            net.use_scan(scan)
            elapsed = one_step(net, optimizer, batch, loss_fn)
            if round_index:
                seconds[name].append(elapsed)
                targets[name] += int((batch[1] > 0).sum())
    return [
        (name, statistics.median(seconds[name]), targets[name] / sum(seconds[name]))
        for name in seconds
    ]


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
    small = [collate(windows, b) for b in bucket_batches(windows.lengths, 32, 0)]
    small = small[: args.steps + 1]
    torch.manual_seed(0)
    net = LRURec(LRURecConfig(n_items=dataset.n_items)).train()
    variants: list[Variant] = [
        ("naive", "parallel", fixed, all_positions_loss),
        ("+targets", "parallel", fixed, next_item_loss),
        ("+loop", "loop", fixed, next_item_loss),
        ("bucketed 128, parallel scan", "parallel", bucketed, next_item_loss),
        ("bucketed 128, loop scan", "loop", bucketed, next_item_loss),
        ("bucketed 32, parallel scan", "parallel", small, next_item_loss),
        ("bucketed 32, loop scan", "loop", small, next_item_loss),
    ]
    rows = time_variants(net, variants, args.steps)
    epoch_targets = windows.n_targets
    print(f"threads={args.threads}, {args.steps} alternating rounds, {epoch_targets} targets/epoch")
    print("| variant | s/step | targets/s | s/epoch (est.) |")
    print("| --- | ---: | ---: | ---: |")
    for name, per_step, per_second in rows:
        epoch = epoch_targets / per_second
        print(f"| {name} | {per_step:.2f} | {per_second:,.0f} | {epoch:,.0f} |")


if __name__ == "__main__":
    main()
