"""Micro-batching gives the same results as unbatched calls, and really batches."""

import asyncio
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest

from model import load_artifact
from service.batching import MAX_BATCH, MicroBatcher
from service.runtime import Exclusion, FloatArray, IndexArray, TorchStepper
from tests.service.conftest import ClientFactory


class CountingStepper(TorchStepper):
    """The real torch backend, recording the batch size of every call."""

    def __init__(self, artifact_dir: Path) -> None:
        super().__init__(load_artifact(artifact_dir))
        self.step_batches: list[int] = []
        self.top_k_batches: list[int] = []

    def step(self, items: IndexArray, states: FloatArray) -> tuple[FloatArray, FloatArray]:
        self.step_batches.append(len(items))
        return super().step(items, states)

    def top_k(
        self, hidden: FloatArray, k: int, exclude: Sequence[Exclusion]
    ) -> list[tuple[IndexArray, FloatArray]]:
        self.top_k_batches.append(len(hidden))
        return super().top_k(hidden, k, exclude)


def test_concurrent_steps_and_top_ks_are_batched_and_equal_unbatched(tiny_artifact: Path) -> None:
    stepper = CountingStepper(tiny_artifact)
    rng = np.random.default_rng(0)
    n_items = len(load_artifact(tiny_artifact).item_ids)
    users = 70  # more than one batch of MAX_BATCH = 64
    items = rng.integers(1, n_items + 1, users)
    states = rng.standard_normal((users, *stepper.state_shape)).astype(np.float32)
    ks = rng.integers(1, 6, users)
    excludes = [list(rng.integers(1, n_items + 1, 3)) for _ in range(users)]

    async def batched() -> list[tuple[FloatArray, FloatArray, IndexArray, FloatArray]]:
        batcher = MicroBatcher(stepper)

        async def one(u: int) -> tuple[FloatArray, FloatArray, IndexArray, FloatArray]:
            hidden, state = await batcher.step(int(items[u]), states[u])
            indices, scores = await batcher.top_k(hidden, int(ks[u]), excludes[u])
            return hidden, state, indices, scores

        return await asyncio.gather(*(one(u) for u in range(users)))

    results = asyncio.run(batched())
    assert stepper.step_batches == [64, 6]
    assert stepper.top_k_batches == [64, 6]
    for u, (hidden, state, indices, scores) in enumerate(results):
        alone_hidden, alone_state = stepper.step(items[u : u + 1], states[u : u + 1])
        np.testing.assert_allclose(hidden, alone_hidden[0], rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(state, alone_state[0], rtol=1e-5, atol=1e-5)
        alone_indices, alone_scores = stepper.top_k(alone_hidden, int(ks[u]), [excludes[u]])[0]
        assert indices.tolist() == alone_indices.tolist()
        np.testing.assert_allclose(scores, alone_scores, rtol=1e-5, atol=1e-5)


def test_a_failing_batch_fails_every_waiter(tiny_artifact: Path) -> None:
    stepper = CountingStepper(tiny_artifact)

    async def run() -> list[object]:
        batcher = MicroBatcher(stepper)
        bad_state = np.zeros(3, dtype=np.float32)  # wrong shape: the batched call raises
        calls = [batcher.step(1, bad_state) for _ in range(3)]
        return await asyncio.gather(*calls, return_exceptions=True)

    outcomes = asyncio.run(run())
    assert len(outcomes) == 3
    assert all(isinstance(outcome, Exception) for outcome in outcomes)


@pytest.mark.redis
def test_the_service_answers_the_same_with_micro_batching(make_client: ClientFactory) -> None:
    events = [{"user_id": f"u{i % 3}", "item_id": f"item-{i % 7 + 1}"} for i in range(12)]
    answers = []
    for micro_batch in (False, True):
        with make_client(micro_batch=micro_batch) as client:
            singles = [client.post("/events?k=5", json=e).json() for e in events]
            batch = client.post("/events/batch?k=5", json={"events": events}).json()["results"]
            answers.append(singles + batch)  # the batch runs its users concurrently
            for user in ("u0", "u1", "u2"):
                client.delete(f"/users/{user}")
    for plain, batched in zip(*answers, strict=True):
        assert plain["events_applied"] == batched["events_applied"]
        assert [i["item_id"] for i in plain["recommendations"]] == [
            i["item_id"] for i in batched["recommendations"]
        ]
        np.testing.assert_allclose(
            [i["score"] for i in plain["recommendations"]],
            [i["score"] for i in batched["recommendations"]], rtol=1e-5,
        )  # fmt: skip


def test_concurrent_step_top_ks_are_batched_and_equal_unbatched(tiny_artifact: Path) -> None:
    stepper = CountingStepper(tiny_artifact)
    rng = np.random.default_rng(1)
    n_items = len(load_artifact(tiny_artifact).item_ids)
    users = 70
    items = rng.integers(1, n_items + 1, users)
    states = rng.standard_normal((users, *stepper.state_shape)).astype(np.float32)
    ks = rng.integers(1, 6, users)
    excludes = [rng.integers(1, n_items + 1, 3) for _ in range(users)]

    async def batched() -> list[tuple[FloatArray, FloatArray, tuple[IndexArray, FloatArray]]]:
        batcher = MicroBatcher(stepper)
        calls = [
            batcher.step_top_k(int(items[u]), states[u], int(ks[u]), excludes[u])
            for u in range(users)
        ]
        return await asyncio.gather(*calls)

    results = asyncio.run(batched())
    assert stepper.step_batches == [64, 6]  # one step and one ranking per batch
    assert stepper.top_k_batches == [64, 6]
    for u, (hidden, state, (indices, scores)) in enumerate(results):
        alone = stepper.step_top_k(items[u : u + 1], states[u : u + 1], int(ks[u]), [excludes[u]])
        np.testing.assert_allclose(hidden, alone[0][0], rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(state, alone[1][0], rtol=1e-5, atol=1e-5)
        assert indices.tolist() == alone[2][0][0].tolist()
        np.testing.assert_allclose(scores, alone[2][0][1], rtol=1e-5, atol=1e-5)


class ShortStepper(CountingStepper):
    """A broken backend: one result row fewer than asked for."""

    def step(self, items: IndexArray, states: FloatArray) -> tuple[FloatArray, FloatArray]:
        hidden, new_states = super().step(items, states)
        return hidden[:-1], new_states[:-1]


def test_a_batch_with_missing_results_fails_every_waiter_instead_of_hanging(
    tiny_artifact: Path,
) -> None:
    stepper = ShortStepper(tiny_artifact)
    state = np.zeros(stepper.state_shape, dtype=np.float32)

    async def run() -> list[object]:
        batcher = MicroBatcher(stepper)
        calls = [batcher.step(1, state) for _ in range(3)]
        return await asyncio.wait_for(asyncio.gather(*calls, return_exceptions=True), 10)

    outcomes = asyncio.run(run())
    assert len(outcomes) == 3
    assert all(isinstance(outcome, ValueError) for outcome in outcomes)


@pytest.mark.parametrize(("wait", "batches"), [(0.0, [1, 1, 1]), (0.5, [3])])
def test_a_wait_window_gathers_calls_from_later_loop_iterations(
    tiny_artifact: Path, wait: float, batches: list[int]
) -> None:
    stepper = CountingStepper(tiny_artifact)
    state = np.zeros(stepper.state_shape, dtype=np.float32)

    async def run() -> None:
        batcher = MicroBatcher(stepper, wait)

        async def later(delay: int) -> object:
            for _ in range(delay):  # arrive a few event-loop iterations after the first
                await asyncio.sleep(0)
            return await batcher.step(1, state)

        await asyncio.wait_for(asyncio.gather(*(later(delay) for delay in (0, 3, 6))), 10)

    asyncio.run(run())
    assert stepper.step_batches == batches


def test_a_full_batch_does_not_wait_out_the_window(tiny_artifact: Path) -> None:
    stepper = CountingStepper(tiny_artifact)
    state = np.zeros(stepper.state_shape, dtype=np.float32)

    async def run() -> float:
        batcher = MicroBatcher(stepper, wait=30.0)
        start = asyncio.get_running_loop().time()
        await asyncio.wait_for(
            asyncio.gather(*(batcher.step(1, state) for _ in range(MAX_BATCH))), 10
        )
        return asyncio.get_running_loop().time() - start

    assert asyncio.run(run()) < 5.0
    assert stepper.step_batches == [MAX_BATCH]
