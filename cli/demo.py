"""A small demo artifact, built in seconds from a bundled made-up catalogue, for ``lrurec serve``.

Synthetic users shop inside one theme of ``demo_catalogue.tsv`` at a time and mostly move to the
next item of that theme, so the sequence structure is easy to learn and the recommendations look
sensible (after "Trail boots" come more hiking items). The artifact is cached, keyed by a hash of
the catalogue and the recipe, so it is built once per machine.
"""

import hashlib
import logging
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import torch

from model import load_artifact, save_artifact
from training.config import ModelSpec, TrainConfig
from training.data import split_leave_one_out
from training.pipeline import build
from training.trainer import Trainer

logger = logging.getLogger(__name__)

CATALOGUE = Path(__file__).with_name("demo_catalogue.tsv")
RECIPE_VERSION = "1"  # bump when the synthetic data or training recipe changes
N_USERS = 600
SEED = 7
STEPS = 150


def read_catalogue(path: Path = CATALOGUE) -> list[tuple[str, str, str]]:
    """``(item_id, name, theme)`` rows of the catalogue (header skipped)."""
    rows = [line.split("\t") for line in path.read_text(encoding="utf-8").splitlines()[1:]]
    return [(row[0], row[1], row[2]) for row in rows if len(row) == 3]


def synthetic_sequences(themes: list[int], n_users: int, seed: int) -> list[np.ndarray]:
    """Deterministic users who walk forward through one theme, with occasional jumps.

    Args:
        themes: theme number of item index ``i`` at position ``i - 1``.

    Returns:
        Per-user item indices (1-based), 12 to 40 events each.
    """
    rng = np.random.default_rng(seed)
    members: dict[int, list[int]] = {}
    for index, theme in enumerate(themes, start=1):
        members.setdefault(theme, []).append(index)
    groups = list(members.values())
    sequences = []
    for _ in range(n_users):
        group = groups[rng.integers(len(groups))]
        position = int(rng.integers(len(group)))
        events = []
        for _ in range(int(rng.integers(12, 41))):
            if rng.random() < 0.1:  # an occasional switch to another theme
                group = groups[rng.integers(len(groups))]
                position = int(rng.integers(len(group)))
            else:
                position = (position + int(rng.choice([1, 1, 1, 2]))) % len(group)
            events.append(group[position])
        sequences.append(np.array(events, dtype=np.int64))
    return sequences


def _recipe_hash() -> str:
    digest = hashlib.sha256(CATALOGUE.read_bytes())
    digest.update(f"{RECIPE_VERSION}/{N_USERS}/{SEED}/{STEPS}".encode())
    return digest.hexdigest()[:16]


def _default_directory() -> Path:
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "lrurec" / "demo"


def _is_current(directory: Path) -> bool:
    try:
        return load_artifact(directory).config.get("demo_recipe") == _recipe_hash()
    except (FileNotFoundError, ValueError, KeyError):
        return False


def build_demo_artifact(directory: Path) -> None:
    """Train a tiny LRURec on synthetic sessions and write the artifact to ``directory``."""
    catalogue = read_catalogue()
    theme_names = sorted({theme for _, _, theme in catalogue})
    themes = [theme_names.index(theme) for _, _, theme in catalogue]
    sequences = synthetic_sequences(themes, N_USERS, SEED)
    config = TrainConfig(
        model=ModelSpec(d_model=32, n_layers=1, dropout=0.1, max_len=50),
        batch_size=64,
        lr=5e-3,
        schedule="cosine",
        warmup_steps=10,
        max_steps=STEPS,
        eval_every=STEPS,
        seed=SEED,
    )
    model = build(config, len(catalogue))
    threads = torch.get_num_threads()
    # A model this small runs ~3x faster on one thread (no OpenMP wake-ups per tiny op).
    torch.set_num_threads(1)
    try:
        with tempfile.TemporaryDirectory() as scratch:
            trainer = Trainer(model, split_leave_one_out(sequences), config, Path(scratch))
            result = trainer.fit(show_progress=False)
    finally:
        torch.set_num_threads(threads)
    counts = np.bincount(np.concatenate(sequences), minlength=len(catalogue) + 1)
    metadata = {
        "demo_recipe": _recipe_hash(),
        "data_source": "synthetic demo sessions over cli/demo_catalogue.tsv",
        "validation": result.history[-1],
        "item_names": {item_id: name for item_id, name, _ in catalogue},
    }
    item_ids = [item_id for item_id, _, _ in catalogue]
    popularity = torch.from_numpy(counts.astype(np.float32))
    save_artifact(directory, model, item_ids, popularity, metadata)


def ensure_demo_artifact(directory: Path | None = None) -> Path:
    """The demo artifact's directory, building it first if it is missing or stale.

    Args:
        directory: where to keep it; default ``$XDG_CACHE_HOME/lrurec/demo`` (``~/.cache``).

    Returns:
        A directory that :func:`model.load_artifact` loads.
    """
    target = Path(directory) if directory is not None else _default_directory()
    if _is_current(target):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    logger.info("building the demo artifact in %s (a few seconds)", target)
    # Build beside the target and rename, so concurrent callers never see a partial artifact.
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        build_demo_artifact(staging)
        if _is_current(target):  # another process finished first
            return target
        shutil.rmtree(target, ignore_errors=True)
        staging.rename(target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target
