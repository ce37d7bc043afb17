"""Seconds per training step in float32 and under bf16 autocast, as `lrurec train` runs it.

LRURec on ML-1M at the default width (or ``--d-model``), the recipe's length-bucketed batches of
~32 windows' worth of targets, loop scan, AdamW + clip. The two precisions run in alternating
rounds on the same batches, so outside load hits both alike; the ratio is the number to read.
bf16 pays off only where the CPU has native bf16 (AVX-512 BF16 or AMX); elsewhere it is emulated.

Run:  python -m benchmarks.bench_precision [--threads 1] [--steps 10] [--d-model 128]
"""

import argparse
from collections.abc import Callable

import torch

from benchmarks.bench_train_step import DATA, Variant, time_variants
from model import LRURec, LRURecConfig
from training import precision
from training.batching import bucket_batches, collate, make_windows
from training.data import load_dataset, split_leave_one_out
from training.trainer import next_item_loss

LossFunction = Callable[[LRURec, torch.Tensor, torch.Tensor], torch.Tensor]


def loss_in(arithmetic: precision.Arithmetic) -> LossFunction:
    def loss(net: LRURec, inputs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        with precision.autocast(arithmetic, "cpu"):
            return next_item_loss(net, inputs, labels)

    return loss


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--d-model", type=int, default=128)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    dataset = load_dataset(DATA, "sequences", min_count=1)
    windows = make_windows(split_leave_one_out(dataset.sequences).train, 200)
    batches = [collate(windows, b) for b in bucket_batches(windows.lengths, 32, 0)]
    batches = batches[: args.steps + 1]
    torch.manual_seed(0)
    config = LRURecConfig(n_items=dataset.n_items, d_model=args.d_model)
    net = LRURec(config).train()
    variants: list[Variant] = [
        ("fp32", "loop", batches, loss_in("fp32")),
        ("bf16 autocast", "loop", batches, loss_in("bf16")),
    ]
    rows = time_variants(net, variants, args.steps)
    native = precision.cpu_has_native_bf16()
    print(f"d_model={args.d_model}, threads={args.threads}, {args.steps} alternating rounds, "
          f"native bf16: {native}")  # fmt: skip
    print("| precision | s/step | targets/s |")
    print("| --- | ---: | ---: |")
    for name, per_step, per_second in rows:
        print(f"| {name} | {per_step:.3f} | {per_second:,.0f} |")
    print(f"fp32 / bf16 time per step: {rows[0][1] / rows[1][1]:.2f}")


if __name__ == "__main__":
    main()
