"""The numba backend (LRUREC_BACKEND=numba) computes what the torch backend does, end to end."""

import itertools
import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from numba.core.errors import NumbaError

from model import Artifact, LRURec, SASRec, SASRecConfig, load_artifact, save_artifact
from service.runtimes import numba_runtime
from service.runtimes.numba_kernels import (
    FLOOR_ROWS,
    SCAN_WIDTH,
    _erf,
    select_top_k_kernel,
    step_kernel,
    step_top_k_kernel,
    top_k_kernel,
)
from service.runtimes.numba_runtime import NO_EXCLUSIONS, NumbaStepper
from service.runtimes.numba_weights import (
    ALIGN,
    WEIGHT_NDIMS,
    kernel_weights,
    pack_weights,
    unpack_weights,
)
from service.runtimes.protocol import Stepper
from service.runtimes.ranking import top_k_numpy
from service.runtimes.registry import BACKENDS, build_backend, build_stepper
from service.runtimes.torch_runtime import TorchStepper
from service.settings import Settings
from tests.conftest import TINY_ITEM_IDS, TINY_N_ITEMS, ArtifactFactory

SCORE_TOLERANCE = 1e-4


def test_a_rebuild_by_steps_matches_the_parallel_scan_for_ragged_histories(
    make_artifact: ArtifactFactory,
) -> None:
    """Rows of different lengths (each left-padded), an empty row, and a lone row: the numba
    prefill steps through the events; the torch stepper runs the model's parallel scan."""
    artifact = make_artifact(n_layers=2, d_model=16)
    numba = build_stepper("numba", load_artifact(artifact), "cpu")
    reference = build_stepper("torch", load_artifact(artifact), "cpu")
    generator = np.random.default_rng(1)
    histories = generator.integers(1, TINY_N_ITEMS + 1, size=(5, 20)).astype(np.int64)
    for row, length in enumerate([20, 13, 1, 0, 7]):
        histories[row, : 20 - length] = 0
    for batch in (histories, histories[1:2], histories[3:4]):
        hidden, states = numba.prefill(batch)
        expected_hidden, expected_states = reference.prefill(batch)
        np.testing.assert_allclose(hidden, expected_hidden, rtol=0, atol=1e-5)
        np.testing.assert_allclose(states, expected_states, rtol=0, atol=1e-5)


# d_model 10: the kernels' products take inputs in fours, and 10 leaves a remainder.
@pytest.mark.parametrize(("n_layers", "d_model"), [(1, 16), (2, 16), (3, 16), (2, 10)])
def test_numba_stepper_matches_torch_stepper(
    make_artifact: ArtifactFactory, histories: np.ndarray, n_layers: int, d_model: int
) -> None:
    artifact = make_artifact(n_layers=n_layers, d_model=d_model)
    numba = build_stepper("numba", load_artifact(artifact), "cpu")
    reference = build_stepper("torch", load_artifact(artifact), "cpu")
    assert isinstance(numba, NumbaStepper)
    assert numba.state_shape == reference.state_shape
    hidden, states = numba.prefill(histories)
    expected_hidden, expected_states = reference.prefill(histories)
    np.testing.assert_allclose(hidden, expected_hidden, atol=1e-5)
    items = np.arange(1, 7, dtype=np.int64)
    for _ in range(3):  # a few events in a row: errors must not build up in the state
        stepped = numba.step(items, states)
        expected = reference.step(items, expected_states)
        for actual, wanted in zip(stepped, expected, strict=True):
            assert actual.dtype == np.float32
            np.testing.assert_allclose(actual, wanted, rtol=0, atol=1e-5)
        states, expected_states = stepped[1], expected[1]
    np.testing.assert_allclose(numba.cold_start_hidden(), reference.cold_start_hidden(), atol=1e-5)
    scores = numba.scores(hidden)
    assert np.isneginf(scores[:, 0]).all()
    np.testing.assert_allclose(scores[:, 1:], reference.scores(hidden)[:, 1:], atol=SCORE_TOLERANCE)
    # One row: the kernels' own scoring, eight table columns per pass (10 leaves a remainder).
    ((indices, values),) = numba.top_k(hidden[:1], 5, [[1, 2]])
    ((expected_indices, expected_values),) = reference.top_k(hidden[:1], 5, [[1, 2]])
    assert indices.tolist() == expected_indices.tolist()
    np.testing.assert_allclose(values, expected_values, atol=SCORE_TOLERANCE)


def test_large_tables_are_scored_through_a_view_with_the_same_results(
    tiny_artifact: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    artifact = load_artifact(tiny_artifact)
    copied = NumbaStepper(artifact)
    monkeypatch.setattr(numba_runtime, "COLUMN_TABLE_MAX_BYTES", 0)  # every table is "large"
    viewed = NumbaStepper(artifact)
    assert copied._columns.is_contiguous()
    assert not viewed._columns.is_contiguous()
    rng = np.random.default_rng(3)
    hidden = rng.standard_normal((3, artifact.model.config.d_model)).astype(np.float32)
    exclude = [rng.integers(1, TINY_N_ITEMS + 1, 4).tolist() for _ in range(3)]
    np.testing.assert_allclose(viewed.scores(hidden), copied.scores(hidden), rtol=0, atol=1e-6)
    # k 5: one row through the kernels (by column with the copy, by row without), three
    # through the BLAS product; k 40: the BLAS product and a partial sort, either way.
    for rows, k in itertools.product((1, 3), (5, 40)):
        for (items, values), (expected_items, expected_values) in zip(
            viewed.top_k(hidden[:rows], k, exclude[:rows]),
            copied.top_k(hidden[:rows], k, exclude[:rows]),
            strict=True,
        ):
            assert items.tolist() == expected_items.tolist()
            # Summed in another order by the one-row kernels: float32 rounding apart.
            np.testing.assert_allclose(values, expected_values, rtol=0, atol=1e-5)
    step = (np.array([3]), np.zeros((1, *copied.state_shape), np.float32), 5, exclude[:1])
    ((items, values),) = viewed.step_top_k(*step)[2]  # one compiled call, scoring by row
    ((expected_items, expected_values),) = copied.step_top_k(*step)[2]
    assert items.tolist() == expected_items.tolist()
    np.testing.assert_allclose(values, expected_values, rtol=0, atol=1e-5)


@pytest.mark.parametrize("rows", [7, 8, 33])
def test_batched_step_matches_the_fused_kernel(tiny_artifact: Path, rows: int) -> None:
    stepper = build_stepper("numba", load_artifact(tiny_artifact), "cpu")
    assert isinstance(stepper, NumbaStepper)
    rng = np.random.default_rng(rows)
    states = rng.standard_normal((rows, *stepper.state_shape)).astype(np.float32)
    items = rng.integers(0, TINY_N_ITEMS + 1, rows)  # padding (0) included
    hidden, new_states = stepper.step(items, states)  # batched from 8 rows on
    for row in range(rows):  # one by one: always the fused kernel
        one_hidden, one_state = stepper.step(items[row : row + 1], states[row : row + 1])
        np.testing.assert_allclose(hidden[row], one_hidden[0], rtol=0, atol=1e-5)
        np.testing.assert_allclose(new_states[row], one_state[0], rtol=0, atol=1e-5)


def test_numba_erf_is_within_float32_precision_of_libm() -> None:
    grid = np.linspace(-8.0, 8.0, 40_001, dtype=np.float32)
    errors = [abs(float(_erf(z)) - math.erf(float(z))) for z in grid]
    assert max(errors) < 5e-7  # a few float32 ulps of 1.0
    assert float(_erf(np.float32(np.inf))) == 1.0
    assert float(_erf(np.float32(-np.inf))) == -1.0
    assert math.isnan(float(_erf(np.float32(np.nan))))  # bad weights stay visible


def test_numba_top_k_skips_padding_and_excluded_items(tiny_artifact: Path) -> None:
    stepper = build_stepper("numba", load_artifact(tiny_artifact), "cpu")
    reference = build_stepper("torch", load_artifact(tiny_artifact), "cpu")
    hidden = stepper.step(
        np.array([3, 4, 5], dtype=np.int64), np.zeros((3, *stepper.state_shape), np.float32)
    )[0]
    exclude = [[1, 2, 3], list(range(1, TINY_N_ITEMS - 2)), list(range(1, TINY_N_ITEMS + 1))]
    results = stepper.top_k(hidden, 10, exclude)
    assert len(results[0][0]) == 10
    assert set(results[1][0].tolist()) == {TINY_N_ITEMS - 2, TINY_N_ITEMS - 1, TINY_N_ITEMS}
    assert len(results[2][0]) == 0  # everything excluded: nothing, not padding
    for (indices, values), (expected_indices, expected_values) in zip(
        results, reference.top_k(hidden, 10, exclude), strict=True
    ):
        np.testing.assert_array_equal(indices, expected_indices)
        np.testing.assert_allclose(values, expected_values, atol=SCORE_TOLERANCE)
        assert 0 not in indices
    everything = stepper.top_k(hidden[:1], 10 * TINY_N_ITEMS, [[]])[0][0]
    assert sorted(everything.tolist()) == list(range(1, TINY_N_ITEMS + 1))
    assert [len(items) for items, _ in stepper.top_k(hidden, 0, [[], [], []])] == [0, 0, 0]


def test_numba_top_k_breaks_ties_by_the_lower_index(tiny_artifact: Path) -> None:
    artifact = load_artifact(tiny_artifact)
    model = artifact.model
    assert isinstance(model, LRURec)
    with torch.no_grad():
        # Every item scores exactly d (small integers: no rounding, whatever the sum order).
        model.embedding.weight[1:] = 1.0
        model.item_bias.zero_()
    stepper = NumbaStepper(artifact)
    hidden = np.ones((8, model.config.d_model), dtype=np.float32)
    expected = [index for index in range(1, TINY_N_ITEMS + 1) if index != 2]
    # The fused kernel (1 row, k 5), the BLAS scores (2 and 8 rows) and the partial sort (k 40):
    # the same order.
    for rows, k in ((1, 5), (1, 40), (2, 5), (8, 5)):
        for indices, values in stepper.top_k(hidden[:rows], k, [[2]] * rows):
            assert indices.tolist() == expected[:k]
            assert len(set(values.tolist())) == 1


def test_top_k_numpy_orders_by_score_then_index() -> None:
    generator = np.random.default_rng(5)
    for _ in range(300):  # few distinct values: many ties, also at the cut
        size = int(generator.integers(2, 80))
        scores = generator.integers(0, 4, size=size).astype(np.float32)
        scores[generator.random(size) < 0.1] = np.nan
        scores[generator.random(size) < 0.05] = np.inf
        exclude = generator.integers(0, size, size=int(generator.integers(0, 5))).tolist()
        k = int(generator.integers(1, size + 2))
        allowed = [
            index for index in range(1, size) if index not in exclude and np.isfinite(scores[index])
        ]
        expected = sorted(allowed, key=lambda index: (-scores[index], index))[:k]
        indices, values = top_k_numpy(scores, k, exclude)
        assert indices.tolist() == expected
        np.testing.assert_array_equal(values, scores[expected])


def test_numba_top_k_never_ranks_non_finite_scores(tiny_artifact: Path) -> None:
    artifact = load_artifact(tiny_artifact)
    model = artifact.model
    assert isinstance(model, LRURec)
    with torch.no_grad():
        model.item_bias[5] = torch.nan  # one bad row, e.g. from a diverged run
        model.item_bias[9] = torch.inf
    stepper = NumbaStepper(artifact)
    state = np.zeros((1, *stepper.state_shape), dtype=np.float32)
    hidden = stepper.step(np.array([3], dtype=np.int64), state)[0]
    table, bias = model.embedding.weight.detach().numpy(), model.item_bias.detach().numpy()
    scores = hidden[0] @ table.T + bias
    finite = [index for index in range(1, TINY_N_ITEMS + 1) if np.isfinite(scores[index])]
    expected = sorted(finite, key=lambda index: (-scores[index], index))
    # One row: the fused kernel (k 5), the partial sort (k 40); two: BLAS scores, either way.
    for rows, k in itertools.product((1, 2), (5, 40)):
        for indices, values in stepper.top_k(np.repeat(hidden, rows, axis=0), k, [[]] * rows):
            assert indices.tolist() == expected[:k]
            assert np.isfinite(values).all()


# Columns: whole runs of SCAN_WIDTH and a partial one; a partial one only; whole runs only.
@pytest.mark.parametrize("columns", [3 * SCAN_WIDTH + 11, SCAN_WIDTH - 7, 4 * SCAN_WIDTH])
@pytest.mark.parametrize("k", [1, 3, 10, 32])
def test_numba_selection_matches_a_sort_with_ties_and_non_finite_scores(
    k: int, columns: int
) -> None:
    """Rows at shifted scales: each row's selection first tries a floor from the rows ranked
    before it (in this call and earlier ones), which is sometimes right, sometimes too high
    (fewer than k above it), and sometimes exactly a tied score."""
    rng = np.random.default_rng(k)
    rows = 24
    floors = np.full(FLOOR_ROWS, np.inf, np.float32), np.zeros(1, np.int64)
    for _ in range(12):
        scores = np.round(rng.standard_normal((rows, columns)), 1)  # many ties
        scores += np.round(rng.normal(0.0, 0.5, size=(rows, 1)), 1)  # per-row shifts
        scores = scores.astype(np.float32)
        for row in range(rows):  # NaN/±inf before and after candidates; some rows mostly bad
            bad = rng.choice(columns, size=20 if row % 5 else columns - 3, replace=False)
            scores[row, bad] = rng.choice(np.array([np.nan, np.inf, -np.inf], np.float32), len(bad))
        excluded = [rng.choice(columns, size=10, replace=False).tolist() for _ in range(rows)]
        expected = []
        for row, exclude in enumerate(excluded):
            allowed = set(range(1, columns)) - set(exclude)
            finite = [i for i in allowed if np.isfinite(scores[row, i])]
            expected.append(sorted(finite, key=lambda index: (-scores[row, index], index))[:k])
        items, values = np.empty((rows, k), np.int64), np.empty((rows, k), np.float32)
        counts = np.empty(rows, np.int64)
        starts = np.cumsum([0] + [len(exclude) for exclude in excluded]).astype(np.int64)
        flat = np.array([index for exclude in excluded for index in exclude], np.int64)
        bias = np.zeros(columns, np.float32)
        assert (
            select_top_k_kernel(scores, bias, flat, starts, k, items, values, counts, *floors) == -1
        )
        for row in range(rows):
            assert items[row, : counts[row]].tolist() == expected[row], f"row {row}"


def test_numba_top_k_stays_exact_when_earlier_calls_leave_floors_too_high(
    tiny_artifact: Path,
) -> None:
    """Users with large scores, then users whose every score is far below the floors those
    left behind: each call must still match torch (the floors are only a first guess)."""
    stepper = build_stepper("numba", load_artifact(tiny_artifact), "cpu")
    reference = build_stepper("torch", load_artifact(tiny_artifact), "cpu")
    generator = np.random.default_rng(5)
    for scale, rows in ((10.0, 1), (10.0, 9), (0.01, 1), (0.01, 9), (-10.0, 3), (1.0, 12)):
        hidden = (scale * generator.normal(size=(rows, 16))).astype(np.float32)
        exclude = [generator.integers(1, TINY_N_ITEMS + 1, size=3).tolist() for _ in range(rows)]
        for (indices, values), (expected_indices, expected_values) in zip(
            stepper.top_k(hidden, 5, exclude), reference.top_k(hidden, 5, exclude), strict=True
        ):
            np.testing.assert_array_equal(indices, expected_indices)
            np.testing.assert_allclose(values, expected_values, atol=SCORE_TOLERANCE * abs(scale))


def test_numba_top_k_of_a_large_k_or_batch_matches_torch(tiny_artifact: Path) -> None:
    stepper = build_stepper("numba", load_artifact(tiny_artifact), "cpu")
    reference = build_stepper("torch", load_artifact(tiny_artifact), "cpu")
    generator = np.random.default_rng(4)
    hidden = generator.normal(size=(9, 16)).astype(np.float32)
    exclude = [generator.integers(1, TINY_N_ITEMS + 1, size=row).tolist() for row in range(9)]
    for rows, k in ((1, 40), (9, 10), (9, TINY_N_ITEMS)):
        for (indices, values), (expected_indices, expected_values) in zip(
            stepper.top_k(hidden[:rows], k, exclude[:rows]),
            reference.top_k(hidden[:rows], k, exclude[:rows]),
            strict=True,
        ):
            np.testing.assert_array_equal(indices, expected_indices)
            np.testing.assert_allclose(values, expected_values, atol=SCORE_TOLERANCE)


@pytest.mark.parametrize("form", ["arrays", "lists", "mixed"])
def test_numba_top_k_takes_exclusions_as_arrays_or_lists(tiny_artifact: Path, form: str) -> None:
    """Arrays (what the service passes) are joined apart from Python lists: both rank alike."""
    stepper = build_stepper("numba", load_artifact(tiny_artifact), "cpu")
    reference = build_stepper("torch", load_artifact(tiny_artifact), "cpu")
    generator = np.random.default_rng(5)
    hidden = generator.normal(size=(4, 16)).astype(np.float32)
    lists = [generator.integers(1, TINY_N_ITEMS + 1, size=size).tolist() for size in (0, 3, 9, 1)]
    exclude: list[list[int] | np.ndarray] = {
        "arrays": [np.array(entries, dtype=np.int64) for entries in lists],
        "lists": list(lists),
        "mixed": [np.array(lists[0], dtype=np.int64), lists[1], np.array(lists[2]), lists[3]],
    }[form]
    for (indices, values), (expected_indices, expected_values) in zip(
        stepper.top_k(hidden, 5, exclude), reference.top_k(hidden, 5, lists), strict=True
    ):
        np.testing.assert_array_equal(indices, expected_indices)
        np.testing.assert_allclose(values, expected_values, atol=SCORE_TOLERANCE)


def test_numba_backend_refuses_bad_input_instead_of_reading_out_of_bounds(
    tiny_artifact: Path,
) -> None:
    stepper = build_stepper("numba", load_artifact(tiny_artifact), "cpu")
    states = np.zeros((2, *stepper.state_shape), np.float32)
    with pytest.raises(IndexError, match="outside the model's vocabulary"):
        stepper.step(np.array([1, TINY_N_ITEMS + 1], dtype=np.int64), states)
    with pytest.raises(IndexError, match="outside the model's vocabulary"):
        stepper.step(np.array([-1, 1], dtype=np.int64), states)
    for rows in (2, 9):  # the compiled loops and the batched (BLAS) step
        bad = np.ones(rows, dtype=np.int64)
        bad[-1] = TINY_N_ITEMS + 1
        batch_states = np.zeros((rows, *stepper.state_shape), np.float32)
        with pytest.raises(IndexError, match="outside the model's vocabulary"):
            stepper.step(bad, batch_states)
    with pytest.raises(ValueError, match="expected"):
        stepper.step(np.array([1], dtype=np.int64), states)
    with pytest.raises(ValueError, match="expected"):
        stepper.step(np.array([[1, 2]], dtype=np.int64), states)
    hidden = stepper.step(np.array([1, 2], dtype=np.int64), states)[0]
    for k in (5, 40):  # the compiled selection and the partial sort
        with pytest.raises(IndexError, match="row 1"):
            stepper.top_k(hidden, k, [[1], [TINY_N_ITEMS + 1]])
    with pytest.raises(ValueError, match="exclusion lists"):
        stepper.top_k(hidden, 5, [[1]])
    with pytest.raises(ValueError, match="hidden of shape"):  # would read past each row
        stepper.top_k(np.ascontiguousarray(hidden[:, :-1]), 5, [[], []])


def test_numba_step_accepts_read_only_states(tiny_artifact: Path) -> None:
    stepper = build_stepper("numba", load_artifact(tiny_artifact), "cpu")
    state = np.random.default_rng(3).normal(size=stepper.state_shape).astype(np.float32)
    read_only = np.frombuffer(state.tobytes(), dtype=np.float32).reshape(1, *state.shape)
    assert not read_only.flags.writeable  # as decoded from Redis bytes
    items = np.array([7], dtype=np.int64)
    assert select_top_k_kernel.signatures  # compiled with the stepper, like the step
    compiled = len(step_kernel.signatures)
    hidden, new_state = stepper.step(items, read_only)
    assert len(step_kernel.signatures) == compiled  # no compile on the request path
    expected_hidden, expected_state = stepper.step(items, state[None].copy())
    np.testing.assert_array_equal(hidden, expected_hidden)
    np.testing.assert_array_equal(new_state, expected_state)


def test_packed_weights_unpack_to_the_same_weights_each_on_a_cache_line(
    tiny_artifact: Path,
) -> None:
    model = load_artifact(tiny_artifact).model
    assert isinstance(model, LRURec)
    weights = kernel_weights(model)
    packed, layout = pack_weights(weights)
    unpacked = unpack_weights(packed, layout)
    assert len(unpacked) == len(weights) == len(WEIGHT_NDIMS)
    for weight, view in zip(weights, unpacked, strict=True):
        np.testing.assert_array_equal(view, weight)
        assert np.shares_memory(view, packed)
        assert view.ctypes.data % ALIGN == 0
    with pytest.raises(ValueError, match="dimensions"):
        pack_weights(weights[1:])


EXCLUSION_FORMS = [
    "empty list", "empty array", "list", "int64", "read-only int64", "strided int64", "int32",
    "2-d int64",
]  # fmt: skip


@pytest.mark.parametrize("form", EXCLUSION_FORMS)
def test_numba_one_row_calls_take_exclusions_in_any_form(tiny_artifact: Path, form: str) -> None:
    """One row is the service's per-event call, whose exclusions skip the general joining: an
    int64 array is passed on as it is, an empty one is shared. Every form ranks as torch does,
    none compiles a kernel on the request path, and nothing passed in is written."""
    stepper = build_stepper("numba", load_artifact(tiny_artifact), "cpu")
    reference = build_stepper("torch", load_artifact(tiny_artifact), "cpu")
    state = np.random.default_rng(8).normal(size=(1, *stepper.state_shape)).astype(np.float32)
    items = np.array([3], dtype=np.int64)
    seen = [] if form.startswith("empty") else [2, 5, 9, 11]
    every_other = np.array([value for value in seen for _ in range(2)], dtype=np.int64)[::2]
    exclusion: Any = {  # int32 and 2-d: outside the declared type, accepted all the same
        "empty list": [],
        "empty array": np.empty(0, dtype=np.int64),
        "list": seen,
        "int64": np.array(seen, dtype=np.int64),
        "read-only int64": np.frombuffer(np.array(seen, dtype=np.int64).tobytes(), np.int64),
        "strided int64": every_other,
        "int32": np.array(seen, dtype=np.int32),
        "2-d int64": np.array([seen], dtype=np.int64),
    }[form]
    passed = np.array(exclusion, copy=True)
    kernels = (step_top_k_kernel, top_k_kernel)
    compiled = [len(kernel.signatures) for kernel in kernels]
    for _ in range(2):  # the second call after the first has used any shared arrays
        hidden, _, [(indices, scores)] = stepper.step_top_k(items, state, 6, [exclusion])
        [(alone_indices, alone_scores)] = stepper.top_k(hidden, 6, [exclusion])
        _, _, [(expected_indices, expected_scores)] = reference.step_top_k(items, state, 6, [seen])
        for found, values in ((indices, scores), (alone_indices, alone_scores)):
            assert found.tolist() == expected_indices.tolist()
            np.testing.assert_allclose(values, expected_scores, atol=SCORE_TOLERANCE)
    assert [len(kernel.signatures) for kernel in kernels] == compiled
    np.testing.assert_array_equal(np.asarray(exclusion), passed)
    assert NO_EXCLUSIONS[0].size == 0
    assert NO_EXCLUSIONS[1].tolist() == [0, 0]


def test_numba_backend_rejects_other_models_and_devices(
    tmp_path: Path, tiny_artifact: Path
) -> None:
    model = SASRec(SASRecConfig(n_items=TINY_N_ITEMS, d_model=8, max_len=8))
    save_artifact(tmp_path, model, TINY_ITEM_IDS, torch.ones(TINY_N_ITEMS + 1))
    with pytest.raises(ValueError, match="LRUREC_BACKEND=torch"):
        build_stepper("numba", load_artifact(tmp_path), "cpu")
    with pytest.raises(ValueError, match="runs on the CPU"):
        build_stepper("numba", load_artifact(tiny_artifact), "cuda")


def test_auto_backend_picks_numba_for_lrurec_on_the_cpu_and_torch_otherwise(
    tmp_path: Path, tiny_artifact: Path
) -> None:
    assert isinstance(build_stepper("auto", load_artifact(tiny_artifact), "cpu"), NumbaStepper)
    model = SASRec(SASRecConfig(n_items=TINY_N_ITEMS, d_model=8, max_len=8))
    save_artifact(tmp_path, model, TINY_ITEM_IDS, torch.ones(TINY_N_ITEMS + 1))
    assert isinstance(build_stepper("auto", load_artifact(tmp_path), "cpu"), TorchStepper)
    assert Settings.model_fields["backend"].default == "auto"
    with pytest.raises(ValueError, match="unknown backend 'fast'; available: auto, torch"):
        build_stepper("fast", load_artifact(tiny_artifact), "cpu")


def _uncompilable(artifact: Artifact, device: str) -> Stepper:
    raise NumbaError("no target for this CPU")  # what a failed compile raises


def test_auto_falls_back_to_torch_when_numba_cannot_build(
    tiny_artifact: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setitem(BACKENDS, "numba", _uncompilable)
    name, stepper = build_backend("auto", load_artifact(tiny_artifact), "cpu")
    assert name == "torch"
    assert isinstance(stepper, TorchStepper)
    assert "numba backend failed to build; auto falls back to torch" in caplog.text
    with pytest.raises(NumbaError):  # named explicitly, it fails start-up
        build_backend("numba", load_artifact(tiny_artifact), "cpu")


CACHE_PROBE = """
import resource, signal, sys
import numpy as np
from model import load_artifact
from service.runtimes import numba_kernels
from service.runtimes.numba_runtime import NO_EXCLUSIONS, NumbaStepper
from service.runtimes.numba_weights import (
    ALIGN,
    WEIGHT_NDIMS,
    kernel_weights,
    pack_weights,
    unpack_weights,
)
if len(sys.argv) > 2:  # a cache volume that is full once numba has found it writable
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (int(sys.argv[2]), int(sys.argv[2])))
stepper = NumbaStepper(load_artifact(sys.argv[1]))
state = np.zeros((1, *stepper.state_shape), np.float32)
stepper.top_k(stepper.step(np.ones(1, np.int64), state)[0], 5, [[]])
kernels = numba_kernels.KERNELS
assert all(len(kernel.signatures) == 1 for kernel in kernels), "a kernel compiled twice"
print(sum(sum(kernel.stats.cache_hits.values()) for kernel in kernels), len(kernels))
"""


def test_numba_kernels_are_compiled_once_then_loaded_from_the_disk_cache(
    tiny_artifact: Path, tmp_path: Path
) -> None:
    environment = {**os.environ, "NUMBA_CACHE_DIR": str(tmp_path / "cache")}
    command = [sys.executable, "-c", CACHE_PROBE, str(tiny_artifact)]
    root = Path(__file__).resolve().parents[2]
    first, second = (
        subprocess.run(command, env=environment, cwd=root, capture_output=True, text=True,
                       check=True).stdout.split()[-2:]
        for _ in range(2)
    )  # fmt: skip
    assert int(first[0]) == 0  # compiled, and written to NUMBA_CACHE_DIR
    assert list((tmp_path / "cache").rglob("*.nbi"))
    assert int(second[0]) == int(second[1])  # each kernel's one signature loaded, not compiled


def test_numba_backend_starts_when_its_cache_cannot_be_written(
    tiny_artifact: Path, tmp_path: Path
) -> None:
    environment = {**os.environ, "NUMBA_CACHE_DIR": str(tmp_path / "cache")}
    command = [sys.executable, "-c", CACHE_PROBE, str(tiny_artifact), "2000"]  # 2 KB files
    root = Path(__file__).resolve().parents[2]
    probe = subprocess.run(command, env=environment, cwd=root, capture_output=True, text=True)
    assert probe.returncode == 0, probe.stderr[-2000:]
    assert "numba could not cache a kernel" in probe.stderr
    assert probe.stdout.split()[-2] == "0"  # nothing loaded from the (empty) cache


BOUNDS_PROBE = """
import sys
import numpy as np
from model import load_artifact
from service.runtimes import numba_runtime
from service.runtimes.numba_runtime import NO_EXCLUSIONS, NumbaStepper
from service.runtimes.numba_weights import (
    ALIGN,
    WEIGHT_NDIMS,
    kernel_weights,
    pack_weights,
    unpack_weights,
)
for path in sys.argv[1:]:  # widths 16 and 10 (products and scoring with a remainder)
    for limit in (numba_runtime.COLUMN_TABLE_MAX_BYTES, 0):  # scoring by column, then by row
        numba_runtime.COLUMN_TABLE_MAX_BYTES = limit
        stepper = NumbaStepper(load_artifact(path))  # compiles, runs the fused and BLAS paths
        for rows in (1, 3, 9):
            items = np.arange(1, rows + 1, dtype=np.int64)
            states = np.zeros((rows, *stepper.state_shape), np.float32)
            hidden, states = stepper.step(items, states)
            hidden, _ = stepper.step(items, states)
            stepper.top_k(hidden, 5, [[1, 2, 3]] * rows)
            stepper.step_top_k(items, states, 5, [[1, 2, 3]] * rows)
print("ok")
"""


def test_numba_kernels_stay_inside_their_arrays(
    make_artifact: ArtifactFactory, tmp_path: Path
) -> None:
    """numba does not check indices: with ``NUMBA_BOUNDSCHECK=1`` every kernel path is compiled
    with checks (a fresh cache, so nothing unchecked is loaded) and an access outside an array
    raises instead of reading a neighbour's memory."""
    environment = {
        **os.environ, "NUMBA_BOUNDSCHECK": "1", "NUMBA_CACHE_DIR": str(tmp_path / "cache")
    }  # fmt: skip
    artifacts = [str(make_artifact()), str(make_artifact(d_model=10))]
    command = [sys.executable, "-c", BOUNDS_PROBE, *artifacts]
    root = Path(__file__).resolve().parents[2]
    probe = subprocess.run(command, env=environment, cwd=root, capture_output=True, text=True)
    assert probe.returncode == 0, probe.stderr[-2000:]
    assert probe.stdout.split()[-1] == "ok"


# 1 row: one compiled call; 3: the compiled step, then BLAS scores; 9: BLAS for both.
@pytest.mark.parametrize("rows", [1, 3, 9])
@pytest.mark.parametrize("k", [1, 10, 40])  # 40: above the kernels' insertion limit
def test_numba_step_top_k_equals_a_step_then_a_top_k(
    tiny_artifact: Path, rows: int, k: int
) -> None:
    stepper = build_stepper("numba", load_artifact(tiny_artifact), "cpu")
    reference = build_stepper("torch", load_artifact(tiny_artifact), "cpu")
    rng = np.random.default_rng(rows * 100 + k)
    state = rng.standard_normal((rows, *stepper.state_shape)).astype(np.float32)
    read_only = np.frombuffer(state.tobytes(), np.float32).reshape(state.shape)  # as from Redis
    items = rng.integers(1, TINY_N_ITEMS + 1, rows)
    exclude = [rng.integers(1, TINY_N_ITEMS + 1, row * 3).astype(np.int64) for row in range(rows)]
    hidden, new_states, ranked = stepper.step_top_k(items, read_only, k, exclude)
    expected_hidden, expected_states = stepper.step(items, state)
    np.testing.assert_array_equal(hidden, expected_hidden)
    np.testing.assert_array_equal(new_states, expected_states)
    separate = stepper.top_k(expected_hidden, k, exclude)
    torch_hidden, _, torch_ranked = reference.step_top_k(items, state, k, exclude)
    np.testing.assert_allclose(hidden, torch_hidden, atol=1e-5)
    for row in range(rows):
        assert ranked[row][0].tolist() == separate[row][0].tolist()
        np.testing.assert_array_equal(ranked[row][1], separate[row][1])
        assert ranked[row][0].tolist() == torch_ranked[row][0].tolist()
        np.testing.assert_allclose(ranked[row][1], torch_ranked[row][1], atol=SCORE_TOLERANCE)
        assert not set(ranked[row][0].tolist()) & {0, *exclude[row].tolist()}


def test_numba_step_top_k_refuses_bad_items_and_exclusions(tiny_artifact: Path) -> None:
    stepper = build_stepper("numba", load_artifact(tiny_artifact), "cpu")
    states = np.zeros((2, *stepper.state_shape), np.float32)
    with pytest.raises(IndexError, match="outside the model's vocabulary"):
        stepper.step_top_k(np.array([1, TINY_N_ITEMS + 1]), states, 5, [[], []])
    with pytest.raises(IndexError, match="row 1"):
        stepper.step_top_k(np.array([1, 2]), states, 5, [[1], [TINY_N_ITEMS + 1]])
    with pytest.raises(ValueError, match="exclusion lists"):
        stepper.step_top_k(np.array([1, 2]), states, 5, [[1]])
    with pytest.raises(ValueError, match="expected"):
        stepper.step_top_k(np.array([1]), states, 5, [[]])
