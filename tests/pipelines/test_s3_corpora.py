"""Every corpus format read from S3 (a moto server on 127.0.0.1), objects that cannot be read,
and a prepare -> encode round trip that never touches the local disk for data."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from corpora import (
    CIFAR_BATCHES,
    cifar_pixels,
    kept_rows,
    png_bytes,
    write_cifar,
    write_nuswide,
    write_tar,
)
from shared_helpers import save_model_dir

from hashing.models import build
from pipelines import prepare as prepare_module
from pipelines import storage
from pipelines.codes_io import read_codes
from pipelines.encode import encode
from pipelines.prepare import prepare

pytestmark = [pytest.mark.ray, pytest.mark.timeout(300)]
BUCKET = "corpus"


def upload(client, folder: Path, prefix: str) -> str:
    """Copy every file under ``folder`` to ``s3://corpus/<prefix>/...``; the prefix's URI."""
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        key = f"{prefix}/{path.relative_to(folder).as_posix()}"
        client.put_object(Bucket=BUCKET, Key=key, Body=path.read_bytes())
    return f"s3://{BUCKET}/{prefix}"


def s3_prepared(client, prefix: str) -> tuple[dict, list[dict]]:
    """dataset.json and every kept row of a prepared dataset on S3, read with boto3 + pyarrow."""

    def get(key: str) -> bytes:
        return client.get_object(Bucket=BUCKET, Key=f"{prefix}/{key}")["Body"].read()

    meta = json.loads(get("dataset.json"))
    rows = []
    for split in ("train", "query"):
        for name in meta["splits"][split]["files"]:
            rows += pq.read_table(io.BytesIO(get(name))).to_pylist()
    return meta, rows


def random_png(rng: np.random.Generator, side: int) -> bytes:
    return png_bytes(rng.integers(0, 256, (side, side, 3), dtype=np.uint8))


def local_corpora(root: Path) -> dict[str, tuple[str, Path, dict]]:
    """One small corpus per format: name -> (source, path under root, prepare arguments)."""
    write_cifar(root / "cifar", {name: 12 for name in CIFAR_BATCHES}, seed=12)
    write_nuswide(root / "nus", seed=13)
    rng = np.random.default_rng(14)
    table = pa.table(
        {
            "png": [random_png(rng, 5) for _ in range(20)] + [b"\x89PNG\r\n\x1a\n"],
            "label": [f"l{i % 2}" for i in range(21)],
        }
    )
    (root / "table").mkdir()
    pq.write_table(table, root / "table" / "part-0.parquet", row_group_size=6)
    for label in ("p", "q"):
        for i in range(5):
            (root / "folder" / label).mkdir(parents=True, exist_ok=True)
            (root / "folder" / label / f"{i}.png").write_bytes(random_png(rng, 6))
    (root / "folder" / "q" / "empty.png").write_bytes(b"")
    for shard in range(2):
        members = [("s/junk.png", b"junk"), ("s/junk.cls", b"1")]
        for i in range(5):
            members += [
                (f"s/{shard}{i}.png", random_png(rng, 5)),
                (f"s/{shard}{i}.cls", b"%d" % (i % 2)),
            ]
        write_tar(root / "shards" / f"{shard}.tar", members)
    return {
        "cifar10": ("cifar10", root / "cifar", {"protocol": "random"}),
        "nuswide": ("nuswide", root / "nus", {"protocol": "random", "image_size": 8}),
        "parquet": (
            "parquet",
            root / "table",
            {"image_size": 5, "source_options": {"image_column": "png", "labels_column": "label"}},
        ),
        "folder": ("folder", root / "folder", {"image_size": 6}),
        "webdataset": ("webdataset", root / "shards", {"image_size": 5}),
    }


def test_every_format_reads_the_same_from_s3(ray_cluster, s3_bucket, tmp_path):
    for name, (source, folder, arguments) in local_corpora(tmp_path / "in").items():
        local = prepare(source, str(tmp_path / name), path=str(folder), progress=False, **arguments)
        uri = upload(s3_bucket, folder, f"in/{name}")
        remote = prepare(source, f"s3://{BUCKET}/out/{name}", path=uri, progress=False, **arguments)
        meta, rows = s3_prepared(s3_bucket, f"out/{name}")
        assert meta["splits"] == local["splits"] == remote["splits"], name
        assert meta["counts"] == local["counts"] and meta["classes"] == local["classes"], name
        assert meta["source_path"] == uri
        skipped = [(row["id"], row["reason"]) for row in meta["skipped"]]
        assert skipped == [(row["id"], row["reason"]) for row in local["skipped"]], name
        assert all(row["source"].startswith(f"{uri}/") for row in meta["skipped"]), name
        local_rows = sorted(kept_rows(tmp_path / name, local), key=lambda row: row["id"])
        rows = sorted(rows, key=lambda row: row["id"])
        assert len(rows) == local["counts"]["kept"] > 0
        for theirs, ours in zip(rows, local_rows):
            assert (theirs["id"], theirs["labels"], theirs["image"]) == (
                ours["id"],
                ours["labels"],
                ours["image"],
            )
            assert theirs["source"].startswith(f"{uri}/")
        if name == "parquet":
            assert skipped == [("part-0.parquet#20", "not an image")]
        if name == "webdataset":
            assert skipped == [("0.tar/s/junk", "not an image"), ("1.tar/s/junk", "not an image")]


def test_unreadable_and_vanishing_objects_cost_one_row(ray_cluster, s3_bucket, monkeypatch):
    rng = np.random.default_rng(15)
    for label in ("a", "b"):
        for i in range(4):
            s3_bucket.put_object(Bucket=BUCKET, Key=f"set/{label}/{i}.png", Body=random_png(rng, 4))
    # An object archived to Glacier is listed like any other, but reading it is refused (403).
    s3_bucket.put_object(
        Bucket=BUCKET, Key="set/b/archived.png", Body=random_png(rng, 4), StorageClass="GLACIER"
    )
    s3_bucket.put_object(Bucket=BUCKET, Key="set/a/vanishing.png", Body=random_png(rng, 4))
    listed = prepare_module.read_source

    def list_then_delete(*args, **kwargs):
        corpus = listed(*args, **kwargs)  # the listing is taken here, the reads happen later
        s3_bucket.delete_object(Bucket=BUCKET, Key="set/a/vanishing.png")
        return corpus

    monkeypatch.setattr(prepare_module, "read_source", list_then_delete)
    meta = prepare(
        "folder", f"s3://{BUCKET}/out", path=f"s3://{BUCKET}/set", image_size=4, progress=False
    )
    assert [(row["source"], row["reason"]) for row in meta["skipped"]] == [
        (f"s3://{BUCKET}/set/a/vanishing.png", "missing file"),
        (f"s3://{BUCKET}/set/b/archived.png", "unreadable"),
    ]
    assert meta["counts"] == {"input": 10, "kept": 8, "skipped": 2}


def test_prepare_then_encode_through_s3(ray_cluster, s3_bucket, tmp_path, monkeypatch):
    endpoint = s3_bucket.meta.endpoint_url
    monkeypatch.delenv("AWS_ENDPOINT_URL_S3")
    with pytest.raises(ValueError, match="http"):
        storage.use_s3_endpoint("127.0.0.1:9000")
    storage.use_s3_endpoint(endpoint)  # what --s3-endpoint does; boto3 reads it as well:
    boto3 = pytest.importorskip("boto3")
    assert boto3.client("s3").list_buckets()["Buckets"][0]["Name"] == BUCKET

    written = write_cifar(tmp_path / "cifar", {name: 10 for name in CIFAR_BATCHES}, seed=16)
    uri = upload(s3_bucket, tmp_path / "cifar", "cifar")
    prepared = f"s3://{BUCKET}/prepared"
    meta = prepare("cifar10", prepared, path=uri, protocol="cifar10-full", progress=False)
    assert meta["splits"]["query"]["rows"] == 10 and meta["splits"]["train"]["rows"] == 50

    torch.manual_seed(0)
    model = build("smallcnn", bits=16, in_channels=3)
    save_model_dir(model.eval(), tmp_path / "model", side=32, classes=meta["classes"])
    summary = encode(
        prepared, str(tmp_path / "model"), f"s3://{BUCKET}/codes", batch_size=16, progress=False
    )
    assert summary["images"] == 60

    raw = {
        f"cifar10-{name}-{i:05d}": data[i]
        for name, (data, _) in written.items()
        for i in range(len(data))
    }
    for split, prefix in (("query", "cifar10-test_batch-"), ("database", "cifar10-data_batch_")):
        codes = read_codes(f"s3://{BUCKET}/codes/{split}", verify=True)
        ids = sorted(i for i in raw if i.startswith(prefix))
        assert list(codes.ids) == ids
        images = np.stack([cifar_pixels(raw[i]) for i in ids]).astype(np.float32) / 255.0
        with torch.no_grad():
            outputs = model.embed((torch.as_tensor(images).permute(0, 3, 1, 2) - 0.5) / 0.5).numpy()
        packed = np.zeros((len(ids), 2), dtype=np.uint8)
        for bit in range(16):  # bit i is bit (i % 8) of byte i // 8; sgn(0) = +1
            packed[:, bit // 8] |= (outputs[:, bit] >= 0).astype(np.uint8) << (bit % 8)
        np.testing.assert_array_equal(codes.codes, packed)
