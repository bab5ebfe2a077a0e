"""A real MLflow tracking server (sqlite backend, artifacts proxied to S3 on moto) end to end:
train logs metrics, params and the model through it, the model lands in the bucket, encode loads
``runs:/<id>/model`` through it, evaluate logs its report into the same run.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from cluster_support import ARTIFACT_BUCKET, RECIPE, packed_signs, reference_outputs
from mlflow.tracking import MlflowClient

from pipelines.encode import encode
from pipelines.evaluate import evaluate

pytestmark = [pytest.mark.ray, pytest.mark.slow, pytest.mark.timeout(600)]


def test_train_encode_evaluate_through_a_tracking_server(
    undisturbed_run,
    mlflow_server,
    s3_client,
    prepared,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _, summary = undisturbed_run
    run_id = summary["mlflow_run_id"]
    client = MlflowClient(mlflow_server)
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED" and run.info.run_name == "undisturbed"
    assert run.data.params["recipe.epochs"] == str(RECIPE.epochs)
    assert run.data.params["workers"] == "2"
    history = client.get_metric_history(run_id, "val_map")
    assert [m.step for m in history] == [1, 2, 3]
    assert max(m.value for m in history) == pytest.approx(summary["best_val_map"])

    # The model went client -> server -> S3: the bucket holds the very bytes written locally.
    assert run.info.artifact_uri.startswith("mlflow-artifacts:/")
    keys = {o["Key"] for o in s3_client.list_objects_v2(Bucket=ARTIFACT_BUCKET)["Contents"]}
    for name in ("model.pt", "model.json"):
        (key,) = [k for k in keys if k.endswith(f"{run_id}/artifacts/model/{name}")]
        body = s3_client.get_object(Bucket=ARTIFACT_BUCKET, Key=key)["Body"].read()
        assert body == (Path(summary["model_dir"]) / name).read_bytes()
    name, version = summary["registered_model"].split("/")
    assert client.get_model_version(name, version).run_id == run_id

    # Encode from the run URI alone: the actors download the model through the server.
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)
    monkeypatch.setenv("HASHRAY_CACHE_DIR", str(tmp_path / "cache"))  # a real download, no cache
    codes = tmp_path / "codes"
    encoded = encode(prepared, f"runs:/{run_id}/model", str(codes), progress=False)
    assert encoded["model_version"] == run_id
    reference = reference_outputs(prepared, Path(summary["model_dir"]))
    for split in ("query", "database"):
        table = pq.read_table(codes / split)
        assert table.schema.metadata[b"hashray.model_uri"] == f"runs:/{run_id}/model".encode()
        outputs = np.stack([reference[i] for i in table["id"].to_pylist()])
        got = np.unpackbits(
            np.frombuffer(b"".join(table["code"].to_pylist()), np.uint8).reshape(len(outputs), -1),
            axis=1,
            bitorder="little",
        )
        want = np.unpackbits(packed_signs(outputs), axis=1, bitorder="little")
        clear = np.abs(outputs) > 1e-4  # batched and one-by-one float sums may differ in sign at 0
        assert np.array_equal(got[clear], want[clear])

    report = evaluate(str(codes), tracking_uri=mlflow_server)
    assert report["mlflow_run_id"] == run_id and report["mlflow_logged"]
    logged = client.get_run(run_id).data.metrics
    assert logged["eval_map_tie_aware"] == pytest.approx(report["map_tie_aware"])
    assert any(
        k.endswith(f"{run_id}/artifacts/evaluation/report.json")
        for k in (o["Key"] for o in s3_client.list_objects_v2(Bucket=ARTIFACT_BUCKET)["Contents"])
    )
