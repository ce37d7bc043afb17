"""Micro-batching: the model steps and top-k's requested in one event-loop iteration, run as one
batched call (``LRUREC_MICRO_BATCH=true``; off by default).

Concurrent events reach the model together when their Redis replies arrive together (the script
client delivers every reply of one read in one callback), so under load several events wait in
the same iteration. A batched call costs less than the same calls one by one (one dispatch,
one matrix product over the catalogue); at low load every event is a batch of one and pays a
future and a callback for nothing, so the engine calls the model directly when only one event
is in flight. Results are the same as unbatched calls (row-wise independent computations;
pinned by tests/service/test_batching.py).
"""

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from service import telemetry
from service.runtime import FloatArray, IndexArray, Stepper

MAX_BATCH = 64
"""Largest batch per model call; more waiting requests are split into several calls."""


@dataclass(frozen=True)
class _StepRequest:
    index: int
    state: FloatArray
    future: "asyncio.Future[tuple[FloatArray, FloatArray]]"


@dataclass(frozen=True)
class _TopKRequest:
    hidden: FloatArray
    k: int
    exclude: Sequence[int]
    future: "asyncio.Future[tuple[IndexArray, FloatArray]]"


class MicroBatcher:
    """Async ``step`` and ``top_k`` for one user each, batched per loop iteration."""

    def __init__(self, stepper: Stepper) -> None:
        self._stepper = stepper
        self._steps: list[_StepRequest] = []
        self._top_ks: list[_TopKRequest] = []

    async def step(self, index: int, state: FloatArray) -> tuple[FloatArray, FloatArray]:
        """``(hidden [d], new_state)`` of one event; ``state`` has no batch dimension."""
        future: asyncio.Future[tuple[FloatArray, FloatArray]]
        future = asyncio.get_running_loop().create_future()
        self._steps.append(_StepRequest(index, state, future))
        if len(self._steps) == 1:
            asyncio.get_running_loop().call_soon(self._run_steps)
        return await future

    async def top_k(
        self, hidden: FloatArray, k: int, exclude: Sequence[int]
    ) -> tuple[IndexArray, FloatArray]:
        """Best ``k`` (indices, scores) for one hidden vector ``[d]``."""
        future: asyncio.Future[tuple[IndexArray, FloatArray]]
        future = asyncio.get_running_loop().create_future()
        self._top_ks.append(_TopKRequest(hidden, k, exclude, future))
        if len(self._top_ks) == 1:
            asyncio.get_running_loop().call_soon(self._run_top_ks)
        return await future

    def _run_steps(self) -> None:
        waiting, self._steps = self._steps, []
        for start in range(0, len(waiting), MAX_BATCH):
            batch = waiting[start : start + MAX_BATCH]
            try:
                items = np.asarray([request.index for request in batch], dtype=np.int64)
                states = np.stack([request.state for request in batch])
                with telemetry.MODEL_STEP.time():
                    hidden, new_states = self._stepper.step(items, states)
            except Exception as error:  # every waiter gets the failure, none hangs
                _fail([request.future for request in batch], error)
                continue
            for row, request in enumerate(batch):
                if not request.future.done():
                    request.future.set_result((hidden[row], new_states[row]))

    def _run_top_ks(self) -> None:
        waiting, self._top_ks = self._top_ks, []
        for start in range(0, len(waiting), MAX_BATCH):
            batch = waiting[start : start + MAX_BATCH]
            try:
                hidden = np.stack([request.hidden for request in batch])
                k = max(request.k for request in batch)  # a row's best k is a prefix of its best
                with telemetry.SCORE.time():
                    results = self._stepper.top_k(hidden, k, [r.exclude for r in batch])
            except Exception as error:
                _fail([request.future for request in batch], error)
                continue
            for (indices, scores), request in zip(results, batch, strict=True):
                if not request.future.done():
                    request.future.set_result((indices[: request.k], scores[: request.k]))


def _fail(futures: Sequence["asyncio.Future[Any]"], error: Exception) -> None:
    for future in futures:
        if not future.done():
            future.set_exception(error)
