"""Training windows use every target once; batches cover every window and respect the budget."""

import numpy as np
import torch

from training.batching import bucket_batches, collate, left_pad, make_windows


def test_windows_use_every_target_once_with_shifted_inputs() -> None:
    sequence = np.arange(1, 12)  # 11 events, max_len 4 → windows of 3, 4, 4 from the end
    windows = make_windows([sequence, np.array([], dtype=np.int64)], max_len=4)
    assert sorted(np.concatenate(windows.labels).tolist()) == sequence.tolist()
    assert [w.tolist() for w in windows.labels] == [[8, 9, 10, 11], [4, 5, 6, 7], [1, 2, 3]]
    assert [w.tolist() for w in windows.inputs] == [[7, 8, 9, 10], [3, 4, 5, 6], [0, 1, 2]]
    assert windows.n_targets == 11


def test_bucketed_batches_cover_all_windows_and_are_deterministic() -> None:
    lengths = np.random.default_rng(0).integers(1, 50, size=200)
    batches = bucket_batches(lengths, batch_size=8, seed=1)
    assert sorted(np.concatenate(batches).tolist()) == list(range(200))
    budget = 8 * lengths.mean()
    assert all(len(b) * lengths[b].max() <= budget or len(b) == 1 for b in batches)
    again = bucket_batches(lengths, batch_size=8, seed=1)
    assert all(np.array_equal(a, b) for a, b in zip(batches, again, strict=True))
    other = bucket_batches(lengths, batch_size=8, seed=2)
    assert any(not np.array_equal(a, b) for a, b in zip(batches, other, strict=False))


def test_collate_left_pads_to_longest_window() -> None:
    windows = make_windows([np.array([5, 6, 7]), np.array([9])], max_len=8)
    inputs, labels = collate(windows, np.array([0, 1]))
    assert inputs.tolist() == [[0, 5, 6], [0, 0, 0]]
    assert labels.tolist() == [[5, 6, 7], [0, 0, 9]]
    assert left_pad([np.array([1, 2, 3])], length=2).tolist() == [[2, 3]]
    assert left_pad([]).shape == (0, 1)
    assert left_pad([]).dtype == torch.long
