"""Cumulative serving time over one user's incremental events (LRURec paper, Figure 1 right).

Each curve is one user receiving ``n_events`` events one at a time; every event is a step plus an
exact top-10 over 3,416 items. LRURec carries its O(1) state; SASRec (L = 50) keeps its window of
the last 50 items and recomputes it on every event. Each stream is replayed ``REPEATS`` times in
alternation and the per-event median is plotted, which filters out bursts from other processes.
"""

from collections.abc import Callable
from pathlib import Path

import matplotlib
import numpy as np
import torch

from benchmarks import model_cases as cases

matplotlib.use("Agg")  # files only; no display on a server
import matplotlib.pyplot as plt

N_ITEMS = 3416
SASREC_LENGTH = 50
REPEATS = 3


def stream_times(
    streams: dict[str, Callable[[], Callable[[int], object]]], n_events: int
) -> dict[str, np.ndarray]:
    """Per-event median seconds of each stream over ``REPEATS`` alternating replays."""
    runs: dict[str, list[list[float]]] = {name: [] for name in streams}
    with torch.inference_mode():
        for _ in range(REPEATS):
            for name, make_stream in streams.items():
                runs[name].append(cases.incremental_times(make_stream(), n_events))
    return {name: np.median(np.asarray(times), axis=0) for name, times in runs.items()}


def plot_cumulative(path: Path, n_events: int, threads: int) -> dict[str, float]:
    """Time the streams, save the figure at ``path`` and return total seconds per curve."""
    lrurec = cases.lrurec_model(N_ITEMS)
    session = cases.lrurec_onnx_session(lrurec, threads)
    sasrec = cases.sasrec_model(N_ITEMS, SASREC_LENGTH)
    streams = {
        "LRURec step (torch)": lambda: cases.lrurec_torch_user(lrurec, n_events),
        "LRURec step (onnxruntime)": lambda: cases.lrurec_onnx_user(lrurec, session, n_events),
        "LRURec step (numba)": lambda: cases.lrurec_numba_user(
            lrurec, cases.service_stepper(lrurec, "numba", threads), n_events
        ),
        f"SASRec recompute, L = {SASREC_LENGTH} (torch)": lambda: cases.sasrec_user(
            sasrec, n_events
        ),
    }
    times = stream_times(streams, n_events)
    figure, axes = plt.subplots(figsize=(5.0, 3.4), dpi=100)
    events = np.arange(1, n_events + 1)
    for name, seconds in times.items():
        axes.plot(events, np.cumsum(seconds) * 1e3, label=name, linewidth=1.6)
    axes.set_xlabel("incremental events of one user")
    axes.set_ylabel("cumulative time (ms)")
    axes.set_title(f"Step + exact top-10 over {N_ITEMS:,} items, batch 1", fontsize=10)
    axes.grid(alpha=0.3)
    axes.legend(fontsize=8)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path)
    plt.close(figure)
    return {name: float(seconds.sum()) for name, seconds in times.items()}
