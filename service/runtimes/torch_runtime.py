"""PyTorch backend (``LRUREC_BACKEND=torch``): any model, on the CPU or CUDA."""

from collections.abc import Sequence
from typing import cast

import numpy as np
import torch
from numpy.typing import NDArray
from torch import nn

from model import Artifact, LRURec, RecurrentRecommender
from model.inference.folded import FoldedLRURec
from service.runtimes.protocol import Exclusion, FloatArray, IndexArray, step_then_top_k


class TorchStepper:
    """PyTorch backend: the artifact's module under ``torch.inference_mode`` (no autograd);
    an LRURec runs in its folded form (:class:`model.inference.folded.FoldedLRURec`), built once
    here from the loaded weights."""

    def __init__(self, artifact: Artifact, device: str = "cpu") -> None:
        self._device = torch.device(device)
        module = cast(nn.Module, artifact.model).to(self._device).eval()
        self._model: RecurrentRecommender | FoldedLRURec = (
            FoldedLRURec.from_model(module) if isinstance(module, LRURec) else artifact.model
        )
        self._state_shape = tuple(self._model.state_shape)

    @property
    def state_shape(self) -> tuple[int, ...]:
        return self._state_shape

    def _tensor(self, array: NDArray[np.generic]) -> torch.Tensor:
        # States decoded from Redis bytes are read-only views; torch wants writable memory.
        if not array.flags.writeable or not array.flags.c_contiguous:
            array = np.array(array, order="C")
        return torch.from_numpy(array).to(self._device)

    @staticmethod
    def _numpy(tensor: torch.Tensor) -> FloatArray:
        return tensor.detach().to("cpu", torch.float32).numpy()

    def step(self, items: IndexArray, states: FloatArray) -> tuple[FloatArray, FloatArray]:
        with torch.inference_mode():
            hidden, new_states = self._model.step(self._tensor(items), self._tensor(states))
        return self._numpy(hidden), self._numpy(new_states)

    def prefill(self, histories: IndexArray) -> tuple[FloatArray, FloatArray]:
        with torch.inference_mode():
            hidden, states = self._model.prefill(self._tensor(histories))
        return self._numpy(hidden), self._numpy(states)

    def cold_start_hidden(self) -> FloatArray:
        with torch.inference_mode():
            return self._numpy(self._model.cold_start_hidden())

    def scores(self, hidden: FloatArray) -> FloatArray:
        with torch.inference_mode():
            return self._numpy(self._model.score(self._tensor(hidden)))

    def top_k(
        self, hidden: FloatArray, k: int, exclude: Sequence[Exclusion]
    ) -> list[tuple[IndexArray, FloatArray]]:
        with torch.inference_mode():
            scores = self._model.score(self._tensor(hidden))  # [b, v]
            scores[:, 0] = -torch.inf
            for row, excluded in enumerate(exclude):
                if len(excluded):
                    scores[row, self._tensor(np.asarray(excluded, dtype=np.int64))] = -torch.inf
            width = min(k, scores.shape[1] - 1)
            values, indices = torch.topk(scores, width, dim=1)  # [b, width], sorted
        results = []
        for row_values, row_indices in zip(
            values.cpu().numpy(), indices.cpu().numpy(), strict=True
        ):
            keep = np.isfinite(row_values)  # fewer than k items left after the exclusions
            results.append((row_indices[keep].astype(np.int64), row_values[keep]))
        return results

    def step_top_k(
        self, items: IndexArray, states: FloatArray, k: int, exclude: Sequence[Exclusion]
    ) -> tuple[FloatArray, FloatArray, list[tuple[IndexArray, FloatArray]]]:
        return step_then_top_k(self, items, states, k, exclude)


class TorchRebuilds:
    """``prefill`` and ``cold_start_hidden`` in PyTorch on the CPU, for backends that compile
    only the step and the ranking: rebuilds are rare, and the torch model computes the same
    function (tests pin each backend against it).

    Args:
        model: the artifact's model, on the CPU, in eval mode.
    """

    def __init__(self, model: LRURec) -> None:
        self._model = model

    def prefill(self, histories: IndexArray) -> tuple[FloatArray, FloatArray]:
        with torch.inference_mode():
            hidden, states = self._model.prefill(torch.from_numpy(np.ascontiguousarray(histories)))
        return hidden.float().numpy(), states.float().numpy()

    def cold_start_hidden(self) -> FloatArray:
        with torch.inference_mode():
            hidden: FloatArray = self._model.cold_start_hidden().float().numpy()
        return hidden
