"""The folded serving step (LRURec.step in inference) equals the readable reference step."""

import pytest
import torch

from model import LRURec, LRURecConfig
from model.layers import LRUBlock
from tests.model.conftest import TOLERANCE


def block(model: LRURec, k: int) -> LRUBlock:
    layer = model.blocks[k]
    assert isinstance(layer, LRUBlock)
    return layer


def random_states(model: LRURec, batch: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    items = torch.randint(1, model.config.n_items + 1, (batch,), generator=generator)
    state = torch.randn(batch, *model.state_shape, generator=generator).to(model.item_bias.dtype)
    return items, state


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_folded_step_equals_reference_step(dtype: torch.dtype) -> None:
    torch.manual_seed(0)
    model = LRURec(LRURecConfig(n_items=30, d_model=16, n_layers=3)).to(dtype).eval()
    items, state = random_states(model, 9, seed=1)
    with torch.no_grad():
        folded = model.step(items, state)
        reference = model.reference_step(items, state)
    for fast, slow in zip(folded, reference, strict=True):
        assert fast.dtype == dtype
        assert (fast - slow).abs().max().item() <= TOLERANCE[dtype]


def test_step_with_autograd_or_in_training_uses_the_differentiable_reference() -> None:
    model = LRURec(LRURecConfig(n_items=30, d_model=8, dropout=0.0, lru_dropout=0.0))
    items, state = random_states(model, 2, seed=2)
    hidden, _ = model.step(items, state)  # training mode, grad enabled
    hidden.sum().backward()  # type: ignore[no-untyped-call]
    assert block(model, 0).lru.B_re.grad is not None


def test_folded_constants_follow_in_place_weight_updates() -> None:
    model = LRURec(LRURecConfig(n_items=30, d_model=8)).eval()
    items, state = random_states(model, 3, seed=3)
    with torch.no_grad():
        before, _ = model.step(items, state)
        block(model, 1).lru.B_im.mul_(3.0)
        block(model, 0).lru.nu_log.add_(0.5)
        after, _ = model.step(items, state)
        expected, _ = model.reference_step(items, state)
    assert (after - before).abs().max().item() > 1e-3
    assert (after - expected).abs().max().item() <= TOLERANCE[torch.float32]


def test_folded_constants_follow_a_dtype_change_and_a_state_dict_load() -> None:
    model = LRURec(LRURecConfig(n_items=30, d_model=8)).eval()
    other = LRURec(LRURecConfig(n_items=30, d_model=8)).eval()
    items, state = random_states(model, 3, seed=4)
    with torch.no_grad():
        model.step(items, state)
        model.load_state_dict(other.state_dict())
        assert torch.equal(model.step(items, state)[1], other.step(items, state)[1])
        model.double()
        hidden, _ = model.step(items, state.double())
        expected, _ = model.reference_step(items, state.double())
    assert hidden.dtype == torch.float64
    assert (hidden - expected).abs().max().item() <= TOLERANCE[torch.float64]


@pytest.mark.parametrize("enabled", [True, False])
def test_step_leaves_the_onednn_setting_as_it_found_it(enabled: bool) -> None:
    torch.manual_seed(0)
    model = LRURec(LRURecConfig(n_items=50, d_model=16, n_layers=2)).eval()
    items, state = random_states(model, 3, seed=4)
    before = torch._C._get_mkldnn_enabled()  # torch.backends.mkldnn.enabled is this flag
    torch._C._set_mkldnn_enabled(enabled)
    try:
        with torch.no_grad():
            fast = model.step(items, state)
            assert torch._C._get_mkldnn_enabled() is enabled
            reference = model.reference_step(items, state)
    finally:
        torch._C._set_mkldnn_enabled(before)
    for a, b in zip(fast, reference, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=TOLERANCE[torch.float32])
