"""Resumable training checkpoints without pickle: safetensors for tensors, JSON for the rest.

``<dir>/last`` holds the model (``model.save_model``), the optimiser's tensors, the moving
average of the weights if one is kept, torch's RNG state (``trainer.safetensors``), and the
loop state plus the optimiser's scalar fields (``trainer.json``). It is written to a temporary
directory and renamed into place, so an interrupted save never leaves a half-written
checkpoint. ``<dir>/best`` holds the best weights (the average's, when there is one).
"""

import json
import shutil
from pathlib import Path
from typing import Any, cast

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from model import RecurrentRecommender, load_model, save_model

LAST = "last"
BEST = "best"
TENSORS_FILE = "trainer.safetensors"
AVERAGE = "average"
"""Prefix of the moving average's tensors in ``TENSORS_FILE``."""
STATE_FILE = "trainer.json"


def optimizer_to_flat(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], Any]:
    """Split ``optimizer.state_dict()`` into named tensors and a JSON-able remainder."""
    state_dict = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for index, values in state_dict["state"].items():
        for key, value in values.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optimizer.{index}.{key}"] = value.detach().cpu().contiguous()
            else:
                scalars.setdefault(str(index), {})[key] = value
    return tensors, {"param_groups": state_dict["param_groups"], "scalars": scalars}


def optimizer_from_flat(tensors: dict[str, torch.Tensor], meta: Any) -> dict[str, Any]:
    """Inverse of :func:`optimizer_to_flat`: a dict for ``optimizer.load_state_dict``."""
    state: dict[int, dict[str, Any]] = {}
    for name, value in tensors.items():
        if name.startswith("optimizer."):
            _, index, key = name.split(".", 2)
            state.setdefault(int(index), {})[key] = value
    for index, values in meta["scalars"].items():
        state.setdefault(int(index), {}).update(values)
    # JSON has no tuples; optimisers compare and unpack ``betas`` as a tuple.
    groups = [
        {key: tuple(value) if key == "betas" else value for key, value in group.items()}
        for group in meta["param_groups"]
    ]
    return {"state": state, "param_groups": groups}


def save_last(
    directory: Path,
    model: RecurrentRecommender,
    optimizer: torch.optim.Optimizer,
    loop_state: dict[str, Any],
    average: nn.Module | None = None,
) -> None:
    """Atomically replace ``directory/last`` with the current model, optimiser, loop state and
    the moving average of the weights, if any (``average.*`` tensors)."""
    directory.mkdir(parents=True, exist_ok=True)
    staging = directory / f"{LAST}.tmp"
    shutil.rmtree(staging, ignore_errors=True)
    save_model(model, staging)
    tensors, meta = optimizer_to_flat(optimizer)
    if average is not None:
        for name, value in average.state_dict().items():
            tensors[f"{AVERAGE}.{name}"] = value.detach().cpu().contiguous()
    tensors["rng.torch"] = torch.get_rng_state()
    if torch.cuda.is_available():  # dropout on a GPU draws from the CUDA generator
        tensors["rng.cuda"] = torch.cuda.get_rng_state()
    save_file(tensors, str(staging / TENSORS_FILE))
    payload = {"loop": loop_state, "optimizer": meta}
    (staging / STATE_FILE).write_text(json.dumps(payload, indent=1))
    final, old = directory / LAST, directory / f"{LAST}.old"
    shutil.rmtree(old, ignore_errors=True)
    if final.exists():
        final.rename(old)
    staging.rename(final)
    shutil.rmtree(old, ignore_errors=True)


def find_last(directory: Path) -> Path | None:
    """The newest complete checkpoint (``last``, or ``last.old`` if a rename was interrupted)."""
    for name in (LAST, f"{LAST}.old"):
        candidate = directory / name
        if (candidate / STATE_FILE).is_file() and (candidate / TENSORS_FILE).is_file():
            return candidate
    return None


def load_last(
    checkpoint: Path,
    model: RecurrentRecommender,
    optimizer: torch.optim.Optimizer,
    average: nn.Module | None = None,
) -> dict[str, Any]:
    """Restore model weights, optimiser, RNG and the moving average (when ``average`` is given;
    a checkpoint without one starts it from the restored weights) from ``checkpoint``; returns
    the loop state."""
    restored = load_model(checkpoint)
    module = cast(nn.Module, model)
    module.load_state_dict(cast(nn.Module, restored).state_dict())
    tensors = load_file(str(checkpoint / TENSORS_FILE))
    payload = json.loads((checkpoint / STATE_FILE).read_text())
    device = next(module.parameters()).device
    state = optimizer_from_flat(tensors, payload["optimizer"])
    for values in state["state"].values():
        for key, value in values.items():
            if isinstance(value, torch.Tensor) and key != "step":
                values[key] = value.to(device)
    optimizer.load_state_dict(state)
    if average is not None and any(name.startswith(f"{AVERAGE}.") for name in tensors):
        prefix = f"{AVERAGE}."
        average.load_state_dict(
            {
                name[len(prefix) :]: value
                for name, value in tensors.items()
                if name.startswith(prefix)
            }
        )  # (without one saved, its first update copies the resumed weights)
    torch.set_rng_state(tensors["rng.torch"])
    if "rng.cuda" in tensors and torch.cuda.is_available():
        torch.cuda.set_rng_state(tensors["rng.cuda"])
    loop_state: dict[str, Any] = payload["loop"]
    return loop_state


def save_best(directory: Path, model: RecurrentRecommender) -> None:
    save_model(model, directory / BEST)


def load_best(directory: Path, model: RecurrentRecommender) -> None:
    """Load the best weights into ``model`` (if a best checkpoint exists)."""
    if (directory / BEST).is_dir():
        restored = cast(nn.Module, load_model(directory / BEST))
        cast(nn.Module, model).load_state_dict(restored.state_dict())
