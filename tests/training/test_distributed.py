"""``torchrun --nproc-per-node 2 -m cli train``: two gloo processes train like one, and resume.

With dropout off, two ranks that each take half of every global batch must follow the
single-process run on the same global batches: the same training loss at every validation and
the same final weights, up to float32 summation order (tolerance 1e-5, in float32 arithmetic).
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

TOLERANCE = 1e-5
TINY = [
    "--d-model", "8", "--n-layers", "1", "--max-len", "16", "--batch-size", "16",
    "--dropout", "0", "--schedule", "constant", "--eval-every", "3", "--threads", "1", "--quiet",
    "--precision", "fp32",
]  # fmt: skip


def run_train(data: Path, out: Path, steps: int, processes: int) -> None:
    launcher = [sys.executable, "-m", "cli"]
    if processes > 1:
        torchrun = Path(sys.executable).with_name("torchrun")
        launcher = [str(torchrun), "--standalone", f"--nproc-per-node={processes}", "-m", "cli"]
    command = [*launcher, "train", "--data", str(data), "--out", str(out), *TINY]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [*command, "--max-steps", str(steps)], env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stdout + done.stderr


def train_losses(out: Path) -> list[float]:
    history = json.loads((out / "metrics.json").read_text())["validation"]
    return [point["train_loss"] for point in history if "train_loss" in point]


def test_two_processes_match_one_and_resume(sequences_file: Path, tmp_path: Path) -> None:
    single, double = tmp_path / "single", tmp_path / "double"
    run_train(sequences_file, single, steps=12, processes=1)
    run_train(sequences_file, double, steps=6, processes=2)  # interrupted at step 6 ...
    run_train(sequences_file, double, steps=12, processes=2)  # ... and resumed to 12

    assert json.loads((double / "metrics.json").read_text())["steps"] == 12
    expected, got = train_losses(single), train_losses(double)
    assert len(expected) == len(got) == 4
    assert got == pytest.approx(expected, rel=TOLERANCE)
    assert expected[-1] < expected[0]  # it learned, so equal losses are not a constant

    ours, theirs = (
        load_file(str(single / "model.safetensors")),
        load_file(str(double / "model.safetensors")),
    )
    assert ours.keys() == theirs.keys()
    for name, value in ours.items():
        torch.testing.assert_close(theirs[name], value, rtol=0, atol=TOLERANCE, msg=name)
    # Rank 0 alone writes the run's log.
    assert (double / "train.log").read_text().count("resumed from") == 1
