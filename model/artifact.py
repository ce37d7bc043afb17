"""The serving artifact: the contract between the trainer (writes it) and the service (loads it).

A directory holding
    model.safetensors   weights
    config.json         model_type, model_config, model_version (content hash), max_len,
                        data_fingerprint and whatever the trainer adds (metrics, timings)
    items.tsv           ``index<TAB>item_id<TAB>count``: external id and training popularity
                        of each item index 1..n_items (0 is padding and is not listed)
"""

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from model.checkpoint import CONFIG_FILE, WEIGHTS_FILE, load_model, model_config_entry, save_model
from model.protocol import RecurrentRecommender

ITEMS_FILE = "items.tsv"
FORMAT_VERSION = 1


@dataclass(frozen=True)
class Artifact:
    """A loaded artifact. ``item_ids[i - 1]`` is the external id of item index ``i``."""

    model: RecurrentRecommender
    item_ids: list[str]
    popularity: Tensor
    """Training counts per index, ``[n_items + 1]`` float32; index 0 is 0."""
    version: str
    config: dict[str, Any]
    path: Path

    def index_of(self) -> dict[str, int]:
        """External id → item index (1-based)."""
        return {item_id: index for index, item_id in enumerate(self.item_ids, start=1)}


def _write_items(path: Path, item_ids: list[str], popularity: Tensor) -> None:
    lines = ["index\titem_id\tcount"]
    for index, item_id in enumerate(item_ids, start=1):
        if not item_id or any(c in item_id for c in "\t\n\r"):
            raise ValueError(f"item id {item_id!r} is empty or contains a tab or newline")
        lines.append(f"{index}\t{item_id}\t{popularity[index].item():g}")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def _read_items(path: Path) -> tuple[list[str], Tensor]:
    rows = path.read_text(encoding="utf-8").splitlines()
    if not rows or rows[0] != "index\titem_id\tcount":
        raise ValueError(f"{path}: expected the header 'index<TAB>item_id<TAB>count'")
    item_ids: list[str] = []
    counts = [0.0]
    for line_number, row in enumerate(rows[1:], start=2):
        fields = row.split("\t")
        if len(fields) != 3 or fields[0] != str(line_number - 1):
            raise ValueError(f"{path}:{line_number}: malformed row {row!r}")
        item_ids.append(fields[1])
        counts.append(float(fields[2]))
    return item_ids, torch.tensor(counts, dtype=torch.float32)


def content_hash(directory: Path) -> str:
    """Hash of the weights, the model config and the vocabulary: the ``model_version``."""
    digest = hashlib.sha256()
    digest.update((directory / WEIGHTS_FILE).read_bytes())
    config = json.loads((directory / CONFIG_FILE).read_text())
    model_part = {"model_type": config["model_type"], "model_config": config["model_config"]}
    digest.update(json.dumps(model_part, sort_keys=True).encode())
    digest.update((directory / ITEMS_FILE).read_bytes())
    return digest.hexdigest()[:16]


def save_artifact(
    directory: Path | str,
    model: RecurrentRecommender,
    item_ids: list[str],
    popularity: Tensor,
    metadata: dict[str, Any] | None = None,
) -> str:
    """Write a complete artifact and return its ``model_version``.

    Args:
        item_ids: external ids of item indices 1..n_items, in order.
        popularity: ``[n_items + 1]`` counts (index 0 ignored).
        metadata: extra JSON-serialisable keys for ``config.json`` (max_len, data_fingerprint, ...).
    """
    directory = Path(directory)
    n_items = model.config.n_items
    if len(item_ids) != n_items or popularity.shape != (n_items + 1,):
        raise ValueError(
            f"model has {n_items} items but got {len(item_ids)} ids and popularity of shape "
            f"{tuple(popularity.shape)}"
        )
    if len(set(item_ids)) != len(item_ids):
        raise ValueError("item ids must be unique")
    save_model(model, directory)
    _write_items(directory / ITEMS_FILE, item_ids, popularity)
    version = content_hash(directory)
    config = {
        **model_config_entry(model),
        "format_version": FORMAT_VERSION,
        "max_len": model.config.max_len,
        **(metadata or {}),
        "model_version": version,
    }
    (directory / CONFIG_FILE).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    return version


def missing_files(directory: Path) -> list[str]:
    """The files of an artifact that ``directory`` lacks (none: it can be loaded)."""
    return [name for name in (WEIGHTS_FILE, CONFIG_FILE, ITEMS_FILE)
            if not (directory / name).is_file()]  # fmt: skip


def load_artifact(directory: Path | str, device: str = "cpu") -> Artifact:
    """Load an artifact directory written by :func:`save_artifact` (model in eval mode)."""
    directory = Path(directory)
    for name in missing_files(directory):
        raise FileNotFoundError(f"{directory / name} not found: not an artifact directory")
    model = load_model(directory, device=device)
    config: dict[str, Any] = json.loads((directory / CONFIG_FILE).read_text())
    item_ids, popularity = _read_items(directory / ITEMS_FILE)
    if len(item_ids) != model.config.n_items:
        raise ValueError(
            f"{directory / ITEMS_FILE} lists {len(item_ids)} items, the model has "
            f"{model.config.n_items}"
        )
    version = content_hash(directory)
    if config.get("model_version", version) != version:
        raise ValueError(f"{directory}: files do not match the recorded model_version")
    return Artifact(model, item_ids, popularity, version, config, directory)
