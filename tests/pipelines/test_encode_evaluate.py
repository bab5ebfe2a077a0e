"""encode (real local Ray) -> codes equal to a direct computation; evaluate -> report, plots,
MLflow.

The prepared dataset is built here with pyarrow + PIL following the contract (not with prepare),
and the reference codes come from the model run in the test and packed bit by bit by hand.
"""

from __future__ import annotations

import io
import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image
from shared_helpers import save_model_dir

from hashing import metrics
from hashing.models import build
from pipelines.codes_io import IncompleteCodesError, read_codes
from pipelines.contracts import MANIFEST
from pipelines.encode import EncoderUDF, encode
from pipelines.evaluate import evaluate
from pipelines.model_store import load_for_inference, resolve_model

BITS, CLASSES, SIDE = 16, 3, 28
EPOCH, EPOCH_ISO = "1700000000", "2023-11-14T22:13:20+00:00"


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    """60 random grey 28x28 PNGs in 3 classes: 15 queries, 45 train in two files,
    database = train."""
    root = tmp_path_factory.mktemp("prepared")
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(60, SIDE, SIDE), dtype=np.uint8)
    labels = rng.integers(0, CLASSES, size=60)
    ids = [f"digits/{i:03d}.png" for i in rng.permutation(60)]  # file order != id order

    def png(pixels):
        buffer = io.BytesIO()
        Image.fromarray(pixels, mode="L").save(buffer, format="PNG")
        return buffer.getvalue()

    def write(split, name, rows):
        (root / split).mkdir(exist_ok=True)
        table = pa.table(
            {
                "id": pa.array([ids[i] for i in rows], pa.string()),
                "image": pa.array([png(images[i]) for i in rows], pa.binary()),
                "labels": pa.array([[int(labels[i])] for i in rows], pa.list_(pa.int32())),
                "source": pa.array([f"/corpus/{ids[i]}" for i in rows], pa.string()),
            }
        )
        pq.write_table(table, root / split / name)
        return f"{split}/{name}"

    meta = {
        "name": "tiny",
        "source": "folder",
        "source_path": "/corpus",
        "protocol": "random",
        "seed": 0,
        "classes": ["a", "b", "c"],
        "multi_label": False,
        "image": {"height": SIDE, "width": SIDE, "channels": 1, "mode": "L", "format": "png"},
        "splits": {
            "query": {"rows": 15, "files": [write("query", "part-00000.parquet", range(15))]},
            "train": {
                "rows": 45,
                "files": [
                    write("train", "part-00000.parquet", range(15, 38)),
                    write("train", "part-00001.parquet", range(38, 60)),
                ],
            },
            "database": {"same_as": "train"},
        },
        "counts": {"input": 60, "kept": 60, "skipped": 0},
        "skipped_reasons": {},
        "skipped": [],
        "created_at": EPOCH_ISO,
        "source_options": {},
    }
    (root / "dataset.json").write_text(json.dumps(meta))
    by_id = {ids[i]: (images[i], int(labels[i])) for i in range(60)}
    return {"dir": root, "by_id": by_id, "query": sorted(ids[:15]), "train": sorted(ids[15:])}


@pytest.fixture(scope="module")
def mlflow_store(tmp_path_factory):
    """A real MLflow sqlite store with one experiment and one run (the 'training' run)."""
    from mlflow import MlflowClient

    root = tmp_path_factory.mktemp("mlflow")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    client = MlflowClient(uri)
    experiment = client.create_experiment("tests", artifact_location=(root / "artifacts").as_uri())
    run_id = client.create_run(experiment).info.run_id
    return {"uri": uri, "client": client, "run_id": run_id}


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, mlflow_store):
    """A randomly initialised smallcnn with a random rotation, saved like the trainer saves it."""
    torch.manual_seed(0)
    model = build("smallcnn", bits=BITS, in_channels=1)
    model.set_rotation(torch.linalg.qr(torch.randn(BITS, BITS))[0])
    directory = tmp_path_factory.mktemp("model")
    return save_model_dir(
        model.eval(),
        directory,
        side=SIDE,
        classes=["a", "b", "c"],
        model_version="v1",
        mlflow_run_id=mlflow_store["run_id"],
    )


def reference(model_dir, images):
    """Outputs (n x bits) of the saved model on uint8 images (n x H x W), and their codes packed by
    hand."""
    model, _ = load_for_inference(str(model_dir))
    x = torch.as_tensor(np.asarray(images, dtype=np.float32) / 255.0)[:, None]
    outputs = model.embed((x - 0.5) / 0.5).numpy()
    packed = np.zeros((len(outputs), BITS // 8), dtype=np.uint8)
    for bit in range(BITS):  # the contract: bit i is bit (i % 8) of byte i // 8, sgn(0) = +1
        packed[:, bit // 8] |= (outputs[:, bit] >= 0).astype(np.uint8) << (bit % 8)
    return outputs, packed


def _files(directory):
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir())}


@pytest.fixture(scope="module")
def encoded(ray_cluster, prepared, model_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("codes")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SOURCE_DATE_EPOCH", EPOCH)
        summary = encode(
            str(prepared["dir"]),
            str(model_dir),
            str(out),
            batch_size=16,
            progress=False,
            rows_per_file=20,
        )
    return out, summary


@pytest.mark.ray
@pytest.mark.timeout(300)
def test_encode_writes_the_codes_of_every_id_once(encoded, prepared, model_dir, mlflow_store):
    out, summary = encoded
    assert summary["splits"]["query"]["rows"] == 15 and summary["splits"]["database"]["rows"] == 45
    assert summary["splits"]["database"]["files"] == [
        "part-00000.parquet",
        "part-00001.parquet",
        "part-00002.parquet",
    ]
    assert summary["images"] == 60 and summary["bits"] == BITS
    for split, expected_ids in (("query", prepared["query"]), ("database", prepared["train"])):
        codes = read_codes(str(out / split), verify=True)
        assert list(codes.ids) == expected_ids  # every id exactly once, sorted
        images = np.stack([prepared["by_id"][i][0] for i in expected_ids])
        _, packed = reference(model_dir, images)
        np.testing.assert_array_equal(codes.codes, packed)
        assert [row.tolist() for row in codes.labels] == [
            [prepared["by_id"][i][1]] for i in expected_ids
        ]
        assert codes.embeddings is None
        assert codes.metadata == {
            "bits": str(BITS),
            "method": "adsh",
            "model_uri": str(model_dir),
            "model_version": "v1",
            "mlflow_run_id": mlflow_store["run_id"],
            "created_at": EPOCH_ISO,
            "protocol": "random",
            "dataset": "tiny",
            "num_classes": "3",
            "split": split,
        }


@pytest.mark.ray
@pytest.mark.timeout(300)
def test_encode_reruns_identically_and_redoes_an_interrupted_split(
    encoded, prepared, model_dir, monkeypatch
):
    out, _ = encoded
    before = {split: _files(out / split) for split in ("query", "database")}
    # An interrupted database split: no manifest, a stray part. Readers refuse it.
    (out / "database" / MANIFEST).unlink()
    (out / "database" / "part-00099.parquet").write_bytes(before["database"]["part-00000.parquet"])
    with pytest.raises(IncompleteCodesError):
        read_codes(str(out / "database"))

    monkeypatch.setenv("SOURCE_DATE_EPOCH", EPOCH)
    encode(
        str(prepared["dir"]),
        str(model_dir),
        str(out),
        batch_size=32,
        progress=False,
        rows_per_file=20,
    )
    # The re-run (other batch size) redoes the broken split and rewrites both with the same names
    # and bytes.
    assert {split: _files(out / split) for split in ("query", "database")} == before


@pytest.mark.ray
@pytest.mark.timeout(300)
def test_evaluate_matches_hashing_metrics_and_logs_to_mlflow(
    encoded, prepared, model_dir, mlflow_store
):
    out, _ = encoded
    query_ids, db_ids = prepared["query"], prepared["train"]
    _, q_codes = reference(model_dir, np.stack([prepared["by_id"][i][0] for i in query_ids]))
    _, db_codes = reference(model_dir, np.stack([prepared["by_id"][i][0] for i in db_ids]))

    def one_hot(ids):
        return np.eye(CLASSES, dtype=np.uint8)[[prepared["by_id"][i][1] for i in ids]]

    expected = metrics.retrieval_report(
        q_codes,
        db_codes,
        one_hot(query_ids),
        one_hot(db_ids),
        db_ids=np.array(db_ids, dtype=object),
        radius=2,
    )

    report = evaluate(str(out), tracking_uri=mlflow_store["uri"])  # run id from the codes metadata

    assert report["map_tie_aware"] == pytest.approx(expected["map_tie_aware"], abs=1e-12)
    assert report["map_id_order"] == pytest.approx(expected["map_id_order"], abs=1e-12)
    assert report["precision_radius_2"] == pytest.approx(expected["precision_radius"], abs=1e-12)
    assert report["mean_returned_radius_2"] == pytest.approx(
        expected["mean_returned_radius"], abs=1e-12
    )
    assert report["pr_curve"] == expected["pr_curve"]
    assert report["precision_at_n"] == {str(n): p for n, p in expected["precision_at_n"].items()}
    assert (report["method"], report["bits"], report["protocol"]) == ("adsh", BITS, "random")
    assert (report["n_queries"], report["n_database"], report["topk"]) == (15, 45, None)
    assert report["codes"] == {"query": str(out / "query"), "database": str(out / "database")}
    assert report["mlflow_run_id"] == mlflow_store["run_id"] and "tie" in report["ties"]

    on_disk = json.loads((out / "report.json").read_text())
    assert on_disk == {k: v for k, v in report.items() if k not in ("files", "mlflow_logged")}
    assert report["mlflow_logged"] is True
    for name in ("pr_curve.png", "precision_at_n.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    client, run_id = mlflow_store["client"], mlflow_store["run_id"]
    logged = client.get_run(run_id).data.metrics
    assert logged["eval_map_tie_aware"] == pytest.approx(report["map_tie_aware"])
    assert logged["eval_precision_radius_2"] == pytest.approx(report["precision_radius_2"])
    artifacts = {a.path for a in client.list_artifacts(run_id, "evaluation")}
    assert artifacts == {
        "evaluation/report.json",
        "evaluation/pr_curve.png",
        "evaluation/precision_at_n.png",
    }


@pytest.mark.ray
@pytest.mark.timeout(300)
def test_evaluate_explicit_dirs_with_a_cutoff(encoded, mlflow_store, tmp_path):
    out, _ = encoded
    q, db = read_codes(str(out / "query")), read_codes(str(out / "database"))
    report = evaluate(
        queries=str(out / "query"),
        database=str(out / "database"),
        out=str(tmp_path),
        topk=10,
        radius=1,
        tracking_uri=mlflow_store["uri"],
    )

    expected = metrics.mean_average_precision(
        q.codes, db.codes, q.multi_hot(), db.multi_hot(), topk=10
    )
    assert report["map_tie_aware"] == pytest.approx(expected, abs=1e-12)
    assert report["topk"] == 10 and "precision_radius_1" in report
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "pr_curve.png",
        "precision_at_n.png",
        "report.json",
    ]
    logged = mlflow_store["client"].get_run(mlflow_store["run_id"]).data.metrics
    assert logged["eval_map_tie_aware_top10"] == pytest.approx(expected)


def test_model_store_resolves_runs_and_registry_uris(
    model_dir, mlflow_store, prepared, tmp_path, monkeypatch
):
    monkeypatch.setenv("HASHRAY_CACHE_DIR", str(tmp_path / "cache"))
    client, run_id, uri = mlflow_store["client"], mlflow_store["run_id"], mlflow_store["uri"]
    client.log_artifacts(run_id, str(model_dir), "model")
    client.create_registered_model("tiny-adsh")
    source = f"{client.get_run(run_id).info.artifact_uri}/model"
    version = client.create_model_version("tiny-adsh", source, run_id=run_id).version
    client.set_registered_model_alias("tiny-adsh", "champion", version)

    from_run = resolve_model(f"runs:/{run_id}/model", tracking_uri=uri)
    assert from_run.is_relative_to(tmp_path / "cache")
    assert (from_run / "model.json").read_text() == (model_dir / "model.json").read_text()
    pinned = resolve_model(f"models:/tiny-adsh/{version}", tracking_uri=uri)
    assert (
        resolve_model("models:/tiny-adsh@champion", tracking_uri=uri) == pinned
    )  # alias -> version

    # The encode actor, called directly, loads through the store and gives the reference codes.
    udf = EncoderUDF("models:/tiny-adsh@champion", uri, use_gpu=False, embeddings=True)
    batch = pq.read_table(prepared["dir"] / "query" / "part-00000.parquet").slice(0, 5)
    batch = batch.drop_columns(["source"]).append_column("path", pa.array(["p"] * 5))
    result = udf(batch)
    assert result.column("id").to_pylist() == batch.column("id").to_pylist()
    assert result.column("labels").to_pylist() == batch.column("labels").to_pylist()
    images = [prepared["by_id"][i][0] for i in batch.column("id").to_pylist()]
    outputs, packed = reference(model_dir, np.stack(images))
    codes = np.frombuffer(result.column("code").combine_chunks().buffers()[1], np.uint8).reshape(
        5, -1
    )
    np.testing.assert_array_equal(codes, packed)
    np.testing.assert_allclose(np.array(result.column("embedding").to_pylist()), outputs, atol=1e-5)

    with pytest.raises(ValueError, match="not a hashray model directory"):
        resolve_model(str(tmp_path / "cache"))
    with pytest.raises(FileNotFoundError):
        resolve_model(str(tmp_path / "missing"))
