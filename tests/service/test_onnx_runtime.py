"""The onnx backend (LRUREC_BACKEND=onnx) serves like the torch backend, end to end."""

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch

from model import (
    LRURec,
    SASRec,
    SASRecConfig,
    load_artifact,
    save_artifact,
)
from model.inference.export import export_onnx
from service.runtimes.onnx_runtime import BoundSession, OnnxStepper, providers_for, session_options
from service.runtimes.registry import build_stepper
from tests.conftest import TINY_ITEM_IDS, TINY_N_ITEMS

SCORE_TOLERANCE = 1e-4


def test_onnx_stepper_matches_torch_stepper(tiny_artifact: Path, histories: np.ndarray) -> None:
    onnx = build_stepper("onnx", load_artifact(tiny_artifact), "cpu")
    torch_stepper = build_stepper("torch", load_artifact(tiny_artifact), "cpu")
    assert isinstance(onnx, OnnxStepper)
    assert onnx.state_shape == torch_stepper.state_shape
    hidden, states = onnx.prefill(histories)
    expected_hidden, expected_states = torch_stepper.prefill(histories)
    np.testing.assert_allclose(hidden, expected_hidden, atol=1e-5)
    items = np.arange(1, 7, dtype=np.int64)
    for actual, expected in zip(
        onnx.step(items, states), torch_stepper.step(items, expected_states), strict=True
    ):
        assert actual.dtype == np.float32
        np.testing.assert_allclose(actual, expected, atol=1e-5)
    np.testing.assert_allclose(
        onnx.cold_start_hidden(), torch_stepper.cold_start_hidden(), atol=1e-5
    )
    scores = onnx.scores(hidden)
    assert np.isneginf(scores[:, 0]).all()
    np.testing.assert_allclose(
        scores[:, 1:], torch_stepper.scores(hidden)[:, 1:], atol=SCORE_TOLERANCE
    )


def test_onnx_top_k_skips_padding_and_excluded_items(tiny_artifact: Path) -> None:
    stepper = build_stepper("onnx", load_artifact(tiny_artifact), "cpu")
    reference = build_stepper("torch", load_artifact(tiny_artifact), "cpu")
    hidden = stepper.step(
        np.array([3, 4], dtype=np.int64), np.zeros((2, *stepper.state_shape), np.float32)
    )[0]
    exclude = [[1, 2, 3], list(range(1, TINY_N_ITEMS - 2))]
    results = stepper.top_k(hidden, 10, exclude)
    expected = reference.top_k(hidden, 10, exclude)
    assert len(results[0][0]) == 10
    assert set(results[1][0].tolist()) == {TINY_N_ITEMS - 2, TINY_N_ITEMS - 1, TINY_N_ITEMS}
    for (indices, values), (expected_indices, expected_values) in zip(
        results, expected, strict=True
    ):
        np.testing.assert_array_equal(indices, expected_indices)
        np.testing.assert_allclose(values, expected_values, atol=SCORE_TOLERANCE)
        assert 0 not in indices


def test_onnx_backend_rejects_other_models_and_devices(tmp_path: Path) -> None:
    model = SASRec(SASRecConfig(n_items=TINY_N_ITEMS, d_model=8, max_len=8))
    save_artifact(tmp_path, model, TINY_ITEM_IDS, torch.ones(TINY_N_ITEMS + 1))
    with pytest.raises(ValueError, match="LRUREC_BACKEND=torch"):
        build_stepper("onnx", load_artifact(tmp_path), "cpu")
    with pytest.raises(ValueError, match="cannot run on 'tpu'"):
        providers_for("tpu")


def test_bound_session_equals_session_run_and_keeps_returned_arrays(tiny_artifact: Path) -> None:
    model = load_artifact(tiny_artifact).model
    assert isinstance(model, LRURec)
    session = ort.InferenceSession(export_onnx(model, graph="state"), session_options(1))
    bound = BoundSession(session, max_batch=4)
    generator = np.random.default_rng(2)
    kept = []
    for batch in (1, 3, 1, 6):  # 6 > max_batch: plain session.run
        items = generator.integers(1, TINY_N_ITEMS + 1, size=batch)
        states = generator.normal(size=(batch, *model.state_shape)).astype(np.float32)
        outputs = bound.run(items, states)
        expected = session.run(None, {"items": items, "state": states})
        for actual, wanted in zip(outputs, expected, strict=True):
            np.testing.assert_array_equal(actual, wanted)
        kept.append((outputs, expected))
    for outputs, expected in kept:  # later calls did not overwrite earlier results
        for actual, wanted in zip(outputs, expected, strict=True):
            np.testing.assert_array_equal(actual, wanted)
    rank = ort.InferenceSession(export_onnx(model, graph="rank"), session_options(1))
    with pytest.raises(ValueError, match="only the batch axis"):
        BoundSession(rank)  # exclude [batch, m] and top-k [batch, k] have dynamic widths


def test_bound_session_refuses_what_session_run_would(tiny_artifact: Path) -> None:
    """A buffer copy would broadcast a batch-1 state over 3 users or cast float64 silently."""
    model = load_artifact(tiny_artifact).model
    assert isinstance(model, LRURec)
    session = ort.InferenceSession(export_onnx(model, graph="state"), session_options(1))
    bound = BoundSession(session, max_batch=4)
    items = np.array([1, 2, 3], dtype=np.int64)
    one_state = np.zeros((1, *model.state_shape), dtype=np.float32)
    with pytest.raises(ValueError, match="does not match"):
        bound.run(items, one_state)
    with pytest.raises(ValueError, match="does not match"):
        bound.run(items, np.zeros((3, *model.state_shape), dtype=np.float64))
