"""SASRec (Kang & McAuley, ICDM 2018): the self-attentive baseline, served by full recompute.

Architecture as in the official code (and the widely used pmixer/SASRec.pytorch port): item
embedding scaled by sqrt(d) plus a learned position embedding, dropout, then ``n_layers`` blocks
of pre-LN causal self-attention (queries from LN(x), keys and values from x, residual from the
normalised queries) and a ReLU point-wise feed-forward with its own residual, a final LayerNorm and
tied item embeddings for the scores.

Padding. Sequences are left-padded with 0 like every model in this package. Two choices make a
real position's output depend only on the real items up to it, never on how much padding precedes
it (so ``step`` equals ``forward`` at every real position, to float rounding):

* positions are counted from the first real item (1, 2, ...); padding uses position row 0;
* a real query attends only to real keys at or before it; a padding query attends only to itself.

A padding position therefore always computes the same vector from item row 0 and position row 0:
the cold-start output (a learned "first item" prior, as in LRURec, because training puts the first
item's label there).

Serving ("recompute" mode). SASRec has no recurrent state, so the state is the user's last
``max_len`` item indices, left-padded with 0, stored as float32 ``Tensor[b, max_len]`` so that it
travels through the same float32 state plumbing as LRURec. float32 holds every integer below 2**24
exactly, hence the ``n_items < 2**24`` limit. ``step`` shifts the new item in and recomputes the
whole window: O(max_len²) attention per event, the cost the LRURec paper compares against.
Histories longer than ``max_len`` are truncated to the last ``max_len`` items (SASRec's own
semantics), so beyond that length ``step`` equals ``forward`` over the window, not the full history.
"""

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from model.config import SASRecConfig
from model.shapes import Hidden, Items, Scores, State

MAX_EXACT_ID = 2**24
"""float32 represents every integer up to 2**24 exactly; item indices must stay below it."""


def attention_mask(real: Tensor) -> Tensor:
    """Boolean mask, True where query q may attend key k: causal, real keys, or k == q.

    Args:
        real: ``[b, t]`` bool, True at real items.

    Returns:
        ``[b, 1, t, t]`` (broadcast over heads).
    """
    t = real.shape[1]
    causal = torch.ones(t, t, dtype=torch.bool, device=real.device).tril()
    itself = torch.eye(t, dtype=torch.bool, device=real.device)
    return (causal & (real.unsqueeze(1) | itself)).unsqueeze(1)


class SelfAttention(nn.Module):
    """Multi-head attention with separate query input (LN(x)) and key/value input (x)."""

    def __init__(self, config: SASRecConfig) -> None:
        super().__init__()
        self.n_heads = config.n_heads
        self.p_dropout = config.dropout
        self.query = nn.Linear(config.d_model, config.d_model)
        self.key_value = nn.Linear(config.d_model, 2 * config.d_model)
        self.out = nn.Linear(config.d_model, config.d_model)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, queries: Tensor, x: Tensor, mask: Tensor) -> Tensor:
        """Queries ``[b, q, d]``, x ``[b, t, d]``, mask ``[b, 1, q, t]`` → ``[b, q, d]``."""
        b, q_len, d = queries.shape
        t, h = x.shape[1], self.n_heads
        q = self.query(queries).view(b, q_len, h, d // h).transpose(1, 2)  # [b, h, q, d/h]
        kv = self.key_value(x).view(b, t, 2, h, d // h).permute(2, 0, 3, 1, 4)  # [2, b, h, t, d/h]
        p = self.p_dropout if self.training else 0.0
        y = F.scaled_dot_product_attention(q, kv[0], kv[1], attn_mask=mask, dropout_p=p)
        y = y.transpose(1, 2).reshape(b, q_len, d)  # [b, q, d]
        out: Tensor = self.dropout(self.out(y))
        return out


class SASRecBlock(nn.Module):
    """x ← FFN(LN(Q + Attn(Q, x))) with Q = LN(x); FFN(y) = y + Dropout(W2 Dropout(ReLU(W1 y)))."""

    def __init__(self, config: SASRecConfig) -> None:
        super().__init__()
        self.attention_norm = nn.LayerNorm(config.d_model, eps=config.layer_norm_eps)
        self.attention = SelfAttention(config)
        self.ffn_norm = nn.LayerNorm(config.d_model, eps=config.layer_norm_eps)
        self.w_1 = nn.Linear(config.d_model, config.d_ffn)
        self.w_2 = nn.Linear(config.d_ffn, config.d_model)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: Tensor, mask: Tensor, last_only: bool = False) -> Tensor:
        """``x`` ``[b, t, d]`` → ``[b, t, d]``, or ``[b, 1, d]`` (last position) if ``last_only``.

        ``mask`` is ``[b, 1, t, t]``, or its last query row ``[b, 1, 1, t]`` if ``last_only``.
        """
        queries = self.attention_norm(x[:, -1:] if last_only else x)
        y = self.ffn_norm(queries + self.attention(queries, x, mask))
        out: Tensor = y + self.dropout(self.w_2(self.dropout(F.relu(self.w_1(y)))))
        return out


class SASRec(nn.Module):
    """Item + position embedding → ``n_layers`` causal self-attention blocks → LN → tied scores."""

    def __init__(self, config: SASRecConfig) -> None:
        super().__init__()
        if config.n_items >= MAX_EXACT_ID:
            raise ValueError("SASRec stores item indices in float32: n_items must be < 2**24")
        self.config = config
        # No padding_idx: row 0 is trained, it drives the cold-start output.
        self.embedding = nn.Embedding(config.vocab_size, config.d_model)
        self.position = nn.Embedding(config.max_len + 1, config.d_model)  # row 0: padding
        self.embedding_dropout = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList(SASRecBlock(config) for _ in range(config.n_layers))
        self.final_norm = nn.LayerNorm(config.d_model, eps=config.layer_norm_eps)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Xavier normal on every matrix (the official init), zero biases, default LayerNorm."""
        with torch.no_grad():
            for name, parameter in self.named_parameters():
                if "norm" in name:
                    continue
                if parameter.dim() >= 2:
                    nn.init.xavier_normal_(parameter)
                else:
                    parameter.zero_()

    @property
    def state_shape(self) -> tuple[int, ...]:
        """Per-user state shape: ``(max_len,)`` item indices as float32."""
        return (self.config.max_len,)

    def _encode(self, items: Items, last_only: bool = False) -> Hidden:
        """``[b, t]`` → ``[b, t, d]`` (or ``[b, 1, d]``: only the last position's output)."""
        if items.shape[1] > self.config.max_len:
            raise ValueError(f"sequence length {items.shape[1]} > max_len {self.config.max_len}")
        real = items > 0  # [b, t]
        positions = torch.cumsum(real, dim=1) * real  # 1, 2, ... from the first real item
        x = self.embedding(items) * math.sqrt(self.config.d_model) + self.position(positions)
        x = self.embedding_dropout(x)
        mask = attention_mask(real)  # [b, 1, t, t]
        last = len(self.blocks) - 1
        for k, block in enumerate(self.blocks):
            # The last block only needs the newest query: keys/values come from the full x.
            only = last_only and k == last
            x = block(x, mask[:, :, -1:] if only else mask, last_only=only)
        out: Tensor = self.final_norm(x)
        return out

    def forward(self, items: Items) -> Hidden:
        """Output at every position.

        Args:
            items: ``LongTensor[b, t]``, left-padded with 0, ``t <= max_len``.

        Returns:
            ``Tensor[b, t, d]``. At a padding position this is :meth:`cold_start_hidden`.
        """
        return self._encode(items)

    def _window_hidden(self, window: Items) -> Hidden:
        """Last output of left-padded windows ``[b, max_len]`` → ``[b, d]``.

        Columns that are padding in every row are dropped first: they are masked out anyway, so
        the result is the same and new users cost less.
        """
        real_columns = (window > 0).any(dim=0).nonzero()
        start = int(real_columns[0]) if len(real_columns) else window.shape[1] - 1
        return self._encode(window[:, start:], last_only=True)[:, -1]

    def prefill(self, items: Items) -> tuple[Hidden, State]:
        """Last output and serving state from left-padded histories ``[b, t]`` (any ``t``).

        Returns:
            ``(hidden [b, d], state [b, max_len])``: the last ``max_len`` items, left-padded.
        """
        window = items[:, -self.config.max_len :]
        window = F.pad(window, (self.config.max_len - window.shape[1], 0))  # [b, max_len]
        return self._window_hidden(window), window.to(torch.float32)

    def score(self, hidden: Hidden) -> Scores:
        """Tied-embedding scores ``hidden @ Eᵀ``: ``[..., d] → [..., v]``."""
        return hidden @ self.embedding.weight.T

    def init_state(self, batch_size: int) -> State:
        """Empty windows (all padding) for ``batch_size`` users: ``[b, max_len]`` float32."""
        return torch.zeros(
            batch_size,
            self.config.max_len,
            dtype=torch.float32,
            device=self.embedding.weight.device,
        )

    def step(self, items: Items, state: State) -> tuple[Hidden, State]:
        """Append one event per user and recompute the whole window.

        Args:
            items: ``LongTensor[b]``, one item per user (non-zero).
            state: ``[b, max_len]`` float32 item indices; not modified.

        Returns:
            ``(hidden [b, d], new_state [b, max_len])``.
        """
        new_state = torch.cat([state[:, 1:], items.to(state.dtype).unsqueeze(1)], dim=1)
        return self._window_hidden(new_state.long()), new_state

    def cold_start_hidden(self) -> Hidden:
        """Output for a user with no events, ``[d]``: the output at any padding position."""
        padding = torch.zeros(1, 1, dtype=torch.long, device=self.embedding.weight.device)
        return self._encode(padding)[0, 0]
