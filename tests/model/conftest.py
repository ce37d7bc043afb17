"""Fixtures for the model tests: small random-weight models and left-padded batches."""

import pytest
import torch

from model import LRURec, LRURecConfig

# One tolerance per dtype (parallel scan vs step-by-step recurrence).
TOLERANCE = {torch.float32: 1e-5, torch.float64: 1e-10}


def left_padded_batch(lengths: list[int], n_items: int, seed: int = 0) -> torch.Tensor:
    """Random item sequences of the given lengths, left-padded with 0 to the longest."""
    generator = torch.Generator().manual_seed(seed)
    width = max(lengths)
    items = torch.zeros(len(lengths), width, dtype=torch.long)
    for row, length in enumerate(lengths):
        items[row, width - length :] = torch.randint(1, n_items + 1, (length,), generator=generator)
    return items


@pytest.fixture
def tiny_config() -> LRURecConfig:
    return LRURecConfig(n_items=50, d_model=16, n_layers=2, max_len=64)


@pytest.fixture
def tiny_model(tiny_config: LRURecConfig) -> LRURec:
    torch.manual_seed(0)
    return LRURec(tiny_config).eval()
