"""Warm start (``lrurec train --init-from ARTIFACT``): continue from a served model on new data.

The vocabulary is the artifact's, extended with the items new in the data: an old item keeps
its row (mapped by its external id, not its position), a new item gets a freshly initialised
row, and an old item absent from the new data keeps its row too. Every other weight is the
artifact's. The architecture comes from the artifact.
"""

import logging
from pathlib import Path
from typing import cast

import torch
from torch import nn

from model import Artifact, RecurrentRecommender, load_artifact
from model.registry import build_model
from training.config import ModelSpec
from training.data import Dataset, RawSequences, encode_with_vocabulary, id_sort_key

logger = logging.getLogger(__name__)


class WarmStartError(ValueError):
    """The artifact cannot seed this run (missing, or its architecture conflicts)."""


def load_seed(path: Path) -> Artifact:
    try:
        return load_artifact(path)
    except (OSError, ValueError, KeyError) as error:
        raise WarmStartError(f"--init-from {path}: not a loadable artifact ({error})") from None


def model_spec(artifact: Artifact) -> ModelSpec:
    """The architecture of ``artifact`` as a :class:`ModelSpec` (dropout included)."""
    config = artifact.model.config.to_dict()
    known = {"n_items", "d_model", "n_layers", "dropout", "max_len"}
    return ModelSpec(
        model_type=str(artifact.config["model_type"]),
        d_model=int(config["d_model"]),
        n_layers=int(config["n_layers"]),
        dropout=float(config["dropout"]),
        max_len=int(config["max_len"]),
        extra={key: value for key, value in config.items() if key not in known},
    )


def check_compatible(asked: ModelSpec, default: ModelSpec, seed: ModelSpec) -> None:
    """Refuse architecture options that were set (differ from the defaults) and disagree with
    the artifact's."""
    for field in ("model_type", "d_model", "n_layers", "max_len"):
        value = getattr(asked, field)
        if value != getattr(default, field) and value != getattr(seed, field):
            raise WarmStartError(
                f"--{field.replace('_', '-')} {value} conflicts with the --init-from artifact "
                f"({getattr(seed, field)}); its architecture is kept: drop the option"
            )


def extended_dataset(seed: Artifact, raw: RawSequences) -> Dataset:
    """``raw`` encoded with the artifact's vocabulary plus the data's new items (at the end)."""
    known = set(seed.item_ids)
    new = sorted({item for items in raw.values() for item in items} - known, key=id_sort_key)
    dataset = encode_with_vocabulary(raw, [*seed.item_ids, *new])
    logger.info(
        "warm start: %d items kept, %d new; %d users, %d events",
        len(seed.item_ids), len(new), len(dataset.users), dataset.n_events,
    )  # fmt: skip
    return dataset


def warm_model(seed: Artifact, n_items: int, seed_value: int, device: str) -> RecurrentRecommender:
    """A model of the artifact's architecture for ``n_items`` items with the artifact's weights:
    tensors sized by the vocabulary get the old rows first and fresh ones after."""
    torch.manual_seed(seed_value)
    config = {**seed.model.config.to_dict(), "n_items": n_items}
    module = build_model(str(seed.config["model_type"]), config)
    old_n = len(seed.item_ids)
    fresh, old = module.state_dict(), cast(nn.Module, seed.model).state_dict()
    merged = {}
    for name, tensor in fresh.items():
        previous = old[name].to(tensor.dtype)
        if previous.shape == tensor.shape:
            merged[name] = previous
        elif previous.shape[1:] == tensor.shape[1:] and previous.shape[0] == old_n + 1:
            rows = tensor.clone()
            rows[: old_n + 1] = previous  # padding row and every old item's row
            merged[name] = rows
        else:
            raise WarmStartError(f"cannot map weight {name}: {previous.shape} -> {tensor.shape}")
    module.load_state_dict(merged)
    return cast(RecurrentRecommender, module.to(device))
