"""ONNX Runtime runs the exported LRURec step + score graph like torch: same top-10, same scores."""

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch

from model import LRURec, LRURecConfig, SASRec, SASRecConfig
from model.inference.export import (
    RANK_INPUTS,
    STATE_OUTPUTS,
    STEP_INPUTS,
    STEP_OUTPUTS,
    TOP_K_OUTPUTS,
    StepModule,
    export_onnx,
)
from tests.model.conftest import left_padded_batch

N_ITEMS = 3_416
SCORE_TOLERANCE = 1e-4
N_STATES = 100


def session(data: bytes) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3  # overridable initializers are intended here
    return ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])


@pytest.fixture(scope="module")
def model() -> LRURec:
    torch.manual_seed(0)
    return LRURec(LRURecConfig(n_items=N_ITEMS, d_model=64, n_layers=2)).eval()


def random_inputs(model: LRURec) -> tuple[torch.Tensor, torch.Tensor]:
    """100 states: half rebuilt from random histories (realistic), half Gaussian noise."""
    generator = torch.Generator().manual_seed(1)
    histories = left_padded_batch([1 + 4 * i for i in range(N_STATES // 2)], N_ITEMS, seed=2)
    with torch.no_grad():
        _, rebuilt = model.prefill(histories)
    noise = torch.randn(N_STATES // 2, *model.state_shape, generator=generator)
    items = torch.randint(1, N_ITEMS + 1, (N_STATES,), generator=generator)
    return items, torch.cat([rebuilt, noise])


def run_torch(model: LRURec, items: torch.Tensor, state: torch.Tensor) -> list[np.ndarray]:
    with torch.no_grad():
        hidden, new_state = model.step(items, state)
        scores = model.score(hidden)
    scores[:, 0] = -torch.inf
    return [hidden.numpy(), new_state.numpy(), scores.numpy()]


def assert_same_recommendations(actual: np.ndarray, expected: np.ndarray) -> None:
    assert np.isneginf(actual[:, 0]).all()
    np.testing.assert_allclose(actual[:, 1:], expected[:, 1:], rtol=0, atol=SCORE_TOLERANCE)
    top_actual = np.argsort(-actual, axis=1, kind="stable")[:, :10]
    top_expected = np.argsort(-expected, axis=1, kind="stable")[:, :10]
    np.testing.assert_array_equal(top_actual, top_expected)


def test_onnxruntime_step_matches_torch_over_100_random_states(model: LRURec) -> None:
    items, state = random_inputs(model)
    expected = run_torch(model, items, state)
    graph = session(export_onnx(model))
    assert [i.name for i in graph.get_inputs()] == list(STEP_INPUTS)
    assert [o.name for o in graph.get_outputs()] == list(STEP_OUTPUTS)
    hidden, new_state, scores = graph.run(None, {"items": items.numpy(), "state": state.numpy()})
    np.testing.assert_allclose(hidden, expected[0], rtol=0, atol=1e-5)
    np.testing.assert_allclose(new_state, expected[1], rtol=0, atol=1e-5)
    assert_same_recommendations(scores, expected[2])


def test_in_graph_top_10_matches_torch_top_10(model: LRURec) -> None:
    items, state = random_inputs(model)
    graph = session(export_onnx(model, top_k=10))
    assert [o.name for o in graph.get_outputs()] == [*STATE_OUTPUTS, *TOP_K_OUTPUTS]
    hidden, new_state, top_scores, top_items = graph.run(
        None, {"items": items.numpy(), "state": state.numpy()}
    )
    expected = run_torch(model, items, state)
    np.testing.assert_allclose(hidden, expected[0], rtol=0, atol=1e-5)
    np.testing.assert_allclose(new_state, expected[1], rtol=0, atol=1e-5)
    top = torch.topk(torch.from_numpy(expected[2]), 10, dim=1)
    np.testing.assert_array_equal(top_items, top.indices.numpy())
    np.testing.assert_allclose(top_scores, top.values.numpy(), rtol=0, atol=SCORE_TOLERANCE)
    with pytest.raises(ValueError, match="top_k"):
        export_onnx(model, graph="state", top_k=10)


def rank_torch(
    model: LRURec, hidden: torch.Tensor, exclude: list[list[int]], k: int
) -> tuple[np.ndarray, np.ndarray]:
    with torch.no_grad():
        scores = model.score(hidden)
    scores[:, 0] = -torch.inf
    for row, excluded in enumerate(exclude):
        scores[row, excluded] = -torch.inf
    top = torch.topk(scores, k, dim=1)
    return top.values.numpy(), top.indices.numpy()


def test_rank_graph_is_exact_top_k_without_excluded_items(model: LRURec) -> None:
    items, state = random_inputs(model)
    with torch.no_grad():
        hidden, _ = model.step(items, state)
    generator = np.random.default_rng(3)
    exclude = [
        generator.integers(1, N_ITEMS + 1, size=i % 7 * 30).tolist() for i in range(N_STATES)
    ]
    width = max(len(row) for row in exclude)
    padded = np.zeros((N_STATES, width), dtype=np.int64)  # padded with 0: column 0 is -inf anyway
    for row, excluded in enumerate(exclude):
        padded[row, : len(excluded)] = excluded
    graph = session(export_onnx(model, graph="rank"))
    assert [i.name for i in graph.get_inputs()] == list(RANK_INPUTS)
    for k in (1, 10, 100):
        feeds = {"hidden": hidden.numpy(), "exclude": padded, "k": np.array([k], dtype=np.int64)}
        top_scores, top_items = graph.run(None, feeds)
        expected_scores, expected_items = rank_torch(model, hidden, exclude, k)
        np.testing.assert_array_equal(top_items, expected_items)
        np.testing.assert_allclose(top_scores, expected_scores, rtol=0, atol=SCORE_TOLERANCE)
    no_exclusions = {"hidden": hidden.numpy()[:2], "exclude": np.zeros((2, 0), dtype=np.int64)}
    top_scores, top_items = graph.run(None, no_exclusions | {"k": np.array([N_ITEMS], np.int64)})
    assert np.isfinite(top_scores).all()
    assert sorted(top_items[0].tolist()) == list(range(1, N_ITEMS + 1))
    with pytest.raises(ValueError, match="rank graph"):
        export_onnx(model, graph="rank", table_inputs=True)


def test_batch_axis_is_dynamic_and_rows_are_independent(model: LRURec, tmp_path: Path) -> None:
    items, state = random_inputs(model)
    export_onnx(model, tmp_path / "step.onnx")
    graph = session((tmp_path / "step.onnx").read_bytes())
    full = graph.run(["scores"], {"items": items.numpy(), "state": state.numpy()})[0]
    for batch in (1, 7):
        part = graph.run(
            ["scores"], {"items": items[:batch].numpy(), "state": state[:batch].numpy()}
        )
        np.testing.assert_allclose(part[0], full[:batch], rtol=0, atol=1e-6)


def test_table_inputs_default_to_the_model_and_accept_another_catalogue(model: LRURec) -> None:
    items, state = random_inputs(model)
    graph = session(export_onnx(model, table_inputs=True))
    feeds = {"items": items.numpy(), "state": state.numpy()}
    assert_same_recommendations(graph.run(["scores"], feeds)[0], run_torch(model, items, state)[2])
    generator = torch.Generator().manual_seed(5)
    table = torch.randn(501, 64, generator=generator) * 0.05
    bias = torch.randn(501, generator=generator) * 0.05
    small_items = items % 500 + 1
    feeds = {"items": small_items.numpy(), "state": state.numpy()}
    scores = graph.run(
        ["scores"], feeds | {"item_embedding": table.numpy(), "item_bias": bias.numpy()}
    )
    with torch.no_grad():
        expected = StepModule(model)(small_items, state, table, bias)[2].numpy()
    assert scores[0].shape == (N_STATES, 501)
    assert_same_recommendations(scores[0], expected)


def test_state_graph_is_the_step_graph_without_scores(model: LRURec) -> None:
    items, state = random_inputs(model)
    feeds = {"items": items.numpy(), "state": state.numpy()}
    step = session(export_onnx(model, graph="step")).run(None, feeds)
    state_graph = session(export_onnx(model, graph="state"))
    assert [o.name for o in state_graph.get_outputs()] == list(STATE_OUTPUTS)
    for actual, expected in zip(state_graph.run(None, feeds), step[:2], strict=True):
        np.testing.assert_array_equal(actual, expected)
    with_table = session(export_onnx(model, graph="state", table_inputs=True))
    assert [i.name for i in with_table.get_overridable_initializers()] == ["item_embedding"]


def test_score_graph_matches_torch_scores(model: LRURec) -> None:
    hidden = torch.randn(N_STATES, 64, generator=torch.Generator().manual_seed(6))
    graph = session(export_onnx(model, graph="score"))
    with torch.no_grad():
        expected = model.score(hidden).numpy()
    expected[:, 0] = -np.inf
    assert_same_recommendations(graph.run(None, {"hidden": hidden.numpy()})[0], expected)


def test_only_lrurec_exports_and_unknown_graphs_are_rejected(model: LRURec) -> None:
    sasrec = SASRec(SASRecConfig(n_items=10, d_model=8, max_len=4))
    with pytest.raises(TypeError, match="LRURec"):
        StepModule(sasrec)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="graph"):
        export_onnx(model, graph="prefill")


def test_export_leaves_the_model_in_its_own_mode(model: LRURec) -> None:
    export_onnx(model, graph="score")
    assert not model.training
    assert not any(module.training for module in model.modules())
    model.train()
    try:
        export_onnx(model, graph="score")
        assert all(module.training for module in model.modules())
    finally:
        model.eval()
