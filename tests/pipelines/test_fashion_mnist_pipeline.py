"""Fashion-MNIST through the whole pipeline on a real local Ray: a slice of the real Debian files
(dataset-fashion-mnist) -> prepare -> train (1 epoch) -> encode -> evaluate, with the mAP
recomputed here from the Parquet codes by a plain loop."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from corpora import idx_bytes

from hashing.recipe import Recipe
from pipelines.config import TrainConfig
from pipelines.encode import encode
from pipelines.evaluate import evaluate
from pipelines.prepare import prepare
from pipelines.sources.mnist import FASHION_MNIST_PATH
from pipelines.train import train

pytestmark = [pytest.mark.ray, pytest.mark.timeout(600)]

TRAIN_ROWS, TEST_ROWS = 600, 200
STEMS = {"train": "train", "test": "t10k"}


def _read_idx(path: Path, rows: int) -> np.ndarray:
    """The first ``rows`` items of a gzipped idx file, read from its spec."""
    with gzip.open(path) as handle:
        _, _, ndim = struct.unpack(">HBB", handle.read(4))
        dims = struct.unpack(f">{ndim}I", handle.read(4 * ndim))
        item = int(np.prod(dims[1:], dtype=np.int64))
        data = np.frombuffer(handle.read(rows * item), dtype=np.uint8)
    return data.reshape(rows, *dims[1:])


@pytest.fixture(scope="module")
def fashion_slice(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The first 600 training and 200 test images of the real files, as idx files of their own."""
    if not (Path(FASHION_MNIST_PATH) / "train-images-idx3-ubyte.gz").exists():
        pytest.skip(
            f"no Fashion-MNIST in {FASHION_MNIST_PATH}: apt-get install dataset-fashion-mnist"
        )
    folder = tmp_path_factory.mktemp("fashion-slice")
    for split, rows in (("train", TRAIN_ROWS), ("test", TEST_ROWS)):
        for kind, idx in (("images", "idx3"), ("labels", "idx1")):
            name = f"{STEMS[split]}-{kind}-{idx}-ubyte.gz"
            array = _read_idx(Path(FASHION_MNIST_PATH) / name, rows)
            (folder / name).write_bytes(gzip.compress(idx_bytes(array)))
    return folder


def _naive_map(q_codes, q_labels, db_codes, db_labels, db_ids) -> float:
    """mAP@all with ties broken by id, from unpacked bits: one query at a time, plain NumPy."""
    q_bits = np.unpackbits(np.stack(q_codes), axis=1)
    db_bits = np.unpackbits(np.stack(db_codes), axis=1)
    precisions = []
    for bits, labels in zip(q_bits, q_labels, strict=True):
        distance = (db_bits != bits).sum(axis=1)
        order = sorted(range(len(db_ids)), key=lambda i: (distance[i], db_ids[i]))
        relevant = np.array([bool(set(labels) & set(db_labels[i])) for i in order])
        if relevant.any():
            hits = np.cumsum(relevant)
            precisions.append(np.mean(hits[relevant] / (np.flatnonzero(relevant) + 1)))
    return float(np.mean(precisions))


def test_real_fashion_mnist_slice_end_to_end(
    ray_cluster, fashion_slice: Path, tmp_path: Path
) -> None:
    data = str(tmp_path / "data")
    meta = prepare("fashion-mnist", data, path=str(fashion_slice), progress=False)
    assert meta["protocol"] == "fashion-mnist"
    assert meta["counts"]["kept"] == TRAIN_ROWS + TEST_ROWS

    config = TrainConfig(
        data=data,
        recipe=Recipe(bits=32, epochs=1, batch_size=64, val_fraction=0),
        out=str(tmp_path / "runs"),
        tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}",
    )
    run = train(config, progress=False)
    assert run["status"] == "finished"
    codes = str(tmp_path / "codes")
    encode(data, run["model_dir"], codes, progress=False)
    report = evaluate(codes)

    query = pq.read_table(Path(codes) / "query").to_pydict()
    database = pq.read_table(Path(codes) / "database").to_pydict()
    assert (len(query["id"]), len(database["id"])) == (TEST_ROWS, TRAIN_ROWS)
    expected = _naive_map(
        [np.frombuffer(c, np.uint8) for c in query["code"]],
        query["labels"],
        [np.frombuffer(c, np.uint8) for c in database["code"]],
        database["labels"],
        database["id"],
    )
    assert report["map_id_order"] == pytest.approx(expected, abs=1e-6)
    assert report["map_tie_aware"] > 0.2  # one epoch on 600 images: well above chance (0.1)
