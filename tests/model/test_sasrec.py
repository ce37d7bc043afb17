"""SASRec baseline: recompute step equals forward, padding never matters, weights round-trip."""

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from model import (
    RecurrentRecommender,
    SASRec,
    SASRecConfig,
    load_artifact,
    load_model,
    save_artifact,
    save_model,
)
from tests.model.conftest import TOLERANCE, left_padded_batch

N_ITEMS = 40
MAX_LEN = 32
LENGTHS = [1, 2, 3, 7, 16, 31, 32]


def make_model(n_heads: int = 1, seed: int = 0) -> SASRec:
    torch.manual_seed(seed)
    config = SASRecConfig(n_items=N_ITEMS, d_model=16, n_heads=n_heads, max_len=MAX_LEN)
    return SASRec(config).eval()


def step_through(model: SASRec, row: torch.Tensor) -> torch.Tensor:
    """Outputs of stepping through ``row``'s real events from ``init_state``: ``[n_real, d]``."""
    state = model.init_state(1)
    outputs = []
    for item in row[row > 0]:
        hidden, state = model.step(item.view(1), state)
        outputs.append(hidden[0])
    return torch.stack(outputs)


@pytest.mark.parametrize("n_heads", [1, 2])
def test_step_equals_forward_at_every_real_position(n_heads: int) -> None:
    model = make_model(n_heads)
    items = left_padded_batch(LENGTHS, n_items=N_ITEMS)
    with torch.no_grad():
        parallel = model(items)
        for row, length in enumerate(LENGTHS):
            error = (parallel[row, -length:] - step_through(model, items[row])).abs().max().item()
            assert error <= TOLERANCE[torch.float32], f"length {length}: max abs error {error:.3g}"


def test_batched_step_equals_forward_for_users_with_different_history_lengths() -> None:
    model = make_model()
    items = left_padded_batch(LENGTHS, n_items=N_ITEMS, seed=3)
    with torch.no_grad():
        _, state = model.prefill(items[:, :-1])
        hidden, new_state = model.step(items[:, -1], state)
        expected = model(items)[:, -1]
    assert (hidden - expected).abs().max().item() <= TOLERANCE[torch.float32]
    assert torch.equal(new_state.long(), items[:, -MAX_LEN:])


def test_leading_padding_does_not_change_any_real_output() -> None:
    model = make_model(n_heads=2)
    history = torch.randint(1, N_ITEMS + 1, (1, 9))
    with torch.no_grad():
        bare = model(history)
        for padding in (1, 5, MAX_LEN - 9):
            padded = model(F.pad(history, (padding, 0)))
            error = (padded[:, padding:] - bare).abs().max().item()
            assert error <= TOLERANCE[torch.float32], f"{padding} pads: max abs error {error:.3g}"


def test_every_padding_position_outputs_the_cold_start_hidden() -> None:
    model = make_model()
    items = left_padded_batch([1, 5, 20], n_items=N_ITEMS)
    with torch.no_grad():
        cold = model.cold_start_hidden()
        outputs = model(items)[items == 0]  # [n_pad, d]
        _, empty_state = model.prefill(torch.zeros(2, 4, dtype=torch.long))
        from_empty_history, _ = model.prefill(torch.zeros(1, 4, dtype=torch.long))
    assert cold.shape == (16,)
    assert outputs.shape[0] > 0
    assert (outputs - cold).abs().max().item() <= TOLERANCE[torch.float32]
    assert torch.equal(empty_state, model.init_state(2))
    assert (from_empty_history[0] - cold).abs().max().item() <= TOLERANCE[torch.float32]


def test_window_keeps_the_last_max_len_items_as_exact_float32_indices() -> None:
    model = make_model()
    history = torch.randint(1, N_ITEMS + 1, (2, MAX_LEN + 10))
    with torch.no_grad():
        hidden, state = model.prefill(history)
        expected = model(history[:, -MAX_LEN:])[:, -1]
    assert state.dtype == torch.float32
    assert state.shape == (2, *model.state_shape)
    assert torch.equal(state.long(), history[:, -MAX_LEN:])
    assert (hidden - expected).abs().max().item() <= TOLERANCE[torch.float32]


def test_forward_rejects_sequences_longer_than_max_len() -> None:
    model = make_model()
    with pytest.raises(ValueError, match="max_len"):
        model(torch.ones(1, MAX_LEN + 1, dtype=torch.long))


def test_sasrec_satisfies_the_protocol_and_scores_every_item() -> None:
    model = make_model()
    assert isinstance(model, RecurrentRecommender)
    scores = model.score(model.cold_start_hidden())
    assert scores.shape == (N_ITEMS + 1,)


def test_save_load_reproduces_outputs_bit_for_bit(tmp_path: Path) -> None:
    model = make_model(n_heads=2)
    save_model(model, tmp_path / "model")
    loaded = load_model(tmp_path / "model")
    assert isinstance(loaded, SASRec)
    assert loaded.config == model.config
    items = left_padded_batch([3, 20], n_items=N_ITEMS)
    with torch.no_grad():
        assert torch.equal(loaded(items), model(items))
        state = model.init_state(2)
        assert torch.equal(loaded.step(items[:, -1], state)[0], model.step(items[:, -1], state)[0])
    config = json.loads((tmp_path / "model" / "config.json").read_text())
    assert config["model_type"] == "sasrec"
    version = save_artifact(
        tmp_path / "art", model, [str(i) for i in range(N_ITEMS)], torch.ones(41)
    )
    assert load_artifact(tmp_path / "art").version == version


def test_short_training_loop_lowers_the_loss() -> None:
    torch.manual_seed(0)
    # Deterministic successor task: item i is always followed by item i % N_ITEMS + 1.
    starts = torch.randint(1, N_ITEMS + 1, (64, 1))
    items = (starts + torch.arange(12)) % N_ITEMS + 1  # [64, 12]
    items[:32, :4] = 0  # some left padding
    inputs, targets = items[:, :-1], items[:, 1:]
    model = SASRec(SASRecConfig(n_items=N_ITEMS, d_model=16, dropout=0.1, max_len=MAX_LEN))
    optimiser = torch.optim.AdamW(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(60):
        logits = model.score(model(inputs))
        loss = F.cross_entropy(logits.reshape(-1, N_ITEMS + 1), targets.reshape(-1), ignore_index=0)
        optimiser.zero_grad()
        loss.backward()  # type: ignore[no-untyped-call]
        optimiser.step()
        losses.append(loss.item())
    assert losses[-1] < 0.3 * losses[0]
    assert model.position.weight.grad is not None
    assert model.position.weight.grad.abs().sum() > 0
