"""Model configurations: frozen dataclasses written into every artifact and rebuilt from it."""

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, ClassVar, Self


@dataclass(frozen=True)
class ModelConfig:
    """Fields every recommender shares; subclasses add their own hyper-parameters."""

    model_type: ClassVar[str] = ""

    n_items: int
    d_model: int = 64
    n_layers: int = 2
    dropout: float = 0.2
    max_len: int = 200

    def __post_init__(self) -> None:
        if self.n_items < 1:
            raise ValueError(f"n_items must be >= 1, got {self.n_items}")
        if self.d_model < 1 or self.n_layers < 1 or self.max_len < 1:
            raise ValueError("d_model, n_layers and max_len must be positive")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")

    @property
    def vocab_size(self) -> int:
        """Score columns: the items plus index 0 (padding)."""
        return self.n_items + 1

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> Self:
        known = {field.name for field in dataclasses.fields(cls)}
        unknown = set(values) - known
        if unknown:
            raise ValueError(f"unknown {cls.__name__} fields: {sorted(unknown)}")
        return cls(**values)


@dataclass(frozen=True)
class LRURecConfig(ModelConfig):
    """LRURec hyper-parameters; defaults follow the official code (reference section A)."""

    model_type: ClassVar[str] = "lrurec"

    lru_dropout: float = 0.2
    """Dropout on the LRU layer output (the official ``bert_attn_dropout``)."""
    state_expansion: int = 2
    """Complex channels per layer as a multiple of ``d_model`` (official: 2)."""
    r_min: float = 0.8
    r_max: float = 0.99
    max_phase: float = 2 * math.pi
    layer_norm_eps: float = 1e-5

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0.0 <= self.r_min < self.r_max < 1.0:
            raise ValueError(f"need 0 <= r_min < r_max < 1, got {self.r_min}, {self.r_max}")

    @property
    def d_state(self) -> int:
        return self.state_expansion * self.d_model

    @property
    def d_ffn(self) -> int:
        return 4 * self.d_model


@dataclass(frozen=True)
class RecBLRConfig(ModelConfig):
    """RecBLR hyper-parameters; defaults follow the official ML-1M config (reference B2-B4)."""

    model_type: ClassVar[str] = "recblr"

    expand: int = 2
    """Recurrent channels per layer as a multiple of ``d_model`` (official ``expand``: 2)."""
    d_conv: int = 4
    """Width of the causal depthwise convolution before the recurrence (official: 4)."""
    a_min: float = 0.9
    """Smallest base decay exp(-softplus(Λ)) at init (the linspace starts here)."""
    a_max: float = 0.999
    """Largest base decay at init (the linspace ends here)."""
    layer_norm_eps: float = 1e-12

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.expand < 1 or self.d_conv < 1:
            raise ValueError(f"expand and d_conv must be >= 1, got {self.expand}, {self.d_conv}")
        if not 0.0 < self.a_min <= self.a_max < 1.0:
            raise ValueError(f"need 0 < a_min <= a_max < 1, got {self.a_min}, {self.a_max}")

    @property
    def d_state(self) -> int:
        return self.expand * self.d_model

    @property
    def d_ffn(self) -> int:
        return 4 * self.d_model


@dataclass(frozen=True)
class SASRecConfig(ModelConfig):
    """SASRec (Kang & McAuley, ICDM 2018) hyper-parameters for the full-recompute baseline.

    ``max_len`` is both the attention window and the length of the serving state: the service
    keeps a user's last ``max_len`` items and recomputes the whole window on every event.
    """

    model_type: ClassVar[str] = "sasrec"

    n_heads: int = 1
    layer_norm_eps: float = 1e-8
    """The official SASRec value."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.n_heads < 1 or self.d_model % self.n_heads:
            raise ValueError(f"d_model {self.d_model} must split into n_heads {self.n_heads}")

    @property
    def d_ffn(self) -> int:
        """SASRec's point-wise feed-forward keeps the width (two d → d layers)."""
        return self.d_model
