"""Exact top-k for large catalogues (``LRUREC_QUANTIZED_SCORING``): int8 stage 1 in onnxruntime.

:class:`model.inference.quantized_scoring.TwoStageTopK` finds the exact top-k by scanning an int8
copy of the item table and re-scoring the few candidates in float32; this module supplies its fast
kernel (onnxruntime ``MatMulInteger``, uint8 × uint8 → int32 with the table as a constant
initializer, which onnxruntime pre-packs) and wraps any :class:`service.runtimes.protocol.Stepper`
so its ``top_k`` goes through it. uint8 × uint8 rather than uint8 × int8: onnxruntime's AVX2 u8×s8
kernel sums pairs of products in saturating int16 (measured wrong on this machine at full range),
u8×u8 is exact. On 1M items it reads 65 MB per query instead of 256 MB (benchmarks/RESULTS.md).

Resident memory: the model's float32 table (needed for stage 2 and the fallback, shared, not
copied), the uint8 codes (``(d + 1) / (4 d)`` of it, about 65 MB at 1M × 64) plus onnxruntime's
pre-packed copy of them, and one int32 score buffer of at most ``buffer_bytes``.
"""

import logging
import tempfile
import threading
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
from numpy.typing import NDArray
from onnx import TensorProto, helper, numpy_helper

from model import Artifact
from model.inference.quantized_scoring import TwoStageTopK
from model.inference.quantized_table import ZERO_POINT, QuantizedTable, reference_scores
from service import telemetry
from service.runtimes.protocol import Exclusion, FloatArray, IndexArray, Stepper, step_then_top_k
from service.settings import Settings

logger = logging.getLogger("service")

OPSET = 17
CHECK_COLUMNS = 4096
"""Columns compared with the reference kernel when the onnxruntime kernel is built."""


def kernel_graph(quantized: QuantizedTable) -> bytes:
    """``scores = MatMulInteger(codes [g, D], table codes [D, n_pad], 128, 128)``, int32."""
    width, n_pad = quantized.codes.shape
    zero = np.array(ZERO_POINT, dtype=np.uint8)
    graph = helper.make_graph(
        [helper.make_node("MatMulInteger", ["codes", "table", "zero", "zero"], ["scores"])],
        "quantized_scores",
        [helper.make_tensor_value_info("codes", TensorProto.UINT8, ["rows", width])],
        [helper.make_tensor_value_info("scores", TensorProto.INT32, ["rows", n_pad])],
        [numpy_helper.from_array(quantized.codes, "table"), numpy_helper.from_array(zero, "zero")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = 9  # what this onnxruntime reads; the opset decides the operators
    return bytes(model.SerializeToString())


class OnnxIntKernel:
    """The ``IntKernel`` on one onnxruntime session, writing into one reused buffer.

    Args:
        quantized: the table.
        rows: most rows per call (the buffer is ``rows × n_pad`` int32).
        threads: onnxruntime intra-op threads.
    """

    def __init__(self, quantized: QuantizedTable, rows: int, threads: int = 1) -> None:
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        # From a file, not from bytes: onnxruntime's Python session keeps model bytes it was
        # given for its lifetime (another full copy of the table: measured +65 MB at 1M items).
        with tempfile.TemporaryDirectory() as directory:
            path = Path(directory) / "quantized_scores.onnx"
            path.write_bytes(kernel_graph(quantized))
            self._session = ort.InferenceSession(str(path), options, ["CPUExecutionProvider"])
        self._inputs = np.empty((rows, quantized.codes.shape[0]), dtype=np.uint8)
        self._buffer = np.empty((rows, quantized.codes.shape[1]), dtype=np.int32)
        self._bindings: dict[int, ort.IOBinding] = {}
        self._check(quantized)

    def _binding(self, rows: int) -> ort.IOBinding:
        """Input and output bound once per row count to the persistent buffers (saves ~0.1 ms)."""
        binding = self._session.io_binding()
        codes, out = self._inputs[:rows], self._buffer[:rows]
        binding.bind_input("codes", "cpu", 0, np.uint8, codes.shape, codes.ctypes.data)
        binding.bind_output("scores", "cpu", 0, np.int32, out.shape, out.ctypes.data)
        return binding

    def __call__(self, codes: NDArray[np.uint8]) -> NDArray[np.int32]:
        rows = codes.shape[0]
        binding = self._bindings.get(rows)
        if binding is None:
            binding = self._bindings[rows] = self._binding(rows)
        self._inputs[:rows] = codes
        self._session.run_with_iobinding(binding)
        return self._buffer[:rows]

    def _check(self, quantized: QuantizedTable) -> None:
        """Refuse a kernel that is not exact on this CPU (extreme and random queries)."""
        generator = np.random.default_rng(0)
        codes = generator.integers(1, 256, size=(3, quantized.codes.shape[0]), dtype=np.uint8)
        codes[0], codes[1] = 255, 1
        codes = codes[: self._buffer.shape[0]]
        width = min(CHECK_COLUMNS, quantized.codes.shape[1])
        got = self(codes)[:, :width]
        head = replace(quantized, codes=quantized.codes[:, :width])
        # And a table of extreme codes (±127), where a saturating kernel would go wrong.
        extremes = np.where(generator.random((codes.shape[1], 64)) < 0.5, 1, 255).astype(np.uint8)
        probe = replace(quantized, codes=extremes)
        session = ort.InferenceSession(kernel_graph(probe), providers=["CPUExecutionProvider"])
        (probe_scores,) = session.run(None, {"codes": codes})
        if not (
            np.array_equal(got, reference_scores(codes, head))
            and np.array_equal(probe_scores, reference_scores(codes, probe))
        ):
            raise RuntimeError("onnxruntime MatMulInteger is not exact on this CPU")


def score_tables(artifact: Artifact) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The ``(table [v, d], bias [v] | None)`` of ``model.score``, checked against it."""
    model = artifact.model
    embedding = getattr(model, "embedding", None)
    if not isinstance(embedding, torch.nn.Embedding):
        raise ValueError(f"{type(model).__name__} has no item embedding table to quantise")
    table = embedding.weight.detach().to("cpu", torch.float32)
    bias = getattr(model, "item_bias", None)
    bias = None if bias is None else bias.detach().to("cpu", torch.float32)
    probe = torch.randn(4, table.shape[1], generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        scores = model.score(probe.to(table.device)).to("cpu")
    expected = probe @ table.T + (0 if bias is None else bias)
    if not torch.allclose(scores, expected, rtol=1e-4, atol=1e-4):
        raise ValueError(
            f"{type(model).__name__}.score is not hidden @ embeddingᵀ (+ item_bias): "
            "set LRUREC_QUANTIZED_SCORING=off"
        )
    return table, bias


class QuantizedStepper:
    """A :class:`service.runtimes.protocol.Stepper` whose ``top_k`` is the exact two-stage top-k.

    Everything else is delegated to ``inner``. Calls are serialised by a lock (one score buffer).
    """

    def __init__(self, inner: Stepper, artifact: Artifact, threads: int = 1) -> None:
        self._inner = inner
        table, bias = score_tables(artifact)
        self.scorer = TwoStageTopK(
            table, bias, kernel=lambda quantized, rows: OnnxIntKernel(quantized, rows, threads)
        )
        self._lock = threading.Lock()

    @property
    def state_shape(self) -> tuple[int, ...]:
        return self._inner.state_shape

    def step(self, items: IndexArray, states: FloatArray) -> tuple[FloatArray, FloatArray]:
        return self._inner.step(items, states)

    def prefill(self, histories: IndexArray) -> tuple[FloatArray, FloatArray]:
        return self._inner.prefill(histories)

    def cold_start_hidden(self) -> FloatArray:
        return self._inner.cold_start_hidden()

    def scores(self, hidden: FloatArray) -> FloatArray:
        return self._inner.scores(hidden)

    def top_k(
        self, hidden: FloatArray, k: int, exclude: Sequence[Exclusion]
    ) -> list[tuple[IndexArray, FloatArray]]:
        stats = self.scorer.stats
        excluded_lists = [np.asarray(excluded, dtype=np.int64).tolist() for excluded in exclude]
        with self._lock, torch.inference_mode():
            rows, fallbacks = stats.rows, stats.fallbacks
            values, indices = self.scorer(torch.from_numpy(np.array(hidden)), k, excluded_lists)
            fell_back = stats.fallbacks - fallbacks
            telemetry.QUANTIZED_TWO_STAGE.inc(stats.rows - rows - fell_back)
            telemetry.QUANTIZED_FALLBACK.inc(fell_back)
        results = []
        for row_values, row_indices in zip(values.numpy(), indices.numpy(), strict=True):
            keep = np.isfinite(row_values)  # fewer than k items left after the exclusions
            results.append((row_indices[keep].astype(np.int64), row_values[keep]))
        return results

    def step_top_k(
        self, items: IndexArray, states: FloatArray, k: int, exclude: Sequence[Exclusion]
    ) -> tuple[FloatArray, FloatArray, list[tuple[IndexArray, FloatArray]]]:
        return step_then_top_k(self, items, states, k, exclude)


def with_quantized_scoring(stepper: Stepper, artifact: Artifact, settings: Settings) -> Stepper:
    """``stepper`` with the exact int8 two-stage top-k when ``settings`` ask for it.

    ``auto`` turns it on from ``settings.quantized_min_items`` items, on the CPU only.
    """
    mode, n_items = settings.quantized_scoring, len(artifact.item_ids)
    if mode == "off" or (mode == "auto" and n_items < settings.quantized_min_items):
        return stepper
    if settings.device != "cpu":
        if mode == "on":
            raise ValueError("LRUREC_QUANTIZED_SCORING=on needs LRUREC_DEVICE=cpu")
        return stepper
    wrapped = QuantizedStepper(stepper, artifact, settings.torch_threads)
    codes = wrapped.scorer.quantized.codes
    logger.info(
        "quantized scoring on: %d items, int8 codes %.1f MB, %d outliers scored exactly",
        n_items, codes.nbytes / 1e6, wrapped.scorer.quantized.outliers.shape[0],
    )  # fmt: skip
    return wrapped
