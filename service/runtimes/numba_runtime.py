"""numba backend (``LRUREC_BACKEND=numba``): LRURec's step and exact top-k as compiled loops.

The fastest CPU path at small batches, where a call is dominated by per-operator overhead in PyTorch
and onnxruntime (benchmarks/RESULTS.md): the kernels in :mod:`service.runtimes.numba_kernels` do a
batch-1 step + ranking in about the time of its arithmetic. Weights are snapshotted at start-up in
the kernels' layouts, from the same folded constants the torch backend (FoldedLRURec) and the ONNX
export use (:mod:`model.inference.folded`); the item table is the torch model's own, and a
column-major copy of it (tables up to 16 MB) is what one row is scored from in the kernels and
several rows in one BLAS product. The kernels are compiled when the backend is built, so the first
event does not pay for it: 5-20 s on a 2-core VM the first time, then loaded from numba's disk cache
(next to the module or in ``NUMBA_CACHE_DIR``) in well under a second. numba and LLVM add about 200
MB of resident memory. A history rebuild (``prefill``) steps the kernels through the history's
events: exact, as the recurrence is, and 6× faster than PyTorch's parallel scan for a history
of 10 events (1.6× for 200), which matters right after a model switch, when every active user's
next event rebuilds its state. The cold-start vector and an empty history's answer stay in
PyTorch (:class:`service.runtimes.torch_runtime.TorchRebuilds`).
"""

import logging
from collections.abc import Sequence
from itertools import chain
from typing import TypeVar

import numpy as np
import torch
from numpy.typing import NDArray

from model import Artifact, LRURec
from service.runtimes.numba_batched import batched_step
from service.runtimes.numba_kernels import (
    FLOOR_ROWS,
    KERNELS,
    select_top_k_kernel,
    step_kernel,
    step_top_k_kernel,
    top_k_kernel,
)
from service.runtimes.numba_weights import (
    float32_array,
    kernel_weights,
    pack_weights,
    unpack_weights,
)
from service.runtimes.protocol import Exclusion, FloatArray, IndexArray
from service.runtimes.ranking import top_k_numpy
from service.runtimes.torch_runtime import TorchRebuilds

logger = logging.getLogger("service")

FUSED_MAX_K = 32
"""Largest k selected by insertion in the kernels (O(v·k) at worst); larger k: partial sort."""
STEP_BLAS_MIN_ROWS = 8
"""From this many rows, BLAS products step them faster than the kernels' loops."""
SCORE_BLAS_MIN_ROWS = 2
"""From this many rows, one BLAS product scores them faster than the kernels' loops, which
read the whole item table once per row: the product reads it once for several rows (4 rows of
3,416 items: 16 µs against 60 µs)."""
COLUMN_TABLE_MAX_BYTES = 16 << 20
"""Item tables up to this size (65,536 items at d = 64) get a column-major copy: the kernels
score one row from it without horizontal sums, and torch's BLAS product reads it fastest (4
rows of 100,000 items in 1.0 ms against 1.8 ms through a transposed view). Larger tables are
scored by row in the kernels and through a transposed view by the product, without doubling
their memory: from 50,000 items the service ranks through the int8 first stage by default
(``LRUREC_QUANTIZED_SCORING``), which uses neither."""
SCORE_CHUNK_FLOATS = 1 << 22
"""Scores held at once on the BLAS path (16 MB), whatever the batch and catalogue."""


ScalarT = TypeVar("ScalarT", bound=np.generic)
INT64: np.dtype[np.int64] = np.dtype(np.int64)
FLOAT32: np.dtype[np.float32] = np.dtype(np.float32)
NO_EXCLUSIONS = np.empty(0, dtype=np.int64), np.zeros(2, dtype=np.int64)
""":func:`_concatenated` of one empty list, shared by every call: the kernels only read it.
Not flagged read-only, which numba would compile as another variant."""


def _writable(array: NDArray[np.generic], dtype: np.dtype[ScalarT]) -> NDArray[ScalarT]:
    # numba compiles read-only arrays (states decoded from Redis bytes) as another type: a copy
    # of a few KB costs far less than compiling that variant on the first event. ``carray`` is
    # C-contiguous, writeable and aligned (numba types unaligned arrays as aligned).
    if isinstance(array, np.ndarray) and array.dtype == dtype and array.flags.carray:
        return array  # type: ignore[return-value]  # checked just above
    writable: NDArray[ScalarT] = np.array(array, dtype=dtype, order="C")  # a copy
    return writable


def _concatenated(lists: Sequence[Exclusion]) -> tuple[IndexArray, IndexArray]:
    """Every list back to back, and where each starts (``len(lists) + 1`` offsets).

    For one list (the service's per-event call) no cumulative sums are needed, and an int64
    array is returned as it is: the result may be the caller's own array, or
    :data:`NO_EXCLUSIONS`; the kernels only read it.
    """
    if len(lists) == 1:
        entries = lists[0]
        if isinstance(entries, np.ndarray):
            if not entries.size:
                return NO_EXCLUSIONS
            flat = _writable(entries if entries.ndim == 1 else entries.reshape(-1), INT64)
        elif not len(entries):
            return NO_EXCLUSIONS
        else:
            flat = np.array(entries, dtype=np.int64).reshape(-1)
        return flat, np.array((0, len(flat)), dtype=np.int64)
    starts, total = [0], 0
    for entries in lists:
        total += len(entries)
        starts.append(total)
    if not total:
        return np.empty(0, dtype=np.int64), np.array(starts, dtype=np.int64)
    if all(isinstance(entries, np.ndarray) for entries in lists):
        # The service's arrays (each event's seen items, up to max_len of them) are joined in
        # C: iterated one int at a time they cost ≈ 54 µs for 4 × 100 items, this ≈ 3 µs.
        flat = np.concatenate(lists, dtype=np.int64, casting="same_kind")
    else:  # Python sequences: one pass over their ints beats converting each list first
        flat = np.fromiter(chain.from_iterable(lists), np.int64, total)
    return flat, np.array(starts, dtype=np.int64)


def _selection(rows: int, k: int) -> tuple[IndexArray, FloatArray, IndexArray]:
    """Empty ``(top_items [rows, k], top_scores [rows, k], counts [rows])`` for a kernel."""
    return (
        np.empty((rows, k), dtype=np.int64),
        np.empty((rows, k), dtype=np.float32),
        np.empty(rows, dtype=np.int64),
    )


def _ranked(
    top_items: IndexArray, top_scores: FloatArray, counts: IndexArray, k: int
) -> list[tuple[IndexArray, FloatArray]]:
    """Each row's kept ``(items, scores)``: ``counts[row]`` of its ``k`` slots."""
    if len(counts) == 1 and counts[0] == k:  # a lone event's call: its one whole row
        return [(top_items[0], top_scores[0])]
    kept = counts.tolist()
    if kept.count(k) == len(kept):  # the usual case: whole rows (half the cost of slicing each)
        return list(zip(top_items, top_scores, strict=True))
    return [(top_items[row, :count], top_scores[row, :count]) for row, count in enumerate(kept)]


class NumbaStepper(TorchRebuilds):
    """The :class:`service.runtimes.protocol.Stepper` interface on compiled kernels (LRURec, CPU
    only).

    Args:
        artifact: a loaded LRURec artifact.
        device: must be ``"cpu"``.
    """

    def __init__(self, artifact: Artifact, device: str = "cpu") -> None:
        model = artifact.model
        if not isinstance(model, LRURec):
            raise ValueError(
                f"the numba backend serves LRURec artifacts; this one is "
                f"{type(model).__name__}: use LRUREC_BACKEND=torch"
            )
        if device != "cpu":
            raise ValueError(
                f"the numba backend runs on the CPU, not {device!r}: use LRUREC_BACKEND=torch "
                "or onnx for a GPU"
            )
        model = model.to("cpu").eval()
        super().__init__(model)
        with torch.no_grad():
            packed, layout = pack_weights(kernel_weights(model))
            self._weight_views = unpack_weights(packed, layout)  # for the batched step
            # The torch model's own table (prefill reads it too): 256 MB at 1M × 64. Like the
            # weights above, the column-major copy is a snapshot: the model never changes once
            # it serves.
            self._table = float32_array(model.embedding.weight)  # [v, d]
            self._bias = float32_array(model.item_bias)
            table = torch.from_numpy(self._table)
            small = self._table.nbytes <= COLUMN_TABLE_MAX_BYTES
            self._columns = table.T.contiguous() if small else table.T  # [d, v]
            # The kernels score one row from the copy, or from the table's rows without one.
            self._kernel_columns = (
                self._columns.numpy() if small else np.empty((0, 0), dtype=np.float32)
            )
        self._eps = float(model.embedding_norm.eps)
        self._max_k = len(self._table) - 1  # every item but the padding row 0
        self._packed_weights = (packed, layout, self._eps)
        """The step kernels' arguments after the table: one buffer, its layout, and eps."""
        self._floors: dict[int, tuple[FloatArray, IndexArray]] = {}
        """Per k, the selection's memory of recent k-th best scores (numba_kernels._rank)."""
        self._state_shape = tuple(model.state_shape)
        self._width = model.config.d_model
        self._compile()

    def _compile(self) -> None:
        """Compile (or load from numba's cache) every kernel now: the fused step and top-k, and
        the batched step and selection, for the types the service calls them with, so no
        request pays for it.

        A kernel whose cache file cannot be written (a full disk) raises once, after numba has
        kept it in memory; the run is repeated, at most once per kernel, so start-up survives.
        """
        for attempt in range(len(KERNELS) + 1):
            try:
                for rows in (1, SCORE_BLAS_MIN_ROWS, STEP_BLAS_MIN_ROWS):
                    states = np.zeros((rows, *self._state_shape), dtype=np.float32)
                    hidden, _ = self.step(np.ones(rows, dtype=np.int64), states)
                    self.top_k(hidden, 1, [[1]] * rows)
                    self.step_top_k(np.ones(rows, dtype=np.int64), states, 1, [[1]] * rows)
                return
            except OSError as error:
                if attempt == len(KERNELS):
                    raise
                logger.warning("numba could not cache a kernel (%s); it stays in memory", error)

    @property
    def state_shape(self) -> tuple[int, ...]:
        return self._state_shape

    def _step_inputs(self, items: IndexArray, states: FloatArray) -> tuple[IndexArray, FloatArray]:
        items = _writable(items, INT64)
        states = _writable(states, FLOAT32)
        if items.ndim != 1 or states.shape != (len(items), *self._state_shape):
            raise ValueError(
                f"items {items.shape} and states {states.shape}; expected [b] and "
                f"{['b', *self._state_shape]}"
            )
        return items, states

    def step(self, items: IndexArray, states: FloatArray) -> tuple[FloatArray, FloatArray]:
        items, states = self._step_inputs(items, states)
        hidden = np.empty((len(items), self._width), dtype=np.float32)
        new_states = np.empty_like(states)
        if len(items) >= STEP_BLAS_MIN_ROWS:
            failed = batched_step(
                items, states, hidden, new_states, self._table, self._weight_views, self._eps
            )
        else:
            failed = step_kernel(
                items, states, hidden, new_states, self._table, *self._packed_weights
            )
        if failed >= 0:
            raise IndexError(f"item index {items[failed]} is outside the model's vocabulary")
        return hidden, new_states

    def prefill(self, histories: IndexArray) -> tuple[FloatArray, FloatArray]:
        """Step the kernels through left-padded ``histories [b, t]``, column by column, the
        users with an event in a column together; rows with no event get PyTorch's answer
        (the zero state and the model's output for padding)."""
        histories = np.asarray(histories, dtype=np.int64)
        if histories.ndim != 2:
            raise ValueError(f"histories {histories.shape}; expected [b, t]")
        lengths = (histories > 0).sum(axis=1)
        empty = np.flatnonzero(lengths == 0)
        if len(empty) == len(histories):
            return super().prefill(histories)
        states = np.zeros((len(histories), *self._state_shape), dtype=np.float32)
        hidden = np.zeros((len(histories), self._width), dtype=np.float32)
        columns = np.ascontiguousarray(histories.T)  # one contiguous row of items per column
        starts = histories.shape[1] - lengths  # left-padded: a row's events are its last ones
        first, everyone = int(starts.min()), int(starts.max())
        for column in range(first, len(columns)):
            if column >= everyone:  # every row has an event here: no gathering
                hidden, states = self.step(columns[column], states)
                continue
            rows = np.flatnonzero(starts <= column)
            hidden[rows], states[rows] = self.step(columns[column][rows], states[rows])
        if len(empty):
            hidden[empty], states[empty] = super().prefill(histories[empty])
        return hidden, states

    def step_top_k(
        self, items: IndexArray, states: FloatArray, k: int, exclude: Sequence[Exclusion]
    ) -> tuple[FloatArray, FloatArray, list[tuple[IndexArray, FloatArray]]]:
        """:meth:`step`, then :meth:`top_k` of its hidden vectors: one compiled call for one
        row with ``k`` ≤ :data:`FUSED_MAX_K` (a lone event's whole model work in one
        dispatch), the two calls otherwise (several rows are scored by one BLAS product)."""
        k = max(0, min(k, self._max_k))
        if len(items) >= SCORE_BLAS_MIN_ROWS or not 0 < k <= FUSED_MAX_K:
            hidden, new_states = self.step(items, states)
            return hidden, new_states, self.top_k(hidden, k, exclude)
        items, states = self._step_inputs(items, states)
        rows = len(items)
        if len(exclude) != rows:
            raise ValueError(f"{len(exclude)} exclusion lists for {rows} rows")
        hidden = np.empty((rows, self._width), dtype=np.float32)
        new_states = np.empty_like(states)
        flat, starts = _concatenated(exclude)
        top_items, top_scores, counts = _selection(rows, k)
        step_arguments = (items, states, hidden, new_states, self._table, *self._packed_weights)
        columns = self._kernel_columns
        rank_arguments = (columns, self._bias, flat, starts, k, top_items, top_scores, counts)
        failed = step_top_k_kernel(step_arguments, (*rank_arguments, *self._floors_of(k)))
        if 0 <= failed < rows:
            raise IndexError(f"item index {items[failed]} is outside the model's vocabulary")
        if failed >= rows:
            raise IndexError(f"excluded index outside the vocabulary in row {failed - rows}")
        return hidden, new_states, _ranked(top_items, top_scores, counts, k)

    def scores(self, hidden: FloatArray) -> FloatArray:
        """Scores ``[b, v]``; column 0 is -inf, as the other backends' score paths."""
        scores = self._products(_writable(hidden, FLOAT32))
        scores += self._bias  # in place: one [b, v] array at a time
        scores[:, 0] = -np.inf
        return scores

    def top_k(
        self, hidden: FloatArray, k: int, exclude: Sequence[Exclusion]
    ) -> list[tuple[IndexArray, FloatArray]]:
        """Exact top-k per row; column 0, excluded items and non-finite scores never returned.

        With ``k`` ≤ 32, one row goes through the fused kernel, more through BLAS scores in
        row chunks of at most 16 MB selected by the compiled kernel;
        a larger ``k`` through the BLAS scores and a partial sort, where insertion (O(v·k))
        would be slower. The kernels' selection starts from the k-th best scores of recent
        calls (``_floors``): only its speed depends on them, and a row that lands below them
        is ranked again in full, so results never do; calls from several threads at once
        only make those floors less useful.
        """
        hidden = _writable(hidden, FLOAT32)
        if hidden.ndim != 2 or hidden.shape[1] != self._width:
            raise ValueError(f"hidden of shape {hidden.shape}; expected [b, {self._width}]")
        rows = len(hidden)
        if len(exclude) != rows:
            raise ValueError(f"{len(exclude)} exclusion lists for {rows} rows")
        k = max(0, min(k, self._max_k))
        if k == 0:
            empty = (np.empty(0, dtype=np.int64), np.empty(0, dtype=np.float32))
            return [empty for _ in range(rows)]
        if k > FUSED_MAX_K:
            return self._top_k_partial_sort(hidden, k, exclude)
        flat, starts = _concatenated(exclude)
        top_items, top_scores, counts = _selection(rows, k)
        floors = self._floors_of(k)
        if rows < SCORE_BLAS_MIN_ROWS:
            failed = top_k_kernel(
                hidden, self._table, self._kernel_columns, self._bias, flat, starts, k,
                top_items, top_scores, counts, *floors,
            )  # fmt: skip
        else:
            failed = self._select_blas(
                hidden, flat, starts, k, top_items, top_scores, counts, floors
            )
        if failed >= 0:
            raise IndexError(f"excluded index outside the vocabulary in row {failed}")
        return _ranked(top_items, top_scores, counts, k)

    def _products(self, hidden: FloatArray) -> FloatArray:
        """``hidden [b, d] @ tableᵀ`` as a new ``[b, v]`` array, through torch's BLAS on the
        column-major copy of the table (or its transposed view, for large tables): numpy's
        product took 133 µs for 2 rows of 3,416 items here, this 14 µs."""
        scores: FloatArray = torch.mm(torch.from_numpy(hidden), self._columns).numpy()
        return scores

    def _floors_of(self, k: int) -> tuple[FloatArray, IndexArray]:
        """The selection's memory of recent k-th best scores for ``k`` (``numba_kernels._rank``)."""
        floors = self._floors.get(k)
        if floors is None:  # k ≤ FUSED_MAX_K here: at most 32 pairs of a few bytes
            floors = np.full(FLOOR_ROWS, np.inf, np.float32), np.zeros(1, np.int64)
            self._floors[k] = floors
        return floors

    def _select_blas(
        self,
        hidden: FloatArray,
        flat: IndexArray,
        starts: IndexArray,
        k: int,
        top_items: IndexArray,
        top_scores: FloatArray,
        counts: IndexArray,
        floors: tuple[FloatArray, IndexArray],
    ) -> int:
        """BLAS scores in row chunks of at most 16 MB, each selected by the compiled kernel."""
        chunk = max(1, SCORE_CHUNK_FLOATS // len(self._table))
        for first in range(0, len(hidden), chunk):
            rows = slice(first, first + chunk)
            scores = self._products(hidden[rows])  # the kernel adds the bias
            failed = select_top_k_kernel(
                scores, self._bias, flat, starts[first : first + chunk + 1], k,
                top_items[rows], top_scores[rows], counts[rows], *floors,
            )  # fmt: skip
            if failed >= 0:
                return first + failed
        return -1

    def _top_k_partial_sort(
        self, hidden: FloatArray, k: int, exclude: Sequence[Exclusion]
    ) -> list[tuple[IndexArray, FloatArray]]:
        """Large ``k``: BLAS scores in row chunks, then a partial sort per row."""
        vocab = len(self._table)
        chunk = max(1, SCORE_CHUNK_FLOATS // vocab)
        results = []
        for first in range(0, len(hidden), chunk):
            scores = self.scores(hidden[first : first + chunk])
            scores[~np.isfinite(scores)] = -np.inf  # NaN/inf from bad weights: never ranked
            for offset, excluded in enumerate(exclude[first : first + chunk]):
                indices = np.asarray(excluded, dtype=np.int64)
                if len(indices) and (indices.min() < 0 or indices.max() >= vocab):
                    row = first + offset
                    raise IndexError(f"excluded index outside the vocabulary in row {row}")
                results.append(top_k_numpy(scores[offset], k, indices))
        return results
