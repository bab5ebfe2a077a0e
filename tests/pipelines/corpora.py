"""Small corpora written from their formats' specs, and plain readers of prepared output.

No hashray code here: these are the tests' independent view of the formats."""

from __future__ import annotations

import io
import pickle
import struct
import tarfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

CIFAR_NAMES = [f"class{c}" for c in range(10)]
CIFAR_BATCHES = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]


def read_split(out: Path, meta: dict, split: str) -> pa.Table:
    """The split's rows straight from the Parquet files dataset.json names."""
    entry = meta["splits"][split]
    entry = meta["splits"][entry["same_as"]] if "same_as" in entry else entry
    return pa.concat_tables([pq.read_table(Path(out) / name) for name in entry["files"]])


def kept_rows(out: Path, meta: dict) -> list[dict]:
    """Every prepared row (train and query) as dicts."""
    return read_split(out, meta, "train").to_pylist() + read_split(out, meta, "query").to_pylist()


def pixels(png: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(png)))


def png_bytes(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


def cifar_pickle(data: np.ndarray, labels: list[int], *, protocol: int, numpy1: bool) -> bytes:
    """A batch as CIFAR-10 ships it: a dict with bytes keys, ``data`` uint8 (n, 3072)."""
    batch = {
        b"batch_label": b"test batch",
        b"labels": labels,
        b"data": data,
        b"filenames": [f"img{i}.png".encode() for i in range(len(labels))],
    }
    raw = pickle.dumps(batch, protocol=protocol)
    if numpy1:  # the published files: protocol 2 by NumPy 1, whose module was numpy.core
        assert protocol == 2  # text GLOBAL opcodes, so renaming the module keeps the pickle valid
        raw = raw.replace(b"numpy._core.", b"numpy.core.")
    return raw


def cifar_pixels(row: np.ndarray) -> np.ndarray:
    """The (32, 32, 3) image of one 3072-byte row, by the format's definition: pixel (r, c) of
    channel ch (red, green, blue planes in turn) is byte ch * 1024 + r * 32 + c."""
    r, c, ch = np.meshgrid(np.arange(32), np.arange(32), np.arange(3), indexing="ij")
    return row[ch * 1024 + r * 32 + c]


def write_cifar(folder: Path, sizes: dict[str, int], seed: int) -> dict[str, tuple]:
    """data_batch_1..5 and test_batch with ``sizes`` rows, balanced labels, plus batches.meta."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    written = {}
    for number, (name, n) in enumerate(sizes.items()):
        data = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
        labels = [int(y) for y in rng.permutation(np.arange(n) % 10)]
        raw = cifar_pickle(data, labels, protocol=5 if number % 2 else 2, numpy1=number == 0)
        (folder / name).write_bytes(raw)
        written[name] = (data, labels)
    meta = {b"label_names": [name.encode() for name in CIFAR_NAMES], b"num_vis": 3072}
    (folder / "batches.meta").write_bytes(pickle.dumps(meta, protocol=2))
    return written


def write_nuswide(root: Path, seed: int) -> dict:
    """A NUS-WIDE layout with 25 concepts whose frequencies all differ (concept j: 50 - 2j
    images)."""
    rng = np.random.default_rng(seed)
    concepts = [f"concept{k:02d}" for k in rng.permutation(25)]  # frequency order != name order
    n = 60
    matrix = np.zeros((n + 2, 25), dtype=np.uint8)
    for j in range(25):
        matrix[:n, j] = (np.arange(n) * 7 + 3 * j) % n < 50 - 2 * j  # exactly 50 - 2j ones
    matrix[n:, 24] = 1  # two images carrying only the rarest concept
    listed, files = [], {}
    for i in range(n + 2):
        folder = f"tag{i % 3}"
        name = f"{i:04d}_{1000 + i}.jpg"
        listed.append(f"C:\\ImageData\\Flickr\\{folder}\\{name}")
        if i != 5:  # image 5 is listed but was never downloaded
            image = rng.integers(0, 256, (9, 7, 3), dtype=np.uint8)
            (root / "Flickr" / folder).mkdir(parents=True, exist_ok=True)
            Image.fromarray(image).save(root / "Flickr" / folder / name, format="PNG")
            files[f"{folder}/{name}"] = image
    (root / "ImageList").mkdir(parents=True)
    (root / "ImageList" / "Imagelist.txt").write_text("\r\n".join(listed) + "\r\n")
    (root / "Groundtruth" / "AllLabels").mkdir(parents=True)
    for j, concept in enumerate(concepts):
        column = "\n".join(str(v) for v in matrix[:, j]) + "\n"
        (root / "Groundtruth" / "AllLabels" / f"Labels_{concept}.txt").write_text(column)
    ids = ["/".join(path.split("\\")[-2:]) for path in listed]
    return {"concepts": concepts, "matrix": matrix, "ids": ids, "files": files}


def write_tar(path: Path, members: list[tuple[str, bytes]]) -> bytes:
    """A tar file holding ``members`` (name, contents) in this order, as WebDataset shards are
    written: the members of one sample next to each other. Returns the file's bytes."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(buffer.getvalue())
    return buffer.getvalue()


def idx_bytes(array: np.ndarray) -> bytes:
    """The idx container written from its spec: 0, 0, dtype 0x08, ndim, big-endian dims, data."""
    return (
        struct.pack(">HBB", 0, 0x08, array.ndim)
        + struct.pack(f">{array.ndim}I", *array.shape)
        + array.tobytes()
    )
