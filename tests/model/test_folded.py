"""FoldedLRURec, the fast serving form, equals the readable LRURec.step."""

import threading

import pytest
import torch

from model import LRURec, LRURecConfig, SASRec, SASRecConfig
from model.inference.folded import FoldedLRURec, fold, folded_step
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


def assert_close(actual: torch.Tensor, expected: torch.Tensor) -> None:
    assert actual.dtype == expected.dtype
    assert (actual - expected).abs().max().item() <= TOLERANCE[expected.dtype]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_folded_step_equals_reference_step(dtype: torch.dtype) -> None:
    torch.manual_seed(0)
    model = LRURec(LRURecConfig(n_items=30, d_model=16, n_layers=3)).to(dtype).eval()
    items, state = random_states(model, 9, seed=1)
    folded = FoldedLRURec.from_model(model)
    with torch.no_grad():
        reference = model.step(items, state)
        fast = folded.step(items, state)
        traced = folded_step(model, fold(model), items, state)
    for fast_part, traced_part, slow in zip(fast, traced, reference, strict=True):
        assert_close(fast_part, slow)
        assert_close(traced_part, slow)


def test_folded_model_serves_like_the_model_it_folds(tiny_model: LRURec) -> None:
    folded = FoldedLRURec.from_model(tiny_model)
    items = torch.randint(1, 51, (3, 12), generator=torch.Generator().manual_seed(2))
    assert folded.config is tiny_model.config
    assert folded.state_shape == tiny_model.state_shape
    assert torch.equal(folded.init_state(2), tiny_model.init_state(2))
    with torch.no_grad():
        assert_close(folded.cold_start_hidden(), tiny_model.cold_start_hidden())
        hidden, state = folded.prefill(items)
        expected_hidden, expected_state = tiny_model.prefill(items)
        assert torch.equal(hidden, expected_hidden)
        assert torch.equal(state, expected_state)
        assert torch.equal(folded.score(hidden), tiny_model.score(hidden))


def test_folded_model_runs_without_autograd_even_when_it_is_enabled(tiny_model: LRURec) -> None:
    items, state = random_states(tiny_model, 2, seed=3)
    folded = FoldedLRURec.from_model(tiny_model)
    hidden, new_state = folded.step(items, state)
    assert not hidden.requires_grad
    assert not new_state.requires_grad
    assert not folded.score(hidden).requires_grad
    assert not folded.prefill(items.view(2, 1))[0].requires_grad
    assert torch.is_grad_enabled()


def test_only_an_lrurec_in_eval_mode_folds(tiny_config: LRURecConfig) -> None:
    with pytest.raises(ValueError, match=r"model\.eval\(\)"):
        FoldedLRURec.from_model(LRURec(tiny_config))
    sasrec = SASRec(SASRecConfig(n_items=10, d_model=8, max_len=4)).eval()
    with pytest.raises(ValueError, match="SASRec"):
        FoldedLRURec.from_model(sasrec)  # type: ignore[arg-type]


def test_folded_model_is_a_snapshot_that_a_rebuild_brings_up_to_date() -> None:
    model = LRURec(LRURecConfig(n_items=30, d_model=8)).eval()
    items, state = random_states(model, 3, seed=4)
    stale = FoldedLRURec.from_model(model)
    with torch.no_grad():
        before, _ = stale.step(items, state)
        block(model, 1).lru.B_im.mul_(3.0)
        block(model, 0).lru.nu_log.add_(0.5)
        expected, _ = model.step(items, state)
        after, _ = FoldedLRURec.from_model(model).step(items, state)
    assert (expected - before).abs().max().item() > 1e-3
    assert_close(after, expected)


def test_reference_step_is_differentiable_in_training() -> None:
    model = LRURec(LRURecConfig(n_items=30, d_model=8, dropout=0.0, lru_dropout=0.0))
    items, state = random_states(model, 2, seed=2)
    hidden, _ = model.step(items, state)
    hidden.sum().backward()  # type: ignore[no-untyped-call]
    assert block(model, 0).lru.B_re.grad is not None


@pytest.mark.parametrize("enabled", [True, False])
def test_folded_step_leaves_the_onednn_setting_as_it_found_it(enabled: bool) -> None:
    torch.manual_seed(0)
    model = LRURec(LRURecConfig(n_items=50, d_model=16, n_layers=2)).eval()
    items, state = random_states(model, 3, seed=4)
    folded = FoldedLRURec.from_model(model)
    with (
        torch.backends.mkldnn.flags(
            enabled=enabled, deterministic=None, allow_tf32=None, fp32_precision=None
        ),
        torch.no_grad(),
    ):
        fast = folded.step(items, state)
        assert bool(torch.backends.mkldnn.enabled) is enabled
        reference = model.step(items, state)
    for a, b in zip(fast, reference, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=TOLERANCE[torch.float32])


def test_concurrent_folded_steps_leave_onednn_on() -> None:
    model = LRURec(LRURecConfig(n_items=50, d_model=16, n_layers=2)).eval()
    folded = FoldedLRURec.from_model(model)
    items, state = random_states(model, 1, seed=5)

    def serve() -> None:
        with torch.inference_mode():
            for _ in range(200):
                folded.step(items, state)

    threads = [threading.Thread(target=serve) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert torch.backends.mkldnn.enabled
