"""PyTorch sequential recommenders with a parallel training forward and an O(1) serving step."""

from model.artifact import Artifact, load_artifact, save_artifact
from model.checkpoint import load_model, save_model
from model.config import LRURecConfig, ModelConfig, RecBLRConfig, SASRecConfig
from model.lrurec import LRURec
from model.protocol import RecurrentRecommender
from model.recblr import RecBLR
from model.sasrec import SASRec

__all__ = [
    "Artifact",
    "LRURec",
    "LRURecConfig",
    "ModelConfig",
    "RecBLR",
    "RecBLRConfig",
    "RecurrentRecommender",
    "SASRec",
    "SASRecConfig",
    "load_artifact",
    "load_model",
    "save_artifact",
    "save_model",
]
