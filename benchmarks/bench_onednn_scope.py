"""What scoping oneDNN off costs :meth:`model.inference.folded.FoldedLRURec.step` at batch 1.

The cases run in interleaved blocks, so a change in machine load hits them alike; each reports
the median wall and thread-CPU time per call (one intra-op thread, d = 64, 2 layers, 3,416
items). ``folded_step`` is the bare step; the scopes around it are the public
``torch.backends.mkldnn.flags(enabled=False)`` and a save/clear/restore of the documented
``torch.backends.mkldnn.enabled`` (what ``FoldedLRURec.step`` does), against oneDNN on (no
scope) and oneDNN turned off once for the process.

Run:  python -m benchmarks.bench_onednn_scope [--blocks 30] [--calls 200]
"""

import argparse
import statistics
import time
from collections.abc import Callable
from contextlib import AbstractContextManager

import torch

from model import LRURec, LRURecConfig
from model.inference.folded import FoldedLRURec, folded_step

mkldnn = torch.backends.mkldnn


def set_onednn(enabled: bool) -> None:
    mkldnn.enabled = enabled  # type: ignore[assignment]  # typed as its descriptor


def flags_off() -> AbstractContextManager[None]:
    return mkldnn.flags(enabled=False, deterministic=None, allow_tf32=None, fp32_precision=None)


def cases(folded: FoldedLRURec) -> dict[str, tuple[bool, Callable[[], object]]]:
    """``name: (oneDNN enabled for the process, call)``."""
    model, constants = folded.model, folded.folded
    items, state = torch.tensor([5]), folded.init_state(1)

    def bare() -> object:
        return folded_step(model, constants, items, state)

    def in_flags() -> object:
        with flags_off():
            return bare()

    def in_toggle() -> object:
        saved = bool(mkldnn.enabled)
        set_onednn(False)
        try:
            return bare()
        finally:
            set_onednn(saved)

    def flags_alone() -> None:
        with flags_off():
            pass

    def toggle_alone() -> None:
        saved = bool(mkldnn.enabled)
        set_onednn(False)
        set_onednn(saved)

    return {
        "flags() scope, empty": (True, flags_alone),
        "enabled toggle, empty": (True, toggle_alone),
        "folded_step, oneDNN on": (True, bare),
        "folded_step in flags()": (True, in_flags),
        "folded_step in enabled toggle": (True, in_toggle),
        "FoldedLRURec.step (scoped)": (True, lambda: folded.step(items, state)),
        "folded_step, oneDNN off once": (False, bare),
        "FoldedLRURec.step, oneDNN off once": (False, lambda: folded.step(items, state)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--blocks", type=int, default=30, help="interleaved blocks per case")
    parser.add_argument("--calls", type=int, default=200, help="timed calls per block")
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    folded = FoldedLRURec.from_model(LRURec(LRURecConfig(n_items=3416, d_model=64)).eval())
    timed = cases(folded)
    samples: dict[str, tuple[list[float], list[float]]] = {name: ([], []) for name in timed}
    onednn = bool(mkldnn.enabled)
    with torch.inference_mode():
        for _ in range(args.blocks):
            for name, (enabled, call) in timed.items():
                set_onednn(enabled)
                for _ in range(20):  # warm-up after the switch
                    call()
                wall, cpu = samples[name]
                for _ in range(args.calls):
                    start, start_cpu = time.perf_counter(), time.thread_time()
                    call()
                    cpu.append(time.thread_time() - start_cpu)
                    wall.append(time.perf_counter() - start)
    set_onednn(onednn)
    print(f"torch {torch.__version__}, 1 thread, batch 1; {args.blocks} × {args.calls} calls\n")
    print("| case | wall µs | CPU µs |\n| --- | ---: | ---: |")
    for name, (wall, cpu) in samples.items():
        print(
            f"| {name} | {statistics.median(wall) * 1e6:.1f} | {statistics.median(cpu) * 1e6:.1f} |"
        )


if __name__ == "__main__":
    main()
