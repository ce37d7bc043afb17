"""Gradients flow through the parallel scan: a short training run lowers the loss."""

import torch
import torch.nn.functional as F

from model import LRURec, LRURecConfig
from model.layers import LRUBlock


def test_short_training_loop_lowers_the_loss() -> None:
    torch.manual_seed(0)
    n_items = 20
    # Deterministic successor task: item i is always followed by item i % n_items + 1.
    starts = torch.randint(1, n_items + 1, (64, 1))
    items = (starts + torch.arange(12)) % n_items + 1  # [64, 12]
    inputs, targets = items[:, :-1], items[:, 1:]
    model = LRURec(LRURecConfig(n_items=n_items, d_model=16, dropout=0.0, lru_dropout=0.0))
    optimiser = torch.optim.AdamW(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(60):
        logits = model.score(model(inputs))
        loss = F.cross_entropy(logits.reshape(-1, n_items + 1), targets.reshape(-1))
        optimiser.zero_grad()
        loss.backward()  # type: ignore[no-untyped-call]
        optimiser.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]
    for block in model.blocks:
        assert isinstance(block, LRUBlock)
        assert block.lru.nu_log.grad is not None
        assert block.lru.nu_log.grad.abs().sum() > 0
