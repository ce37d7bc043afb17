"""Model classes by ``model_type``, so an artifact's config names the class that loads it."""

from torch import nn

from model.config import LRURecConfig, ModelConfig, RecBLRConfig, SASRecConfig
from model.lrurec import LRURec
from model.recblr import RecBLR
from model.sasrec import SASRec

MODELS: dict[str, tuple[type[nn.Module], type[ModelConfig]]] = {
    LRURecConfig.model_type: (LRURec, LRURecConfig),
    RecBLRConfig.model_type: (RecBLR, RecBLRConfig),
    SASRecConfig.model_type: (SASRec, SASRecConfig),
}


def build_model(model_type: str, config_values: dict[str, object]) -> nn.Module:
    """Instantiate a registered model from its JSON config values."""
    if model_type not in MODELS:
        raise ValueError(f"unknown model type {model_type!r}; known: {sorted(MODELS)}")
    model_class, config_class = MODELS[model_type]
    return model_class(config_class.from_dict(dict(config_values)))
