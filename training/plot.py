"""The validation curve of a run as a PNG (matplotlib, headless; the ``train`` extra)."""

from pathlib import Path

from training.extras import missing_train_extra


def plot_curve(history: list[dict[str, float]], path: Path) -> None:
    """Validation Recall@10 and NDCG@10 against training minutes (top axis: steps).

    Raises:
        MissingTrainExtraError: matplotlib is not installed.
    """
    try:
        import matplotlib
    except ModuleNotFoundError as error:
        raise missing_train_extra("matplotlib", "plotting the training curve") from error
    matplotlib.use("Agg")  # no display on servers and CI
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(7, 4))
    minutes = [point["seconds"] / 60 for point in history]
    for metric in ("recall@10", "ndcg@10"):
        axis.plot(minutes, [point[metric] for point in history], marker="o", label=f"val {metric}")
    axis.set_xlabel("training minutes")
    axis.set_ylabel("validation metric")
    axis.grid(alpha=0.3)
    axis.legend()
    if history:
        steps = [int(point["step"]) for point in history]
        axis.set_title(
            f"{steps[-1]} steps, best val recall@10 {max(p['recall@10'] for p in history):.4f}"
        )
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
