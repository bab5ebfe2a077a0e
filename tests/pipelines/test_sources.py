"""Corpus formats the tests write themselves (CIFAR-10 batches, NUS-WIDE lists, Parquet tables),
prepared on a real local Ray cluster and read back with plain pyarrow/PIL."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from corpora import (
    CIFAR_BATCHES,
    CIFAR_NAMES,
    cifar_pickle,
    cifar_pixels,
    kept_rows,
    pixels,
    png_bytes,
    read_split,
    write_cifar,
    write_nuswide,
)
from PIL import Image

from hashing.splits import split_indices
from pipelines.prepare import prepare
from pipelines.sources import read_source
from pipelines.sources.cifar10 import load_cifar_batch

pytestmark = pytest.mark.timeout(300)


# --- CIFAR-10: pickled batches ------------------------------------------------------------------


def test_cifar_batch_loader_reads_every_pickle_flavour_and_refuses_code(tmp_path):
    data = np.random.default_rng(0).integers(0, 256, (4, 3072), dtype=np.uint8)
    for protocol, numpy1 in ((2, True), (2, False), (4, False), (5, False)):
        images, labels = load_cifar_batch(
            cifar_pickle(data, [3, 1, 4, 1], protocol=protocol, numpy1=numpy1)
        )
        assert images.shape == (4, 32, 32, 3) and images.dtype == np.uint8
        np.testing.assert_array_equal(images, np.stack([cifar_pixels(r) for r in data]))
        assert labels.tolist() == [3, 1, 4, 1]

    marker = tmp_path / "pwned"

    class Exploit:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    for hostile in (
        pickle.dumps({b"data": Exploit(), b"labels": []}),
        pickle.dumps({b"data": data, b"labels": [Path("/etc/passwd")] * 4}),
    ):
        with pytest.raises(pickle.UnpicklingError, match="refusing"):
            load_cifar_batch(hostile)
    assert not marker.exists()
    with pytest.raises(ValueError, match="uint8"):
        load_cifar_batch(pickle.dumps({b"data": data[:, :100], b"labels": [0] * 4}))
    with pytest.raises(ValueError, match="labels"):
        load_cifar_batch(pickle.dumps({b"data": data, b"labels": [0] * 3}))


@pytest.fixture(scope="module")
def cifar_corpus(tmp_path_factory):
    """6,500 images: 1,100 per data batch and 1,000 in test_batch (650 per class)."""
    folder = tmp_path_factory.mktemp("cifar") / "cifar-10-batches-py"
    sizes = {name: 1000 if name == "test_batch" else 1100 for name in CIFAR_BATCHES}
    return folder, write_cifar(folder, sizes, seed=5)


def cifar_reference(written: dict) -> tuple[list[str], np.ndarray, dict[str, np.ndarray]]:
    """Every id in sorted order, its label, and its raw row, independent of hashray."""
    rows = {
        f"cifar10-{name}-{i:05d}": (labels[i], data[i])
        for name, (data, labels) in written.items()
        for i in range(len(labels))
    }
    ids = sorted(rows)
    return ids, np.array([rows[i][0] for i in ids]), {i: rows[i][1] for i in ids}


@pytest.mark.slow
@pytest.mark.ray
def test_cifar10_protocols(ray_cluster, cifar_corpus, tmp_path):
    folder, written = cifar_corpus
    ids, labels, raw = cifar_reference(written)

    meta = prepare("cifar10", str(tmp_path / "1k"), path=str(folder), progress=False)
    assert meta["protocol"] == "cifar10-1k" and meta["classes"] == CIFAR_NAMES
    assert meta["image"] == {
        "height": 32,
        "width": 32,
        "channels": 3,
        "mode": "RGB",
        "format": "png",
    }
    assert meta["counts"] == {"input": 6500, "kept": 6500, "skipped": 0}
    reference = split_indices(labels, "cifar10-1k", seed=0)
    for split in ("query", "train", "database"):
        table = read_split(tmp_path / "1k", meta, split)
        assert table.column("id").to_pylist() == [ids[i] for i in reference[split]]
        assert table.column("labels").to_pylist() == [[int(labels[i])] for i in reference[split]]
    query = read_split(tmp_path / "1k", meta, "query")
    for row_id, png in zip(query.column("id").to_pylist(), query.column("image").to_pylist()):
        np.testing.assert_array_equal(pixels(png), cifar_pixels(raw[row_id]))  # lossless
    assert len(reference["database"]) == 5500

    meta = prepare(
        "cifar10", str(tmp_path / "54k"), path=str(folder), protocol="cifar10-54k", progress=False
    )
    rows = {s: meta["splits"][s]["rows"] for s in ("query", "train", "database")}
    assert rows == {"query": 1000, "train": 5000, "database": 500}  # train excluded
    split_ids = {
        s: set(read_split(tmp_path / "54k", meta, s).column("id").to_pylist()) for s in rows
    }
    assert (
        not split_ids["database"] & split_ids["train"]
        and not split_ids["query"] & split_ids["train"]
    )

    meta = prepare(
        "cifar10", str(tmp_path / "full"), path=str(folder), protocol="cifar10-full", progress=False
    )
    assert meta["splits"]["database"] == {"same_as": "train"}
    query = read_split(tmp_path / "full", meta, "query").column("id").to_pylist()
    train = read_split(tmp_path / "full", meta, "train").column("id").to_pylist()
    assert query == [i for i in ids if i.startswith("cifar10-test_batch-")]  # the official test set
    assert train == [i for i in ids if i.startswith("cifar10-data_batch_")]


@pytest.mark.ray
def test_cifar10_damaged_batches_are_skipped_not_fatal(ray_cluster, tmp_path):
    folder = tmp_path / "cifar"
    written = write_cifar(folder, {name: 20 for name in CIFAR_BATCHES}, seed=6)
    labels = written["data_batch_2"][1]
    marker = tmp_path / "pwned"

    class Exploit:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    (folder / "data_batch_2").write_bytes(pickle.dumps({b"data": Exploit(), b"labels": labels}))
    (folder / "data_batch_4").write_bytes((folder / "data_batch_4").read_bytes()[:5000])
    bad_label = cifar_pickle(written["data_batch_5"][0], [10] + [0] * 19, protocol=2, numpy1=False)
    (folder / "data_batch_5").write_bytes(bad_label)

    meta = prepare(
        "cifar10", str(tmp_path / "out"), path=str(folder), protocol="random", progress=False
    )
    assert not marker.exists()
    assert meta["counts"] == {"input": 20 * 4 + 2, "kept": 20 * 4 - 1, "skipped": 3}
    assert [(row["id"], row["reason"]) for row in meta["skipped"]] == [
        ("cifar10-data_batch_2", "not a CIFAR-10 batch"),
        ("cifar10-data_batch_4", "not a CIFAR-10 batch"),
        ("cifar10-data_batch_5-00000", "unknown label 10"),
    ]
    assert meta["skipped"][0]["source"] == str(folder / "data_batch_2")
    assert meta["skipped"][2]["source"] == f"{folder / 'data_batch_5'}#0"


# --- NUS-WIDE: image list + one label file per concept --------------------------------------------


@pytest.mark.ray
def test_nuswide_keeps_the_most_frequent_concepts(ray_cluster, tmp_path):
    corpus = write_nuswide(tmp_path / "nus", seed=7)
    assert read_source("nuswide", str(tmp_path / "nus")).default_protocol == "nuswide21"
    meta = prepare(
        "nuswide",
        str(tmp_path / "out"),
        path=str(tmp_path / "nus"),
        protocol="random",
        image_size=8,
        progress=False,
    )
    top = corpus["concepts"][:21]  # concept j is the (j+1)-th most frequent by construction
    assert meta["classes"] == sorted(top) and meta["multi_label"] is True
    expected_skips = {
        corpus["ids"][5]: "missing file",
        corpus["ids"][60]: "none of the classes",
        corpus["ids"][61]: "none of the classes",
    }
    assert {row["id"]: row["reason"] for row in meta["skipped"]} == expected_skips
    assert meta["counts"] == {"input": 62, "kept": 59, "skipped": 3}
    rows = kept_rows(tmp_path / "out", meta)
    assert sorted(row["id"] for row in rows) == sorted(set(corpus["ids"]) - set(expected_skips))
    for row in rows:
        i = corpus["ids"].index(row["id"])
        names = [c for j, c in enumerate(corpus["concepts"]) if corpus["matrix"][i, j] and c in top]
        assert sorted(meta["classes"][k] for k in row["labels"]) == sorted(names)
        reference = Image.fromarray(corpus["files"][row["id"]]).resize(
            (8, 8), Image.Resampling.BICUBIC
        )
        np.testing.assert_array_equal(pixels(row["image"]), np.asarray(reference))
        assert row["source"] == str(tmp_path / "nus" / "Flickr" / row["id"])


# --- Parquet tables -------------------------------------------------------------------------------


def test_unknown_source_options_are_refused():
    with pytest.raises(ValueError, match="no option 'image_column'"):
        read_source("folder", "/nowhere", options={"image_column": "img"})
    with pytest.raises(ValueError, match="unknown source"):
        read_source("tiff-stack", "/nowhere")


@pytest.mark.ray
def test_parquet_named_columns_string_labels_and_bad_rows(ray_cluster, tmp_path):
    rng = np.random.default_rng(8)
    names = ["cat", "dog", "eel"]
    images = [rng.integers(0, 256, (6, 5, 3), dtype=np.uint8) for _ in range(30)]
    cells = [[names[i % 3]] + ([names[(i + 1) % 3]] if i % 5 == 0 else []) for i in range(30)]
    blobs = [png_bytes(image) for image in images]
    blobs[3], blobs[4] = None, b"GIF89a but not really"
    cells[7], cells[8], cells[9] = None, [], ["cat", "yak"]
    keys = [f"key-{i:02d}" for i in range(30)]
    table = pa.table(
        {
            "key": keys,
            "img": pa.array(blobs, pa.binary()),
            "tags": pa.array(cells, pa.list_(pa.string())),
            "other": list(range(30)),
        }
    )
    (tmp_path / "table" / "nested").mkdir(parents=True)
    pq.write_table(table.slice(0, 17), tmp_path / "table" / "a.parquet", row_group_size=5)
    pq.write_table(table.slice(17), tmp_path / "table" / "nested" / "b.parquet", row_group_size=4)

    meta = prepare(
        "parquet",
        str(tmp_path / "out"),
        path=str(tmp_path / "table"),
        image_size=5,
        classes=["eel", "dog", "cat"],
        progress=False,
        source_options={"image_column": "img", "labels_column": "tags", "id_column": "key"},
    )
    assert meta["source_options"]["image_column"] == "img"
    assert {row["id"]: row["reason"] for row in meta["skipped"]} == {
        "key-03": "no image",
        "key-04": "not an image",
        "key-07": "no labels",
        "key-08": "no labels",
        "key-09": "unknown label 'yak'",
    }
    assert meta["counts"] == {"input": 30, "kept": 25, "skipped": 5}
    assert meta["skipped"][0]["source"] == f"{tmp_path / 'table' / 'a.parquet'}#3"
    rows = kept_rows(tmp_path / "out", meta)
    assert sorted(row["id"] for row in rows) == sorted(
        set(keys) - {f"key-0{i}" for i in (3, 4, 7, 8, 9)}
    )
    for row in rows:
        i = keys.index(row["id"])
        assert sorted(row["labels"]) == sorted(["eel", "dog", "cat"].index(n) for n in cells[i])
        reference = Image.fromarray(images[i]).resize((5, 5), Image.Resampling.BICUBIC)
        np.testing.assert_array_equal(pixels(row["image"]), np.asarray(reference))


@pytest.mark.ray
def test_parquet_integer_labels_and_row_ids(ray_cluster, tmp_path):
    rng = np.random.default_rng(9)
    images = [rng.integers(0, 256, (4, 4), dtype=np.uint8) for _ in range(12)]
    labels = [int(y) for y in rng.permutation(np.arange(12) % 4)]
    table = pa.table({"image": [png_bytes(image) for image in images], "labels": labels})
    pq.write_table(table, tmp_path / "digits.parquet", row_group_size=5)

    meta = prepare(
        "parquet",
        str(tmp_path / "out"),
        path=str(tmp_path / "digits.parquet"),
        mode="L",
        image_size=4,
        progress=False,
    )
    assert meta["classes"] == ["0", "1", "2", "3"] and meta["multi_label"] is False
    assert meta["counts"] == {"input": 12, "kept": 12, "skipped": 0}
    rows = kept_rows(tmp_path / "out", meta)
    assert sorted(row["id"] for row in rows) == sorted(f"digits.parquet#{i}" for i in range(12))
    for row in rows:
        i = int(row["id"].split("#")[1])
        assert row["labels"] == [labels[i]]
        np.testing.assert_array_equal(pixels(row["image"]), images[i])
