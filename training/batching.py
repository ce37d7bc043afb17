"""Training windows and length-bucketed batches.

Every training target is used exactly once per epoch. A user's training sequence ``s`` becomes
inputs ``[0, s_0, …, s_{n-2}]`` and labels ``[s_0, …, s_{n-1}]`` (the first item is predicted
from the padding state, as in the official code, which is what trains the cold-start output),
cut from the end into windows of at most ``max_len``. The official code instead keeps only the
last ``max_len`` labels of users with ``max_len < n < 2·max_len`` (reference A4), losing ~13% of
ML-1M's targets.

Batches group windows of similar length, so a batch is padded only to its longest window, and
hold about ``batch_size × mean window length`` tokens, so every step costs about the same and
each target carries the same weight as with uniformly random batches of ``batch_size`` windows.
"""

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor


@dataclass(frozen=True)
class Windows:
    """Ragged training windows: ``inputs[j]`` and ``labels[j]`` have the same length."""

    inputs: list[np.ndarray]
    labels: list[np.ndarray]

    @property
    def lengths(self) -> np.ndarray:
        return np.array([len(x) for x in self.labels], dtype=np.int64)

    @property
    def n_targets(self) -> int:
        return int(self.lengths.sum())


def make_windows(train: list[np.ndarray], max_len: int) -> Windows:
    """Cut each training sequence into next-item windows of at most ``max_len``.

    Args:
        train: per-user item indices in time order.
        max_len: the model's maximum input length.
    """
    inputs: list[np.ndarray] = []
    labels: list[np.ndarray] = []
    for sequence in train:
        if len(sequence) == 0:
            continue
        shifted = np.concatenate([[0], sequence[:-1]]).astype(np.int64)
        for end in range(len(sequence), 0, -max_len):
            start = max(0, end - max_len)
            inputs.append(shifted[start:end])
            labels.append(sequence[start:end].astype(np.int64))
    return Windows(inputs, labels)


def bucket_batches(lengths: np.ndarray, batch_size: int, seed: int) -> list[np.ndarray]:
    """Group window indices of similar length into batches of ~``batch_size × mean`` tokens.

    Windows are sorted by length (random order among equal lengths), cut into consecutive
    batches by token budget, and the batch order is shuffled. Deterministic in ``seed``.

    Args:
        lengths: ``[w]`` window lengths.
        batch_size: windows per batch at the mean length.
        seed: e.g. ``base_seed + epoch``.

    Returns:
        Arrays of window indices, one per batch.
    """
    rng = np.random.default_rng(seed)
    order = np.lexsort((rng.random(len(lengths)), lengths))
    batches = pack_by_tokens(order, lengths, batch_size * float(lengths.mean()))
    return [batches[i] for i in rng.permutation(len(batches))]


def pack_by_tokens(order: np.ndarray, lengths: np.ndarray, budget: float) -> list[np.ndarray]:
    """Cut ``order`` (indices sorted by ascending length) into batches of ≤ ``budget`` tokens.

    A batch costs (rows × its longest row) once padded; sorted, the newest row is the longest.
    A single row longer than the budget still forms its own batch.
    """
    batches: list[np.ndarray] = []
    current: list[int] = []
    for index in order.tolist():
        if current and (len(current) + 1) * max(int(lengths[index]), 1) > budget:
            batches.append(np.array(current, dtype=np.int64))
            current = []
        current.append(index)
    if current:
        batches.append(np.array(current, dtype=np.int64))
    return batches


def left_pad(rows: list[np.ndarray], length: int | None = None) -> Tensor:
    """Stack ragged rows into ``LongTensor[b, length]``, right-aligned, left-padded with 0."""
    width = length if length is not None else max((len(r) for r in rows), default=1)
    out = np.zeros((len(rows), max(width, 1)), dtype=np.int64)
    for row_index, row in enumerate(rows):
        tail = row[-width:] if width else row[:0]
        if len(tail):
            out[row_index, -len(tail) :] = tail
    return torch.from_numpy(out)


def collate(windows: Windows, batch: np.ndarray) -> tuple[Tensor, Tensor]:
    """``(inputs, labels)``, each ``LongTensor[b, L]`` left-padded to the batch's longest window."""
    return (
        left_pad([windows.inputs[j] for j in batch]),
        left_pad([windows.labels[j] for j in batch]),
    )
