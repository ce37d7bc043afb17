"""End-to-end jobs behind the CLI: data → fit → test in both protocols → artifact on disk."""

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
from torch import Tensor, nn

from model import Artifact, RecurrentRecommender, load_artifact, save_artifact
from model.registry import build_model
from training import distributed
from training.config import TrainConfig
from training.data import (
    Dataset,
    RawSequences,
    Split,
    encode_with_vocabulary,
    fingerprint,
    split_leave_one_out,
)
from training.evaluate import (
    Protocol,
    evaluate,
    last_position_scorer,
    popularity_scorer,
    recurrent_scorer,
)
from training.extras import MissingTrainExtraError
from training.plot import plot_curve
from training.trainer import Trainer
from training.warm_start import warm_model

logger = logging.getLogger(__name__)

METRICS_FILE = "metrics.json"
CURVE_FILE = "training_curve.png"
CHECKPOINT_DIR = "checkpoints"


def item_counts(sequences: list[np.ndarray], n_items: int) -> Tensor:
    """Events per item index, ``[n_items + 1]`` float32 (index 0 is 0)."""
    flat = np.concatenate(sequences) if sequences else np.zeros(0, dtype=np.int64)
    return torch.from_numpy(np.bincount(flat, minlength=n_items + 1).astype(np.float32))


def held_out_metrics(
    model: RecurrentRecommender, split: Split, max_len: int, device: str
) -> dict[str, dict[str, dict[str, float]]]:
    """Test metrics of the model and of popularity, in both protocols."""
    histories = [split.history(u, include_valid=True) for u in range(len(split.train))]
    n_items = model.config.n_items
    popularity = item_counts(histories, n_items)
    scorers = {
        "model": {
            Protocol.paper: last_position_scorer(model),
            Protocol.serving: recurrent_scorer(model),
        },
        "popularity": {p: popularity_scorer(popularity) for p in Protocol},
    }
    return {
        name: {
            p.value: evaluate(scorer, histories, split.test, max_len, p, device)
            for p, scorer in by_protocol.items()
        }
        for name, by_protocol in scorers.items()
    }


def seconds_to_fraction(history: list[dict[str, float]], metric: str, fraction: float) -> float:
    """Training seconds until validation ``metric`` first reached ``fraction`` of its best."""
    best = max((point[metric] for point in history), default=0.0)
    for point in history:
        if point[metric] >= fraction * best:
            return point["seconds"]
    return float("nan")


@dataclass(frozen=True)
class TrainJob:
    dataset: Dataset
    config: TrainConfig
    out_dir: Path
    source: str
    show_progress: bool = True
    init_from: Artifact | None = None
    """Warm start: continue from this artifact's weights (training/warm_start.py)."""


def build(config: TrainConfig, n_items: int) -> RecurrentRecommender:
    torch.manual_seed(config.seed)
    model_config = config.model.build_config(n_items)
    module = build_model(config.model.model_type, model_config.to_dict())
    return cast(RecurrentRecommender, module.to(config.device))


def train_artifact(job: TrainJob) -> dict[str, Any]:
    """Train (resuming from ``out_dir/checkpoints`` if present), test and write the artifact.

    Under ``torchrun`` every rank trains; only rank 0 tests and writes, and the other ranks
    return ``{"steps": ...}`` alone.
    """
    dataset = job.dataset
    ranks = distributed.from_environment(job.config.device)
    try:
        config = job.config.model_copy(update={"device": ranks.device(job.config.device)})
        if config.threads:
            torch.set_num_threads(config.threads)
        split = split_leave_one_out(dataset.sequences)
        short = int((split.test == 0).sum())
        if short and ranks.is_main:
            logger.info("%d users have fewer than 3 events: trained on, not evaluated", short)
        if job.init_from is not None:
            model = warm_model(job.init_from, dataset.n_items, config.seed, config.device)
        else:
            model = build(config, dataset.n_items)
        trainer = Trainer(model, split, config, job.out_dir / CHECKPOINT_DIR, job=ranks)
        trainer.resume()
        started = time.monotonic()
        result = trainer.fit(show_progress=job.show_progress)
    finally:
        distributed.shutdown(ranks)
    if not ranks.is_main:
        return {"steps": result.steps}
    max_len = model.config.max_len
    tests = held_out_metrics(model, split, max_len, config.device)
    metrics: dict[str, Any] = {
        "test": tests["model"],
        "baselines": {"popularity": tests["popularity"]},
        "validation": result.history,
        "steps": result.steps,
        "train_seconds": result.seconds,
        "best_step": result.best_step,
        "stopped_early": result.stopped_early,
        "precision": trainer.precision,
        "seconds_to_95pct_val_ndcg@10": seconds_to_fraction(result.history, "ndcg@10", 0.95),
    }
    metrics["wall_seconds_this_invocation"] = time.monotonic() - started
    popularity = item_counts(dataset.sequences, dataset.n_items)
    metadata = {
        "data_fingerprint": fingerprint(dataset),
        "data_source": job.source,
        "n_users": len(dataset.users),
        "n_events": dataset.n_events,
        "train_config": json.loads(config.model_dump_json()),
        "train_precision": trainer.precision,  # what "auto" resolved to on the training host
        "test_metrics": tests["model"],
        "steps": result.steps,
        "train_seconds": result.seconds,
    }
    if job.init_from is not None:  # provenance of a warm start
        metadata["init_from"] = {
            "path": str(job.init_from.path), "model_version": job.init_from.version,
        }  # fmt: skip
    model.eval()
    save_artifact(job.out_dir, model, dataset.item_ids, popularity, metadata)
    (job.out_dir / METRICS_FILE).write_text(json.dumps(metrics, indent=2) + "\n")
    try:
        plot_curve(result.history, job.out_dir / CURVE_FILE)
    except MissingTrainExtraError as error:  # the artifact is complete; the PNG is optional
        logger.warning("%s; %s not written", error, CURVE_FILE)
    return metrics


def evaluate_artifact(directory: Path, raw: RawSequences, device: str) -> dict[str, Any]:
    """Re-score an artifact on ``raw`` events, encoded with the artifact's vocabulary."""
    artifact = load_artifact(directory, device=device)
    dataset = encode_with_vocabulary(raw, artifact.item_ids)
    split = split_leave_one_out(dataset.sequences)
    cast(nn.Module, artifact.model).eval()
    tests = held_out_metrics(artifact.model, split, int(artifact.config["max_len"]), device)
    return {"test": tests["model"], "baselines": {"popularity": tests["popularity"]}}
