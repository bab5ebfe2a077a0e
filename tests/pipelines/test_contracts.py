"""The file contracts (pipelines/contracts.py): round trips, and refusals that name the file."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from shared_helpers import save_model_dir

from hashing.models import build, load_model
from pipelines.codes_io import codes_table, write_codes
from pipelines.contracts import (
    CodesManifest,
    ContractError,
    DatasetInfo,
    ImageSpec,
    ModelCard,
    SameAs,
    SplitFiles,
)
from pipelines.dataset import PreparedDataset

CARD = {
    "backbone": "smallcnn",
    "bits": 16,
    "in_channels": 1,
    "shift_average": False,
    "has_rotation": False,
    "method": "adsh",
    "image": {"height": 28, "width": 28, "channels": 1},
    "mean": 0.5,
    "std": 0.5,
    "classes": ["0", "1"],
    "dataset": "mnist5k",
    "model_version": "abc123",
    "mlflow_run_id": "abc123",
    "best_epoch": 3,
    "best_val_map": 0.91,
    "rotation": "none",
    "pretrain_epochs": 0,
}
DATASET = {
    "name": "tiny",
    "source": "folder",
    "source_path": "/corpus",
    "protocol": "random",
    "seed": 0,
    "classes": ["a", "b"],
    "multi_label": False,
    "image": {"height": 8, "width": 8, "channels": 1, "mode": "L", "format": "png"},
    "splits": {
        "train": {"rows": 6, "files": ["train/part-00000.parquet"]},
        "query": {"rows": 2, "files": ["query/part-00000.parquet"]},
        "database": {"same_as": "train"},
    },
    "counts": {"input": 9, "kept": 8, "skipped": 1},
    "skipped_reasons": {"empty image": 1},
    "skipped": [{"id": "x.png", "source": "/corpus/x.png", "reason": "empty image"}],
    "created_at": "2024-01-01T00:00:00+00:00",
    "source_options": {},
}


def _write_card(directory: Path, document: dict) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "model.json").write_text(json.dumps(document))
    return directory / "model.json"


def test_model_card_round_trips_through_its_file(tmp_path):
    card = ModelCard.from_dict(CARD, "CARD")
    assert card.image == ImageSpec(height=28, width=28, channels=1) and card.image.mode == "L"
    path = card.write(tmp_path)
    assert json.loads(path.read_text()) == CARD
    assert ModelCard.read(tmp_path) == ModelCard.read(path) == card
    assert ModelCard.from_dict({**CARD, "best_val_map": None}, "CARD").best_val_map is None


def test_a_card_train_writes_is_what_load_model_rebuilds(tmp_path):
    torch.manual_seed(0)
    model = build("smallcnn", bits=16, in_channels=1)
    model.set_rotation(torch.eye(16))
    save_model_dir(model.eval(), tmp_path, side=28)
    card, loaded = ModelCard.read(tmp_path), load_model(tmp_path)
    assert card.has_rotation and loaded.rotation is not None and loaded.config == model.config
    assert card.image.shape == (28, 28, 1)


@pytest.mark.parametrize(
    ("change", "words"),
    [
        ({"image": None}, "image: Input should be"),
        ({"std": ...}, "missing std"),
        ({"bits": "16"}, "bits: Input should be a valid integer"),  # no coercion
        ({"image": {"height": 28, "width": 28}}, "missing image.channels"),
        ({"image": {"height": 28, "width": 28, "channels": 2}}, "image.channels: Input should be"),
        ({"shift_avg": True}, "unknown shift_avg"),  # unknown keys are refused, not dropped
    ],
)
def test_a_bad_card_is_refused_naming_the_file_and_field(tmp_path, change, words):
    document = {k: v for k, v in {**CARD, **change}.items() if v is not ...}
    path = _write_card(tmp_path, document)
    with pytest.raises(ContractError, match=words) as caught:
        ModelCard.read(tmp_path)
    assert str(caught.value).startswith(f"{path}: ") and "re-train" in str(caught.value)


def test_a_missing_card_says_the_directory_is_no_model(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a hashray model directory"):
        ModelCard.read(tmp_path)


def test_encode_and_serve_refuse_a_card_without_an_image_alike(tmp_path):
    """One rule for the image spec: required; encode, serve and its pre-deploy check all refuse."""
    from pipelines.encode import EncoderUDF
    from pipelines.serve import ServeArgs, check_deployable
    from pipelines.serve.encoder import Encoder

    model_dir = save_model_dir(build("smallcnn", bits=16, in_channels=1), tmp_path / "m", side=28)
    document = json.loads((model_dir / "model.json").read_text())
    del document["image"]
    path = _write_card(model_dir, document)
    codes = tmp_path / "codes"
    write_codes(str(codes), [codes_table(["a"], np.zeros((1, 2), np.uint8))], bits=16, metadata={})
    refusals = [
        lambda: EncoderUDF(str(model_dir), None, use_gpu=False, embeddings=False),
        lambda: Encoder(str(model_dir), None),
        lambda: check_deployable(ServeArgs(codes=str(codes), model=str(model_dir))),
    ]
    for refused in refusals:
        with pytest.raises(ContractError, match=f"^{path}: missing image"):
            refused()


def test_dataset_info_round_trips_and_follows_same_as(tmp_path):
    info = DatasetInfo.from_dict(DATASET, "DATASET")
    assert info.to_dict() == DATASET
    assert (
        info.split("database")
        == info.split("train")
        == SplitFiles(rows=6, files=["train/part-00000.parquet"])
    )
    assert info.splits["database"] == SameAs(same_as="train")
    with pytest.raises(ValueError, match="unknown split 'val'"):
        info.split("val")
    (tmp_path / "dataset.json").write_text(json.dumps(DATASET))
    assert PreparedDataset.open(str(tmp_path)).info == info


@pytest.mark.parametrize(
    ("change", "words"),
    [
        ({"splits": {**DATASET["splits"], "query": {"same_as": "database"}}}, "same as 'database'"),
        ({"splits": {"train": DATASET["splits"]["train"]}}, "splits are"),
        ({"multi_label": "no"}, "multi_label: Input should be a valid boolean"),
        ({"counts": {"input": 9, "kept": 8}}, "missing counts.skipped"),
    ],
)
def test_a_bad_dataset_json_is_refused_naming_the_file(tmp_path, change, words):
    (tmp_path / "dataset.json").write_text(json.dumps({**DATASET, **change}))
    with pytest.raises(ContractError, match=words) as caught:
        PreparedDataset.open(str(tmp_path))
    assert str(caught.value).startswith(f"{tmp_path / 'dataset.json'}: ")


def test_codes_manifest_round_trips_and_checks_its_digests():
    part = {"path": "part-00000.parquet", "rows": 3, "sha256": "ab" * 32}
    document = {"rows": 3, "bits": 32, "files": [part]}
    manifest = CodesManifest.from_dict(document, "_SUCCESS.json")
    assert manifest.to_dict() == document and manifest.files[0].rows == 3
    with pytest.raises(ContractError, match="files.0.sha256: String should match"):
        CodesManifest.from_dict({**document, "files": [{**part, "sha256": "x"}]}, "_SUCCESS.json")
