"""The contract every servable, trainable model satisfies; the service and trainer use only this."""

from collections.abc import Iterator
from typing import Any, Protocol, Self, runtime_checkable

from torch import nn

from model.config import ModelConfig
from model.shapes import Hidden, Items, Scores, State


@runtime_checkable
class RecurrentRecommender(Protocol):
    """A next-item model with a training forward and an O(1)-per-event serving step.

    ``forward`` and repeated ``step`` calls from ``init_state`` agree at every real position.
    Implementations are ``torch.nn.Module`` subclasses; the module methods the trainer and
    service use are listed at the end.
    """

    @property
    def config(self) -> ModelConfig:
        """The frozen hyper-parameters, saved in the artifact."""
        ...

    @property
    def state_shape(self) -> tuple[int, ...]:
        """Shape of one user's state (without the batch dimension)."""
        ...

    def forward(self, items: Items) -> Hidden:
        """``LongTensor[b, t]`` (left-padded) → ``Tensor[b, t, d]``."""
        ...

    def prefill(self, items: Items) -> tuple[Hidden, State]:
        """Rebuild (last hidden ``[b, d]``, state) from left-padded histories ``[b, t]``."""
        ...

    def score(self, hidden: Hidden) -> Scores:
        """``[..., d]`` → ``[..., n_items + 1]``; column 0 is padding."""
        ...

    def init_state(self, batch_size: int) -> State:
        """State of ``batch_size`` users with no events."""
        ...

    def step(self, items: Items, state: State) -> tuple[Hidden, State]:
        """One event per user: items ``[b]``, state ``[b, ...]`` → (hidden ``[b, d]``, state)."""
        ...

    def cold_start_hidden(self) -> Hidden:
        """Hidden ``[d]`` for a user with no events."""
        ...

    __call__: Any
    training: bool

    def eval(self) -> Self: ...

    def train(self, mode: bool = True) -> Self: ...

    def parameters(self, recurse: bool = True) -> Iterator[nn.Parameter]: ...

    def named_parameters(
        self, prefix: str = "", recurse: bool = True, remove_duplicate: bool = True
    ) -> Iterator[tuple[str, nn.Parameter]]: ...
