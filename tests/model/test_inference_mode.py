"""A loaded artifact steps in and out of torch.inference_mode and torch.no_grad, in both forms."""

from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path

import pytest
import torch

import model
from model.inference.folded import FoldedLRURec
from tests.conftest import build_artifact
from tests.model.conftest import TOLERANCE

CONTEXTS: dict[str, Callable[[], AbstractContextManager[object]]] = {
    "inference_mode": torch.inference_mode,
    "no_grad": torch.no_grad,
    "autograd": nullcontext,
}


@pytest.fixture(scope="module")
def artifact_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_artifact(tmp_path_factory.mktemp("artifact"))


def load_lrurec(directory: Path) -> model.LRURec:
    loaded = model.load_artifact(directory).model
    assert isinstance(loaded, model.LRURec)
    return loaded


@pytest.mark.parametrize("context", CONTEXTS)
def test_a_loaded_artifact_steps_in_the_context(artifact_dir: Path, context: str) -> None:
    with CONTEXTS[context]():
        art = model.load_artifact(artifact_dir)
        hidden, state = art.model.step(torch.tensor([5]), art.model.init_state(1))
    assert hidden.shape == (1, art.model.config.d_model)
    assert state.shape == (1, *art.model.state_shape)


@pytest.mark.parametrize("context", CONTEXTS)
def test_a_folded_loaded_artifact_steps_in_the_context(artifact_dir: Path, context: str) -> None:
    with CONTEXTS[context]():
        loaded = load_lrurec(artifact_dir)
        folded = FoldedLRURec.from_model(loaded)
        hidden, state = folded.step(torch.tensor([5]), folded.init_state(1))
        cold = folded.cold_start_hidden()
        expected_hidden, expected_state = loaded.step(torch.tensor([5]), loaded.init_state(1))
    tolerance = TOLERANCE[torch.float32]
    assert (hidden - expected_hidden).abs().max().item() <= tolerance
    assert (state - expected_state).abs().max().item() <= tolerance
    assert cold.shape == (loaded.config.d_model,)


@pytest.mark.parametrize("built_in", CONTEXTS)
@pytest.mark.parametrize("called_in", CONTEXTS)
def test_a_folded_model_steps_in_a_context_other_than_the_one_it_was_built_in(
    artifact_dir: Path, built_in: str, called_in: str
) -> None:
    with CONTEXTS[built_in]():
        folded = FoldedLRURec.from_model(load_lrurec(artifact_dir))
    with CONTEXTS[called_in]():
        hidden, state = folded.step(torch.tensor([5, 7]), folded.init_state(2))
        hidden, _ = folded.step(torch.tensor([3, 1]), state)
        scores = folded.score(hidden)
    assert scores.shape == (2, folded.config.vocab_size)
    assert torch.isfinite(scores).all()
