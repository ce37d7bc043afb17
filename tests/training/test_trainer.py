"""The fit loop: learning, early stopping, resume, optimiser checkpoints, schedule."""

from pathlib import Path
from typing import cast

import numpy as np
import pytest
import torch
from torch import nn

from model import LRURec
from model.registry import MODELS
from training import checkpoint
from training.batching import bucket_batches
from training.config import TrainConfig
from training.data import split_leave_one_out
from training.pipeline import build
from training.trainer import NextItemLoss, Trainer, build_optimizer, learning_rate


def make_trainer(config: TrainConfig, walks: list[np.ndarray], directory: Path) -> Trainer:
    model = build(config, n_items=30)
    return Trainer(model, split_leave_one_out(walks), config, directory)


def weights(trainer: Trainer) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}  # type: ignore[attr-defined]


def test_training_improves_validation_recall(
    tiny_train_config: TrainConfig, walks: list[np.ndarray], tmp_path: Path
) -> None:
    config = tiny_train_config.model_copy(update={"max_steps": 40, "eval_every": 20})
    result = make_trainer(config, walks, tmp_path).fit(show_progress=False)
    assert result.steps == 40
    assert [point["step"] for point in result.history] == [0.0, 20.0, 40.0]
    assert result.best_metric > result.history[0]["recall@10"] + 0.2


def test_early_stopping_after_patience_validations_without_improvement(
    tiny_train_config: TrainConfig, walks: list[np.ndarray], tmp_path: Path
) -> None:
    # A vanishing learning rate cannot improve recall, so patience 2 stops at step 2 × 5.
    config = tiny_train_config.model_copy(update={"lr": 1e-12, "patience": 2, "max_steps": 100})
    result = make_trainer(config, walks, tmp_path).fit(show_progress=False)
    assert result.stopped_early
    assert result.steps == 10
    assert result.best_step == 0


def test_resumed_run_matches_an_uninterrupted_one(
    tiny_train_config: TrainConfig, walks: list[np.ndarray], tmp_path: Path
) -> None:
    straight = make_trainer(tiny_train_config, walks, tmp_path / "straight")
    straight.fit(show_progress=False)
    first = make_trainer(
        tiny_train_config.model_copy(update={"max_steps": 10}), walks, tmp_path / "r"
    )
    first.fit(show_progress=False)
    resumed = make_trainer(tiny_train_config, walks, tmp_path / "r")
    assert resumed.resume()
    assert resumed.state.step == 10
    resumed.fit(show_progress=False)
    assert resumed.state.step == straight.state.step == 20
    assert [p["recall@10"] for p in resumed.state.history] == [
        p["recall@10"] for p in straight.state.history
    ]
    for name, value in weights(straight).items():
        assert torch.equal(value, weights(resumed)[name]), name


def test_optimizer_state_round_trips_through_safetensors_and_json(
    tiny_train_config: TrainConfig, walks: list[np.ndarray], tmp_path: Path
) -> None:
    trainer = make_trainer(tiny_train_config.model_copy(update={"max_steps": 3}), walks, tmp_path)
    trainer.fit(show_progress=False)
    last = checkpoint.find_last(tmp_path)
    assert last is not None
    assert not (tmp_path / "last.tmp").exists()
    model = build(tiny_train_config, n_items=30)
    optimizer = build_optimizer(model, tiny_train_config)
    loop = checkpoint.load_last(last, model, optimizer)
    assert loop["step"] == 3
    saved, restored = trainer.optimizer.state_dict(), optimizer.state_dict()
    assert saved["param_groups"] == restored["param_groups"]
    for index, values in saved["state"].items():
        for key, value in values.items():
            assert torch.equal(value, restored["state"][index][key])


def test_weight_decay_skips_biases_and_norms(tiny_train_config: TrainConfig) -> None:
    model = build(tiny_train_config, n_items=30)
    assert isinstance(model, LRURec)
    decayed, plain = build_optimizer(model, tiny_train_config).param_groups
    assert any(p is model.embedding.weight for p in decayed["params"])
    assert any(p is model.item_bias for p in plain["params"])
    assert plain["weight_decay"] == 0.0


def test_cosine_schedule_warms_up_then_decays_to_the_floor() -> None:
    config = TrainConfig(lr=1e-3, schedule="cosine", warmup_steps=10, max_steps=110)
    assert learning_rate(config, 0, 0.0, steps_per_epoch=7) == pytest.approx(1e-4)
    assert learning_rate(config, 10, 0.0, steps_per_epoch=7) == pytest.approx(1e-3)
    assert learning_rate(config, 60, 0.0, steps_per_epoch=7) == pytest.approx(
        1e-3 * (0.01 + 0.99 * 0.5)
    )
    assert learning_rate(config, 110, 0.0, steps_per_epoch=7) == pytest.approx(1e-5)
    timed = config.model_copy(update={"max_minutes": 1.0})  # auto: the clock wins
    assert learning_rate(timed, 50, 60.0, steps_per_epoch=7) == pytest.approx(1e-5)
    by_steps = timed.model_copy(update={"schedule_by": "steps"})
    assert learning_rate(by_steps, 110, 60.0, steps_per_epoch=7) == pytest.approx(1e-5)
    with pytest.raises(ValueError, match="needs max_minutes"):
        learning_rate(TrainConfig(schedule_by="time"), 5, 0.0, steps_per_epoch=7)


def test_without_a_budget_the_cosine_spans_horizon_epochs_and_warmup_shrinks() -> None:
    config = TrainConfig(horizon_epochs=5, warmup_steps=200)  # 5 epochs x 40 steps = 200 steps
    # Warm-up is capped at a tenth of the 200-step horizon: 20 steps, not all 200.
    assert learning_rate(config, 19, 0.0, steps_per_epoch=40) == pytest.approx(config.lr)
    middle = 20 + (200 - 20) // 2
    assert learning_rate(config, middle, 0.0, steps_per_epoch=40) == pytest.approx(
        config.lr * (0.01 + 0.99 * 0.5)
    )
    assert learning_rate(config, 200, 0.0, steps_per_epoch=40) == pytest.approx(config.lr * 0.01)
    # A longer epoch stretches the same schedule.
    assert learning_rate(config, 200, 0.0, steps_per_epoch=400) > 0.9 * config.lr


@pytest.mark.parametrize("model_type", sorted(MODELS))
def test_every_registered_model_trains_through_the_protocol(
    model_type: str, tiny_train_config: TrainConfig, walks: list[np.ndarray], tmp_path: Path
) -> None:
    spec = tiny_train_config.model.model_copy(update={"model_type": model_type})
    config = tiny_train_config.model_copy(update={"model": spec, "max_steps": 40, "eval_every": 20})
    result = make_trainer(config, walks, tmp_path).fit(show_progress=False)
    assert result.best_metric > result.history[0]["recall@10"] + 0.2


def test_label_smoothing_mixes_the_target_loss_with_the_mean_loss_over_all_items(
    tiny_train_config: TrainConfig,
) -> None:
    model = build(tiny_train_config, n_items=30).eval()
    generator = torch.Generator().manual_seed(0)
    inputs = torch.randint(1, 31, (3, 8), generator=generator)
    labels = torch.randint(1, 31, (3, 8), generator=generator)
    labels[0, :3] = 0  # padding: no target there
    epsilon = 0.2

    with torch.no_grad():
        smoothed = NextItemLoss(model, label_smoothing=epsilon)(inputs, labels)
        plain = NextItemLoss(model)(inputs, labels)
        hidden = model.forward(inputs)[labels > 0]
        log_p = torch.log_softmax(model.score(hidden), dim=-1)
    target_loss = -log_p.gather(1, labels[labels > 0].unsqueeze(1)).sum()
    uniform_loss = -log_p.mean(dim=-1).sum()
    torch.testing.assert_close(plain, target_loss)
    torch.testing.assert_close(smoothed, (1 - epsilon) * target_loss + epsilon * uniform_loss)


@pytest.mark.parametrize("epsilon", [0.0, 0.2])
def test_masking_seen_items_takes_each_softmax_over_the_items_not_yet_in_the_window(
    tiny_train_config: TrainConfig, epsilon: float
) -> None:
    model = build(tiny_train_config, n_items=30).eval()
    generator = torch.Generator().manual_seed(1)
    inputs = torch.randint(1, 31, (3, 8), generator=generator)
    labels = torch.randint(1, 31, (3, 8), generator=generator)
    inputs[1, :2], labels[1, :2] = 0, 0  # left padding
    labels[2, 5] = inputs[2, 1]  # a repeat: the target itself stays rankable

    with torch.no_grad():
        masked = NextItemLoss(model, label_smoothing=epsilon, mask_seen=True)(inputs, labels)
        plain = NextItemLoss(model, label_smoothing=epsilon)(inputs, labels)
        scores = model.score(model.forward(inputs))  # [b, L, v]
    expected = torch.tensor(0.0)
    for row in range(inputs.shape[0]):
        for position in range(inputs.shape[1]):
            target = int(labels[row, position])
            if target == 0:
                continue
            history = {int(item) for item in inputs[row, : position + 1]} | {0}
            allowed = [item for item in range(31) if item not in history or item == target]
            log_p = torch.log_softmax(scores[row, position, allowed], dim=-1)
            nll = -log_p[allowed.index(target)]
            expected += (1 - epsilon) * nll - epsilon * log_p.mean()
    torch.testing.assert_close(masked, expected)
    if not epsilon:
        assert masked < plain  # the same target against fewer competitors


def test_the_weight_average_follows_each_step_and_is_what_validation_sees(
    tiny_train_config: TrainConfig, walks: list[np.ndarray], tmp_path: Path
) -> None:
    decay = 0.6
    trainer = make_trainer(tiny_train_config.model_copy(update={"ema_decay": decay}), walks,
                           tmp_path)  # fmt: skip
    assert trainer.average is not None
    batches = bucket_batches(trainer.lengths, tiny_train_config.batch_size, seed=0)
    model = cast(nn.Module, trainer.model)
    expected: dict[str, torch.Tensor] = {}
    for batch in batches[:4]:
        trainer.train_step(batch)
        for name, value in model.named_parameters():
            now = value.detach().clone()
            before = expected.get(name)
            expected[name] = now if before is None else decay * before + (1 - decay) * now
    averaged = dict(trainer.average.module.named_parameters())
    current = dict(model.named_parameters())
    for name, average in expected.items():
        torch.testing.assert_close(averaged[name].detach(), average)
        assert not torch.equal(average, current[name].detach())
    assert cast(nn.Module, trainer.evaluated) is trainer.average.module


def test_a_resumed_run_with_a_weight_average_matches_an_uninterrupted_one(
    tiny_train_config: TrainConfig, walks: list[np.ndarray], tmp_path: Path
) -> None:
    config = tiny_train_config.model_copy(update={"ema_decay": 0.9})
    straight = make_trainer(config, walks, tmp_path / "straight")
    straight.fit(show_progress=False)
    make_trainer(config.model_copy(update={"max_steps": 10}), walks, tmp_path / "r").fit(
        show_progress=False
    )
    resumed = make_trainer(config, walks, tmp_path / "r")
    assert resumed.resume()
    resumed.fit(show_progress=False)
    assert [p["recall@10"] for p in resumed.state.history] == [
        p["recall@10"] for p in straight.state.history
    ]
    assert straight.average is not None
    assert resumed.average is not None
    for name, value in straight.average.state_dict().items():
        assert torch.equal(value, resumed.average.state_dict()[name]), name
    for name, value in weights(straight).items():
        assert torch.equal(value, weights(resumed)[name]), name
