"""``hashray prepare``: corpus -> validated PNGs -> protocol split -> Parquet parts + dataset.json.

Steps: read the source (pipelines.sources); validate and normalise every image in Ray Data tasks
(bad ones become skipped rows with a reason, never an exception); stream the results once to the
driver, which spools the good rows to a local Arrow file and keeps only (id, labels) in memory;
draw the protocol's split over the good rows sorted by id, so the split never depends on Ray's
row order; write each split's rows sorted by id into ``{split}/part-NNNNN.parquet``, taken from the
memory-mapped spool; write ``dataset.json`` last, so a directory without it is a half-written one.
The ids in the Parquet files are the written-down split.

Why a spool instead of ``Dataset.sort``: a Ray sort shuffle cost 8-16 s per split even for 5,000
rows here, while the spool needs one Ray pass and local disk the size of the prepared images.

Defaults: MNIST sources keep their native 28 x 28 greyscale ("L"); folder and manifest corpora
become 64 x 64 "RGB" unless ``image_size`` / ``mode`` say otherwise (hashing needs one image size).
"""

from __future__ import annotations

import collections
import contextlib
import os
import posixpath
import tempfile
from collections.abc import Iterator
from datetime import UTC, datetime

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import ray.data
from tqdm.auto import tqdm

from hashing.splits import PROTOCOLS, split_indices
from pipelines import storage
from pipelines.images import BadImage, normalize_image
from pipelines.sources import Source, read_source

__all__ = ["IMAGE_SCHEMA", "OFFICIAL_SPLITS", "SPLITS", "prepare"]

SPLITS = ("train", "query", "database")
# Columns of every prepared Parquet part (the prepared-dataset contract in ARCHITECTURE.md).
IMAGE_SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("image", pa.binary()),
        ("labels", pa.list_(pa.int32())),
        ("source", pa.string()),
    ]
)
# Protocols whose split is the one the corpus publishes: split name -> rows' ``official_split``.
OFFICIAL_SPLITS = {"mnist-full": {"train": "train", "query": "test"}}
MAX_ROWS_PER_PART = 8192
TARGET_PART_BYTES = 64 * 1024**2
MAX_LISTED_SKIPPED = 10_000


def prepare(
    source: str,
    out: str,
    *,
    path: str | None = None,
    protocol: str | None = None,
    seed: int = 0,
    image_size: int | None = None,
    mode: str | None = None,
    classes: list[str] | None = None,
    progress: bool = True,
) -> dict:
    """Prepare corpus ``source`` (at ``path``) into ``out`` (local or s3://); returns dataset.json."""
    corpus = read_source(source, path, classes=classes)
    protocol = protocol or corpus.default_protocol
    if protocol not in PROTOCOLS and protocol not in OFFICIAL_SPLITS:
        raise ValueError(
            f"unknown protocol {protocol!r}; choose one of {sorted([*PROTOCOLS, *OFFICIAL_SPLITS])}"
        )
    mode = mode or corpus.default_mode
    side = image_size or corpus.default_size
    with (
        tempfile.TemporaryDirectory(prefix="hashray-prepare-") as spool_dir,
        _ray_progress_bars(progress),
    ):
        spool_path = os.path.join(spool_dir, "rows.arrow")
        checked = corpus.rows.map_batches(
            _normalize_rows, batch_format="pyarrow", fn_kwargs={"size": (side, side), "mode": mode}
        )
        summary = _spool_good_rows(checked, spool_path, progress)
        good = summary.filter(pc.greater_equal(summary.column("position"), 0)).sort_by("id")
        if good.num_rows == 0:
            raise ValueError(f"{source} at {path}: no usable images")
        if len(pc.unique(good.column("id"))) != good.num_rows:
            raise ValueError(f"{source} at {path}: row ids are not unique")
        split_rows = _draw_split(good, protocol, seed, len(corpus.classes))
        rows_per_part = _rows_per_part(good)
        positions = good.column("position").to_numpy()
        _remove_previous(out)
        with pa.memory_map(spool_path) as mapped:
            spool = pa.ipc.open_file(mapped)
            splits = {
                name: {"same_as": "train"}
                if rows is None
                else _write_split(spool, positions[rows], out, name, rows_per_part, progress)
                for name, rows in split_rows.items()
            }
    image = {"height": side, "width": side, "channels": 1 if mode == "L" else 3, "mode": mode}
    meta = _dataset_json(corpus, out, path, protocol, seed, image, summary, good, splits)
    storage.write_json(storage.join(out, "dataset.json"), meta)
    return meta


def _dataset_json(
    corpus: Source,
    out: str,
    path: str | None,
    protocol: str,
    seed: int,
    image: dict,
    summary: pa.Table,
    good: pa.Table,
    splits: dict[str, dict],
) -> dict:
    """dataset.json: what was read, kept, skipped and split, and the images' shape."""
    skipped = _skipped_rows(corpus.skipped, summary)
    return {
        "name": posixpath.basename(str(out).rstrip("/").replace(os.sep, "/")),
        "source": corpus.name,
        "source_path": path if path is None or storage.is_s3(path) else os.path.abspath(path),
        "protocol": protocol,
        "seed": seed,
        "classes": corpus.classes,
        "multi_label": any(len(row) > 1 for row in good.column("labels").to_pylist()),
        "image": {**image, "format": "png"},
        "splits": splits,
        "counts": {
            "input": summary.num_rows + len(corpus.skipped),
            "kept": good.num_rows,
            "skipped": len(skipped),
        },
        "skipped_reasons": dict(sorted(collections.Counter(r["reason"] for r in skipped).items())),
        "skipped": skipped[:MAX_LISTED_SKIPPED],
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }


def _normalize_rows(batch: pa.Table, size: tuple[int, int], mode: str) -> pa.Table:
    """Source rows -> (id, image PNG, labels, source, reason, official_split, nbytes); never raises.

    A row that cannot be used keeps its id and gets ``reason`` (empty image); good rows get "".
    """
    images, reasons = [], []
    for data, error in zip(batch.column("data").to_pylist(), batch.column("error").to_pylist()):
        image, reason = b"", error  # a row the source could not read keeps the source's reason
        if not error:
            try:
                image = normalize_image(data, size=size, mode=mode)
            except BadImage as bad:
                reason = bad.reason
        images.append(image)
        reasons.append(reason)
    return pa.table(
        {
            "id": batch.column("id"),
            "image": pa.array(images, pa.binary()),
            "labels": batch.column("labels"),
            "source": batch.column("source"),
            "reason": pa.array(reasons, pa.string()),
            "official_split": batch.column("official_split"),
            "nbytes": pa.array([len(image) for image in images], pa.int64()),
        }
    )


def _spool_good_rows(checked: ray.data.Dataset, spool_path: str, progress: bool) -> pa.Table:
    """Run the validation pass; good rows go to an Arrow file, the rest of every row comes back.

    Returns (id, labels, source, reason, official_split, nbytes, position): ``position`` is the
    row's place in the spool file, -1 for a skipped row.
    """
    summaries, spooled = [], 0
    with pa.OSFile(spool_path, "wb") as sink, pa.ipc.new_file(sink, IMAGE_SCHEMA) as writer:
        batches = checked.iter_batches(batch_size=None, batch_format="pyarrow")
        with tqdm(desc="validating", unit="img", disable=not progress) as bar:
            for batch in batches:
                ok = pc.equal(batch.column("reason"), "").to_numpy(zero_copy_only=False)
                writer.write_table(batch.filter(ok).select(IMAGE_SCHEMA.names).cast(IMAGE_SCHEMA))
                position = np.full(batch.num_rows, -1, dtype=np.int64)
                position[ok] = np.arange(spooled, spooled + int(ok.sum()))
                spooled += int(ok.sum())
                summaries.append(
                    batch.drop_columns(["image"]).append_column("position", pa.array(position))
                )
                bar.update(batch.num_rows)
    if not summaries:
        raise ValueError("the corpus has no rows")
    return pa.concat_tables(summaries)


def _draw_split(
    good: pa.Table, protocol: str, seed: int, num_classes: int
) -> dict[str, np.ndarray | None]:
    """Row numbers of ``good`` (sorted by id) per split; ``database`` None when it is the train split."""
    if protocol in OFFICIAL_SPLITS:
        official = np.asarray(good.column("official_split").to_pylist(), dtype=object)
        if not all(official):
            raise ValueError(f"protocol {protocol!r} needs a source with an official split (mnist)")
        rows = {
            split: np.flatnonzero(official == name)
            for split, name in OFFICIAL_SPLITS[protocol].items()
        }
        return {"train": rows["train"], "query": rows["query"], "database": None}
    labels = _label_array(good.column("labels").to_pylist(), num_classes)
    return split_indices(labels, protocol, seed)


def _label_array(labels: list[list[int]], num_classes: int) -> np.ndarray:
    """Class ids (n,) when every row has one label, else multi-hot (n, num_classes)."""
    if all(len(row) == 1 for row in labels):
        return np.asarray([row[0] for row in labels], dtype=np.int64)
    multi_hot = np.zeros((len(labels), num_classes), dtype=np.uint8)
    for i, row in enumerate(labels):
        multi_hot[i, row] = 1
    return multi_hot


def _rows_per_part(good: pa.Table) -> int:
    """Rows per Parquet part: about TARGET_PART_BYTES of images, at most MAX_ROWS_PER_PART."""
    mean_bytes = max(1, pc.sum(good.column("nbytes")).as_py() // good.num_rows)
    return int(max(1, min(MAX_ROWS_PER_PART, TARGET_PART_BYTES // mean_bytes)))


def _remove_previous(out: str) -> None:
    """Delete an earlier run's dataset.json (first: the directory stops being valid) and splits."""
    fs, root = storage.filesystem(out)
    manifest = posixpath.join(root, "dataset.json")
    if fs.get_file_info(manifest).type == pafs.FileType.File:
        fs.delete_file(manifest)
    for split in SPLITS:
        folder = posixpath.join(root, split)
        if fs.get_file_info(folder).type == pafs.FileType.Directory:
            fs.delete_dir(folder)


def _write_split(
    spool: pa.ipc.RecordBatchFileReader,
    positions: np.ndarray,
    out: str,
    split: str,
    rows_per_part: int,
    progress: bool,
) -> dict:
    """Write the spooled rows at ``positions`` (in id order) as ``{split}/part-NNNNN.parquet``."""
    fs, folder = storage.filesystem(storage.join(out, split))
    fs.create_dir(folder, recursive=True)
    starts = np.cumsum([0] + [spool.get_batch(i).num_rows for i in range(spool.num_record_batches)])
    files = []
    with tqdm(
        total=len(positions), desc=f"writing {split}", unit="img", disable=not progress
    ) as bar:
        for number, first in enumerate(range(0, len(positions), rows_per_part)):
            part = _take_spooled(spool, starts, positions[first : first + rows_per_part])
            name = f"part-{number:05d}.parquet"
            pq.write_table(part, posixpath.join(folder, name), filesystem=fs)
            files.append(f"{split}/{name}")
            bar.update(part.num_rows)
    return {"rows": len(positions), "files": files}


def _take_spooled(
    spool: pa.ipc.RecordBatchFileReader, starts: np.ndarray, positions: np.ndarray
) -> pa.Table:
    """Rows at ``positions`` of the spool, in that order; each record batch is read only once."""
    order = np.argsort(positions, kind="stable")
    ascending = positions[order]
    batch_of = np.searchsorted(starts, ascending, side="right") - 1
    pieces = [
        spool.get_batch(int(b)).take(pa.array(ascending[batch_of == b] - starts[b]))
        for b in np.unique(batch_of)
    ]
    gathered = pa.Table.from_batches(pieces, schema=IMAGE_SCHEMA)
    return gathered.take(pa.array(np.argsort(order)))  # back from position order to id order


def _skipped_rows(listing_skipped: list[dict[str, str]], summary: pa.Table) -> list[dict[str, str]]:
    """Every skipped row as {id, source, reason}, sorted by id (the listing's refusals included)."""
    bad = summary.filter(pc.less(summary.column("position"), 0)).select(["id", "source", "reason"])
    return sorted([*listing_skipped, *bad.to_pylist()], key=lambda row: (row["id"], row["source"]))


@contextlib.contextmanager
def _ray_progress_bars(enabled: bool) -> Iterator[None]:
    """Turn Ray Data's progress bars off for the block when ``enabled`` is False."""
    context = ray.data.DataContext.get_current()
    before = context.enable_progress_bars
    context.enable_progress_bars = before and enabled
    try:
        yield
    finally:
        context.enable_progress_bars = before
