"""Every compiled backend (onnx, numba) serves what the torch backend serves, end to end."""

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient

from model import Artifact, LRURec, LRURecConfig
from service.app import create_app
from service.runtimes.numba_runtime import NumbaStepper
from service.runtimes.onnx_runtime import OnnxStepper
from service.runtimes.protocol import Stepper
from service.runtimes.torch_runtime import TorchStepper
from service.settings import Settings
from tests.conftest import ArtifactFactory

SCORE_TOLERANCE = 1e-4
ML1M_ITEMS = 3_416
STEPPERS: dict[str, Callable[[Artifact], Stepper]] = {
    "onnx": lambda artifact: OnnxStepper(artifact, threads=1),
    "numba": NumbaStepper,
}


@pytest.mark.parametrize("backend", ["onnx", "numba"])
def test_service_recommends_like_the_torch_backend(
    make_artifact: ArtifactFactory, redis_url: str, backend: str
) -> None:
    artifact = make_artifact()
    answers = []
    for name in ("torch", backend):
        settings = Settings(
            artifact=artifact, redis_url=redis_url, backend=name, key_prefix=f"parity-{name}"
        )
        with TestClient(create_app(settings)) as client:
            for item in ("item-3", "item-7", "item-11"):
                response = client.post("/events", json={"user_id": "u1", "item_id": item})
                assert response.status_code < 300, response.text
            response = client.get("/recommendations/u1", params={"k": 10})
            assert response.status_code == 200, response.text
            answers.append([entry["item_id"] for entry in response.json()["items"]])
    assert len(answers[0]) == 10
    assert answers[1] == answers[0]


def _ml1m_sized_artifact() -> Artifact:
    torch.manual_seed(0)
    model = LRURec(LRURecConfig(n_items=ML1M_ITEMS, d_model=64, n_layers=2)).eval()
    item_ids = [f"item-{index}" for index in range(1, ML1M_ITEMS + 1)]
    popularity = torch.ones(ML1M_ITEMS + 1)
    return Artifact(model, item_ids, popularity, "parity", model.config.to_dict(), Path())


@pytest.mark.parametrize("backend", ["onnx", "numba"])
def test_step_and_top_k_match_torch_over_100_random_states(backend: str) -> None:
    artifact = _ml1m_sized_artifact()
    stepper, reference = STEPPERS[backend](artifact), TorchStepper(artifact)
    generator = np.random.default_rng(1)
    states = generator.normal(size=(100, *stepper.state_shape)).astype(np.float32)
    items = generator.integers(1, ML1M_ITEMS + 1, size=100)
    exclude = [
        generator.integers(1, ML1M_ITEMS + 1, size=row % 5 * 20).tolist() for row in range(100)
    ]
    # Batch 1 as served (onnx: IO binding; numba: the fused kernel); 4 as the service's batches
    # (numba: the compiled step, then one BLAS product); 100: BLAS for both.
    for batch in (1, 4, 100):
        for row in range(0, 100, batch):
            rows = slice(row, row + batch)
            hidden, new_states = stepper.step(items[rows], states[rows])
            expected_hidden, expected_states = reference.step(items[rows], states[rows])
            np.testing.assert_allclose(hidden, expected_hidden, rtol=0, atol=1e-5)
            np.testing.assert_allclose(new_states, expected_states, rtol=0, atol=1e-5)
            ranked = stepper.top_k(hidden, 10, exclude[rows])
            for (indices, values), (expected_indices, expected_values) in zip(
                ranked, reference.top_k(expected_hidden, 10, exclude[rows]), strict=True
            ):
                np.testing.assert_array_equal(indices, expected_indices)
                np.testing.assert_allclose(values, expected_values, rtol=0, atol=SCORE_TOLERANCE)
