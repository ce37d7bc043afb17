"""Initialisation statistics match the official LRURec code (reference A3)."""

import math

import torch

from model import LRURec, LRURecConfig
from model.init import ring_init
from model.layers import LRUBlock


def test_ring_init_puts_every_decay_inside_the_ring() -> None:
    nu_log, theta_log, gamma_log = ring_init(10_000, r_min=0.8, r_max=0.99, max_phase=math.pi)
    modulus = torch.exp(-torch.exp(nu_log))
    assert modulus.min() >= 0.8 - 1e-6
    assert modulus.max() <= 0.99 + 1e-6
    # |λ|² is uniform on [r_min², r_max²]: its mean is the midpoint.
    assert abs((modulus**2).mean().item() - (0.64 + 0.9801) / 2) < 0.01
    theta = torch.exp(theta_log)
    assert theta.min() >= 0
    assert theta.max() <= math.pi
    assert torch.allclose(torch.exp(gamma_log), torch.sqrt(1 - modulus**2), atol=1e-6)


def test_every_layer_starts_with_gamma_normalised_decays() -> None:
    torch.manual_seed(0)
    model = LRURec(LRURecConfig(n_items=30, d_model=32, r_min=0.5, r_max=0.9))
    for block in model.blocks:
        assert isinstance(block, LRUBlock)
        decay_re, decay_im = block.lru.decay()
        modulus = torch.sqrt(decay_re**2 + decay_im**2)
        assert modulus.min() >= 0.5 - 1e-6
        assert modulus.max() <= 0.9 + 1e-6
        gamma = torch.exp(block.lru.gamma_log)
        assert torch.allclose(gamma, torch.sqrt(1 - modulus**2), atol=1e-6)


def test_weights_and_biases_are_truncated_normal_and_layer_norms_are_default() -> None:
    torch.manual_seed(0)
    model = LRURec(LRURecConfig(n_items=2000, d_model=64))
    for name, parameter in model.named_parameters():
        if "norm" in name:
            expected = 1.0 if name.endswith("weight") else 0.0
            assert torch.all(parameter == expected), name
        elif not name.endswith(("nu_log", "theta_log", "gamma_log")):
            assert parameter.abs().max() <= 0.04, name
    table = model.embedding.weight.detach()
    # σ of N(0, 0.02) truncated at ±2σ is 0.02 · 0.8796 ≈ 0.0176 (reference C1).
    assert abs(table.std().item() - 0.0176) < 0.0005
    assert abs(table.mean().item()) < 0.0005
    assert model.item_bias.abs().max() > 0  # the score bias is not zero-initialised
