"""Pure initialisers (official LRURec code, reference section A3)."""

import torch
from torch import Tensor, nn

TRUNC_STD = 0.02


def ring_init(
    n: int, r_min: float, r_max: float, max_phase: float, generator: torch.Generator | None = None
) -> tuple[Tensor, Tensor, Tensor]:
    """λ uniform on the ring r_min ≤ |λ| ≤ r_max (uniform in |λ|²), phase in [0, max_phase].

    Returns:
        ``(nu_log, theta_log, gamma_log)``, each ``[n]``, with γ = sqrt(1 - |λ|²).
    """
    u1 = torch.rand(n, generator=generator, dtype=torch.float64)
    u2 = torch.rand(n, generator=generator, dtype=torch.float64)
    nu_log = torch.log(-0.5 * torch.log(u1 * (r_max**2 - r_min**2) + r_min**2))
    theta_log = torch.log(max_phase * u2)
    modulus = torch.exp(-torch.exp(nu_log))
    gamma_log = torch.log(torch.sqrt(1 - modulus**2))
    return nu_log.float(), theta_log.float(), gamma_log.float()


def truncated_normal_(parameter: Tensor, std: float = TRUNC_STD) -> Tensor:
    """N(0, std) truncated at ±2σ, the official init for every weight and bias."""
    return nn.init.trunc_normal_(parameter, mean=0.0, std=std, a=-2 * std, b=2 * std)


def is_truncated_normal_target(name: str) -> bool:
    """Everything but LayerNorm and the λ/γ log-parameters gets the truncated normal."""
    return "norm" not in name and not name.endswith(("nu_log", "theta_log", "gamma_log"))
