"""TrainConfig: every knob of a training run, validated once and saved next to the run."""

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from model import ModelConfig
from model.registry import MODELS
from training.precision import Precision


class ModelSpec(BaseModel):
    """Which registered model to train and its hyper-parameters (``n_items`` comes from data)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    model_type: str = "lrurec"
    d_model: int = Field(128, ge=1)
    n_layers: int = Field(2, ge=1)
    dropout: float = Field(0.2, ge=0.0, lt=1.0)
    max_len: int = Field(200, ge=1)
    extra: dict[str, Any] = Field(default_factory=dict)
    """Model-specific fields (e.g. ``lru_dropout``); LRURec's defaults to ``dropout``."""

    def build_config(self, n_items: int) -> ModelConfig:
        """The frozen model config for a vocabulary of ``n_items``."""
        if self.model_type not in MODELS:
            raise ValueError(f"unknown model {self.model_type!r}; registered: {sorted(MODELS)}")
        _, config_class = MODELS[self.model_type]
        values: dict[str, Any] = {
            "n_items": n_items,
            "d_model": self.d_model,
            "n_layers": self.n_layers,
            "dropout": self.dropout,
            "max_len": self.max_len,
        }
        if self.model_type == "lrurec":
            # The official code's two dropouts share one default; the paper grid has one value.
            values["lru_dropout"] = self.dropout
        values.update(self.extra)
        return config_class.from_dict(values)


class TrainConfig(BaseModel):
    """Optimiser, schedule, budgets and evaluation settings.

    The defaults are the best recipe measured on MovieLens-1M (``benchmarks/RESULTS.md``, section
    9), with the model's width of 128 (``ModelSpec``): batches of ~32 windows' worth of targets,
    AdamW at 2e-3 with weight decay 1e-4, 200 warm-up steps, then a cosine to 1 % of the peak
    over the run's budget. The budget is ``max_minutes`` when given (the cosine then follows the
    wall clock, so the rate reaches its floor when the time is up), else ``max_steps``, else
    ``horizon_epochs`` passes over the data, so the schedule scales with the data's size. The
    official code's recipe is batch 128, constant lr 1e-3, weight decay 0.01, no warm-up.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    model: ModelSpec = Field(default_factory=ModelSpec)
    batch_size: int = Field(32, ge=1)
    """Windows per batch at the mean window length (batches hold a token budget, see batching)."""
    lr: float = Field(2e-3, gt=0)
    """Peak learning rate."""
    schedule: Literal["constant", "cosine"] = "cosine"
    """``cosine`` decays from ``lr`` to ``lr * min_lr_ratio`` over the budget."""
    schedule_by: Literal["auto", "steps", "time"] = "auto"
    """Budget the cosine follows: ``time`` (``max_minutes``, wall clock), ``steps`` (``max_steps``
    or ``horizon_epochs``, deterministic), or ``auto``: time when ``max_minutes`` is set."""
    horizon_epochs: int = Field(40, ge=1)
    """Epochs the cosine spans when no step or time budget is given (ML-1M's best run: ~40)."""
    warmup_steps: int = Field(200, ge=0)
    """Linear warm-up; capped at a tenth of a step horizon, so small data is not all warm-up."""
    min_lr_ratio: float = Field(0.01, ge=0.0, le=1.0)
    weight_decay: float = Field(1e-4, ge=0.0)
    label_smoothing: float = Field(0.0, ge=0.0, lt=1.0)
    """Share of each target's probability mass spread evenly over every output column (0: plain
    cross-entropy)."""
    mask_seen_in_loss: bool = False
    """Leave the items already in the window out of each position's softmax, as evaluation and
    serving leave them out of the ranking (see ``training.trainer.seen_item_mask``)."""
    ema_decay: float = Field(0.0, ge=0.0, lt=1.0)
    """Decay of an exponential moving average of the weights, updated every step; validation,
    the best checkpoint and the artifact then use the average (0: off, the raw weights)."""
    adam_eps: float = Field(1e-9, gt=0)
    clip_norm: float = Field(5.0, gt=0)
    max_steps: int | None = Field(None, ge=1)
    max_epochs: int = Field(500, ge=1)
    max_minutes: float | None = Field(None, gt=0)
    """Wall-clock budget, cumulative over resumed runs."""
    eval_every: int = Field(500, ge=1)
    """Optimiser steps between validations (official ML-1M: 500)."""
    patience: int = Field(10, ge=1)
    """Validations without a strictly better Recall@10 before stopping."""
    seed: int = 42
    device: str = "cpu"
    precision: Precision = "auto"
    """Training arithmetic: ``bf16`` autocast, ``fp32``, or ``auto``: bf16 where the device has
    native bf16 (AVX-512 BF16 / AMX CPUs, recent GPUs), else fp32 (see training.precision)."""
    threads: int | None = Field(None, ge=1)
    """CPU threads for torch; None keeps torch's default (the number of cores)."""
