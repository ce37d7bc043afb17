"""bf16 autocast for training: detected from the CPU, active in the loss, float32 weights."""

from pathlib import Path

import numpy as np
import pytest
import torch

from training import precision
from training.batching import bucket_batches, collate, make_windows
from training.config import TrainConfig
from training.data import split_leave_one_out
from training.pipeline import build
from training.trainer import NextItemLoss, Trainer

ZEN4_FLAGS = "flags\t\t: fpu sse2 avx2 avx512f avx512_bf16 avx512_vnni\n"
ZEN3_FLAGS = "flags\t\t: fpu sse2 avx2 fma\n"


@pytest.mark.parametrize(("cpuinfo", "native"), [(ZEN4_FLAGS, True), (ZEN3_FLAGS, False)])
def test_native_bf16_is_read_from_the_cpu_flags(cpuinfo: str, native: bool, tmp_path: Path) -> None:
    path = tmp_path / "cpuinfo"
    path.write_text("processor\t: 0\nmodel name\t: test\n" + cpuinfo)
    assert precision.cpu_has_native_bf16(path) is native


def test_without_cpu_information_training_stays_float32(tmp_path: Path) -> None:
    assert not precision.cpu_has_native_bf16(tmp_path / "missing")


def test_auto_follows_the_cpu_and_explicit_choices_are_kept() -> None:
    expected = "bf16" if precision.cpu_has_native_bf16() else "fp32"
    assert precision.resolve("auto", "cpu") == expected
    assert precision.resolve("fp32", "cpu") == "fp32"
    assert precision.resolve("bf16", "cpu") == "bf16"


def test_bf16_loss_is_computed_in_bf16_and_close_to_float32(
    tiny_train_config: TrainConfig, walks: list[np.ndarray]
) -> None:
    torch.manual_seed(0)
    model = build(tiny_train_config, n_items=30).eval()
    windows = make_windows(split_leave_one_out(walks).train, model.config.max_len)
    inputs, labels = collate(windows, bucket_batches(windows.lengths, 16, 0)[0])
    loss = NextItemLoss(model)
    with torch.no_grad():
        exact = float(loss(inputs, labels))
        with precision.autocast("bf16", "cpu"):
            rounded = float(loss(inputs, labels))
    assert rounded != exact  # the products really ran in bf16 ...
    assert rounded == pytest.approx(exact, rel=1e-2)  # ... and the loss barely moved


def test_bf16_training_learns_and_keeps_float32_weights(
    tiny_train_config: TrainConfig, walks: list[np.ndarray], tmp_path: Path
) -> None:
    config = tiny_train_config.model_copy(
        update={"precision": "bf16", "max_steps": 40, "eval_every": 20}
    )
    model = build(config, n_items=30)
    trainer = Trainer(model, split_leave_one_out(walks), config, tmp_path)
    result = trainer.fit(show_progress=False)
    assert trainer.precision == "bf16"
    assert result.best_metric > result.history[0]["recall@10"] + 0.2
    assert {p.dtype for p in model.parameters()} == {torch.float32}
    for state in trainer.optimizer.state.values():
        assert state["exp_avg"].dtype == torch.float32
