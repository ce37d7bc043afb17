"""The ``train`` extra (matplotlib, pyarrow) is optional: serving never imports it, and training
without it says what to install (or, for the curve PNG, skips it with a warning)."""

import logging
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cli.main import app
from training.data import DataError, read_raw
from training.extras import MissingTrainExtraError
from training.plot import plot_curve

HINT = r"pip install -e '\.\[train\]'"
REPO = Path(__file__).resolve().parents[2]

# ``None`` in sys.modules makes any import of that name raise ModuleNotFoundError.
WITHOUT_EXTRA = """
import sys
for name in ("matplotlib", "pyarrow"):
    sys.modules[name] = None
import cli.demo, cli.main, cli.serve_command, service.app, training.pipeline
"""


def test_the_serving_path_imports_without_the_train_extra() -> None:
    # A fresh interpreter: this one has pyarrow loaded already (test_data imports it).
    done = subprocess.run(
        [sys.executable, "-c", WITHOUT_EXTRA], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr


def test_plotting_without_matplotlib_names_the_extra(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(MissingTrainExtraError, match=HINT):
        plot_curve([], tmp_path / "curve.png")


def test_parquet_without_pyarrow_is_a_data_error_naming_the_extra(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "pyarrow", None)
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)
    path = tmp_path / "events.parquet"
    path.write_bytes(b"PAR1")
    with pytest.raises(DataError, match=f"events.parquet: reading Parquet needs pyarrow.*{HINT}"):
        read_raw(path, "events")


def test_train_without_matplotlib_writes_the_artifact_and_warns(
    sequences_file: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    out = tmp_path / "artifact"
    tiny = ["--d-model", "8", "--n-layers", "1", "--max-len", "16", "--batch-size", "16"]
    args = ["train", "--data", str(sequences_file), "--out", str(out), *tiny, "--quiet"]
    with caplog.at_level(logging.WARNING, logger="training"):
        result = CliRunner().invoke(app, [*args, "--max-steps", "2", "--eval-every", "2"])
    assert result.exit_code == 0, result.output
    assert (out / "metrics.json").is_file()
    assert not (out / "training_curve.png").exists()
    assert any("training_curve.png not written" in r.getMessage() for r in caplog.records)
