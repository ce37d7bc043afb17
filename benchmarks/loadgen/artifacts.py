"""Random-weight artifacts at ML-1M size for timing (the weights do not change the timing)."""

from pathlib import Path

import torch

from model import LRURec, LRURecConfig, SASRec, SASRecConfig, save_artifact

ML1M_ITEMS = 3416
MAX_LEN = 200
MODELS = ("lrurec", "sasrec")


def bench_artifact(directory: Path, model_type: str, n_items: int = ML1M_ITEMS) -> Path:
    """Build (once) ``directory/<model_type>``: d = 64, 2 layers, ``max_len`` 200.

    SASRec serves in recompute mode: its state is the last ``max_len`` items, so every event
    recomputes attention over a 200-item window.
    """
    target = directory / model_type
    if (target / "config.json").is_file():
        return target
    torch.manual_seed(0)
    item_ids = [str(index) for index in range(1, n_items + 1)]
    model: LRURec | SASRec
    if model_type == "lrurec":
        model = LRURec(LRURecConfig(n_items=n_items, d_model=64, n_layers=2, max_len=MAX_LEN))
    elif model_type == "sasrec":
        model = SASRec(SASRecConfig(n_items=n_items, d_model=64, n_layers=2, max_len=MAX_LEN))
    else:
        raise ValueError(f"unknown model {model_type!r}; choose from {MODELS}")
    popularity = torch.ones(n_items + 1)
    save_artifact(target, model.eval(), item_ids, popularity, {"source": "benchmarks.loadgen"})
    return target
