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
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import numpy as np

from service import telemetry
from service.runtime import Exclusion, FloatArray, IndexArray, Stepper

MAX_BATCH = 64
"""Largest batch per model call; more waiting requests are split into several calls."""

Ranked = tuple[IndexArray, FloatArray]
"""One user's best ``(indices, scores)``."""
ResultT = TypeVar("ResultT")
ItemT = TypeVar("ItemT")


@dataclass(frozen=True, slots=True)
class _Request(Generic[ResultT]):
    """One user's call: item index (steps), state or hidden vector, k and exclusions (top-k)."""

    index: int
    vector: FloatArray
    k: int
    exclude: Exclusion
    future: "asyncio.Future[ResultT]"


class Window(Generic[ItemT]):
    """Items gathered until the end of this loop iteration, or until ``wait`` seconds after the
    first of them (a full batch of :data:`MAX_BATCH` does not wait), then handed to ``flush``
    in batches of at most :data:`MAX_BATCH`."""

    def __init__(self, flush: "Callable[[list[ItemT]], None]", wait: float = 0.0) -> None:
        self._flush = flush
        self._wait = wait
        self._items: list[ItemT] = []
        self._timer: asyncio.TimerHandle | None = None

    def add(self, item: ItemT) -> None:
        self._items.append(item)
        loop = asyncio.get_running_loop()
        if len(self._items) == 1:
            if self._wait > 0:
                self._timer = loop.call_later(self._wait, self._due)
            else:
                loop.call_soon(self._due)
        elif len(self._items) == MAX_BATCH and self._timer is not None:
            self._timer.cancel()  # a full batch: no reason to wait longer
            self._timer = None
            loop.call_soon(self._due)

    def _due(self) -> None:
        self._timer = None
        items, self._items = self._items, []
        for start in range(0, len(items), MAX_BATCH):
            self._flush(items[start : start + MAX_BATCH])


class _Queue(Generic[ResultT]):
    """Requests of one kind run as batched calls, per :class:`Window`."""

    def __init__(
        self, run: "Callable[[list[_Request[ResultT]]], list[ResultT]]", wait: float = 0.0
    ) -> None:
        self._run = run
        self._window = Window[_Request[ResultT]](self._drain, wait)

    async def submit(
        self, index: int, vector: FloatArray, k: int = 0, exclude: Exclusion = ()
    ) -> ResultT:
        future: asyncio.Future[ResultT] = asyncio.get_running_loop().create_future()
        self._window.add(_Request(index, vector, k, exclude, future))
        return await future

    def _drain(self, batch: "list[_Request[ResultT]]") -> None:
        try:
            results = self._run(batch)
            if len(results) != len(batch):  # a broken backend: no row can be trusted
                raise ValueError(f"{len(results)} results for a batch of {len(batch)}")
        except Exception as error:  # every waiter gets the failure, none hangs
            _fail([request.future for request in batch], error)
            return
        for result, request in zip(results, batch, strict=True):
            if not request.future.done():
                request.future.set_result(result)


class MicroBatcher:
    """Async ``step``, ``top_k`` and ``step_top_k`` for one user each, batched per loop
    iteration, or per ``wait`` seconds from the first waiting call
    (``LRUREC_MICRO_BATCH_WAIT_MS``): bigger batches for a bounded wait."""

    def __init__(self, stepper: Stepper, wait: float = 0.0) -> None:
        self._stepper = stepper
        self._steps = _Queue[tuple[FloatArray, FloatArray]](self._run_steps, wait)
        self._top_ks = _Queue[Ranked](self._run_top_ks, wait)
        self._step_top_ks = _Queue[tuple[FloatArray, FloatArray, Ranked]](
            self._run_step_top_ks, wait
        )

    async def step(self, index: int, state: FloatArray) -> tuple[FloatArray, FloatArray]:
        """``(hidden [d], new_state)`` of one event; ``state`` has no batch dimension."""
        return await self._steps.submit(index, state)

    async def top_k(self, hidden: FloatArray, k: int, exclude: Exclusion) -> Ranked:
        """Best ``k`` (indices, scores) for one hidden vector ``[d]``."""
        return await self._top_ks.submit(0, hidden, k, exclude)

    async def step_top_k(
        self, index: int, state: FloatArray, k: int, exclude: Exclusion
    ) -> tuple[FloatArray, FloatArray, Ranked]:
        """:meth:`step`, then :meth:`top_k` of its hidden vector, in one batched call."""
        return await self._step_top_ks.submit(index, state, k, exclude)

    def _run_steps(
        self, batch: "list[_Request[tuple[FloatArray, FloatArray]]]"
    ) -> list[tuple[FloatArray, FloatArray]]:
        items, states = _stacked(batch)
        with telemetry.MODEL_STEP.time():
            hidden, new_states = self._stepper.step(items, states)
        return list(zip(hidden, new_states, strict=True))

    def _run_top_ks(self, batch: "list[_Request[Ranked]]") -> list[Ranked]:
        hidden = np.stack([request.vector for request in batch])
        k = max(request.k for request in batch)  # a row's best k is a prefix of its best
        with telemetry.SCORE.time():
            ranked = self._stepper.top_k(hidden, k, [request.exclude for request in batch])
        return [_prefix(row, request.k) for row, request in zip(ranked, batch, strict=True)]

    def _run_step_top_ks(
        self, batch: "list[_Request[tuple[FloatArray, FloatArray, Ranked]]]"
    ) -> list[tuple[FloatArray, FloatArray, Ranked]]:
        items, states = _stacked(batch)
        k = max(request.k for request in batch)
        with telemetry.MODEL_STEP_SCORE.time():
            hidden, new_states, ranked = self._stepper.step_top_k(
                items, states, k, [request.exclude for request in batch]
            )
        return [
            (hidden[row], new_states[row], _prefix(ranked[row], request.k))
            for row, request in enumerate(batch)
        ]


def _stacked(batch: "Sequence[_Request[Any]]") -> tuple[IndexArray, FloatArray]:
    """The batch's item indices ``[b]`` and states ``[b, ...]``."""
    items = np.asarray([request.index for request in batch], dtype=np.int64)
    return items, np.stack([request.vector for request in batch])


def _prefix(ranked: Ranked, k: int) -> Ranked:
    return ranked[0][:k], ranked[1][:k]


def _fail(futures: Sequence["asyncio.Future[Any]"], error: Exception) -> None:
    for future in futures:
        if not future.done():
            future.set_exception(error)
