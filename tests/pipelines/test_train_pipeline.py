"""The main job end to end on a real local Ray: prepare -> train (2 workers) -> encode -> evaluate.

Training fits are the expensive part (~20-40 s each here), so one test walks a run through
interruption, resume, the finished-run short cut, encoding and evaluation.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from mlflow.tracking import MlflowClient
from PIL import Image
from shared_helpers import write_digit_folder

from hashing.datasets import load_mnist5k
from hashing.recipe import Recipe
from pipelines.cli import main
from pipelines.config import TrainConfig
from pipelines.encode import encode
from pipelines.evaluate import evaluate
from pipelines.prepare import prepare
from pipelines.train import train

pytestmark = [pytest.mark.ray, pytest.mark.timeout(900)]

PER_CLASS = 24
CORRUPT = {"3/zero.png": b"", "5/text.jpg": b"not an image at all\n", "7/cut.png": None}


@pytest.fixture(scope="module")
def digits_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder corpus of real digits (one sub-folder per class) with a few broken files."""
    root = write_digit_folder(tmp_path_factory.mktemp("digits"), PER_CLASS)
    images, _ = load_mnist5k()
    png = io.BytesIO()
    Image.fromarray(images[0]).save(png, format="PNG")
    for name, data in CORRUPT.items():
        (root / name).write_bytes(png.getvalue()[:60] if data is None else data)  # truncated PNG
    return root


def test_prepare_train_resume_encode_evaluate(
    ray_cluster, digits_folder: Path, tmp_path: Path
) -> None:
    data = str(tmp_path / "data")
    meta = prepare("folder", data, path=str(digits_folder), mode="L", image_size=28, progress=False)
    assert meta["counts"] == {
        "input": 10 * PER_CLASS + len(CORRUPT),
        "kept": 10 * PER_CLASS,
        "skipped": len(CORRUPT),
    }
    assert sorted(
        s["source"].split("/", 1)[-1] if "/" in s["source"] else s["source"]
        for s in meta["skipped"]
    )
    assert {Path(s["source"]).name for s in meta["skipped"]} == {Path(n).name for n in CORRUPT}
    assert all(s["reason"] for s in meta["skipped"])

    config = TrainConfig(
        data=data,
        recipe=Recipe(epochs=2, batch_size=32, val_fraction=0.15),
        out=str(tmp_path / "runs"),
        workers=2,
        cpus_per_worker=0.5,
        tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}",
    )
    stopped = train(config, progress=False, stop_after_epochs=1)
    assert stopped["status"] == "stopped" and stopped["epochs_done"] == 1
    resumed = train(config, progress=False)
    assert resumed["status"] == "finished" and resumed["epochs_done"] == 2
    assert resumed["mlflow_run_id"] == stopped["mlflow_run_id"]

    run_dir = Path(resumed["run_dir"])
    assert sorted(p.name for p in (run_dir / "ray").glob("epoch-*")) == ["epoch-001", "epoch-002"]
    validation_ids = json.loads((run_dir / "split.json").read_text())["validation"]
    assert validation_ids and len(validation_ids) == len(set(validation_ids))

    client = MlflowClient(config.tracking_uri)
    runs = client.search_runs([client.get_experiment_by_name("hashray").experiment_id])
    assert [r.info.run_id for r in runs] == [resumed["mlflow_run_id"]]  # resumed, not duplicated
    assert [m.step for m in client.get_metric_history(resumed["mlflow_run_id"], "val_map")] == [
        1,
        2,
    ]
    assert runs[0].info.status == "FINISHED"
    assert "model" in {a.path for a in client.list_artifacts(resumed["mlflow_run_id"])}
    assert resumed["registered_model"].endswith("/1")
    assert train(config, progress=False) == resumed  # a finished run is returned, not retrained

    codes = str(tmp_path / "codes")
    summary = encode(data, resumed["model_dir"], codes, progress=False)
    ids = {
        split: pq.read_table(Path(codes) / split, columns=["id"])["id"].to_pylist()
        for split in ("query", "database")
    }
    assert len(ids["query"]) + len(ids["database"]) == 10 * PER_CLASS
    assert not set(ids["query"]) & set(ids["database"])
    assert all(len(v) == len(set(v)) for v in ids.values())
    assert summary["splits"]["query"]["rows"] == len(ids["query"])

    report = evaluate(
        codes, mlflow_run_id=resumed["mlflow_run_id"], tracking_uri=config.tracking_uri
    )
    assert report["n_queries"] == len(ids["query"]) and report["n_database"] == len(ids["database"])
    assert 0.2 < report["map_tie_aware"] <= 1.0  # 10 balanced classes: chance is ~0.1
    logged = client.get_run(resumed["mlflow_run_id"]).data.metrics
    assert logged["eval_map_tie_aware"] == pytest.approx(report["map_tie_aware"])


def test_val_fraction_zero_fits_every_row_and_keeps_the_last_epoch(
    ray_cluster, digits_folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    data = str(tmp_path / "data")
    meta = prepare("folder", data, path=str(digits_folder), mode="L", image_size=28, progress=False)
    tracking_uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    config = tmp_path / "all-rows.yaml"
    config.write_text(
        f"recipe: {{epochs: 2, batch_size: 32, val_fraction: 0}}\n"
        f"workers: 1\ncpus_per_worker: 0.5\ntracking_uri: '{tracking_uri}'\n"
    )
    out = str(tmp_path / "runs")
    assert main(["train", "--data", data, "--config", str(config), "--out", out]) == 0
    assert "last epoch (2, no validation split)" in capsys.readouterr().out

    (run_dir,) = Path(out).iterdir()
    summary = json.loads((run_dir / "run.json").read_text())
    assert summary["status"] == "finished"
    assert (summary["best_epoch"], summary["best_val_map"]) == (2, None)
    assert json.loads((run_dir / "split.json").read_text())["validation"] == []
    client = MlflowClient(tracking_uri)
    run_id = summary["mlflow_run_id"]
    assert client.get_metric_history(run_id, "val_map") == []
    assert [m.step for m in client.get_metric_history(run_id, "train_loss")] == [1, 2]
    # every training row was fit (one worker sees the whole dataset each epoch)
    seen = client.get_metric_history(run_id, "train_images")
    assert [m.value for m in seen] == [meta["splits"]["train"]["rows"]] * 2
    model_json = json.loads((run_dir / "model" / "model.json").read_text())
    assert model_json["best_epoch"] == 2 and model_json["best_val_map"] is None


def test_rotation_without_a_validation_split_is_refused_before_training(
    ray_cluster, digits_folder: Path, tmp_path: Path
) -> None:
    data = str(tmp_path / "data")
    prepare("folder", data, path=str(digits_folder), mode="L", image_size=28, progress=False)
    config = TrainConfig(
        data=data, recipe=Recipe(method="sdsh", val_fraction=0), out=str(tmp_path / "runs")
    )
    with pytest.raises(ValueError, match="rotation is fitted on the validation split"):
        train(config, progress=False)
    assert not (tmp_path / "runs").exists()  # refused before any run state was written


def _quadrant_image(labels: list[int], rng: np.random.Generator) -> Image.Image:
    """32x32 RGB: concept c lights quadrant c in its own colour, on a noisy background."""
    colours = [(230, 40, 40), (40, 200, 40), (40, 40, 230), (220, 220, 30)]
    pixels = rng.integers(0, 60, size=(32, 32, 3), dtype=np.uint8)
    for c in labels:
        r, q = divmod(c, 2)
        pixels[r * 16 : r * 16 + 16, q * 16 : q * 16 + 16] = colours[c]
    return Image.fromarray(pixels)


def test_multilabel_manifest_trains_with_dynamic_softmax(ray_cluster, tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    names = ["red", "green", "blue", "yellow"]
    (tmp_path / "img").mkdir()
    rows = []
    for i in range(240):
        labels = sorted(rng.choice(4, size=int(rng.integers(1, 3)), replace=False).tolist())
        _quadrant_image(labels, rng).save(tmp_path / "img" / f"{i:03d}.png")
        rows.append({"path": f"img/{i:03d}.png", "labels": ";".join(names[c] for c in labels)})
    with open(tmp_path / "manifest.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["path", "labels"])
        writer.writeheader()
        writer.writerows(rows)

    data = str(tmp_path / "data")
    meta = prepare(
        "manifest",
        data,
        path=str(tmp_path / "manifest.csv"),
        image_size=32,
        mode="RGB",
        progress=False,
    )
    assert meta["multi_label"] is True and meta["counts"]["kept"] == 240
    config = TrainConfig(
        data=data,
        recipe=Recipe(epochs=4, batch_size=32),
        out=str(tmp_path / "runs"),
        tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}",
    )
    run = train(config, progress=False)
    codes = str(tmp_path / "codes")
    encode(data, run["model_dir"], codes, progress=False)
    report = evaluate(codes)

    query = pq.read_table(Path(codes) / "query").to_pydict()
    database = pq.read_table(Path(codes) / "database").to_pydict()
    relevant = np.mean([bool(set(q) & set(d)) for q in query["labels"] for d in database["labels"]])
    assert any(len(labels) > 1 for labels in query["labels"])  # the multi-label path is exercised
    assert report["map_tie_aware"] > relevant + 0.1  # share-a-label relevance, well above chance


@pytest.mark.slow
def test_demo_json_reports_the_run(
    ray_cluster, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    assert main(["demo", "--epochs", "1", "--out", str(tmp_path / "demo"), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    for key in (
        "method",
        "bits",
        "protocol",
        "map_tie_aware",
        "map_id_order",
        "precision_radius_2",
        "n_queries",
        "n_database",
        "codes",
        "mlflow_run_id",
    ):
        assert key in report
    # the demo trains the tuned 48-bit config
    assert (report["method"], report["bits"], report["protocol"]) == ("adsh", 48, "mnist5k")
    assert (report["n_queries"], report["n_database"]) == (1000, 4000)
    assert report["map_tie_aware"] > 0.5  # one epoch already separates digits
    assert report["example_query"]["results"]
