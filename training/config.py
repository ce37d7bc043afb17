"""TrainConfig: every knob of a training run, validated once and saved next to the run."""

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from model import ModelConfig
from model.registry import MODELS


class ModelSpec(BaseModel):
    """Which registered model to train and its hyper-parameters (``n_items`` comes from data)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    model_type: str = "lrurec"
    d_model: int = Field(64, ge=1)
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
    """Optimiser, schedule, budgets and evaluation settings (defaults: the official recipe)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    model: ModelSpec = Field(default_factory=ModelSpec)
    batch_size: int = Field(128, ge=1)
    """Windows per batch at the mean window length (batches hold a token budget, see batching)."""
    lr: float = Field(1e-3, gt=0)
    """Peak learning rate."""
    schedule: Literal["constant", "cosine"] = "constant"
    """``cosine`` decays from ``lr`` to ``lr * min_lr_ratio`` over the budget."""
    schedule_by: Literal["steps", "time"] = "steps"
    """Budget the cosine follows: ``max_steps`` (deterministic) or ``max_minutes`` (wall clock)."""
    warmup_steps: int = Field(0, ge=0)
    min_lr_ratio: float = Field(0.01, ge=0.0, le=1.0)
    weight_decay: float = Field(0.01, ge=0.0)
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
    threads: int | None = Field(None, ge=1)
    """CPU threads for torch; None keeps torch's default (the number of cores)."""
