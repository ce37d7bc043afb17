"""ONNX Runtime backend (``LRUREC_BACKEND=onnx``): LRURec's step and ranking as exported graphs.

At start-up the artifact's LRURec is exported in memory (:func:`model.inference.export.export_onnx`)
to three graphs, each with its own :class:`onnxruntime.InferenceSession`: the state graph (items,
state → hidden, new_state), the rank graph (hidden, excluded items, k → exact top-k with the
exclusions applied in-graph) and the score graph (hidden → scores, for the cold-start vector). ONNX
Runtime executes these small graphs with far less per-op overhead than PyTorch eager
(benchmarks/RESULTS.md). Small batches of the step graph go through IO binding with buffers kept per
batch size (:class:`BoundSession`), which skips the per-call conversion of the feed dict. History
rebuilds (``prefill``) and the cold-start vector are rare and stay in PyTorch, which computes the
same function (tests/model/test_export.py pins the two).
"""

import threading
from collections.abc import Callable, Sequence

import numpy as np
import onnxruntime as ort
import torch
from numpy.typing import NDArray

from model import Artifact, LRURec
from model.inference.export import export_onnx
from service.runtimes.protocol import Exclusion, FloatArray, IndexArray, step_then_top_k
from service.runtimes.torch_runtime import TorchRebuilds

MAX_BOUND_BATCH = 16
"""Batch sizes up to this keep their own IO binding (faster at batch 1 and 8 in A/B runs); at
batch 64 copying the inputs and outputs costs more than ``session.run``'s per-call setup."""


def session_options(threads: int) -> ort.SessionOptions:
    """One intra-op pool of ``threads``, sequential execution, every graph optimisation."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return options


def providers_for(device: str) -> list[str]:
    """ONNX Runtime execution providers for the service's ``device`` setting."""
    if device == "cpu":
        return ["CPUExecutionProvider"]
    if device == "cuda" and "CUDAExecutionProvider" in ort.get_available_providers():
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    raise ValueError(
        f"the onnx backend cannot run on {device!r}: onnxruntime offers "
        f"{ort.get_available_providers()}"
    )


_DTYPES = {"tensor(float)": np.float32, "tensor(int64)": np.int64}


class _Binding:
    """Input and output buffers of one batch size, bound once to an ``IOBinding``."""

    def __init__(self, session: ort.InferenceSession, batch: int) -> None:
        self.io = session.io_binding()
        self.inputs = [_buffer(value, batch) for value in session.get_inputs()]
        self.outputs = [_buffer(value, batch) for value in session.get_outputs()]
        for value, array in zip(session.get_inputs(), self.inputs, strict=True):
            self.io.bind_cpu_input(value.name, array)
        for value, array in zip(session.get_outputs(), self.outputs, strict=True):
            self.io.bind_output(value.name, "cpu", 0, array.dtype, array.shape, array.ctypes.data)
        self.run = _bound_runner(session, self.io)


def _bound_runner(session: ort.InferenceSession, io: ort.IOBinding) -> Callable[[], None]:
    """``session.run_with_iobinding(io)``, without the wrapper's per-call WebGPU capture checks.

    The public wrapper (onnxruntime 1.32) asks the native session on every call whether WebGPU
    graph capture is on, a few µs at batch 1; the native call it ends with is used directly when
    the wrapper's attributes are where that version keeps them.
    """
    native, native_io = getattr(session, "_sess", None), getattr(io, "_iobinding", None)
    if native is None or native_io is None or not hasattr(native, "run_with_iobinding"):
        return lambda: session.run_with_iobinding(io)
    run = native.run_with_iobinding
    return lambda: run(native_io, None)


def _buffer(value: ort.NodeArg, batch: int) -> NDArray[np.generic]:
    """A zeroed array for a graph input or output whose only dynamic axis is the first."""
    shape = [batch, *value.shape[1:]]
    if not all(isinstance(size, int) for size in shape):
        raise ValueError(f"{value.name}: only the batch axis may be dynamic, got {value.shape}")
    return np.zeros(shape, dtype=_DTYPES[value.type])


class BoundSession:
    """Runs a session on CPU through IO binding, with buffers reused per batch size.

    ``session.run`` converts every feed and allocates every output on each call; at batch 1 that
    is a measurable share of a step (benchmarks/RESULTS.md). Here the inputs are copied into
    buffers bound once and the outputs are read from bound buffers. :meth:`run` returns copies,
    so results stay valid after the next call; a lock keeps concurrent callers apart. Every axis
    but the first (batch) must be static.

    Args:
        session: a CPU session.
        max_batch: batch sizes up to this get buffers; larger ones fall back to ``session.run``.
    """

    def __init__(self, session: ort.InferenceSession, max_batch: int = MAX_BOUND_BATCH) -> None:
        self._session = session
        self._max_batch = max_batch
        self._names = [value.name for value in session.get_outputs()]
        self._bindings: dict[int, _Binding] = {}
        self._lock = threading.Lock()
        _Binding(session, 1)  # fails now, not on the first event, when an axis is not static

    def run(self, *inputs: NDArray[np.generic]) -> list[NDArray[np.generic]]:
        """Outputs (in graph order) for ``inputs`` (in graph order), batch size from the first."""
        batch = len(inputs[0])
        binding = self._bindings.get(batch)
        if binding is None:
            if batch > self._max_batch:
                return self._run_unbound(inputs)
            with self._lock:
                binding = self._bindings.setdefault(batch, _Binding(self._session, batch))
        if len(inputs) != len(binding.inputs):
            raise ValueError(f"expected {len(binding.inputs)} inputs, got {len(inputs)}")
        with self._lock:
            for buffer, array in zip(binding.inputs, inputs):  # noqa: B905 (checked above)
                if array.shape != buffer.shape or array.dtype != buffer.dtype:
                    # session.run would refuse these; a buffer copy would broadcast or cast.
                    raise ValueError(
                        f"input {array.dtype}{list(array.shape)} does not match the graph's "
                        f"{buffer.dtype}{list(buffer.shape)}"
                    )
                buffer[...] = array  # cheaper than np.copyto at this size
            binding.run()
            return [output.copy() for output in binding.outputs]

    def _run_unbound(self, inputs: tuple[NDArray[np.generic], ...]) -> list[NDArray[np.generic]]:
        names = [value.name for value in self._session.get_inputs()]
        outputs: list[NDArray[np.generic]] = self._session.run(
            self._names, dict(zip(names, inputs, strict=True))
        )
        return outputs


class OnnxStepper(TorchRebuilds):
    """The :class:`service.runtimes.protocol.Stepper` interface on ONNX Runtime sessions (LRURec
    only).

    Args:
        artifact: a loaded LRURec artifact.
        device: ``"cpu"``, or ``"cuda"`` when onnxruntime has the CUDA provider.
        threads: ONNX Runtime intra-op threads; default: torch's thread count, which the service
            sets from ``LRUREC_TORCH_THREADS`` before building the backend.
    """

    def __init__(self, artifact: Artifact, device: str = "cpu", threads: int | None = None) -> None:
        model = artifact.model
        if not isinstance(model, LRURec):
            raise ValueError(
                f"the onnx backend serves LRURec artifacts; this one is "
                f"{type(model).__name__}: use LRUREC_BACKEND=torch"
            )
        model = model.to("cpu").eval()  # export and prefill run on the CPU copy
        super().__init__(model)
        options = session_options(threads or torch.get_num_threads())
        providers = providers_for(device)
        state = export_onnx(model, graph="state")
        self._step_session = ort.InferenceSession(state, options, providers)
        on_cpu = providers[0] == "CPUExecutionProvider"
        self._bound = BoundSession(self._step_session) if on_cpu else None
        self._rank = ort.InferenceSession(export_onnx(model, graph="rank"), options, providers)
        self._score = ort.InferenceSession(export_onnx(model, graph="score"), options, providers)
        self._state_shape = tuple(model.state_shape)
        self._vocab = model.config.vocab_size

    @property
    def state_shape(self) -> tuple[int, ...]:
        return self._state_shape

    def step(self, items: IndexArray, states: FloatArray) -> tuple[FloatArray, FloatArray]:
        items = np.asarray(items, dtype=np.int64)
        states = np.asarray(states, dtype=np.float32)
        if self._bound is not None:
            hidden, new_states = self._bound.run(items, states)
        else:
            feeds = {"items": items, "state": np.ascontiguousarray(states)}
            hidden, new_states = self._step_session.run(None, feeds)
        return hidden.astype(np.float32, copy=False), new_states.astype(np.float32, copy=False)

    def scores(self, hidden: FloatArray) -> FloatArray:
        """Scores ``[b, v]``; column 0 is -inf (the score graph masks padding)."""
        feeds = {"hidden": np.ascontiguousarray(hidden, dtype=np.float32)}
        scores: FloatArray = self._score.run(None, feeds)[0]
        return scores

    def top_k(
        self, hidden: FloatArray, k: int, exclude: Sequence[Exclusion]
    ) -> list[tuple[IndexArray, FloatArray]]:
        """Exact top-k per row by the rank graph; excluded items are masked in-graph."""
        width = max((len(excluded) for excluded in exclude), default=0)
        padded = np.zeros((len(exclude), width), dtype=np.int64)  # 0 is padding: already -inf
        for row, excluded in enumerate(exclude):
            padded[row, : len(excluded)] = excluded
        feeds = {
            "hidden": np.ascontiguousarray(hidden, dtype=np.float32),
            "exclude": padded,
            "k": np.array([max(0, min(k, self._vocab))], dtype=np.int64),
        }
        top_scores, top_items = self._rank.run(None, feeds)
        results = []
        for row_scores, row_items in zip(top_scores, top_items, strict=True):
            keep = np.isfinite(row_scores)  # fewer than k items left after the exclusions
            results.append((row_items[keep].astype(np.int64), row_scores[keep]))
        return results

    def step_top_k(
        self, items: IndexArray, states: FloatArray, k: int, exclude: Sequence[Exclusion]
    ) -> tuple[FloatArray, FloatArray, list[tuple[IndexArray, FloatArray]]]:
        return step_then_top_k(self, items, states, k, exclude)
