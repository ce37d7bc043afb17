"""RecBLR (Liu et al., CIKM 2024): behaviour-dependent linear recurrent units for recommendation.

Reference: ``../shared/reference/lrurec_recblr.md`` section B (official code chengkai-liu/RecBLR).
Each layer is a BD-LRU wrapped like Mamba/Griffin: ``[x, z] = W_in u``; ``x`` goes through a causal
depthwise convolution (width K = ``d_conv``, bias) and SiLU; input-dependent gates

    [r_t, i_t] = W_g x_t + b_g,   α_t = exp(-softplus(Λ) ⊙ σ(r_t)),
    β_t = sqrt(1 - α_t² + 1e-8) ⊙ σ(i_t)

drive the real recurrence h_t = α_t ⊙ h_{t-1} + β_t ⊙ x_t, and the layer outputs
``W_o(SiLU(z) ⊙ h)``. Post-LN residual (LN eps 1e-12), then a SiLU feed-forward (post-LN). Scores
are tied to the item embedding, with no bias.

Glossary (in addition to ``model/shapes.py``): Λ is ``decay_logit`` (``[n]``; the base decay is
a = exp(-softplus(Λ)), initialised as the official linspace, reference B3); ``W_in`` is
``in_proj`` (d → 2n), ``W_g``/``b_g`` is ``gate_proj`` (n → 2n), ``W_o`` is ``out_proj`` (n → d);
``x_pre`` is the convolution's input, ``x_c`` its SiLU output. The recurrence runs on any
:mod:`model.scan` scan over (gate, value) pairs: the log-depth ``parallel_scan`` or, on CPU,
``loop_scan``; both are pinned to ``sequential_scan`` by tests/model/test_recblr.py.

Padding, defined cleanly (reference B7; unlike the official code, whose zero-padding before the
convolution makes the initial state depend on ``max_len``): a user's state before the first real
event is all zeros, exactly as in LRURec. In the parallel form this means that at padding
positions (item 0, left padding) ``x_pre`` is zeroed as convolution *history*, and the carry
α_t into the first real position is cut. Every padding position therefore computes one step on
item 0 from the zero state, which is :meth:`RecBLR.cold_start_hidden`; no real position sees the
padding, so outputs do not depend on how much padding there is.

Serving state layout, ``Tensor[b, n_layers, d_conv, n]`` in the parameters' dtype (float32 in
production; (2, 4, 128) per user by default, 4 KiB): ``state[:, k, 0]`` is h of layer ``k`` and
``state[:, k, 1:]`` are the last ``d_conv - 1`` pre-convolution inputs ``x_pre`` of layer ``k``,
oldest first, zero where the user has fewer events. A new user starts from zeros.
"""

import math
from collections.abc import Callable
from typing import cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from model.config import RecBLRConfig
from model.layers import FeedForward
from model.scan import loop_scan, parallel_scan
from model.shapes import Hidden, Items, Scores, State

Scan = Callable[[Tensor, Tensor], Tensor]
"""A scan of h_t = gates_t ⊙ h_{t-1} + inputs_t: ``(gates [b, t, n], inputs [b, t, n]) → h``."""

INIT_STD = 0.02
GATE_EPS = 1e-8


def decay_logit_init(n: int, a_min: float, a_max: float) -> Tensor:
    """Λ evenly spaced from softplus⁻¹(-ln a_min) to softplus⁻¹(-ln a_max), ``[n]`` (official).

    exp(-softplus(Λ)) then runs from a_min to a_max, skewed towards a_max (reference B3).
    """
    # softplus⁻¹(y) = log(expm1(y))
    start, end = (math.log(math.expm1(-math.log(a))) for a in (a_min, a_max))
    return torch.linspace(start, end, n, dtype=torch.float64).float()


class GatedRecurrentLayer(nn.Module):
    """The BD-LRU with its convolution and SiLU gate branch: ``W_o(SiLU(z) ⊙ h)``."""

    def __init__(self, config: RecBLRConfig) -> None:
        super().__init__()
        d, n, k = config.d_model, config.d_state, config.d_conv
        self.in_proj = nn.Linear(d, 2 * n, bias=False)
        # Causal padding is applied by hand (see forward); PyTorch's default init is kept (B3).
        self.conv = nn.Conv1d(n, n, k, groups=n, bias=True)
        self.gate_proj = nn.Linear(n, 2 * n)
        self.decay_logit = nn.Parameter(decay_logit_init(n, config.a_min, config.a_max))
        self.out_proj = nn.Linear(n, d, bias=False)

    def gates(self, x_c: Tensor) -> tuple[Tensor, Tensor]:
        """(α, β) from the convolved input ``x_c`` ``[..., n]``, each ``[..., n]``."""
        r, i = self.gate_proj(x_c).chunk(2, dim=-1)
        alpha = torch.exp(-F.softplus(self.decay_logit) * torch.sigmoid(r))
        beta = torch.sqrt(1 - alpha * alpha + GATE_EPS) * torch.sigmoid(i)
        return alpha, beta

    def causal_conv(self, x_pre: Tensor, history: Tensor) -> Tensor:
        """SiLU of the causal depthwise convolution, with padding invisible as history.

        Args:
            x_pre: ``[b, t, n]``.
            history: ``[b, t, n]``, ``x_pre`` with padding positions zeroed.

        Returns:
            ``[b, t, n]``. At a padding position: the output with an all-zero history.
        """
        padded = F.pad(history.transpose(1, 2), (self.conv.kernel_size[0] - 1, 0))  # [b, n, t+K-1]
        out = self.conv(padded).transpose(1, 2)  # [b, t, n]
        # A padding position still sees itself (the step on item 0 does): add its newest tap.
        out = out + (x_pre - history) * self.conv.weight[:, 0, -1]
        return F.silu(out)

    def forward(
        self, u: Tensor, real: Tensor, carry: Tensor, scan: Scan
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Parallel form over a whole sequence.

        Args:
            u: ``[b, t, d]``.
            real: ``[b, t, 1]``, 1.0 at real events, 0.0 at padding.
            carry: ``[b, t, 1]``, 0.0 where h_{t-1} must not flow into h_t (t-1 is padding).
            scan: the scan implementation (see :meth:`RecBLR.forward`).

        Returns:
            ``(y [b, t, d], h [b, t, n], x_hist [b, t, n])``; ``x_hist`` is ``x_pre`` zeroed at
            padding (what the serving state's convolution buffer holds).
        """
        x_pre, z = self.in_proj(u).chunk(2, dim=-1)  # [b, t, n] each
        x_hist = x_pre * real
        x_c = self.causal_conv(x_pre, x_hist)
        alpha, beta = self.gates(x_c)
        h = scan(alpha * carry, beta * x_c)
        return self.out_proj(F.silu(z) * h), h, x_hist

    def step(self, u: Tensor, h: Tensor, buffer: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """One event per user.

        Args:
            u: ``[b, d]``.
            h: ``[b, n]``.
            buffer: ``[b, K-1, n]``, the last K-1 pre-convolution inputs, oldest first.

        Returns:
            ``(y [b, d], h [b, n], buffer [b, K-1, n])``.
        """
        x_pre, z = self.in_proj(u).chunk(2, dim=-1)  # [b, n] each
        window = torch.cat([buffer, x_pre.unsqueeze(1)], dim=1)  # [b, K, n]
        taps = self.conv.weight[:, 0].T  # [K, n]
        bias = cast(Tensor, self.conv.bias)  # built with bias=True
        x_c = F.silu((window * taps).sum(dim=1) + bias)
        alpha, beta = self.gates(x_c)
        h = alpha * h + beta * x_c
        return self.out_proj(F.silu(z) * h), h, window[:, 1:]


class RecBLRBlock(nn.Module):
    """LN(Dropout(BD-LRU layer(x)) + x), then the feed-forward."""

    def __init__(self, config: RecBLRConfig) -> None:
        super().__init__()
        self.mixer = GatedRecurrentLayer(config)
        self.dropout = nn.Dropout(config.dropout)
        self.norm = nn.LayerNorm(config.d_model, eps=config.layer_norm_eps)
        self.ffn = FeedForward(
            config.d_model, config.d_ffn, config.dropout, config.layer_norm_eps, activation=F.silu
        )

    def forward(
        self, x: Tensor, real: Tensor, carry: Tensor, scan: Scan
    ) -> tuple[Tensor, Tensor, Tensor]:
        y, h, x_hist = self.mixer(x, real, carry, scan)
        return self.ffn(self.norm(self.dropout(y) + x)), h, x_hist

    def step(self, x: Tensor, h: Tensor, buffer: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        y, h, buffer = self.mixer.step(x, h, buffer)
        return self.ffn(self.norm(self.dropout(y) + x)), h, buffer


class RecBLR(nn.Module):
    """Embedding → dropout → LayerNorm → ``n_layers`` × (BD-LRU layer, FFN) → tied scores."""

    def __init__(self, config: RecBLRConfig) -> None:
        super().__init__()
        self.config = config
        # No padding_idx (the official code has one): as in our LRURec, row 0 is trained because
        # it drives the cold start. Score column 0 is padding and is masked by the callers.
        self.embedding = nn.Embedding(config.vocab_size, config.d_model)
        self.embedding_dropout = nn.Dropout(config.dropout)
        self.embedding_norm = nn.LayerNorm(config.d_model, eps=config.layer_norm_eps)
        self.blocks = nn.ModuleList(RecBLRBlock(config) for _ in range(config.n_layers))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """N(0, 0.02) on Linear and Embedding weights, zero Linear biases (official init).

        LayerNorm, the convolution (PyTorch default) and Λ (linspace) keep their own init.
        """
        with torch.no_grad():
            for module in self.modules():
                if isinstance(module, nn.Linear | nn.Embedding):
                    nn.init.normal_(module.weight, mean=0.0, std=INIT_STD)
                if isinstance(module, nn.Linear) and module.bias is not None:
                    nn.init.zeros_(module.bias)

    @property
    def state_shape(self) -> tuple[int, ...]:
        """Per-user state shape: ``(n_layers, d_conv, d_state)``."""
        return (self.config.n_layers, self.config.d_conv, self.config.d_state)

    def embed(self, items: Items) -> Tensor:
        embedded: Tensor = self.embedding_norm(self.embedding_dropout(self.embedding(items)))
        return embedded

    def recurrent_blocks(self) -> list[RecBLRBlock]:
        """The blocks, typed (``nn.ModuleList`` iterates as plain ``nn.Module``)."""
        return [cast(RecBLRBlock, block) for block in self.blocks]

    def _run(self, items: Items, scan: Scan | None) -> tuple[Hidden, list[tuple[Tensor, Tensor]]]:
        if scan is None:
            # As for LRURec: the loop scan is faster on CPU (model/scan.py: loop_scan).
            scan = loop_scan if items.device.type == "cpu" else parallel_scan
        mask = items > 0  # [b, t]
        carry = torch.zeros_like(mask)
        carry[:, 1:] = mask[:, :-1]  # h_{t-1} flows into h_t only if t-1 is a real event
        x = self.embed(items)
        real = mask.unsqueeze(-1).to(x.dtype)  # [b, t, 1]
        carry_f = carry.unsqueeze(-1).to(x.dtype)  # [b, t, 1]
        layers = []
        for block in self.recurrent_blocks():
            x, h, x_hist = block(x, real, carry_f, scan)
            layers.append((h, x_hist))
        return x, layers

    def forward(self, items: Items, scan: Scan | None = None) -> Hidden:
        """Hidden state after the last block at every position.

        Args:
            items: ``LongTensor[b, t]``, left-padded with 0.
            scan: the scan to use; by default :func:`model.scan.loop_scan` on CPU and the
                log-depth :func:`model.scan.parallel_scan` elsewhere. Tests pin each one to
                :func:`model.scan.sequential_scan`.

        Returns:
            ``Tensor[b, t, d]``. At a padding position this is the cold-start output.
        """
        hidden, _ = self._run(items, scan)
        return hidden

    def prefill(self, items: Items) -> tuple[Hidden, State]:
        """Parallel forward over histories, returning the last output and the serving state.

        Args:
            items: ``LongTensor[b, t]``, left-padded; the last column is the newest event.

        Returns:
            ``(hidden [b, d], state [b, *state_shape])``, identical to stepping through the
            real events from :meth:`init_state`. An all-padding row gives the zero state.
        """
        hidden, layers = self._run(items, None)
        real = (items[:, -1] > 0).unsqueeze(-1).to(hidden.dtype)  # [b, 1]
        n_buffer = self.config.d_conv - 1
        parts = []
        for h, x_hist in layers:
            buffer = F.pad(x_hist, (0, 0, n_buffer, 0))  # [b, t + K-1, n]: short histories
            buffer = buffer[:, buffer.shape[1] - n_buffer :]  # [b, K-1, n]
            parts.append(torch.cat([(h[:, -1] * real).unsqueeze(1), buffer], dim=1))
        return hidden[:, -1], torch.stack(parts, dim=1)  # state [b, k, K, n]

    def score(self, hidden: Hidden) -> Scores:
        """Tied-embedding scores ``hidden @ Eᵀ`` (no bias): ``[..., d] → [..., v]``."""
        return hidden @ self.embedding.weight.T

    def init_state(self, batch_size: int) -> State:
        """Zero state for ``batch_size`` users with no events: ``[b, *state_shape]``."""
        weight = self.embedding.weight
        return torch.zeros(batch_size, *self.state_shape, dtype=weight.dtype, device=weight.device)

    def step(self, items: Items, state: State) -> tuple[Hidden, State]:
        """Advance each user's state by one event in O(1) of the history length.

        Args:
            items: ``LongTensor[b]``, one item per user (non-zero).
            state: ``[b, *state_shape]``; not modified.

        Returns:
            ``(hidden [b, d], new_state [b, *state_shape])``.
        """
        x = self.embed(items)
        new_layers = []
        for k, block in enumerate(self.recurrent_blocks()):
            x, h, buffer = block.step(x, state[:, k, 0], state[:, k, 1:])
            new_layers.append(torch.cat([h.unsqueeze(1), buffer], dim=1))  # [b, K, n]
        return x, torch.stack(new_layers, dim=1)

    def cold_start_hidden(self) -> Hidden:
        """Output for a user with no events: one step on item 0 from the zero state, ``[d]``.

        This equals :meth:`forward` at a padding position; the step is never stored in a state.
        """
        padding = torch.zeros(1, dtype=torch.long, device=self.embedding.weight.device)
        hidden, _ = self.step(padding, self.init_state(1))
        return hidden[0]
