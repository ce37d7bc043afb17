"""Small synthetic data and a tiny training config for the trainer tests."""

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from training.config import ModelSpec, TrainConfig

REPO = Path(__file__).resolve().parents[2]
ML1M_SEQUENCES = REPO.parent / "shared" / "data" / "ml-1m" / "sequences.txt"


@pytest.fixture(autouse=True, scope="session")
def one_thread() -> Iterator[None]:
    """Tiny models: a second OpenMP thread only adds wake-up overhead (measured 3x slower)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def walk_sequences(n_users: int, n_items: int, seed: int) -> list[np.ndarray]:
    """Users who mostly step to the next item id (learnable), 8 to 24 events each."""
    rng = np.random.default_rng(seed)
    sequences = []
    for _ in range(n_users):
        position = int(rng.integers(n_items))
        events = []
        for _ in range(int(rng.integers(8, 25))):
            position = (
                position + (1 if rng.random() < 0.8 else int(rng.integers(n_items)))
            ) % n_items
            events.append(position + 1)
        sequences.append(np.array(events, dtype=np.int64))
    return sequences


@pytest.fixture
def walks() -> list[np.ndarray]:
    return walk_sequences(n_users=80, n_items=30, seed=0)


@pytest.fixture
def tiny_train_config() -> TrainConfig:
    return TrainConfig(
        model=ModelSpec(d_model=8, n_layers=1, dropout=0.1, max_len=16),
        batch_size=16,
        lr=5e-3,
        schedule="constant",  # resume tests stop early with a smaller max_steps
        warmup_steps=0,
        eval_every=5,
        max_steps=20,
        seed=3,
        precision="fp32",  # runs compared exactly must not depend on the host's bf16
    )


@pytest.fixture
def sequences_file(tmp_path: Path, walks: list[np.ndarray]) -> Path:
    """The walks in the ``sequences`` format, users ``u1``…, items ``i1``…."""
    path = tmp_path / "walks.txt"
    lines = [f"u{user} " + " ".join(f"i{item}" for item in seq) for user, seq in enumerate(walks)]
    path.write_text("\n".join(lines) + "\n")
    return path
