"""Weights round-trip through safetensors + JSON; artifacts are self-describing and checked."""

import json
from pathlib import Path

import pytest
import torch

from model import LRURec, load_artifact, load_model, save_artifact, save_model
from tests.model.conftest import left_padded_batch


def test_save_load_reproduces_outputs_bit_for_bit(tiny_model: LRURec, tmp_path: Path) -> None:
    save_model(tiny_model, tmp_path)
    loaded = load_model(tmp_path)
    assert isinstance(loaded, LRURec)
    assert loaded.config == tiny_model.config
    items = left_padded_batch([3, 20], n_items=50)
    with torch.no_grad():
        assert torch.equal(loaded(items), tiny_model(items))
        state = tiny_model.init_state(2)
        assert torch.equal(
            loaded.step(items[:, -1], state)[1], tiny_model.step(items[:, -1], state)[1]
        )
    assert not (tmp_path / "model.pt").exists()
    assert json.loads((tmp_path / "config.json").read_text())["model_type"] == "lrurec"


def test_artifact_round_trip(tiny_model: LRURec, tmp_path: Path) -> None:
    item_ids = [f"sku-{i}" for i in range(1, 51)]
    popularity = torch.arange(51, dtype=torch.float32)
    version = save_artifact(tmp_path, tiny_model, item_ids, popularity, {"data_fingerprint": "x"})
    artifact = load_artifact(tmp_path)
    assert artifact.version == version == artifact.config["model_version"]
    assert artifact.item_ids == item_ids
    assert artifact.index_of()["sku-7"] == 7
    assert torch.equal(artifact.popularity, popularity)
    assert artifact.config["data_fingerprint"] == "x"
    assert not artifact.model.training


def test_model_version_changes_with_the_weights(tiny_model: LRURec, tmp_path: Path) -> None:
    ids = [str(i) for i in range(50)]
    first = save_artifact(tmp_path / "a", tiny_model, ids, torch.zeros(51))
    with torch.no_grad():
        tiny_model.item_bias[3] += 1
    second = save_artifact(tmp_path / "b", tiny_model, ids, torch.zeros(51))
    assert first != second


def test_tampered_artifact_is_rejected(tiny_model: LRURec, tmp_path: Path) -> None:
    save_artifact(tmp_path, tiny_model, [str(i) for i in range(50)], torch.zeros(51))
    items = tmp_path / "items.tsv"
    items.write_text(items.read_text().replace("\t7\t", "\tseven\t"))
    with pytest.raises(ValueError, match="model_version"):
        load_artifact(tmp_path)


def test_incomplete_directory_is_not_an_artifact(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="not an artifact"):
        load_artifact(tmp_path)


def test_vocabulary_must_match_the_model(tiny_model: LRURec, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="50 items"):
        save_artifact(tmp_path, tiny_model, ["a", "b"], torch.zeros(3))
    with pytest.raises(ValueError, match="unique"):
        save_artifact(tmp_path, tiny_model, ["a"] * 50, torch.zeros(51))
