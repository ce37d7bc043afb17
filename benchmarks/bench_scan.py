"""Log-depth parallel scan vs the sequential loop, and one serving step.

Run:  python -m benchmarks.bench_scan [--threads 2]
Prints a markdown table; copy it into benchmarks/RESULTS.md with the command.
"""

import argparse
import time

import torch

from benchmarks.timing import median_seconds, repeats_for
from model import LRURec, LRURecConfig
from model.inference.folded import FoldedLRURec
from model.scan import loop_scan, parallel_scan, sequential_scan

CHANNELS = 128  # complex channels of one LRURec layer at d = 64


def scan_inputs(batch: int, length: int, grad: bool) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(length)
    modulus = torch.rand(CHANNELS, generator=generator) * 0.2 + 0.79
    phase = torch.rand(CHANNELS, generator=generator) * 6.28
    gates = torch.polar(modulus, phase).expand(batch, length, CHANNELS)
    inputs = torch.randn(batch, length, CHANNELS, dtype=torch.complex64, generator=generator)
    return gates, inputs.requires_grad_(grad)


def time_scan(scan: object, batch: int, length: int, backward: bool) -> float:
    gates, inputs = scan_inputs(batch, length, backward)

    def run() -> None:
        out = scan(gates, inputs)  # type: ignore[operator]
        if backward:
            out.abs().sum().backward()

    start = time.perf_counter()
    run()
    one = time.perf_counter() - start
    return median_seconds(run, repeats_for(4.0, one, low=3, high=50), warmup=1)


def time_step(batch: int, n_items: int) -> float:
    torch.manual_seed(0)
    model = FoldedLRURec.from_model(LRURec(LRURecConfig(n_items=n_items)).eval())
    state = model.init_state(batch)
    items = torch.randint(1, n_items + 1, (batch,))

    def run() -> None:
        hidden, _ = model.step(items, state)
        scores = model.score(hidden)
        scores[:, 0] = -torch.inf
        torch.topk(scores, 10)

    with torch.inference_mode():
        return median_seconds(run, 2000, warmup=50)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--lengths", type=int, nargs="+", default=[256, 1024, 4096])
    parser.add_argument("--batch", type=int, default=16, help="sequences per scan")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
        f"batch {args.batch} × {CHANNELS} complex channels"
    )
    print(
        "| L | pass | sequential reference (ms) | parallel log-depth (ms) | speed-up "
        "| fused loop (ms) |"
    )
    print("| ---: | --- | ---: | ---: | ---: | ---: |")
    for length in args.lengths:
        for backward in (False, True):
            sequential = time_scan(sequential_scan, args.batch, length, backward)
            parallel = time_scan(parallel_scan, args.batch, length, backward)
            fused = time_scan(loop_scan, args.batch, length, backward)
            label = "forward+backward" if backward else "forward"
            print(
                f"| {length} | {label} | {sequential * 1e3:.1f} | {parallel * 1e3:.1f} | "
                f"{sequential / parallel:.2f}× | {fused * 1e3:.1f} |"
            )
    print("\n| step + score + top-10, 3,416 items | median µs per call | µs per event |")
    print("| --- | ---: | ---: |")
    for batch in (1, 64):
        seconds = time_step(batch, 3416)
        print(f"| batch {batch} | {seconds * 1e6:.0f} | {seconds * 1e6 / batch:.1f} |")


if __name__ == "__main__":
    main()
