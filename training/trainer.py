"""The fit loop: full-softmax next-item training with validation, early stopping and resume.

Only the :class:`model.RecurrentRecommender` protocol is used, so any registered model trains.
Logits are computed only at positions with a target (never at padding), which with
length-bucketed batches removes nearly all wasted work from the 3,417-way output layer.
"""

import logging
import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from tqdm import tqdm

from model import RecurrentRecommender
from training import checkpoint, precision
from training.batching import Windows, bucket_batches, collate, make_windows
from training.config import TrainConfig
from training.data import Split
from training.distributed import Distributed
from training.evaluate import Protocol, evaluate, last_position_scorer

logger = logging.getLogger(__name__)

SELECTION_METRIC = "recall@10"


@dataclass
class LoopState:
    """Everything the loop needs to resume exactly where it stopped (saved as JSON)."""

    step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0
    seconds: float = 0.0
    best_metric: float = -1.0
    best_step: int = 0
    stale_validations: int = 0
    stopped_early: bool = False
    history: list[dict[str, float]] = field(default_factory=list)


@dataclass(frozen=True)
class FitResult:
    steps: int
    seconds: float
    best_step: int
    best_metric: float
    stopped_early: bool
    history: list[dict[str, float]]


def build_optimizer(model: RecurrentRecommender, config: TrainConfig) -> torch.optim.AdamW:
    """AdamW; biases and LayerNorms are not decayed, everything else is (official groups, A4)."""
    decayed: list[nn.Parameter] = []
    plain: list[nn.Parameter] = []
    for name, parameter in model.named_parameters():
        if not parameter.requires_grad:
            continue
        no_decay = "bias" in name or "norm" in name or name.endswith(("b_re", "b_im", "c_re"))
        (plain if no_decay else decayed).append(parameter)
    groups = [
        {"params": decayed, "weight_decay": config.weight_decay},
        {"params": plain, "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=config.lr, eps=config.adam_eps)


def schedule_horizon(config: TrainConfig, steps_per_epoch: int) -> tuple[str, float]:
    """What the cosine spans: ``("time", seconds)`` or ``("steps", steps)``."""
    by = config.schedule_by
    if by == "auto":
        by = "time" if config.max_minutes else "steps"
    if by == "time":
        if not config.max_minutes:
            raise ValueError("schedule_by=time needs max_minutes")
        return "time", config.max_minutes * 60
    if config.max_steps:
        return "steps", float(config.max_steps)
    return "steps", float(min(config.horizon_epochs, config.max_epochs) * steps_per_epoch)


def learning_rate(config: TrainConfig, step: int, seconds: float, steps_per_epoch: int) -> float:
    """Linear warm-up, then constant or cosine decay over the step or time budget."""
    unit, horizon = schedule_horizon(config, steps_per_epoch)
    # A short step horizon (small data) keeps most of its steps after warm-up.
    warmup = config.warmup_steps if unit == "time" else min(config.warmup_steps, int(horizon) // 10)
    if step < warmup:
        return config.lr * (step + 1) / warmup
    if config.schedule == "constant":
        return config.lr
    elapsed = seconds if unit == "time" else step - warmup
    progress = elapsed / (horizon if unit == "time" else max(horizon - warmup, 1.0))
    cosine = 0.5 * (1 + math.cos(math.pi * min(max(progress, 0.0), 1.0)))
    return config.lr * (config.min_lr_ratio + (1 - config.min_lr_ratio) * cosine)


def seen_item_mask(inputs: Tensor, labels: Tensor, n_columns: int) -> Tensor:
    """Columns to exclude from the softmax at each labelled position: ``BoolTensor[N, v]``.

    At position t of a window, the items of its inputs up to t (the history the model has read)
    and the padding column, except the target itself. Rows follow ``labels > 0`` in row-major
    order, as ``hidden[labels > 0]`` does. Evaluation and serving never recommend a seen item,
    so training need not spend probability mass pushing them down.
    """
    batch, length = inputs.shape
    positions = torch.arange(length, device=inputs.device)
    first_seen = torch.full((batch, n_columns), length, dtype=torch.long, device=inputs.device)
    first_seen.scatter_reduce_(1, inputs, positions.expand(batch, length), reduce="amin")
    targets = labels > 0
    seen = (first_seen.unsqueeze(1) <= positions.view(1, length, 1))[targets]  # [N, v]
    seen[:, 0] = True
    seen[torch.arange(seen.shape[0], device=seen.device), labels[targets]] = False
    return seen


class NextItemLoss(nn.Module):
    """Summed cross-entropy over all items at every labelled position.

    With ``mask_seen``, the softmax at each position runs over the items not yet in the window
    (:func:`seen_item_mask`); label smoothing then spreads its mass over those items only.
    A module, so DistributedDataParallel can wrap the whole forward pass (embedding, blocks and
    output layer) and synchronise every gradient.
    """

    def __init__(
        self, model: RecurrentRecommender, label_smoothing: float = 0.0, mask_seen: bool = False
    ) -> None:
        super().__init__()
        self.model = cast(nn.Module, model)
        self.label_smoothing = label_smoothing
        self.mask_seen = mask_seen

    def forward(self, inputs: Tensor, labels: Tensor) -> Tensor:
        """Args: ``inputs``, ``labels``: ``LongTensor[b, L]``, left-padded; label 0: no target."""
        hidden: Tensor = self.model(inputs)  # [b, L, d]
        targets = labels > 0
        recommender = cast(RecurrentRecommender, self.model)
        logits = recommender.score(hidden[targets])  # [N, v]: only where there is a target
        if not self.mask_seen:
            return F.cross_entropy(
                logits, labels[targets], reduction="sum", label_smoothing=self.label_smoothing
            )
        seen = seen_item_mask(inputs, labels, logits.shape[1])
        log_p = torch.log_softmax(logits.float().masked_fill(seen, -torch.inf), dim=-1)
        target_loss = -log_p.gather(1, labels[targets].unsqueeze(1)).sum()
        if not self.label_smoothing:
            return target_loss
        open_columns = (~seen).sum(dim=1)
        uniform_loss = (-log_p.masked_fill(seen, 0.0).sum(dim=1) / open_columns).sum()
        return (1 - self.label_smoothing) * target_loss + self.label_smoothing * uniform_loss


def next_item_loss(model: RecurrentRecommender, inputs: Tensor, labels: Tensor) -> Tensor:
    """Token-mean cross-entropy over all items at every labelled position."""
    summed: Tensor = NextItemLoss(model)(inputs, labels)
    return summed / (labels > 0).sum()


class Trainer:
    """Runs :func:`fit`'s loop; kept as a class so the pieces stay small."""

    def __init__(
        self,
        model: RecurrentRecommender,
        split: Split,
        config: TrainConfig,
        checkpoint_dir: Path,
        on_validation: Callable[[dict[str, float]], None] | None = None,
        job: Distributed | None = None,
    ) -> None:
        self.model, self.split, self.config = model, split, config
        self.job = job or Distributed()
        self.loss = self.wrap(
            NextItemLoss(model, config.label_smoothing, mask_seen=config.mask_seen_in_loss)
        )
        self.checkpoint_dir = checkpoint_dir
        self.on_validation = on_validation
        self.max_len = model.config.max_len
        self.windows: Windows = make_windows(split.train, self.max_len)
        self.lengths = self.windows.lengths
        self.steps_per_epoch = len(bucket_batches(self.lengths, config.batch_size, 0))
        self.optimizer = build_optimizer(model, config)
        self.precision = precision.resolve(config.precision, config.device)
        logger.info("training arithmetic: %s", self.precision)
        ema = get_ema_multi_avg_fn(config.ema_decay)  # type: ignore[no-untyped-call]
        self.average = (
            AveragedModel(cast(nn.Module, model), multi_avg_fn=ema, use_buffers=True)
            if config.ema_decay
            else None
        )
        """The moving average of the weights (``ema_decay``), or None."""
        self.state = LoopState()
        self.started = time.monotonic()
        self.seconds_at_start = 0.0
        self.clock = 0.0
        """Rank 0's elapsed seconds as of the last :meth:`sync` (drives schedule and budget)."""
        self.loss_total, self.loss_steps = 0.0, 0
        self.seed_dropout()

    @property
    def evaluated(self) -> RecurrentRecommender:
        """The weights validated and kept as the best: the moving average when there is one."""
        if self.average is None:
            return self.model
        return cast(RecurrentRecommender, self.average.module)

    def wrap(self, loss: NextItemLoss) -> nn.Module:
        if not self.job.enabled:
            return loss
        on_gpu = self.config.device.startswith("cuda")
        ids = [self.job.local_rank] if on_gpu else None
        return DistributedDataParallel(loss, device_ids=ids)

    def seed_dropout(self) -> None:
        """Other ranks draw their own dropout masks; rank 0 keeps the single-process stream."""
        if self.job.rank > 0:
            torch.manual_seed(self.config.seed + 7919 * self.job.rank + self.state.step)

    def sync(self) -> None:
        """Every rank takes rank 0's clock and stop decision, so schedules and stops agree."""
        stop = float(self.state.stopped_early)
        clock, stop = self.job.broadcast_from_main([self.elapsed(), stop])
        self.clock, self.state.stopped_early = clock, bool(stop)

    def elapsed(self) -> float:
        return self.seconds_at_start + time.monotonic() - self.started

    def resume(self) -> bool:
        last = checkpoint.find_last(self.checkpoint_dir)
        if last is None:
            return False
        loop = checkpoint.load_last(last, self.model, self.optimizer, self.average)
        self.state = LoopState(**loop)
        self.seconds_at_start = self.state.seconds
        self.started = time.monotonic()
        self.seed_dropout()
        logger.info("resumed from %s at step %d", last, self.state.step)
        return True

    def validate(self) -> dict[str, float]:
        evaluated = cast(nn.Module, self.evaluated)
        evaluated.eval()
        metrics = evaluate(
            last_position_scorer(self.evaluated),
            self.split.train,
            self.split.valid,
            self.max_len,
            Protocol.paper,
            self.config.device,
        )
        evaluated.train()
        return metrics

    def record_validation(self) -> None:
        metrics = self.validate()
        state = self.state
        point = {"step": float(state.step), "seconds": self.elapsed(), **metrics}
        if self.loss_steps:  # mean training loss since the previous validation
            point["train_loss"] = self.loss_total / self.loss_steps
            self.loss_total, self.loss_steps = 0.0, 0
        state.history.append(point)
        if metrics[SELECTION_METRIC] > state.best_metric:
            state.best_metric, state.best_step = metrics[SELECTION_METRIC], state.step
            state.stale_validations = 0
            checkpoint.save_best(self.checkpoint_dir, self.evaluated)
        elif state.step > 0:
            state.stale_validations += 1
            state.stopped_early = state.stale_validations >= self.config.patience
        if self.on_validation:
            self.on_validation(point)

    def save(self) -> None:
        self.state.seconds = self.elapsed()
        loop: dict[str, Any] = dict(vars(self.state))
        checkpoint.save_last(self.checkpoint_dir, self.model, self.optimizer, loop, self.average)

    def budget_left(self) -> bool:
        config, state = self.config, self.state
        if state.stopped_early or state.epoch >= config.max_epochs:
            return False
        if config.max_steps is not None and state.step >= config.max_steps:
            return False
        return config.max_minutes is None or self.clock < config.max_minutes * 60

    def train_step(self, batch: np.ndarray) -> float:
        """One optimiser step on a global batch; returns its token-mean loss (all ranks)."""
        job, device = self.job, self.config.device
        inputs, labels = collate(self.windows, job.rows(batch))
        n_targets = int(self.lengths[batch].sum())  # every window position holds a target
        lr = learning_rate(self.config, self.state.step, self.clock, self.steps_per_epoch)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        with precision.autocast(self.precision, device):
            summed: Tensor = self.loss(inputs.to(device), labels.to(device))
        weight = job.weight(batch)
        # DDP averages gradients over ranks: scaling by world makes it the global token mean.
        loss = summed * (weight * job.world / n_targets)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()  # type: ignore[no-untyped-call]
        nn.utils.clip_grad_norm_(list(self.model.parameters()), self.config.clip_norm)
        self.optimizer.step()
        if self.average is not None:
            self.average.update_parameters(cast(nn.Module, self.model))
        self.state.step += 1
        mean = job.sum(float(summed.item()) * weight) / n_targets
        self.loss_total, self.loss_steps = self.loss_total + mean, self.loss_steps + 1
        return mean

    def run_epoch(self, progress: tqdm) -> None:
        state, config = self.state, self.config
        batches = bucket_batches(self.lengths, config.batch_size, config.seed + state.epoch)
        for index in range(state.batch_in_epoch, len(batches)):
            loss = self.train_step(batches[index])
            state.batch_in_epoch = index + 1
            progress.update(1)
            progress.set_postfix(
                loss=f"{loss:.3f}", epoch=state.epoch, refresh=False, **self.last_metrics()
            )
            if state.step % config.eval_every == 0 and self.job.is_main:
                self.record_validation()
                self.save()
            self.sync()
            if not self.budget_left():
                return
        state.epoch += 1
        state.batch_in_epoch = 0

    def last_metrics(self) -> dict[str, str]:
        if not self.state.history:
            return {}
        last = self.state.history[-1]
        return {"val_r10": f"{last['recall@10']:.4f}", "val_n10": f"{last['ndcg@10']:.4f}"}

    def fit(self, show_progress: bool = True) -> FitResult:
        """Train until a budget runs out or validation stops improving; load the best weights.

        Under ``torchrun`` only rank 0 validates, saves and loads the best weights.
        """
        main = self.job.is_main
        self.model.train()
        if main and not self.state.history:
            self.record_validation()  # step 0, as the official code does
        total = self.config.max_steps or self.steps_per_epoch * self.config.max_epochs
        # Redirected to a log file, a bar refreshed every 0.1 s would flood it.
        interval = 0.1 if sys.stderr.isatty() else 60.0
        bar = tqdm(
            total=total,
            initial=self.state.step,
            disable=not (show_progress and main),
            mininterval=interval,
        )
        self.sync()
        with bar as progress:
            while self.budget_left():
                self.run_epoch(progress)
        if main:
            if not self.state.history or self.state.history[-1]["step"] != self.state.step:
                self.record_validation()
            self.save()
            checkpoint.load_best(self.checkpoint_dir, self.model)
        cast(nn.Module, self.model).to(self.config.device)
        self.model.eval()
        state = self.state
        return FitResult(
            state.step,
            state.seconds,
            state.best_step,
            state.best_metric,
            state.stopped_early,
            state.history,
        )
