"""WebDataset tar shards (a .tar / .tar.gz file or a folder of them), one Ray Data task per shard.

A sample is the run of consecutive members sharing a key; a shard that breaks off keeps the samples
before the damage and adds one error row; a sample without image or known labels is an error row.
Row ids: ``<shard name>/<key>``.
"""

from __future__ import annotations

import json
import re
import tarfile
from collections.abc import Iterator
from typing import Any

import pyarrow as pa
import pyarrow.fs as pafs
import ray.data

from pipelines import storage
from pipelines.sources import register
from pipelines.sources.rows import (
    READ_BLOCK_BYTES,
    ROWS_PER_BLOCK,
    Source,
    class_names,
    container_files,
    error_row,
    label_ids,
    row_table,
)

__all__ = ["webdataset_source"]


@register("webdataset")
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
    found = container_files(fs, root, path, (".tar", ".tar.gz", ".tgz"))
    shards = [{"uri": inner, "name": name} for inner, name in found]
    shard_list = ray.data.from_items(shards, override_num_blocks=len(shards))
    scheme = "s3://" if storage.is_s3(path) else ""
    if classes:
        names = list(classes)
    else:
        per_shard = shard_list.map_batches(
            _shard_label_values, batch_size=1, batch_format="pyarrow", fn_kwargs={"fs": fs}
        ).take_all()
        values = [
            pa.array([v for row in per_shard for v in row[kind]], dtype)
            for kind, dtype in (("names", pa.string()), ("ids", pa.int64()))
        ]
        if not any(len(v) for v in values):
            raise ValueError(f"{path}: no sample in the shards has a label")
        names = class_names([v for v in values if len(v)], path)
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
    return pa.table(
        {
            "names": pa.array([sorted(names)], pa.list_(pa.string())),
            "ids": pa.array([sorted(ids)], pa.list_(pa.int64())),
        }
    )


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
            yield error_row(f"{name}#damaged", f"{scheme}{uri}", reason)
        if rows["id"]:
            yield _sample_table(rows)


def _sample_fields(sample: dict[str, bytes], index: dict[str, int]) -> tuple[bytes, list[int], str]:
    """(image bytes, class ids, "") of a sample, or (b"", [], why it cannot be used)."""
    image = next((sample[s] for s in _IMAGE_SUFFIXES if s in sample), None)
    if image is None:
        return b"", [], "no image"
    try:
        labels, error = label_ids(_sample_label_value(sample), index)
    except ValueError:  # bad JSON or text that is not UTF-8
        return b"", [], "unreadable labels"
    return (b"", [], error) if error else (image, labels, "")


def _sample_table(rows: dict[str, list]) -> pa.Table:
    """The buffered sample rows as a ROW_SCHEMA table; empties the buffer."""
    table = row_table(None, **rows, official_split=[""] * len(rows["id"]))
    for column in rows.values():
        column.clear()
    return table
