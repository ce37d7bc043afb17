"""The onnx backend (LRUREC_BACKEND=onnx) serves like the torch backend, end to end."""

from pathlib import Path

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient

from model import SASRec, SASRecConfig, load_artifact, save_artifact
from service.main import create_app
from service.onnx_runtime import OnnxStepper, providers_for
from service.runtime import build_stepper
from service.settings import Settings
from tests.conftest import TINY_ITEM_IDS, TINY_N_ITEMS, ArtifactFactory

SCORE_TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def histories() -> np.ndarray:
    generator = np.random.default_rng(0)
    items = generator.integers(1, TINY_N_ITEMS + 1, size=(6, 12))
    items[:, :4] = 0  # left padding, as the engine sends it
    items[5] = 0  # an empty history
    return items.astype(np.int64)


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


def test_service_on_the_onnx_backend_recommends_like_torch(
    make_artifact: ArtifactFactory, redis_url: str
) -> None:
    artifact = make_artifact()
    answers = []
    for backend in ("torch", "onnx"):
        settings = Settings(
            artifact=artifact, redis_url=redis_url, backend=backend, key_prefix=backend
        )
        with TestClient(create_app(settings)) as client:
            for item in ("item-3", "item-7", "item-11"):
                response = client.post("/events", json={"user_id": "u1", "item_id": item})
                assert response.status_code < 300, response.text
            response = client.get("/recommendations/u1", params={"k": 10})
            assert response.status_code == 200, response.text
            answers.append(response.json())
    torch_items = [entry["item_id"] for entry in answers[0]["items"]]
    onnx_items = [entry["item_id"] for entry in answers[1]["items"]]
    assert len(torch_items) == 10
    assert onnx_items == torch_items
