"""The onnxruntime int8 kernel is exact, and quantized scoring serves the exact top-k."""

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient

from model import load_artifact
from model.inference.quantized_table import quantize_table, reference_scores
from service.app import create_app
from service.runtimes.quantized import OnnxIntKernel, QuantizedStepper, with_quantized_scoring
from service.runtimes.torch_runtime import TorchStepper
from service.settings import Settings
from tests.metrics import sample
from tests.service.offline import load_model, stepped, top_k

BIG = 60_000
"""Items of the big-ish catalogue: above the default ``quantized_min_items`` (50,000)."""

BIG_IDS = [f"item-{index}" for index in range(1, BIG + 1)]


@pytest.fixture(scope="module")
def big_artifact(make_artifact: Callable[..., Path]) -> Path:
    return make_artifact(seed=3, item_ids=BIG_IDS, d_model=16, n_layers=1, max_len=32)


@pytest.mark.parametrize("rows", [1, 3])
def test_onnx_kernel_equals_the_reference_kernel(rows: int) -> None:
    generator = torch.Generator().manual_seed(rows)
    table = torch.randn(5_001, 24, generator=generator)
    table[7] = 127.0  # the codes at their extremes
    table[8] = -127.0
    quantized = quantize_table(table, torch.randn(5_001, generator=generator), block=128)
    kernel = OnnxIntKernel(quantized, rows)
    codes = np.random.default_rng(rows).integers(1, 256, size=(rows, 25), dtype=np.uint8)
    codes[0, ::2] = 255
    np.testing.assert_array_equal(kernel(codes), reference_scores(codes, quantized))


def test_onnx_kernel_reuses_its_buffers_across_row_counts() -> None:
    table = torch.randn(3_001, 8, generator=torch.Generator().manual_seed(9))
    quantized = quantize_table(table, None, block=64)
    kernel = OnnxIntKernel(quantized, rows=3)
    generator = np.random.default_rng(9)
    for rows in (3, 1, 2, 3, 1):
        codes = generator.integers(1, 256, size=(rows, 9), dtype=np.uint8)
        np.testing.assert_array_equal(kernel(codes), reference_scores(codes, quantized))


def test_quantized_stepper_top_k_equals_the_exact_one(big_artifact: Path) -> None:
    artifact = load_artifact(big_artifact)
    exact = TorchStepper(artifact)
    quantized = QuantizedStepper(exact, artifact)
    generator = np.random.default_rng(0)
    hidden = generator.standard_normal((5, 16)).astype(np.float32) * 3
    exclude = [generator.integers(1, BIG, size=50).tolist() for _ in range(5)]
    for (got_items, got_scores), (want_items, want_scores) in zip(
        quantized.top_k(hidden, 10, exclude), exact.top_k(hidden, 10, exclude), strict=True
    ):
        np.testing.assert_array_equal(got_items, want_items)
        np.testing.assert_allclose(got_scores, want_scores, rtol=1e-5, atol=1e-5)
    assert quantized.scorer.stats.rows == 5
    assert quantized.scorer.stats.fallbacks == 0


@pytest.mark.parametrize(("mode", "wrapped"), [("auto", True), ("on", True), ("off", False)])
def test_setting_chooses_the_scorer(big_artifact: Path, mode: str, wrapped: bool) -> None:
    artifact = load_artifact(big_artifact)
    settings = Settings(artifact=big_artifact, quantized_scoring=mode)
    stepper = with_quantized_scoring(TorchStepper(artifact), artifact, settings)
    assert isinstance(stepper, QuantizedStepper) is wrapped


def test_auto_stays_off_below_the_threshold(tiny_artifact: Path) -> None:
    artifact = load_artifact(tiny_artifact)
    settings = Settings(artifact=tiny_artifact)
    stepper = TorchStepper(artifact)
    assert with_quantized_scoring(stepper, artifact, settings) is stepper


@pytest.mark.parametrize("backend", ["torch", "onnx"])
def test_service_serves_the_offline_exact_top_k_on_a_big_catalogue(
    big_artifact: Path, redis_url: str, backend: str
) -> None:
    # quantized_scoring is left at "auto": on at 60k items.
    settings = Settings(artifact=big_artifact, redis_url=redis_url, backend=backend)
    history = [5, 59_999, 123, 40_000, 7]
    with TestClient(create_app(settings)) as client:
        assert isinstance(client.app.state.engine.stepper, QuantizedStepper)  # type: ignore[attr-defined]
        # After start-up's warm-up call:
        ranked = sample("lrurec_quantized_rows_total", path="two_stage")
        for index in history:
            event = {"user_id": "big", "item_id": BIG_IDS[index - 1]}
            assert client.post("/events", json=event, params={"k": 0}).status_code == 200
        served = client.get("/recommendations/big", params={"k": 20}).json()["items"]
    # The one ranked request:
    assert sample("lrurec_quantized_rows_total", path="two_stage") == ranked + 1
    model = load_model(big_artifact)
    hidden, _ = stepped(model, history)
    expected = top_k(model, hidden, 20, exclude=history)
    assert [item["item_id"] for item in served] == [BIG_IDS[i - 1] for i, _ in expected]
    np.testing.assert_allclose(
        [item["score"] for item in served], [s for _, s in expected], rtol=1e-5, atol=1e-5
    )
