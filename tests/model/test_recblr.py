"""RecBLR: parallel forward, sequential reference and serving step agree; padding is invisible."""

import json
import math
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from model import (
    RecBLR,
    RecBLRConfig,
    RecurrentRecommender,
    load_artifact,
    load_model,
    save_artifact,
    save_model,
)
from model.recblr import Scan
from model.registry import build_model
from model.scan import loop_scan, parallel_scan, sequential_scan
from tests.model.conftest import TOLERANCE, left_padded_batch

MIXED_LENGTHS = [1, 2, 3, 4, 17, 64, 100, 128, 255, 256, 300, 301]
N_ITEMS = 50
SCANS: tuple[Scan, ...] = (parallel_scan, loop_scan)


@pytest.fixture(autouse=True)
def single_thread() -> Iterator[None]:
    """Run on one intra-op thread: these tensors are tiny, and on a loaded 2-core machine the
    OpenMP hand-offs made the training test 14x slower (17 s against 1.3 s, measured)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def small_recblr() -> RecBLR:
    torch.manual_seed(0)
    return RecBLR(RecBLRConfig(n_items=N_ITEMS, d_model=16, n_layers=2, max_len=64)).eval()


def stepped_outputs(model: RecBLR, items: torch.Tensor) -> list[torch.Tensor]:
    """Per row: the outputs of stepping through that row's real events from ``init_state``."""
    outputs = []
    for row in items:
        state = model.init_state(1)
        hidden = []
        for item in row[row > 0]:
            h, state = model.step(item.view(1), state)
            hidden.append(h[0])
        outputs.append(torch.stack(hidden))
    return outputs


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_parallel_forward_equals_step_by_step_at_every_real_position(dtype: torch.dtype) -> None:
    torch.manual_seed(1)
    model = RecBLR(RecBLRConfig(n_items=40, d_model=8, n_layers=2)).to(dtype).eval()
    items = left_padded_batch(MIXED_LENGTHS, n_items=40)
    with torch.no_grad():
        stepped = stepped_outputs(model, items)
        for scan in SCANS:
            parallel = model(items, scan=scan)
            for row, length in enumerate(MIXED_LENGTHS):
                error = (parallel[row, -length:] - stepped[row]).abs().max().item()
                assert error <= TOLERANCE[dtype], f"{scan.__name__}, length {length}: {error:.3g}"


def test_parallel_forward_equals_stepping_at_the_production_size() -> None:
    torch.manual_seed(2)
    model = RecBLR(RecBLRConfig(n_items=3416)).eval()  # d = 64, n = 128, K = 4
    lengths = [5, 200, 301]
    items = left_padded_batch(lengths, n_items=3416, seed=2)
    with torch.no_grad():
        parallel = model(items)
        stepped = stepped_outputs(model, items)
    for row, length in enumerate(lengths):
        error = (parallel[row, -length:] - stepped[row]).abs().max().item()
        assert error <= TOLERANCE[torch.float32], f"length {length}: max abs error {error:.3g}"


@pytest.mark.parametrize("scan", SCANS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_scan_equals_sequential_scan_inside_the_model(dtype: torch.dtype, scan: Scan) -> None:
    torch.manual_seed(3)
    model = RecBLR(RecBLRConfig(n_items=N_ITEMS, d_model=8)).to(dtype).eval()
    items = left_padded_batch([1, 3, 64, 255, 301], n_items=N_ITEMS, seed=3)
    with torch.no_grad():
        fast = model(items, scan=scan)
        sequential = model(items, scan=sequential_scan)
        assert not torch.equal(fast, model(items, scan=lambda gates, inputs: inputs))
    assert (fast - sequential).abs().max().item() <= TOLERANCE[dtype]


def test_gradients_agree_across_scans() -> None:
    torch.manual_seed(4)
    model = RecBLR(RecBLRConfig(n_items=N_ITEMS, d_model=8, dropout=0.0)).double()
    items = left_padded_batch([2, 40, 70], n_items=N_ITEMS, seed=4)
    gradients = []
    for scan in (sequential_scan, *SCANS):
        model.zero_grad()
        loss = F.cross_entropy(
            model.score(model(items, scan=scan))[:, :-1].flatten(0, 1),
            items[:, 1:].flatten(),
            ignore_index=0,
        )
        torch.autograd.backward(loss)
        gradients.append(
            torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])
        )
    assert gradients[0].abs().sum() > 0
    for other in gradients[1:]:
        assert (other - gradients[0]).abs().max().item() <= TOLERANCE[torch.float64]


def test_default_scan_on_cpu_is_the_loop_scan(small_recblr: RecBLR) -> None:
    items = left_padded_batch([5, 9], n_items=N_ITEMS)
    with torch.no_grad():
        assert torch.equal(small_recblr(items), small_recblr(items, scan=loop_scan))


def test_left_padding_does_not_change_outputs(small_recblr: RecBLR) -> None:
    sequence = left_padded_batch([40], n_items=N_ITEMS)[0]
    short = torch.cat([torch.zeros(10, dtype=torch.long), sequence]).unsqueeze(0)  # max_len 50
    long = torch.cat([torch.zeros(216, dtype=torch.long), sequence]).unsqueeze(0)  # max_len 256
    with torch.no_grad():
        error = (small_recblr(short)[0, -40:] - small_recblr(long)[0, -40:]).abs().max().item()
    assert error <= TOLERANCE[torch.float32]


def test_padding_positions_are_the_cold_start(small_recblr: RecBLR) -> None:
    items = left_padded_batch([5, 30], n_items=N_ITEMS)
    with torch.no_grad():
        outputs = small_recblr(items)[0, :25]  # row 0 starts with 25 padding positions
        cold = small_recblr.cold_start_hidden()
    assert (outputs - cold).abs().max().item() <= TOLERANCE[torch.float32]


def test_cold_start_does_not_touch_any_state(small_recblr: RecBLR) -> None:
    with torch.no_grad():
        first = small_recblr.cold_start_hidden()
        state = small_recblr.init_state(1)
        hidden, _ = small_recblr.step(torch.tensor([3]), state)
        assert torch.equal(state, small_recblr.init_state(1))
        assert torch.equal(first, small_recblr.cold_start_hidden())
        assert not torch.allclose(hidden[0], first)


def test_prefill_state_equals_stepped_state(small_recblr: RecBLR) -> None:
    lengths = [1, 2, 3, 4, 9, 64]
    items = left_padded_batch(lengths, n_items=N_ITEMS, seed=4)
    with torch.no_grad():
        last, state = small_recblr.prefill(items)
        for row, length in enumerate(lengths):
            stepped = small_recblr.init_state(1)
            for item in items[row, -length:]:
                hidden, stepped = small_recblr.step(item.view(1), stepped)
            assert (state[row] - stepped[0]).abs().max().item() <= TOLERANCE[torch.float32]
            assert (last[row] - hidden[0]).abs().max().item() <= TOLERANCE[torch.float32]
    # Fewer than K - 1 = 3 events: the oldest buffer rows stay zero.
    assert torch.equal(state[0, :, 1:3], torch.zeros_like(state[0, :, 1:3]))
    assert state[0, :, 3].abs().sum() > 0


def test_prefill_handles_histories_shorter_than_the_conv_buffer(small_recblr: RecBLR) -> None:
    items = torch.tensor([[7], [0]])
    with torch.no_grad():
        _, state = small_recblr.prefill(items)
        _, stepped = small_recblr.step(torch.tensor([7]), small_recblr.init_state(1))
    assert (state[0] - stepped[0]).abs().max().item() <= TOLERANCE[torch.float32]
    assert torch.equal(state[1], small_recblr.init_state(1)[0])


def test_stepping_continues_a_prefilled_state(small_recblr: RecBLR) -> None:
    items = left_padded_batch([20, 7], n_items=N_ITEMS, seed=6)
    with torch.no_grad():
        full = small_recblr(items)
        _, state = small_recblr.prefill(items[:, :-5])
        for t in range(items.shape[1] - 5, items.shape[1]):
            hidden, state = small_recblr.step(items[:, t], state)
            assert (hidden - full[:, t]).abs().max().item() <= TOLERANCE[torch.float32]


def test_state_has_the_documented_fixed_shape_and_dtype() -> None:
    model = RecBLR(RecBLRConfig(n_items=N_ITEMS)).eval()
    state = model.init_state(4)
    assert model.state_shape == (2, 4, 128)
    assert state.shape == (4, 2, 4, 128)
    assert state.dtype == torch.float32
    with torch.no_grad():
        _, new_state = model.step(torch.tensor([1, 2, 3, 4]), state)
    assert new_state.shape == state.shape
    assert new_state.dtype == torch.float32
    assert isinstance(model, RecurrentRecommender)


def test_scores_are_tied_to_the_embedding_without_bias(small_recblr: RecBLR) -> None:
    hidden = torch.randn(3, 5, 16)
    scores = small_recblr.score(hidden)
    assert scores.shape == (3, 5, N_ITEMS + 1)
    assert torch.allclose(scores, hidden @ small_recblr.embedding.weight.T)
    vocab = N_ITEMS + 1
    assert not any(p.shape == (vocab,) for p in small_recblr.parameters())  # no per-item bias


def test_save_load_reproduces_outputs_bit_for_bit(small_recblr: RecBLR, tmp_path: Path) -> None:
    save_model(small_recblr, tmp_path)
    loaded = load_model(tmp_path)
    assert isinstance(loaded, RecBLR)
    assert loaded.config == small_recblr.config
    assert json.loads((tmp_path / "config.json").read_text())["model_type"] == "recblr"
    items = left_padded_batch([3, 20], n_items=N_ITEMS)
    with torch.no_grad():
        assert torch.equal(loaded(items), small_recblr(items))
        state = small_recblr.prefill(items)[1]
        newest = items[:, -1]
        assert torch.equal(loaded.step(newest, state)[1], small_recblr.step(newest, state)[1])
        assert torch.equal(loaded.cold_start_hidden(), small_recblr.cold_start_hidden())


def test_artifact_round_trip_and_registry(small_recblr: RecBLR, tmp_path: Path) -> None:
    ids = [f"movie-{i}" for i in range(1, N_ITEMS + 1)]
    version = save_artifact(tmp_path, small_recblr, ids, torch.arange(N_ITEMS + 1.0))
    artifact = load_artifact(tmp_path)
    assert isinstance(artifact.model, RecBLR)
    assert artifact.version == version
    assert artifact.config["model_type"] == "recblr"
    rebuilt = build_model("recblr", small_recblr.config.to_dict())
    assert isinstance(rebuilt, RecBLR)
    assert rebuilt.config == small_recblr.config


def test_invalid_config_is_rejected() -> None:
    with pytest.raises(ValueError, match="a_min"):
        RecBLRConfig(n_items=5, a_min=0.99, a_max=0.9)
    with pytest.raises(ValueError, match="d_conv"):
        RecBLRConfig(n_items=5, d_conv=0)
    with pytest.raises(ValueError, match="unknown"):
        RecBLRConfig.from_dict({"n_items": 5, "lru_dropout": 0.1})


def test_initialisation_follows_the_official_code() -> None:
    torch.manual_seed(0)
    model = RecBLR(RecBLRConfig(n_items=3416))
    softplus_inverse = [math.log(math.expm1(-math.log(a))) for a in (0.9, 0.999)]
    assert softplus_inverse[0] == pytest.approx(-2.197, abs=1e-3)
    for block in model.recurrent_blocks():
        decay_logit = block.mixer.decay_logit.detach()
        assert decay_logit.shape == (128,)
        assert decay_logit[0].item() == pytest.approx(softplus_inverse[0], abs=1e-5)
        assert decay_logit[-1].item() == pytest.approx(softplus_inverse[1], abs=1e-5)
        assert torch.allclose(decay_logit.diff(), decay_logit.diff()[0].expand(127), atol=1e-5)
        base = torch.exp(-F.softplus(decay_logit))
        assert base.min().item() == pytest.approx(0.9, abs=1e-5)
        assert base.max().item() == pytest.approx(0.999, abs=1e-6)
        conv_bias = block.mixer.conv.bias
        assert conv_bias is not None
        assert conv_bias.abs().max() <= 0.5  # PyTorch default: U(-1/sqrt(fan_in), ...), fan_in 4
        assert conv_bias.abs().sum() > 0
    for module in model.modules():
        if isinstance(module, nn.Linear):
            assert module.weight.std().item() == pytest.approx(0.02, rel=0.1)
            assert module.bias is None or torch.equal(module.bias, torch.zeros_like(module.bias))
        if isinstance(module, nn.LayerNorm):
            assert torch.equal(module.weight, torch.ones_like(module.weight))
    assert model.embedding.weight.std().item() == pytest.approx(0.02, rel=0.05)
    assert model.embedding.weight[0].abs().sum() > 0


def test_short_training_loop_lowers_the_loss() -> None:
    torch.manual_seed(0)
    n_items = 20
    # Deterministic successor task: item i is always followed by item i % n_items + 1.
    starts = torch.randint(1, n_items + 1, (64, 1))
    items = (starts + torch.arange(12)) % n_items + 1  # [64, 12]
    items[:32, :4] = 0  # half the users are left-padded
    inputs, targets = items[:, :-1], items[:, 1:]
    model = RecBLR(RecBLRConfig(n_items=n_items, d_model=16, dropout=0.0))
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(40):
        logits = model.score(model(inputs))
        loss = F.cross_entropy(logits.reshape(-1, n_items + 1), targets.reshape(-1), ignore_index=0)
        optimiser.zero_grad()
        torch.autograd.backward(loss)
        optimiser.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]
    for block in model.recurrent_blocks():
        for parameter in (block.mixer.decay_logit, block.mixer.conv.weight):
            assert parameter.grad is not None
            assert parameter.grad.abs().sum() > 0
