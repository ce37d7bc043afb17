"""Model compute behind one small interface, so backends (torch, onnxruntime, numba) are
interchangeable.

Arrays cross the boundary as numpy (float32 states and hidden vectors, int64 item indices), so a
backend never leaks its tensor type into the engine. Dimensions: b users, t events, d model
width, v = n_items + 1 score columns (column 0 is padding and is never recommended).
"""

from collections.abc import Sequence
from typing import Protocol

import numpy as np
from numpy.typing import NDArray

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
