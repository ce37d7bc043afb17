"""Weights in safetensors plus a JSON config naming the model class; nothing is ever unpickled."""

import json
from pathlib import Path
from typing import Any, cast

from safetensors.torch import load_file, save_file
from torch import nn

from model.protocol import RecurrentRecommender
from model.registry import build_model

WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"


def model_config_entry(model: RecurrentRecommender) -> dict[str, Any]:
    """The part of ``config.json`` that rebuilds the model."""
    return {"model_type": type(model.config).model_type, "model_config": model.config.to_dict()}


def save_model(
    model: RecurrentRecommender, directory: Path | str, extra: dict[str, Any] | None = None
) -> None:
    """Write ``model.safetensors`` and ``config.json`` (plus ``extra`` keys) into ``directory``."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    module = cast(nn.Module, model)
    tensors = {
        name: value.detach().contiguous().cpu() for name, value in module.state_dict().items()
    }
    save_file(tensors, str(directory / WEIGHTS_FILE))
    config = {**model_config_entry(model), **(extra or {})}
    (directory / CONFIG_FILE).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


def read_config(directory: Path | str) -> dict[str, Any]:
    path = Path(directory) / CONFIG_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: not a saved model directory")
    config: dict[str, Any] = json.loads(path.read_text())
    if "model_type" not in config or "model_config" not in config:
        raise ValueError(f"{path} lacks model_type/model_config")
    return config


def load_model(directory: Path | str, device: str = "cpu") -> RecurrentRecommender:
    """Rebuild the model named in ``config.json`` and load its safetensors weights (eval mode)."""
    directory = Path(directory)
    config = read_config(directory)
    module = build_model(config["model_type"], config["model_config"])
    module.load_state_dict(load_file(str(directory / WEIGHTS_FILE), device="cpu"), strict=True)
    module.to(device)
    module.eval()
    return cast(RecurrentRecommender, module)
