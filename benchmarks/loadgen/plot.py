"""Latency percentiles against offered rate, one panel per model, one colour per layout."""

from collections.abc import Mapping, Sequence
from pathlib import Path

from benchmarks.loadgen.sweep import Row

PERCENTILES = (("p50_ms", "p50", ":"), ("p99_ms", "p99", "-"), ("p99.9_ms", "p99.9", "--"))


def plot_sweeps(
    path: Path, sweeps: Mapping[tuple[str, str], Sequence[Row]], slo_p99_ms: float
) -> None:
    """Write a small PNG: x = offered events/s, y = latency (ms, log), per (model, layout)."""
    import matplotlib

    matplotlib.use("Agg")  # files only; no display on a server
    import matplotlib.pyplot as plt
    from matplotlib.ticker import ScalarFormatter

    models = sorted({model for model, _ in sweeps})
    figure, axes = plt.subplots(
        1, len(models), figsize=(5.0 * len(models), 3.6), squeeze=False, dpi=90
    )
    palette = ["tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple"]
    colours = {label: palette[n % 5] for n, label in enumerate(sorted({lb for _, lb in sweeps}))}
    for axis, model in zip(axes[0], models, strict=True):
        for (name, layout), rows in sorted(sweeps.items()):
            if name != model or not rows:
                continue
            offered = [float(row["offered_rps"]) for row in rows]
            for key, label, style in PERCENTILES:
                axis.plot(
                    offered, [float(row[key]) for row in rows], style, marker=".",
                    color=colours[layout], label=f"{layout} {label}",
                )  # fmt: skip
        axis.axhline(
            slo_p99_ms, color="grey", linewidth=0.8, label=f"p99 objective {slo_p99_ms:g} ms"
        )
        axis.set(
            title=f"{model}: POST /events (open loop)", xlabel="offered events/s",
            ylabel="latency from intended send (ms)", yscale="log",
        )  # fmt: skip
        axis.yaxis.set_major_formatter(ScalarFormatter())
        axis.grid(True, which="both", alpha=0.3)
        axis.legend(fontsize=7)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path)
    plt.close(figure)
