"""LRURec (Yue et al., WSDM 2024): linear recurrent units for sequential recommendation.

Training runs the recurrence over whole left-padded sequences with the log-depth
:func:`model.scan.parallel_scan`; serving advances a fixed-size state by one event with
:meth:`LRURec.step` (the readable reference; :class:`model.inference.folded.FoldedLRURec` is the
fast form for serving). Both compute the same function (pinned by tests/model/test_parity.py).

Serving state layout, ``Tensor[b, n_layers, 2, d_state]`` in the parameters' dtype (float32 in
production): ``state[:, k, 0]`` is Re h and ``state[:, k, 1]`` is Im h of layer ``k``. A new user
starts from zeros (:meth:`init_state`).
"""

from typing import Literal

import torch
from torch import Tensor, nn

from model.config import LRURecConfig
from model.init import is_truncated_normal_target, truncated_normal_
from model.layers import LRUBlock
from model.shapes import Hidden, Items, Scores, State


class LRURec(nn.Module):
    """Embedding → dropout → LayerNorm → ``n_layers`` × (LRU layer, feed-forward) → tied scores."""

    def __init__(self, config: LRURecConfig) -> None:
        super().__init__()
        self.config = config
        # No padding_idx: as in the official code, row 0 is trained (it drives the cold start).
        self.embedding = nn.Embedding(config.vocab_size, config.d_model)
        self.embedding_dropout = nn.Dropout(config.dropout)
        self.embedding_norm = nn.LayerNorm(config.d_model, eps=config.layer_norm_eps)
        self.blocks = nn.ModuleList(LRUBlock(config) for _ in range(config.n_layers))
        self.item_bias = nn.Parameter(torch.empty(config.vocab_size))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Truncated normal (σ = 0.02, ±2σ) on every weight and bias except LayerNorm and λ/γ."""
        with torch.no_grad():
            for name, parameter in self.named_parameters():
                if is_truncated_normal_target(name):
                    truncated_normal_(parameter)

    def use_scan(self, kind: Literal["auto", "parallel", "loop"]) -> None:
        """Pick the training scan for every layer (``auto``: loop on CPU, log-depth elsewhere)."""
        for block in self.blocks:
            assert isinstance(block, LRUBlock)
            block.lru.scan = kind

    @property
    def state_shape(self) -> tuple[int, ...]:
        """Per-user state shape: ``(n_layers, 2, d_state)``."""
        return (self.config.n_layers, 2, self.config.d_state)

    def embed(self, items: Items) -> Tensor:
        embedded: Tensor = self.embedding_norm(self.embedding_dropout(self.embedding(items)))
        return embedded

    def _run(self, items: Items) -> tuple[Hidden, list[Tensor]]:
        mask = items > 0  # [b, t]
        carry = torch.zeros_like(mask)
        carry[:, 1:] = mask[:, :-1]  # h_{t-1} flows into h_t only if t-1 is a real event
        x = self.embed(items)
        states = []
        for block in self.blocks:
            x, h = block(x, carry)
            states.append(h)
        return x, states

    def forward(self, items: Items) -> Hidden:
        """Hidden state after the last block at every position.

        Args:
            items: ``LongTensor[b, t]``, left-padded with 0.

        Returns:
            ``Tensor[b, t, d]``. At a padding position this is the cold-start output.
        """
        hidden, _ = self._run(items)
        return hidden

    def prefill(self, items: Items) -> tuple[Hidden, State]:
        """Parallel forward over histories, returning the last output and the serving state.

        Args:
            items: ``LongTensor[b, t]``, left-padded; the last column is the newest event.

        Returns:
            ``(hidden [b, d], state [b, *state_shape])``, identical to stepping through the
            real events from :meth:`init_state`. An all-padding row gives the zero state.
        """
        hidden, states = self._run(items)
        real = (items[:, -1] > 0).view(-1, 1, 1, 1)  # [b, 1, 1, 1]
        parts = [torch.stack([h[:, -1].real, h[:, -1].imag], dim=1) for h in states]
        state = torch.stack(parts, dim=1) * real  # [b, k, 2, n]
        return hidden[:, -1], state

    def score(self, hidden: Hidden) -> Scores:
        """Tied-embedding scores ``hidden @ Eᵀ + bias``: ``[..., d] → [..., v]``."""
        return hidden @ self.embedding.weight.T + self.item_bias

    def init_state(self, batch_size: int) -> State:
        """Zero state for ``batch_size`` users with no events: ``[b, *state_shape]``."""
        return torch.zeros(
            batch_size, *self.state_shape, dtype=self.item_bias.dtype, device=self.item_bias.device
        )

    def step(self, items: Items, state: State) -> tuple[Hidden, State]:
        """Advance each user's state by one event in O(1) of the history length.

        The readable reference, block by block (differentiable; applies dropout in training).
        Serving uses :class:`model.inference.folded.FoldedLRURec`, the same function with λ, γ,
        B and C folded once (about 2x faster at batch 1).

        Args:
            items: ``LongTensor[b]``, one item per user (non-zero).
            state: ``[b, *state_shape]``; not modified.

        Returns:
            ``(hidden [b, d], new_state [b, *state_shape])``.
        """
        x = self.embed(items)
        new_layers = []
        for k, block in enumerate(self.blocks):
            assert isinstance(block, LRUBlock)
            x, h_re, h_im = block.step(x, state[:, k, 0], state[:, k, 1])
            new_layers.append(torch.stack([h_re, h_im], dim=1))
        return x, torch.stack(new_layers, dim=1)

    def cold_start_hidden(self) -> Hidden:
        """Output for a user with no events: one step on item 0 from the zero state, ``[d]``.

        This equals :meth:`forward` at a padding position; the step is never stored in a state.
        """
        padding = torch.zeros(1, dtype=torch.long, device=self.item_bias.device)
        hidden, _ = self.step(padding, self.init_state(1))
        return hidden[0]
