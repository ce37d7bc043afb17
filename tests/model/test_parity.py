"""The three forms of the LRURec recurrence agree: sequential scan, parallel scan, serving step."""

from typing import Literal

import pytest
import torch

from model import LRURec, LRURecConfig
from model.inference.folded import FoldedLRURec
from model.scan import parallel_scan, sequential_scan
from tests.model.conftest import TOLERANCE, left_padded_batch

MIXED_LENGTHS = [1, 2, 3, 17, 64, 100, 128, 255, 256, 300, 301]
Form = Literal["reference", "folded"]


def serving_form(model: LRURec, form: Form) -> LRURec | FoldedLRURec:
    """``LRURec.step`` itself, or its fast form."""
    return model if form == "reference" else FoldedLRURec.from_model(model)


def stepped_outputs(model: LRURec | FoldedLRURec, items: torch.Tensor) -> list[torch.Tensor]:
    """Per row: the outputs of stepping through that row's real events from ``init_state``."""
    outputs = []
    for row in items:
        real = row[row > 0]
        state = model.init_state(1)
        hidden = []
        for item in real:
            h, state = model.step(item.view(1), state)
            hidden.append(h[0])
        outputs.append(torch.stack(hidden))
    return outputs


@pytest.mark.parametrize("form", ["reference", "folded"])
@pytest.mark.parametrize("scan", ["parallel", "loop"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_parallel_forward_equals_step_by_step_at_every_real_position(
    dtype: torch.dtype, scan: Literal["parallel", "loop"], form: Form
) -> None:
    torch.manual_seed(1)
    model = LRURec(LRURecConfig(n_items=40, d_model=8, n_layers=2)).to(dtype).eval()
    model.use_scan(scan)
    items = left_padded_batch(MIXED_LENGTHS, n_items=40)
    with torch.no_grad():
        parallel = model(items)
        stepped = stepped_outputs(serving_form(model, form), items)
    for row, length in enumerate(MIXED_LENGTHS):
        error = (parallel[row, -length:] - stepped[row]).abs().max().item()
        assert error <= TOLERANCE[dtype], f"length {length}: max abs error {error:.3g}"


@pytest.mark.parametrize("dtype", [torch.complex64, torch.complex128])
@pytest.mark.parametrize("length", [1, 2, 5, 64, 200, 256, 1000])
def test_parallel_scan_equals_sequential_scan(dtype: torch.dtype, length: int) -> None:
    generator = torch.Generator().manual_seed(length)
    real = torch.float32 if dtype == torch.complex64 else torch.float64
    shape = (3, length, 6)
    modulus = torch.rand(shape, generator=generator, dtype=real) * 0.99
    phase = torch.rand(shape, generator=generator, dtype=real) * 6.28
    gates = torch.polar(modulus, phase)
    gates[:, ::7] = 0  # dropped carries, as after padding
    inputs = torch.randn(shape, generator=generator, dtype=dtype)
    initial = torch.randn(3, 6, generator=generator, dtype=dtype)
    for start in (None, initial):
        expected = sequential_scan(gates, inputs, start)
        error = (parallel_scan(gates, inputs, start) - expected).abs().max().item()
        assert error <= TOLERANCE[real] * 10, f"max abs error {error:.3g}"


def test_parallel_scan_accepts_real_broadcast_gates() -> None:
    gates = torch.full((1, 1, 4), 0.5, dtype=torch.float64)
    inputs = torch.ones(2, 9, 4, dtype=torch.float64)
    expected = sequential_scan(gates, inputs)
    assert torch.allclose(parallel_scan(gates, inputs), expected, atol=1e-12)
    assert torch.allclose(expected[:, -1], torch.full((2, 4), 2 - 0.5**8, dtype=torch.float64))


def test_left_padding_does_not_change_outputs(tiny_model: LRURec) -> None:
    sequence = left_padded_batch([40], n_items=50)[0]
    short = torch.cat([torch.zeros(10, dtype=torch.long), sequence]).unsqueeze(0)  # max_len 50
    long = torch.cat([torch.zeros(216, dtype=torch.long), sequence]).unsqueeze(0)  # max_len 256
    with torch.no_grad():
        error = (tiny_model(short)[0, -40:] - tiny_model(long)[0, -40:]).abs().max().item()
    assert error <= TOLERANCE[torch.float32]


def test_cold_start_equals_forward_at_a_padding_position(tiny_model: LRURec) -> None:
    items = left_padded_batch([5, 30], n_items=50)
    with torch.no_grad():
        padded_output = tiny_model(items)[0, 0]  # row 0 starts with 25 padding positions
        cold = tiny_model.cold_start_hidden()
    assert (padded_output - cold).abs().max().item() <= TOLERANCE[torch.float32]


def test_cold_start_does_not_touch_any_state(tiny_model: LRURec) -> None:
    with torch.no_grad():
        first = tiny_model.cold_start_hidden()
        state = tiny_model.init_state(1)
        hidden, _ = tiny_model.step(torch.tensor([3]), state)
        assert torch.equal(state, tiny_model.init_state(1))
        assert torch.equal(first, tiny_model.cold_start_hidden())
        assert not torch.allclose(hidden[0], first)


def test_prefill_state_equals_stepped_state(tiny_model: LRURec) -> None:
    lengths = [1, 9, 33, 64]
    items = left_padded_batch(lengths, n_items=50, seed=3)
    with torch.no_grad():
        last, state = tiny_model.prefill(items)
        for row, length in enumerate(lengths):
            stepped = tiny_model.init_state(1)
            for item in items[row, -length:]:
                hidden, stepped = tiny_model.step(item.view(1), stepped)
            assert (state[row] - stepped[0]).abs().max().item() <= TOLERANCE[torch.float32]
            assert (last[row] - hidden[0]).abs().max().item() <= TOLERANCE[torch.float32]


def test_prefill_of_an_empty_history_is_the_initial_state(tiny_model: LRURec) -> None:
    with torch.no_grad():
        _, state = tiny_model.prefill(torch.zeros(2, 7, dtype=torch.long))
    assert torch.equal(state, tiny_model.init_state(2))


def test_state_has_the_documented_fixed_shape_and_dtype(tiny_model: LRURec) -> None:
    config = tiny_model.config
    state = tiny_model.init_state(4)
    assert state.shape == (4, config.n_layers, 2, 2 * config.d_model)
    assert state.dtype == torch.float32
    _, new_state = tiny_model.step(torch.tensor([1, 2, 3, 4]), state)
    assert new_state.shape == state.shape
    assert new_state.dtype == torch.float32


@pytest.mark.parametrize("form", ["reference", "folded"])
def test_step_matches_forward_in_a_batch_of_users(tiny_model: LRURec, form: Form) -> None:
    items = left_padded_batch([12, 12, 12], n_items=50, seed=5)
    served = serving_form(tiny_model, form)
    with torch.no_grad():
        parallel = tiny_model(items)
        state = served.init_state(3)
        for t in range(items.shape[1]):
            hidden, state = served.step(items[:, t], state)
            assert (hidden - parallel[:, t]).abs().max().item() <= TOLERANCE[torch.float32]
