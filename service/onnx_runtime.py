"""ONNX Runtime backend (``LRUREC_BACKEND=onnx``): LRURec's step and scoring as exported graphs.

At start-up the artifact's LRURec is exported in memory (:func:`model.export.export_onnx`) to two
graphs, the state graph (items, state → hidden, new_state) and the score graph (hidden → scores),
and each gets an :class:`onnxruntime.InferenceSession`. ONNX Runtime executes the small step graph
with far less per-op overhead than PyTorch eager (see benchmarks/RESULTS.md). History rebuilds
(``prefill``) and the cold-start vector are rare and stay in PyTorch, which computes the same
function (tests/model/test_export.py pins the two).
"""

from collections.abc import Sequence

import numpy as np
import onnxruntime as ort
import torch

from model import Artifact, LRURec
from model.export import export_onnx
from service.runtime import FloatArray, IndexArray, top_k_numpy


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


class OnnxStepper:
    """The :class:`service.runtime.Stepper` interface on ONNX Runtime sessions (LRURec only).

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
        self._model = model.to("cpu").eval()  # export and prefill run on the CPU copy
        options = session_options(threads or torch.get_num_threads())
        providers = providers_for(device)
        self._step = ort.InferenceSession(export_onnx(model, graph="state"), options, providers)
        self._score = ort.InferenceSession(export_onnx(model, graph="score"), options, providers)
        self._state_shape = tuple(model.state_shape)

    @property
    def state_shape(self) -> tuple[int, ...]:
        return self._state_shape

    def step(self, items: IndexArray, states: FloatArray) -> tuple[FloatArray, FloatArray]:
        feeds = {
            "items": np.ascontiguousarray(items, dtype=np.int64),
            "state": np.ascontiguousarray(states, dtype=np.float32),
        }
        hidden, new_states = self._step.run(None, feeds)
        return hidden, new_states

    def prefill(self, histories: IndexArray) -> tuple[FloatArray, FloatArray]:
        with torch.inference_mode():
            hidden, states = self._model.prefill(torch.from_numpy(np.ascontiguousarray(histories)))
        return hidden.float().numpy(), states.float().numpy()

    def cold_start_hidden(self) -> FloatArray:
        with torch.inference_mode():
            return self._model.cold_start_hidden().float().numpy()

    def scores(self, hidden: FloatArray) -> FloatArray:
        """Scores ``[b, v]``; column 0 is -inf (the score graph masks padding)."""
        feeds = {"hidden": np.ascontiguousarray(hidden, dtype=np.float32)}
        scores: FloatArray = self._score.run(None, feeds)[0]
        return scores

    def top_k(
        self, hidden: FloatArray, k: int, exclude: Sequence[Sequence[int]]
    ) -> list[tuple[IndexArray, FloatArray]]:
        scores = self.scores(hidden)
        return [
            top_k_numpy(row, k, excluded) for row, excluded in zip(scores, exclude, strict=True)
        ]
