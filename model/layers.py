"""LRURec building blocks: the LRU layer, the position-wise feed-forward and their block.

Follows the official code where it differs from the paper (reference A2, A9): complex B and C
with complex biases (the B bias also scaled by γ), dropout on the LRU output, post-LN residuals,
and a single-GELU feed-forward.
"""

from collections.abc import Callable
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from model.config import LRURecConfig
from model.init import ring_init
from model.scan import loop_scan, lru_step, parallel_scan

ScanFunction = Callable[[Tensor, Tensor], Tensor]


class LRULayer(nn.Module):
    """y = LN(Dropout(Re(C h + c)) + x) with h_t = λ ⊙ h_{t-1} + γ ⊙ (B x_t + b)."""

    def __init__(self, config: LRURecConfig) -> None:
        super().__init__()
        d, n = config.d_model, config.d_state
        nu_log, theta_log, gamma_log = ring_init(n, config.r_min, config.r_max, config.max_phase)
        self.nu_log = nn.Parameter(nu_log)
        self.theta_log = nn.Parameter(theta_log)
        self.gamma_log = nn.Parameter(gamma_log)
        self.B_re = nn.Parameter(torch.empty(n, d))
        self.B_im = nn.Parameter(torch.empty(n, d))
        self.b_re = nn.Parameter(torch.empty(n))
        self.b_im = nn.Parameter(torch.empty(n))
        self.C_re = nn.Parameter(torch.empty(d, n))
        self.C_im = nn.Parameter(torch.empty(d, n))
        # The official C bias is complex, but only its real part can reach Re(C h + c).
        self.c_re = nn.Parameter(torch.empty(d))
        self.dropout = nn.Dropout(config.lru_dropout)
        self.norm = nn.LayerNorm(d, eps=config.layer_norm_eps)
        self.scan: Literal["auto", "parallel", "loop"] = "auto"

    def scan_function(self, device: torch.device) -> ScanFunction:
        """The training scan: ``self.scan`` if set, else the loop on CPU and log-depth elsewhere.

        On this project's 2-core CPU the fused loop beats the log-depth scan at every measured
        length (benchmarks/RESULTS.md); on a GPU the log-depth scan is the right choice.
        """
        if self.scan == "parallel" or (self.scan == "auto" and device.type != "cpu"):
            return parallel_scan
        return loop_scan

    def decay(self) -> tuple[Tensor, Tensor]:
        """λ = exp(-ν + iθ) as (re, im), each ``[n]``."""
        modulus = torch.exp(-torch.exp(self.nu_log))
        theta = torch.exp(self.theta_log)
        return modulus * torch.cos(theta), modulus * torch.sin(theta)

    def scan_inputs(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """u = γ ⊙ (B x + b) as (re, im); ``x`` is ``[..., d]``, outputs ``[..., n]``."""
        gamma = torch.exp(self.gamma_log)
        u_re = F.linear(x, self.B_re, self.b_re) * gamma
        u_im = F.linear(x, self.B_im, self.b_im) * gamma
        return u_re, u_im

    def readout(self, h_re: Tensor, h_im: Tensor, x: Tensor) -> Tensor:
        """LN(Dropout(Re(C h + c)) + x)."""
        y = F.linear(h_re, self.C_re, self.c_re) - F.linear(h_im, self.C_im)
        out: Tensor = self.norm(self.dropout(y) + x)
        return out

    def forward(self, x: Tensor, carry: Tensor) -> tuple[Tensor, Tensor]:
        """Parallel form over a whole sequence.

        Args:
            x: ``[b, t, d]``.
            carry: ``[b, t]`` bool, False where h_{t-1} must not flow into h_t (after padding).

        Returns:
            ``(y, h)``: ``y`` ``[b, t, d]``; ``h`` complex ``[b, t, n]``, the state everywhere.
        """
        decay_re, decay_im = self.decay()
        u_re, u_im = self.scan_inputs(x)
        gates = torch.complex(decay_re, decay_im) * carry.unsqueeze(-1)  # [b, t, n]
        h = self.scan_function(x.device)(gates, torch.complex(u_re, u_im))
        return self.readout(h.real, h.imag, x), h

    def step(self, x: Tensor, h_re: Tensor, h_im: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """One event: ``x`` ``[b, d]``, state ``[b, n]`` (re, im) → (y ``[b, d]``, h_re, h_im)."""
        decay_re, decay_im = self.decay()
        u_re, u_im = self.scan_inputs(x)
        h_re, h_im = lru_step(h_re, h_im, decay_re, decay_im, u_re, u_im)
        return self.readout(h_re, h_im, x), h_re, h_im


class FeedForward(nn.Module):
    """LN(Dropout(W2 Dropout(act(W1 x + b1)) + b2) + x): post-LN, one activation.

    LRURec uses the exact GELU (official code; the paper's Eq. 8 has two), RecBLR uses SiLU.
    """

    def __init__(
        self,
        d_model: int,
        d_ffn: int,
        dropout: float,
        eps: float,
        activation: Callable[[Tensor], Tensor] = F.gelu,
    ) -> None:
        super().__init__()
        self.w_1 = nn.Linear(d_model, d_ffn)
        self.w_2 = nn.Linear(d_ffn, d_model)
        self.dropout = nn.Dropout(dropout)
        self.norm = nn.LayerNorm(d_model, eps=eps)
        self.activation = activation

    def forward(self, x: Tensor) -> Tensor:
        hidden = self.dropout(self.activation(self.w_1(x)))
        out: Tensor = self.norm(self.dropout(self.w_2(hidden)) + x)
        return out


class LRUBlock(nn.Module):
    """One LRURec block: LRU layer, then feed-forward."""

    def __init__(self, config: LRURecConfig) -> None:
        super().__init__()
        self.lru = LRULayer(config)
        self.ffn = FeedForward(config.d_model, config.d_ffn, config.dropout, config.layer_norm_eps)

    def forward(self, x: Tensor, carry: Tensor) -> tuple[Tensor, Tensor]:
        y, h = self.lru(x, carry)
        return self.ffn(y), h

    def step(self, x: Tensor, h_re: Tensor, h_im: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        y, h_re, h_im = self.lru.step(x, h_re, h_im)
        return self.ffn(y), h_re, h_im
