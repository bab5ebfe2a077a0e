"""Corpora packed into container files: CIFAR-10's pickled batches, Parquet tables and WebDataset
tar shards.

All are listed on the driver (file names, row groups) and unpacked inside Ray Data tasks, one
container piece per task, yielding blocks of at most ROWS_PER_BLOCK rows (ROW_SCHEMA). A piece that
cannot be read becomes one error row named after it; the job goes on.

Why a restricted unpickler for CIFAR-10: its batches are Python pickles, and unpickling runs any
callable the file names. ``_CifarUnpickler`` resolves only the globals NumPy needs to rebuild a
uint8 array (plus the latin-1 ``bytes`` helper of protocol-2 pickles); dicts, lists, bytes, str and
int need no globals at all. A file naming anything else (``os.system``...) fails to load and is
skipped; nothing it names is ever imported or called.
"""

from __future__ import annotations

import codecs
import io
import json
import pickle
import posixpath
import re
import tarfile
from collections.abc import Iterator
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import ray.data

from pipelines import storage
from pipelines.images import encode_png
from pipelines.source_rows import READ_BLOCK_BYTES, ROWS_PER_BLOCK, Source, row_table

__all__ = [
    "CIFAR10_CLASSES",
    "cifar10_source",
    "load_cifar_batch",
    "parquet_source",
    "webdataset_source",
]

CIFAR10_CLASSES = (
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
)  # fmt: skip
# Batch file -> the split CIFAR-10 publishes it as (the cifar10-full protocol uses it).
_CIFAR10_BATCHES = {**{f"data_batch_{i}": "train" for i in range(1, 6)}, "test_batch": "test"}
_CIFAR_SIDE = 32
# The only globals a CIFAR batch may name: NumPy's rebuilders of an array and its dtype.
_PICKLE_GLOBALS = frozenset(
    {
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("numpy.core.multiarray", "_reconstruct"),  # protocol 2-4 (NumPy 1 names, the real files)
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.numeric", "_frombuffer"),  # protocol 5
        ("numpy._core.numeric", "_frombuffer"),
    }
)


# ---------------------------------------------------------------------------------------------
# CIFAR-10: the "python version" folder (cifar-10-batches-py) of pickled batches


def cifar10_source(path: str | None, classes: list[str] | None) -> Source:
    """CIFAR-10 from its batches folder: data_batch_1..5 (official train), test_batch (test)."""
    if classes:
        raise ValueError("cifar10 has fixed classes (batches.meta); do not pass a class list")
    fs, root = storage.filesystem(path)
    found = {
        info.base_name: info.path
        for info in fs.get_file_info(pafs.FileSelector(root))
        if info.type == pafs.FileType.File
    }
    missing = [name for name in _CIFAR10_BATCHES if name not in found]
    if missing:
        raise FileNotFoundError(
            f"{path}: no {', '.join(missing)} (expected the cifar-10-batches-py folder)"
        )
    names = list(CIFAR10_CLASSES)
    if "batches.meta" in found:
        with fs.open_input_stream(found["batches.meta"]) as stream:
            meta = _restricted_load(stream.read())
        names = [_text(name) for name in meta["label_names"]]
    items = [{"uri": found[b], "batch": b, "split": s} for b, s in _CIFAR10_BATCHES.items()]
    rows = _task_per_item(items, _cifar_rows, fs=fs, scheme="s3://" if storage.is_s3(path) else "",
                          num_classes=len(names))  # fmt: skip
    return Source("cifar10", rows, names, "cifar10-1k", "RGB", _CIFAR_SIDE)


def load_cifar_batch(raw: bytes) -> tuple[np.ndarray, np.ndarray]:
    """A pickled CIFAR batch -> images uint8 (n, 32, 32, 3) and labels int64 (n,).

    Raises ``pickle.UnpicklingError`` for a pickle naming anything but NumPy's array rebuilders,
    ValueError for one that is not a CIFAR-10 batch.
    """
    batch = _restricted_load(raw)
    data, labels = np.asarray(batch.get("data")), np.asarray(batch.get("labels"), dtype=np.int64)
    width = 3 * _CIFAR_SIDE * _CIFAR_SIDE
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != width:
        raise ValueError(f"data is {data.dtype} {data.shape}, expected uint8 (n, {width})")
    if labels.shape != (len(data),):
        raise ValueError(f"{labels.size} labels for {len(data)} images")
    # Each row holds the red plane, then green, then blue, each 32 x 32 row-major.
    images = data.reshape(-1, 3, _CIFAR_SIDE, _CIFAR_SIDE).transpose(0, 2, 3, 1)
    return np.ascontiguousarray(images), labels


class _CifarUnpickler(pickle.Unpickler):
    """Unpickles plain containers and uint8 NumPy arrays; refuses every other global."""

    def find_class(self, module: str, name: str) -> Any:
        """The allowed global ``module.name``; UnpicklingError for any other."""
        if (module, name) == ("_codecs", "encode"):
            return _latin1_bytes  # how Python 3 pickles bytes at protocol 2
        if (module, name) in _PICKLE_GLOBALS:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}")


def _latin1_bytes(text: str, encoding: str) -> bytes:
    """``_codecs.encode`` limited to the one call protocol-2 pickles of bytes make."""
    if encoding != "latin1":
        raise pickle.UnpicklingError(f"refusing codec {encoding!r}")
    return codecs.encode(text, "latin1")


def _restricted_load(raw: bytes) -> dict[str, Any]:
    """A pickled dict with its keys as str (Python 2 pickles give bytes keys)."""
    loaded = _CifarUnpickler(io.BytesIO(raw), encoding="bytes").load()
    if not isinstance(loaded, dict):
        raise pickle.UnpicklingError(f"expected a pickled dict, found {type(loaded).__name__}")
    return {_text(key): value for key, value in loaded.items()}


def _text(value: str | bytes) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def _cifar_rows(
    batch: pa.Table, fs: pafs.FileSystem, scheme: str, num_classes: int
) -> Iterator[pa.Table]:
    """One batch file (uri, batch, split) -> ROW_SCHEMA blocks of PNG rows; a bad file -> one error row."""
    for uri, name, split in zip(*(batch.column(c).to_pylist() for c in ("uri", "batch", "split"))):
        source = scheme + uri
        try:
            with fs.open_input_stream(uri) as stream:
                images, labels = load_cifar_batch(stream.read())
        except OSError:
            yield _error_row(f"cifar10-{name}", source, "unreadable", split)
            continue
        except Exception:  # noqa: BLE001 - a damaged or hostile pickle raises almost anything
            yield _error_row(f"cifar10-{name}", source, "not a CIFAR-10 batch", split)
            continue
        for start in range(0, len(images), ROWS_PER_BLOCK):
            rows = range(start, min(start + ROWS_PER_BLOCK, len(images)))
            known = [0 <= labels[i] < num_classes for i in rows]
            yield row_table(
                None,
                id=[f"cifar10-{name}-{i:05d}" for i in rows],
                data=[encode_png(images[i]) if ok else b"" for i, ok in zip(rows, known)],
                labels=[[int(labels[i])] if ok else [] for i, ok in zip(rows, known)],
                source=[f"{source}#{i}" for i in rows],
                error=["" if ok else f"unknown label {labels[i]}" for i, ok in zip(rows, known)],
                official_split=[split] * len(rows),
            )


def _error_row(row_id: str, source: str, reason: str, split: str = "") -> pa.Table:
    """One ROW_SCHEMA row for a container piece that could not be read."""
    return row_table(
        None, id=[row_id], data=[b""], labels=[[]], source=[source], error=[reason],
        official_split=[split],
    )  # fmt: skip


# ---------------------------------------------------------------------------------------------
# Parquet: a table (a file, or a folder of *.parquet files) with image bytes and labels


def parquet_source(
    path: str | None,
    classes: list[str] | None,
    *,
    image_column: str = "image",
    labels_column: str = "labels",
    id_column: str | None = None,
) -> Source:
    """A Parquet table: encoded image bytes in ``image_column``, labels in ``labels_column``.

    Labels are class names (strings) or class ids (ints), one per row or a list per row. Without
    ``classes`` the names are the sorted distinct strings, or "0".."max" for ids; with it, names
    must be in it and ids index it. Row ids come from ``id_column``, else ``<file>#<row>``.
    Tasks split the table by row group: write row groups of a few thousand rows for parallelism.
    """
    fs, root = storage.filesystem(path)
    columns = [name for name in (image_column, labels_column, id_column) if name]
    pieces, label_chunks = [], []
    for inner, relative in _container_files(fs, root, path, (".parquet",)):
        parquet = pq.ParquetFile(inner, filesystem=fs)
        missing = [name for name in columns if name not in parquet.schema_arrow.names]
        if missing:
            raise ValueError(
                f"{relative}: no column {missing[0]!r}; it has {parquet.schema_arrow.names}"
            )
        if not classes:  # a pass over the labels alone: Parquet reads just that column
            label_chunks += parquet.read(columns=[labels_column]).column(0).chunks
        first = 0
        for group in range(parquet.num_row_groups):
            pieces.append({"uri": inner, "name": relative, "group": group, "first": first})
            first += parquet.metadata.row_group(group).num_rows
    if not pieces:
        raise ValueError(f"{path}: the table has no row groups")
    names = list(classes) if classes else _class_names(label_chunks, path)
    rows = _task_per_item(
        pieces, _parquet_rows, fs=fs, scheme="s3://" if storage.is_s3(path) else "",
        columns={"image": image_column, "labels": labels_column, "id": id_column}, classes=names,
    )  # fmt: skip
    return Source("parquet", rows, names, "random", "RGB", 64)


def _task_per_item(items: list[dict], fn: Any, **kwargs: Any) -> ray.data.Dataset:
    """``fn(one-row table, **kwargs)`` in a Ray Data task of its own for each item (a batch file,
    a row-group range): each yields many rows, so one item per block keeps tasks even."""
    return ray.data.from_items(items, override_num_blocks=len(items)).map_batches(
        fn, batch_size=1, batch_format="pyarrow", fn_kwargs=kwargs
    )


def _container_files(
    fs: pafs.FileSystem, root: str, path: str, suffixes: tuple[str, ...]
) -> list[tuple[str, str]]:
    """(inner path, name relative to ``root``) of ``root`` itself when it is a file, else of every
    file under it whose name ends with one of ``suffixes``, sorted by name."""
    info = fs.get_file_info(root)
    if info.type == pafs.FileType.File:
        return [(root, info.base_name)]
    if info.type != pafs.FileType.Directory:
        raise FileNotFoundError(f"{path}: no such file or folder")
    found = [
        (entry.path, posixpath.relpath(entry.path, root))
        for entry in fs.get_file_info(pafs.FileSelector(root, recursive=True))
        if entry.type == pafs.FileType.File and entry.base_name.endswith(suffixes)
    ]
    if not found:
        raise FileNotFoundError(f"{path}: no {' or '.join('*' + s for s in suffixes)} files")
    return sorted(found, key=lambda pair: pair[1])


def _class_names(chunks: list[pa.Array], path: str) -> list[str]:
    """Class names found in the labels column: sorted strings, or "0".."max" for integer ids."""
    values = [chunk.flatten() if pa.types.is_list(chunk.type) else chunk for chunk in chunks]
    kinds = {("str" if pa.types.is_string(v.type) or pa.types.is_large_string(v.type)
              else "int" if pa.types.is_integer(v.type) else str(v.type)) for v in values}  # fmt: skip
    if not kinds <= {"str", "int"} or len(kinds) != 1:
        raise ValueError(f"{path}: labels must be strings or integers, found {sorted(kinds)}")
    found = {x for v in values for x in v.drop_null().to_pylist()}
    if kinds == {"str"}:
        return sorted(found)
    if any(x < 0 for x in found):
        raise ValueError(f"{path}: negative class id {min(found)}")
    return [str(i) for i in range(max(found, default=-1) + 1)]


def _parquet_rows(
    batch: pa.Table, fs: pafs.FileSystem, scheme: str, columns: dict[str, str | None],
    classes: list[str],
) -> Iterator[pa.Table]:  # fmt: skip
    """One row group (uri, name, group, first) -> ROW_SCHEMA blocks; an unreadable one -> an error row."""
    index = {name: i for i, name in enumerate(classes)}
    wanted = [name for name in columns.values() if name]
    for uri, name, group, first in zip(
        *(batch.column(c).to_pylist() for c in ("uri", "name", "group", "first"))
    ):
        try:
            parquet = pq.ParquetFile(uri, filesystem=fs)
            chunks = parquet.iter_batches(
                batch_size=ROWS_PER_BLOCK, row_groups=[group], columns=wanted
            )
            for chunk in chunks:
                yield _table_rows(chunk, f"{scheme}{uri}", name, first, columns, index)
                first += chunk.num_rows
        except (OSError, pa.ArrowException):
            yield _error_row(f"{name}#row-group-{group}", f"{scheme}{uri}", "unreadable")


def _table_rows(
    chunk: pa.RecordBatch, source: str, name: str, first: int, columns: dict[str, str | None],
    index: dict[str, int],
) -> pa.Table:  # fmt: skip
    """Parquet rows -> ROW_SCHEMA rows; a row without image, id or known labels gets an error."""
    images = chunk.column(columns["image"]).to_pylist()
    raw_labels = chunk.column(columns["labels"]).to_pylist()
    written_ids = chunk.column(columns["id"]).to_pylist() if columns["id"] else None
    ids, data, labels, errors = [], [], [], []
    for i, (image, value) in enumerate(zip(images, raw_labels)):
        fallback = f"{name}#{first + i}"
        row_id = fallback if written_ids is None else written_ids[i]
        ids.append(fallback if row_id is None else str(row_id))
        row_labels, error = _label_ids(value, index)
        if row_id is None:
            error = "no id"
        elif image is None:
            error = "no image"
        labels.append([] if error else row_labels)
        data.append(b"" if error else image)
        errors.append(error)
    return row_table(
        None, id=ids, data=data, labels=labels, error=errors,
        source=[f"{source}#{first + i}" for i in range(len(ids))], official_split=[""] * len(ids),
    )  # fmt: skip


def _label_ids(value: Any, index: dict[str, int]) -> tuple[list[int], str]:
    """(class ids, "") for a label cell (a name, an id or a list of them), or ([], reason)."""
    values = value if isinstance(value, list) else [] if value is None else [value]
    values = [v for v in values if v is not None]
    if not values:
        return [], "no labels"
    ids = []
    for v in values:
        if isinstance(v, str) and v in index:
            ids.append(index[v])
        elif isinstance(v, int) and not isinstance(v, bool) and 0 <= v < len(index):
            ids.append(v)
        else:
            return [], f"unknown label {v!r}"
    return sorted(set(ids)), ""


# ---------------------------------------------------------------------------------------------
# WebDataset: tar shards of samples, each sample the members sharing a key


def webdataset_source(path: str | None, classes: list[str] | None) -> Source:
    """WebDataset tar shards (a .tar / .tar.gz file or a folder of them): a sample is the run of
    consecutive members sharing a key (the member's path up to the first dot of its name); its
    image is the ``<key>.jpg|jpeg|png|...`` member, its labels a ``<key>.cls`` member (a class id
    or name, as text) or a ``<key>.json`` member (an object whose "labels" or "label" holds names
    or ids). Classes as for parquet: without ``classes``, the sorted names or "0".."max" ids found,
    which costs a first pass over the shards (give ``classes`` to read each shard once).

    Why not ``ray.data.read_webdataset`` (Ray 2.60): a truncated shard raises in its read task and
    ends the whole job, and samples lacking a member come back as NaN cells. Here a shard that
    breaks off keeps the samples before the damage and adds one error row.
    Row ids: ``<shard name>/<key>``. One task per shard: write shards of a few thousand samples.
    """
    fs, root = storage.filesystem(path)
    found = _container_files(fs, root, path, (".tar", ".tar.gz", ".tgz"))
    shards = [{"uri": inner, "name": name} for inner, name in found]
    shard_list = ray.data.from_items(shards, override_num_blocks=len(shards))
    scheme = "s3://" if storage.is_s3(path) else ""
    if classes:
        names = list(classes)
    else:
        per_shard = shard_list.map_batches(
            _shard_label_values, batch_size=1, batch_format="pyarrow", fn_kwargs={"fs": fs}
        ).take_all()
        values = [pa.array([v for row in per_shard for v in row[kind]], dtype)
                  for kind, dtype in (("names", pa.string()), ("ids", pa.int64()))]  # fmt: skip
        if not any(len(v) for v in values):
            raise ValueError(f"{path}: no sample in the shards has a label")
        names = _class_names([v for v in values if len(v)], path)
    rows = shard_list.map_batches(
        _webdataset_rows,
        batch_size=1,
        batch_format="pyarrow",
        fn_kwargs={"fs": fs, "scheme": scheme, "classes": names},
    )
    return Source("webdataset", rows, names, "random", "RGB", 64)


_IMAGE_SUFFIXES = ("jpg", "jpeg", "png", "webp", "bmp", "gif", "tif", "tiff", "ppm", "pgm")
# What a damaged tar stream raises: tarfile's own errors, a short gzip stream, an I/O failure.
_TAR_ERRORS = (tarfile.TarError, EOFError, OSError)


def _tar_samples(uri: str, fs: pafs.FileSystem) -> Iterator[tuple[str, dict[str, bytes]]]:
    """(key, {suffix: bytes}) per sample of a shard, streamed; raises _TAR_ERRORS on damage."""
    key, sample = None, {}
    with fs.open_input_stream(uri) as stream, tarfile.open(fileobj=stream, mode="r|*") as tar:
        for member in tar:
            if not member.isfile():
                continue
            folder, _, base = member.name.rpartition("/")
            stem, dot, suffix = base.partition(".")
            if not dot:
                continue  # no suffix: not part of any sample
            member_key = f"{folder}/{stem}" if folder else stem
            if member_key != key and sample:
                yield key, sample
                sample = {}
            key = member_key
            sample[suffix.lower()] = tar.extractfile(member).read()
    if sample:
        yield key, sample


def _sample_label_value(sample: dict[str, bytes]) -> Any:
    """The sample's label cell (a name, an id or a list of them; None when it has none)."""
    if "cls" in sample:
        text = sample["cls"].decode("utf-8").strip()
        return int(text) if re.fullmatch(r"-?\d+", text) else text
    if "json" in sample:
        record = json.loads(sample["json"])
        if isinstance(record, dict):
            return record.get("labels", record.get("label"))
    return None


def _shard_label_values(batch: pa.Table, fs: pafs.FileSystem) -> pa.Table:
    """One shard -> its distinct label names and ids (a damaged shard: those before the damage)."""
    names, ids = set(), set()
    for uri in batch.column("uri").to_pylist():
        try:
            for _, sample in _tar_samples(uri, fs):
                try:
                    value = _sample_label_value(sample)
                except ValueError:
                    continue  # the row pass reports it
                for v in value if isinstance(value, list) else [value]:
                    if isinstance(v, str):
                        names.add(v)
                    elif isinstance(v, int) and not isinstance(v, bool):
                        ids.add(v)
        except _TAR_ERRORS:
            pass  # the row pass reports it
    return pa.table({"names": pa.array([sorted(names)], pa.list_(pa.string())),
                     "ids": pa.array([sorted(ids)], pa.list_(pa.int64()))})  # fmt: skip


def _webdataset_rows(
    batch: pa.Table, fs: pafs.FileSystem, scheme: str, classes: list[str]
) -> Iterator[pa.Table]:
    """One shard (uri, name) -> ROW_SCHEMA blocks; a shard that breaks off -> one more error row."""
    index = {name: i for i, name in enumerate(classes)}
    for uri, name in zip(batch.column("uri").to_pylist(), batch.column("name").to_pylist()):
        rows: dict[str, list] = {"id": [], "data": [], "labels": [], "source": [], "error": []}
        size, seen = 0, set()
        try:
            for key, sample in _tar_samples(uri, fs):
                image, labels, error = _sample_fields(sample, index)
                if key in seen:
                    image, labels, error = b"", [], "key not contiguous in the shard"
                    key = f"{key}#{len(seen)}"
                seen.add(key)
                rows["id"].append(f"{name}/{key}")
                rows["data"].append(image)
                rows["labels"].append(labels)
                rows["source"].append(f"{scheme}{uri}#{key}")
                rows["error"].append(error)
                size += len(image)
                if len(rows["id"]) >= ROWS_PER_BLOCK or size >= READ_BLOCK_BYTES:
                    yield _sample_table(rows)
                    size = 0
        except _TAR_ERRORS as err:
            truncated = isinstance(err, EOFError) or "unexpected end" in str(err)
            reason = "truncated shard" if truncated else "unreadable"
            yield _error_row(f"{name}#damaged", f"{scheme}{uri}", reason)
        if rows["id"]:
            yield _sample_table(rows)


def _sample_fields(sample: dict[str, bytes], index: dict[str, int]) -> tuple[bytes, list[int], str]:
    """(image bytes, class ids, "") of a sample, or (b"", [], why it cannot be used)."""
    image = next((sample[s] for s in _IMAGE_SUFFIXES if s in sample), None)
    if image is None:
        return b"", [], "no image"
    try:
        labels, error = _label_ids(_sample_label_value(sample), index)
    except ValueError:  # bad JSON or text that is not UTF-8
        return b"", [], "unreadable labels"
    return (b"", [], error) if error else (image, labels, "")


def _sample_table(rows: dict[str, list]) -> pa.Table:
    """The buffered sample rows as a ROW_SCHEMA table; empties the buffer."""
    table = row_table(None, **rows, official_split=[""] * len(rows["id"]))
    for column in rows.values():
        column.clear()
    return table
