"""hashray prepare on a real local Ray cluster: every corpus kind, read back with plain
pyarrow/PIL."""

from __future__ import annotations

import csv
import gzip
import hashlib
import io
import json
import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from corpora import idx_bytes
from PIL import Image

from hashing.datasets import load_mnist5k
from hashing.splits import split_indices
from pipelines import prepare as prepare_module
from pipelines.dataset import PreparedDataset
from pipelines.prepare import prepare

pytestmark = [pytest.mark.ray, pytest.mark.timeout(300)]

EXPECTED_SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("image", pa.binary()),
        ("labels", pa.list_(pa.int32())),
        ("source", pa.string()),
    ]
)


def read_split(out: Path, meta: dict, split: str) -> pa.Table:
    """The split's rows straight from the Parquet files dataset.json names (no hashray reader)."""
    entry = meta["splits"][split]
    entry = meta["splits"][entry["same_as"]] if "same_as" in entry else entry
    tables = [pq.read_table(out / name) for name in entry["files"]]
    for table in tables:
        assert table.schema.remove_metadata() == EXPECTED_SCHEMA
    return pa.concat_tables(tables)


def pixels(png: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(png)))


def file_digests(out: Path) -> dict[str, str]:
    return {
        str(p.relative_to(out)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(out.rglob("*.parquet"))
    }


# --- mnist5k: the bundled digits, protocol mnist5k ------------------------------------------------


@pytest.fixture(scope="module")
def mnist5k_runs(ray_cluster, tmp_path_factory):
    first = tmp_path_factory.mktemp("mnist5k-a")
    second = tmp_path_factory.mktemp("mnist5k-b")
    return (first, prepare("mnist5k", str(first), progress=False)), (
        second,
        prepare("mnist5k", str(second), progress=False),
    )


def test_mnist5k_split_counts_and_contents(mnist5k_runs):
    (out, meta), _ = mnist5k_runs
    images, labels = load_mnist5k()
    assert meta["counts"] == {"input": 5000, "kept": 5000, "skipped": 0}
    assert meta["splits"]["database"] == {"same_as": "train"}
    assert meta["image"] == {"height": 28, "width": 28, "channels": 1, "mode": "L", "format": "png"}
    assert meta["classes"] == [str(d) for d in range(10)] and meta["multi_label"] is False
    train, query = read_split(out, meta, "train"), read_split(out, meta, "query")
    assert (train.num_rows, query.num_rows) == (4000, 1000)
    assert (meta["splits"]["train"]["rows"], meta["splits"]["query"]["rows"]) == (4000, 1000)

    # The split is hashing.splits' draw over the digits in their bundled order (= id order).
    reference = split_indices(labels, "mnist5k", seed=0)
    assert query.column("id").to_pylist() == [f"mnist5k-{i:05d}" for i in reference["query"]]
    assert train.column("id").to_pylist() == [f"mnist5k-{i:05d}" for i in reference["train"]]
    query_labels = np.array([row[0] for row in query.column("labels").to_pylist()])
    assert np.bincount(query_labels, minlength=10).tolist() == [100] * 10

    for table in (train, query):
        index = np.array([int(i.split("-")[1]) for i in table.column("id").to_pylist()])
        decoded = np.stack([pixels(png) for png in table.column("image").to_pylist()])
        np.testing.assert_array_equal(decoded, images[index])  # lossless PNG of the original digits
        assert [row for row in table.column("labels").to_pylist()] == [
            [int(y)] for y in labels[index]
        ]


def test_mnist5k_is_deterministic_and_rerun_replaces_the_output(mnist5k_runs):
    (first, first_meta), (second, second_meta) = mnist5k_runs
    assert file_digests(first) == file_digests(second)
    assert first_meta["splits"] == second_meta["splits"]
    for split in ("train", "query"):
        assert read_split(first, first_meta, split).equals(read_split(second, second_meta, split))
    # Re-running into the same directory: a stale part from an "earlier run" disappears.
    stale = second / "train" / "part-00099.parquet"
    stale.write_bytes(b"stale")
    rerun = prepare("mnist5k", str(second), progress=False)
    assert not stale.exists()
    assert file_digests(second) == file_digests(first)
    assert json.loads((second / "dataset.json").read_text())["splits"] == rerun["splits"]


def test_prepared_dataset_reader(mnist5k_runs, tmp_path):
    (out, meta), _ = mnist5k_runs
    data = PreparedDataset.open(str(out))
    assert (data.num_classes, data.image_shape, data.multi_label) == (10, (28, 28, 1), False)
    assert data.split_files("database") == data.split_files("train")
    ids, images, labels = data.load_split_numpy("query")
    query = read_split(out, meta, "query")
    assert ids.tolist() == query.column("id").to_pylist()
    assert images.shape == (1000, 28, 28, 1) and images.dtype == np.uint8
    np.testing.assert_array_equal(
        images[:, :, :, 0], np.stack([pixels(p) for p in query.column("image").to_pylist()])
    )
    expected = np.zeros((1000, 10), dtype=np.float32)
    expected[np.arange(1000), [row[0] for row in query.column("labels").to_pylist()]] = 1
    np.testing.assert_array_equal(labels, expected)
    assert labels.dtype == np.float32
    assert sorted(r["id"] for r in data.read_split("query").take_all()) == ids.tolist()
    with pytest.raises(FileNotFoundError, match="run hashray prepare first"):
        PreparedDataset.open(str(tmp_path / "nothing-here"))


# --- a folder corpus with corrupt files -----------------------------------------------------------


def write_image(path: Path, pixels_: np.ndarray, fmt: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels_).save(path, format=fmt)


def test_folder_keeps_good_images_and_lists_bad_ones(ray_cluster, tmp_path, monkeypatch):
    rng = np.random.default_rng(1)
    root = tmp_path / "corpus"
    originals = {}
    for label in ("ant", "bee", "cat"):
        for i in range(10):
            fmt, ext = ("PNG", "png") if i % 2 else ("JPEG", "jpg")
            shape = (20 + i, 30, 3) if i != 3 else (24, 24)  # one greyscale per class
            image = rng.integers(0, 256, shape, dtype=np.uint8)
            write_image(root / label / f"img{i}.{ext}", image, fmt)
            originals[f"{label}/img{i}.{ext}"] = root / label / f"img{i}.{ext}"
    (root / "ant" / "empty.png").write_bytes(b"")
    jpeg = (root / "bee" / "img0.jpg").read_bytes()
    (root / "bee" / "cut.jpg").write_bytes(jpeg[: len(jpeg) // 2])
    (root / "cat" / "notes.jpg").write_text("not a picture, a shopping list\n")
    write_image(root / "stray.png", np.zeros((4, 4), np.uint8), "PNG")
    (root / "cat" / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")  # hidden: not part of the corpus

    out = tmp_path / "prepared"
    monkeypatch.setattr(prepare_module, "MAX_ROWS_PER_PART", 7)  # several parts from a tiny corpus
    meta = prepare("folder", str(out), path=str(root), image_size=16, progress=False)
    assert meta["splits"]["train"]["files"] == [f"train/part-{i:05d}.parquet" for i in range(4)]
    assert [pq.read_metadata(out / f).num_rows for f in meta["splits"]["train"]["files"]] == [
        7,
        7,
        7,
        6,
    ]
    assert meta["classes"] == ["ant", "bee", "cat"] and meta["protocol"] == "random"
    assert meta["counts"] == {"input": 34, "kept": 30, "skipped": 4}
    assert {row["id"]: row["reason"] for row in meta["skipped"]} == {
        "ant/empty.png": "empty file",
        "bee/cut.jpg": "truncated",
        "cat/notes.jpg": "not an image",
        "stray.png": "not in a class folder",
    }
    assert {row["source"] for row in meta["skipped"]} >= {str(root / "bee" / "cut.jpg")}
    train, query = read_split(out, meta, "train"), read_split(out, meta, "query")
    assert (train.num_rows, query.num_rows) == (27, 3)  # 10% per class = 1 query per class
    rows = train.to_pylist() + query.to_pylist()
    assert sorted(r["id"] for r in rows) == sorted(originals)
    for row in rows:
        assert row["labels"] == [["ant", "bee", "cat"].index(row["id"].split("/")[0])]
        assert row["source"] == str(originals[row["id"]])
        reference = (
            Image.open(originals[row["id"]])
            .convert("RGB")
            .resize((16, 16), Image.Resampling.BICUBIC)
        )
        np.testing.assert_array_equal(pixels(row["image"]), np.asarray(reference))
    assert train.column("id").to_pylist() == sorted(train.column("id").to_pylist())


# --- manifests: CSV and JSONL, multi-label, a missing file ----------------------------------------


@pytest.fixture(scope="module")
def manifest_corpus(tmp_path_factory):
    """12 images with 1-2 labels each, listed by a CSV and a JSONL manifest that also name a missing
    file."""
    root = tmp_path_factory.mktemp("manifest")
    rng = np.random.default_rng(2)
    names = ["bird", "cat", "dog"]
    entries = []
    for i in range(12):
        relative = f"imgs/{i:02d}.png"
        write_image(root / relative, rng.integers(0, 256, (10, 12, 3), dtype=np.uint8), "PNG")
        labels = [names[i % 3]] + ([names[(i + 1) % 3]] if i % 4 == 0 else [])
        entries.append((relative, labels))
    absolute = root / "elsewhere" / "abs.png"
    write_image(absolute, rng.integers(0, 256, (9, 9, 3), dtype=np.uint8), "PNG")
    entries.append((str(absolute), ["cat"]))
    entries.append(("imgs/missing.png", ["dog"]))
    with open(root / "list.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "labels"])
        for i, (path, labels) in enumerate(entries):
            writer.writerow([path, (";" if i % 2 else "|").join(labels)])
    with open(root / "list.jsonl", "w") as handle:
        for path, labels in entries:
            handle.write(json.dumps({"path": path, "labels": labels}) + "\n")
    return root, entries


def test_manifest_csv_and_jsonl_give_the_same_dataset(ray_cluster, manifest_corpus, tmp_path):
    root, entries = manifest_corpus
    outs = {kind: tmp_path / kind for kind in ("csv", "jsonl")}
    metas = {
        kind: prepare(
            "manifest", str(out), path=str(root / f"list.{kind}"), image_size=8, progress=False
        )
        for kind, out in outs.items()
    }
    meta = metas["csv"]
    assert meta["classes"] == ["bird", "cat", "dog"] and meta["multi_label"] is True
    assert meta["counts"] == {"input": 14, "kept": 13, "skipped": 1}
    assert meta["skipped"] == [
        {
            "id": "imgs/missing.png",
            "source": str(root / "imgs" / "missing.png"),
            "reason": "missing file",
        }
    ]
    rows = (
        read_split(outs["csv"], meta, "train").to_pylist()
        + read_split(outs["csv"], meta, "query").to_pylist()
    )
    expected = {
        path: sorted(meta["classes"].index(x) for x in labels) for path, labels in entries[:-1]
    }
    assert {r["id"]: sorted(r["labels"]) for r in rows} == expected
    assert all(pixels(r["image"]).shape == (8, 8, 3) for r in rows)
    assert file_digests(outs["csv"]) == file_digests(outs["jsonl"])
    assert metas["jsonl"]["splits"] == meta["splits"]


def test_manifest_with_a_class_list_skips_unknown_labels(ray_cluster, manifest_corpus, tmp_path):
    root, entries = manifest_corpus
    meta = prepare(
        "manifest",
        str(tmp_path / "out"),
        path=str(root / "list.jsonl"),
        classes=["dog", "cat"],
        progress=False,
    )
    with_bird = {path for path, labels in entries if "bird" in labels}
    reasons = {row["id"]: row["reason"] for row in meta["skipped"]}
    assert reasons == {
        **{path: "unknown label 'bird'" for path in with_bird},
        "imgs/missing.png": "missing file",
    }
    assert meta["classes"] == ["dog", "cat"]
    assert meta["counts"]["kept"] == len(entries) - 1 - len(with_bird)


# --- MNIST idx files, protocol mnist-full (the official split) -----------------------------------


def test_mnist_idx_files_with_the_official_split(ray_cluster, tmp_path):
    rng = np.random.default_rng(3)
    folder = tmp_path / "mnist"
    folder.mkdir()
    data = {}
    for prefix, n in (("train", 200), ("t10k", 50)):
        data[prefix] = (
            rng.integers(0, 256, (n, 28, 28), dtype=np.uint8),
            rng.integers(0, 10, n, dtype=np.uint8),
        )
        (folder / f"{prefix}-images-idx3-ubyte.gz").write_bytes(
            gzip.compress(idx_bytes(data[prefix][0]))
        )
        labels_name = f"{prefix}-labels-idx1-ubyte" + (".gz" if prefix == "train" else "")
        raw = idx_bytes(data[prefix][1])
        (folder / labels_name).write_bytes(
            gzip.compress(raw) if labels_name.endswith(".gz") else raw
        )

    out = tmp_path / "prepared"
    meta = prepare("mnist", str(out), path=str(folder), progress=False)
    assert meta["protocol"] == "mnist-full" and meta["source_path"] == os.path.abspath(folder)
    assert meta["counts"] == {"input": 250, "kept": 250, "skipped": 0}
    assert meta["splits"]["database"] == {"same_as": "train"}
    for split, prefix, name in (("train", "train", "train"), ("query", "t10k", "test")):
        table = read_split(out, meta, split)
        images, labels = data[prefix]
        assert table.column("id").to_pylist() == [
            f"mnist-{name}-{i:05d}" for i in range(len(images))
        ]
        np.testing.assert_array_equal(
            np.stack([pixels(p) for p in table.column("image").to_pylist()]), images
        )
        assert table.column("labels").to_pylist() == [[int(y)] for y in labels]

    with pytest.raises(ValueError, match="official split"):
        prepare("mnist5k", str(tmp_path / "bad"), protocol="mnist-full", progress=False)


# --- S3 in and out (moto's server: pyarrow's S3 client cannot see moto's in-process mock) ---------


def test_folder_and_manifest_on_s3(ray_cluster, s3_bucket, tmp_path):
    rng = np.random.default_rng(4)
    expected = {}
    for label in ("x", "y"):
        for i in range(4):
            image = rng.integers(0, 256, (6, 6, 3), dtype=np.uint8)
            buffer = io.BytesIO()
            Image.fromarray(image).save(buffer, format="PNG")
            s3_bucket.put_object(
                Bucket="corpus", Key=f"set/{label}/{i}.png", Body=buffer.getvalue()
            )
            expected[f"{label}/{i}.png"] = (image, label)
    s3_bucket.put_object(Bucket="corpus", Key="set/y/broken.png", Body=b"\x89PNG\r\n\x1a\n")
    listing = "path,labels\n" + "".join(f"{key},{label}\n" for key, (_, label) in expected.items())
    s3_bucket.put_object(
        Bucket="corpus", Key="set/list.csv", Body=(listing + "gone.png,x\n").encode()
    )

    meta = prepare(
        "folder", "s3://corpus/prepared", path="s3://corpus/set", image_size=6, progress=False
    )
    assert meta["counts"] == {
        "input": 10,
        "kept": 8,
        "skipped": 2,
    }  # the manifest is a stray file here
    assert [(r["source"], r["reason"]) for r in meta["skipped"]] == [
        ("s3://corpus/set/list.csv", "not in a class folder"),
        ("s3://corpus/set/y/broken.png", "not an image"),  # a PNG signature and nothing else
    ]
    data = PreparedDataset.open("s3://corpus/prepared")
    for split in ("train", "query"):
        ids, images, labels = data.load_split_numpy(split)
        for i, row_id in enumerate(ids):
            np.testing.assert_array_equal(images[i], expected[row_id][0])
            assert data.classes[int(labels[i].argmax())] == expected[row_id][1]
    assert data.num_rows("train") + data.num_rows("query") == 8

    local = prepare(
        "manifest",
        str(tmp_path / "m"),
        path="s3://corpus/set/list.csv",
        image_size=6,
        progress=False,
    )
    assert [(r["id"], r["reason"]) for r in local["skipped"]] == [("gone.png", "missing file")]
    assert local["splits"] == meta["splits"]  # same ids, labels and seed -> the same split
