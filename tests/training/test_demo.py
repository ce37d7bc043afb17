"""The demo artifact ``lrurec serve`` falls back to: built once, cached, and sensible."""

import itertools
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from cli.demo import ensure_demo_artifact, read_catalogue, synthetic_sequences
from model import load_artifact

pytestmark = pytest.mark.slow


def test_catalogue_has_hundreds_of_unique_themed_items() -> None:
    catalogue = read_catalogue()
    assert len(catalogue) >= 200
    assert len({item_id for item_id, _, _ in catalogue}) == len(catalogue)
    assert len({theme for _, _, theme in catalogue}) >= 10


def test_synthetic_sessions_are_deterministic_and_mostly_stay_in_one_theme() -> None:
    themes = [index // 5 for index in range(40)]
    first, again = synthetic_sequences(themes, 50, 1), synthetic_sequences(themes, 50, 1)
    assert all(np.array_equal(a, b) for a, b in zip(first, again, strict=True))
    moves = [(a, b) for s in first for a, b in itertools.pairwise(s)]
    same = sum(themes[a - 1] == themes[b - 1] for a, b in moves) / len(moves)
    assert same > 0.8


def test_demo_artifact_is_built_once_and_recommends_within_the_theme(tmp_path: Path) -> None:
    directory = ensure_demo_artifact(tmp_path / "demo")
    artifact = load_artifact(directory)
    started = time.monotonic()
    assert ensure_demo_artifact(tmp_path / "demo") == directory
    assert time.monotonic() - started < 2.0  # cached: only a load, no training
    assert load_artifact(directory).version == artifact.version
    themes = {item_id: theme for item_id, _, theme in read_catalogue()}
    index = artifact.index_of()
    hiking = [item_id for item_id, theme in themes.items() if theme == "hiking"][:3]
    with torch.inference_mode():
        hidden, _ = artifact.model.prefill(torch.tensor([[index[i] for i in hiking]]))
        scores = artifact.model.score(hidden)[0]
        scores[0] = -torch.inf
    top = [artifact.item_ids[i - 1] for i in scores.topk(5).indices.tolist()]
    assert sum(themes[item_id] == "hiking" for item_id in top) >= 4
    assert artifact.config["item_names"][hiking[0]] == "Trail boots"
