"""Warm start (``lrurec train --init-from``): old items keep their rows by external id, new
items get fresh rows, the architecture comes from the artifact, and on ML-1M's later events a
warm start beats a cold one trained for more steps."""

import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from cli.main import app
from model import load_artifact
from tests.conftest import build_artifact
from tests.training.conftest import ML1M_SEQUENCES
from training.warm_start import extended_dataset, warm_model

runner = CliRunner(env={"COLUMNS": "300"})


def test_old_items_keep_their_rows_and_new_items_get_fresh_ones(tmp_path: Path) -> None:
    old_ids = ["a", "b", "c", "d"]
    seed = load_artifact(build_artifact(tmp_path / "seed", item_ids=old_ids))
    raw = {"u1": ["d", "new-1", "b"], "u2": ["new-2", "d", "d"]}  # "a" and "c" not seen again
    dataset = extended_dataset(seed, raw)
    assert dataset.item_ids == ["a", "b", "c", "d", "new-1", "new-2"]
    assert [list(s) for s in dataset.sequences] == [[4, 5, 2], [6, 4, 4]]
    model = warm_model(seed, dataset.n_items, seed_value=0, device="cpu")
    old, new = seed.model.state_dict(), model.state_dict()  # type: ignore[attr-defined]
    by_vocabulary = [name for name, tensor in new.items() if tensor.shape[0] == 7]
    assert by_vocabulary, "no tensor is sized by the vocabulary"
    for name, tensor in new.items():
        if name in by_vocabulary:
            torch.testing.assert_close(tensor[:5], old[name])  # padding + a, b, c, d
            for fresh in tensor[5:]:  # new rows: initialised, not copies of an old row
                assert not any(torch.equal(fresh, row) for row in old[name])
        else:
            torch.testing.assert_close(tensor, old[name])


def test_an_architecture_option_that_conflicts_with_the_artifact_is_refused(
    tmp_path: Path,
) -> None:
    seed = build_artifact(tmp_path / "seed")  # d_model 16
    data = tmp_path / "data.txt"
    data.write_text("u1 item-1 item-2 item-3\n")
    result = runner.invoke(app, ["train", "--data", str(data), "--out", str(tmp_path / "out"),
                                 "--init-from", str(seed), "--d-model", "32"])  # fmt: skip
    assert result.exit_code == 2
    assert "--d-model 32 conflicts with the --init-from artifact (16)" in result.output


def train(data: Path, out: Path, steps: int, *options: str) -> float:
    result = runner.invoke(app, [
        "train", "--data", str(data), "--out", str(out), "--max-steps", str(steps),
        "--eval-every", str(steps), "--threads", "1", "--quiet", "--d-model", "32",
        "--warmup-steps", "10", "--max-len", "100", *options,
    ])  # fmt: skip
    assert result.exit_code == 0, result.output
    metrics = json.loads((out / "metrics.json").read_text())
    return float(metrics["test"]["paper"]["ndcg@10"])


@pytest.mark.slow
@pytest.mark.data
def test_a_warm_start_on_later_events_beats_a_cold_start_with_more_steps(tmp_path: Path) -> None:
    """Each user's first 80 % of events stand for the old period (the shared ML-1M copy has no
    timestamps); the model trained on them is warm-started on the whole sequences."""
    if not ML1M_SEQUENCES.is_file():
        pytest.skip(f"ML-1M data not found: {ML1M_SEQUENCES} is missing")
    lines = ML1M_SEQUENCES.read_text().splitlines()[:1000]
    old, full = tmp_path / "old.txt", tmp_path / "full.txt"
    with old.open("w") as out:
        for user, *items in (line.split() for line in lines):
            kept = items[: max(3, len(items) * 4 // 5)]
            out.write(f"{user} {' '.join(kept)}\n")
    full.write_text("\n".join(lines) + "\n")
    train(old, tmp_path / "a", 200)
    warm = train(full, tmp_path / "warm", 40, "--init-from", str(tmp_path / "a"))
    cold = train(full, tmp_path / "cold", 80)
    print(f"test NDCG@10: warm start 40 steps {warm:.4f}, cold start 80 steps {cold:.4f}")  # noqa: T201
    assert warm > cold, (warm, cold)
