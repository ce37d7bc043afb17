"""``lrurec train`` / ``lrurec evaluate`` end to end: the artifact contract and CLI errors."""

import json
from pathlib import Path

import torch
import typer
import typer.core
from typer.testing import CliRunner

from cli.main import app
from model import load_artifact
from training.config import ModelSpec, TrainConfig
from training.precision import resolve

runner = CliRunner()
TINY = ["--d-model", "8", "--n-layers", "1", "--max-len", "16", "--batch-size", "16"]


def train(sequences_file: Path, out: Path, *extra: str) -> None:
    args = ["train", "--data", str(sequences_file), "--out", str(out), *TINY, "--quiet"]
    result = runner.invoke(app, [*args, "--max-steps", "12", "--eval-every", "6", *extra])
    assert result.exit_code == 0, result.output
    assert "popularity paper" in result.output.replace("  ", " ")


def test_train_writes_a_loadable_self_describing_artifact(
    sequences_file: Path, tmp_path: Path
) -> None:
    out = tmp_path / "artifact"
    train(sequences_file, out)
    artifact = load_artifact(out)
    # Non-numeric ids are numbered in string order.
    assert artifact.item_ids == sorted(f"i{k}" for k in range(1, 31))
    assert artifact.popularity.shape == (31,)
    assert artifact.popularity[0] == 0
    config = artifact.config
    assert config["max_len"] == 16
    assert len(config["data_fingerprint"]) == 16
    assert config["model_version"] == artifact.version
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics["test"]) == {"paper", "serving"}
    assert set(metrics["test"]["paper"]) >= {"ndcg@10", "recall@10", "ndcg@20", "recall@20"}
    assert set(metrics["baselines"]["popularity"]) == {"paper", "serving"}
    assert metrics["steps"] == 12
    assert [p["step"] for p in metrics["validation"]] == [0, 6, 12]
    assert metrics["precision"] == config["train_precision"] == resolve("auto", "cpu")
    assert (out / "training_curve.png").read_bytes()[:4] == b"\x89PNG"
    history = torch.tensor([[1, 2, 3]])
    hidden, _ = artifact.model.prefill(history)
    assert artifact.model.score(hidden).shape == (1, 31)


def test_rerunning_train_resumes_and_evaluate_reproduces_test_metrics(
    sequences_file: Path, tmp_path: Path
) -> None:
    out = tmp_path / "artifact"
    train(sequences_file, out)
    train(sequences_file, out, "--max-steps", "18")  # the later flag wins: 6 more steps
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["steps"] == 18
    assert "resumed from" in (out / "train.log").read_text()
    report = tmp_path / "eval.json"
    args = [
        "evaluate",
        "--artifact",
        str(out),
        "--data",
        str(sequences_file),
        "--output",
        str(report),
    ]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert json.loads(report.read_text())["test"] == metrics["test"]


def test_bad_input_exits_with_a_message_naming_file_and_line(
    sequences_file: Path, tmp_path: Path
) -> None:
    bad = tmp_path / "bad.txt"
    bad.write_text("u1 i1 i2\nu2\n")
    result = runner.invoke(app, ["train", "--data", str(bad), "--out", str(tmp_path / "o")])
    assert result.exit_code == 2
    assert "bad.txt:2: user 'u2' has no items" in result.output
    result = runner.invoke(
        app, ["train", "--data", str(bad), "--out", str(tmp_path / "o"), "--schedule", "linear"]
    )
    assert result.exit_code == 2
    assert "--schedule must be one of" in result.output
    missing = runner.invoke(
        app, ["evaluate", "--artifact", str(tmp_path / "none"), "--data", str(sequences_file)]
    )
    assert missing.exit_code == 2
    assert "not found" in missing.output


def test_train_options_default_to_the_config_defaults() -> None:
    """`lrurec train` with no recipe flags trains TrainConfig()'s recipe, not a copy of it."""
    command = typer.main.get_command(app)
    assert isinstance(command, typer.core.TyperGroup)
    options = {param.name: param.default for param in command.commands["train"].params}
    fields = {**TrainConfig.model_fields, **ModelSpec.model_fields}
    fields["model"] = ModelSpec.model_fields["model_type"]  # --model names the model type
    shared = sorted(set(options) & set(fields))
    assert {"d_model", "n_layers", "dropout", "lr", "batch_size", "precision"} <= set(shared)
    for name in shared:
        assert options[name] == fields[name].default, name
