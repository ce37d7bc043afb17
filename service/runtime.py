"""Model compute behind one small interface, so backends (torch, onnxruntime) are interchangeable.

Arrays cross the boundary as numpy (float32 states and hidden vectors, int64 item indices), so a
backend never leaks its tensor type into the engine. Dimensions: b users, t events, d model
width, v = n_items + 1 score columns (column 0 is padding and is never recommended).
"""

import logging
from collections.abc import Callable, Sequence
from typing import Protocol, cast

import numpy as np
import torch
from numpy.typing import NDArray
from torch import nn

from model import Artifact, LRURec

logger = logging.getLogger("service")

FloatArray = NDArray[np.float32]
IndexArray = NDArray[np.int64]
Exclusion = Sequence[int] | IndexArray
"""Item indices that one user must not be recommended."""

NOTHING: IndexArray = np.empty(0, dtype=np.int64)
"""No exclusions (read only)."""
NOTHING.flags.writeable = False


def appended(indices: IndexArray, index: int) -> IndexArray:
    """``indices`` with ``index`` after them (``np.append`` costs a few µs more)."""
    out = np.empty(len(indices) + 1, dtype=np.int64)
    out[:-1] = indices
    out[-1] = index
    return out


class Stepper(Protocol):
    """What the engine needs from a model: one recurrent step, a rebuild, and top-k scoring."""

    @property
    def state_shape(self) -> tuple[int, ...]:
        """Shape of one user's state (no batch dimension)."""
        ...

    def step(self, items: IndexArray, states: FloatArray) -> tuple[FloatArray, FloatArray]:
        """One event per user: items ``[b]`` (non-zero), states ``[b, *state_shape]``.

        Returns:
            ``(hidden [b, d], new_states [b, *state_shape])``.
        """
        ...

    def prefill(self, histories: IndexArray) -> tuple[FloatArray, FloatArray]:
        """Rebuild from left-padded histories ``[b, t]`` → ``(hidden [b, d], states)``."""
        ...

    def cold_start_hidden(self) -> FloatArray:
        """Hidden ``[d]`` of a user with no events."""
        ...

    def scores(self, hidden: FloatArray) -> FloatArray:
        """Item scores ``[b, v]`` of hidden ``[b, d]``; column 0 (padding) is included, and some
        backends set it to -inf: callers mask it either way."""
        ...

    def top_k(
        self, hidden: FloatArray, k: int, exclude: Sequence[Exclusion]
    ) -> list[tuple[IndexArray, FloatArray]]:
        """Best ``k`` item indices per user, never 0 nor an excluded index, best first."""
        ...

    def step_top_k(
        self, items: IndexArray, states: FloatArray, k: int, exclude: Sequence[Exclusion]
    ) -> tuple[FloatArray, FloatArray, list[tuple[IndexArray, FloatArray]]]:
        """:meth:`step`, then :meth:`top_k` of the new hidden vectors (one call where the
        backend fuses them): ``(hidden [b, d], new_states, best k per user)``."""
        ...


def step_then_top_k(
    stepper: Stepper, items: IndexArray, states: FloatArray, k: int,
    exclude: Sequence[Exclusion],
) -> tuple[FloatArray, FloatArray, list[tuple[IndexArray, FloatArray]]]:  # fmt: skip
    """:meth:`Stepper.step_top_k` as two calls, for backends without a fused one."""
    hidden, new_states = stepper.step(items, states)
    return hidden, new_states, stepper.top_k(hidden, k, exclude)


def top_k_numpy(
    scores: FloatArray, k: int, exclude: Sequence[int] | IndexArray
) -> tuple[IndexArray, FloatArray]:
    """Best ``k`` of one score vector ``[v]`` without column 0, the excluded indices and
    non-finite scores; best first, ties by the lower index (as the other backends' top-k).

    Returns fewer than ``k`` items when fewer are left. Used for cold starts (a precomputed
    vector) and by backends without a fused top-k.
    """
    masked = np.where(np.isfinite(scores), scores, -np.inf).astype(np.float32, copy=False)
    masked[0] = -np.inf
    if len(exclude):
        masked[np.asarray(exclude, dtype=np.int64)] = -np.inf
    k = min(k, int(np.isfinite(masked).sum()))
    if k <= 0:
        return np.empty(0, dtype=np.int64), np.empty(0, dtype=np.float32)
    chosen = np.argpartition(-masked, k - 1)[:k]
    cut = masked[chosen].min()
    if np.count_nonzero(masked == cut) > np.count_nonzero(masked[chosen] == cut):
        # More items tie at the cut than were taken: take the lowest indices among them.
        above = np.flatnonzero(masked > cut)
        chosen = np.concatenate([above, np.flatnonzero(masked == cut)[: k - len(above)]])
    chosen = np.sort(chosen)  # index order, so the stable sort breaks ties by index
    order = chosen[np.argsort(-masked[chosen], kind="stable")]
    return order.astype(np.int64), masked[order]


class TorchStepper:
    """PyTorch backend: the artifact's module under ``torch.inference_mode`` (no autograd)."""

    def __init__(self, artifact: Artifact, device: str = "cpu") -> None:
        self._model = artifact.model
        self._device = torch.device(device)
        cast(nn.Module, self._model).to(self._device).eval()
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


StepperFactory = Callable[[Artifact, str], Stepper]


def _onnx_stepper(artifact: Artifact, device: str) -> Stepper:
    from service.onnx_runtime import OnnxStepper  # imports this module, so imported lazily

    return OnnxStepper(artifact, device)


def _numba_stepper(artifact: Artifact, device: str) -> Stepper:
    from service.numba_runtime import NumbaStepper  # compiles kernels: only when chosen

    return NumbaStepper(artifact, device)


BACKENDS: dict[str, StepperFactory] = {
    "torch": TorchStepper,
    "onnx": _onnx_stepper,
    "numba": _numba_stepper,
}
"""Backend name (``LRUREC_BACKEND``) → factory. A new backend registers one line here."""


def resolve_backend(backend: str, artifact: Artifact, device: str) -> str:
    """The backend ``backend`` stands for: ``auto`` is numba for LRURec on the CPU (the fastest
    per event, benchmarks/RESULTS.md), torch otherwise; any other name is itself."""
    if backend == "auto":
        return "numba" if isinstance(artifact.model, LRURec) and device == "cpu" else "torch"
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; available: auto, {', '.join(BACKENDS)}")
    return backend


def build_stepper(backend: str, artifact: Artifact, device: str) -> Stepper:
    """The configured backend (a :data:`BACKENDS` name or ``auto``) for ``artifact``."""
    return BACKENDS[resolve_backend(backend, artifact, device)](artifact, device)


def build_backend(setting: str, artifact: Artifact, device: str) -> tuple[str, Stepper]:
    """(backend name, stepper) for the ``LRUREC_BACKEND`` setting.

    A backend named explicitly fails start-up if it cannot be built. ``auto`` falls back to
    torch, with a logged warning, when its pick cannot (numba failing to compile on some CPU
    should cost speed, not the service).
    """
    backend = resolve_backend(setting, artifact, device)
    if setting != "auto" or backend == "torch":
        return backend, BACKENDS[backend](artifact, device)
    try:
        return backend, BACKENDS[backend](artifact, device)
    except Exception:
        logger.warning("the %s backend failed to build; auto falls back to torch", backend,
                       exc_info=True)  # fmt: skip
        return "torch", TorchStepper(artifact, device)
