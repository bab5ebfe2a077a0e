"""``hashray prepare``: corpus -> validated PNGs -> protocol split -> Parquet parts + dataset.json.

Steps: read the source (pipelines.sources); validate and normalise every image in Ray Data tasks
(bad ones become skipped rows with a reason, never an exception); stream the results once to the
driver, which spools the good rows to local Arrow files and keeps only ids, labels and reasons;
draw the protocol's split over the good rows sorted by id, so the split never depends on Ray's
row order; write each split's rows sorted by id into ``{split}/part-NNNNN.parquet``, taken from the
spool; write ``dataset.json`` last, so a directory without it is a half-written one.
The ids in the Parquet files are the written-down split.

Why a spool instead of ``Dataset.sort``: a Ray sort shuffle costs seconds per split even for a few
thousand rows, while the spool needs one Ray pass and local disk the size of the prepared images.

Defaults: MNIST sources keep their native 28 x 28 greyscale ("L") and CIFAR-10 its 32 x 32 "RGB";
folder, manifest, nuswide and parquet corpora become 64 x 64 "RGB" unless ``image_size`` / ``mode``
say otherwise (hashing needs one image size).

Memory: rows stream through Ray Data in blocks; the driver holds a block at a time, a summary row
(id, labels, reason: some 50 bytes) per image and one output part; the images themselves are only in
the on-disk spool. Listing a file corpus costs the driver up to about 2 KB per file while it lasts
(ids, paths; pyarrow's file infos on S3). tests/pipelines/test_prepare_memory.py checks that 10x the
images takes no more memory; benchmarks/results/prepare_throughput.md has the throughput.
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

from hashing.labels import multi_hot
from hashing.splits import PROTOCOLS, split_indices
from pipelines import storage
from pipelines.contracts import DATASET_FILE, SPLITS, DatasetInfo
from pipelines.images import BadImage, normalize_image
from pipelines.sources import Source, read_source

__all__ = ["IMAGE_SCHEMA", "OFFICIAL_SPLITS", "prepare"]

# Columns of every prepared Parquet part (the prepared-dataset contract, pipelines/contracts.py).
IMAGE_SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("image", pa.binary()),
        ("labels", pa.list_(pa.int32())),
        ("source", pa.string()),
    ]
)
# Protocols whose split is the one the corpus publishes: split name -> rows' ``official_split``.
# A protocol also in hashing.splits.PROTOCOLS is drawn from there for a source without one.
OFFICIAL_SPLITS = {
    "mnist-full": {"train": "train", "query": "test"},
    "cifar10-full": {"train": "train", "query": "test"},
}
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
    source_options: dict[str, str] | None = None,
    progress: bool = True,
) -> dict:
    """Prepare corpus ``source`` (at ``path``) into ``out`` (local or s3://); returns dataset.json.

    ``source_options`` are the source's own settings (parquet: image_column, labels_column,
    id_column); they are recorded in dataset.json.
    """
    if protocol is not None and protocol not in PROTOCOLS and protocol not in OFFICIAL_SPLITS:
        raise ValueError(
            f"unknown protocol {protocol!r}; choose one of {sorted([*PROTOCOLS, *OFFICIAL_SPLITS])}"
        )
    with (
        tempfile.TemporaryDirectory(prefix="hashray-prepare-") as spool_dir,
        _data_context(progress),  # before read_source: a Dataset copies the context it starts with
    ):
        corpus = read_source(source, path, classes=classes, options=source_options)
        protocol = protocol or corpus.default_protocol
        mode = mode or corpus.default_mode
        side = image_size or corpus.default_size
        spool = _Spool(spool_dir)
        checked = corpus.rows.map_batches(
            _normalize_rows, batch_format="pyarrow", fn_kwargs={"size": (side, side), "mode": mode}
        )
        summary = _spool_good_rows(checked, spool, progress)
        good = summary.filter(pc.greater_equal(summary.column("position"), 0)).sort_by("id")
        if good.num_rows == 0:
            raise ValueError(f"{source} at {corpus.path}: no usable images")
        if len(pc.unique(good.column("id"))) != good.num_rows:
            raise ValueError(f"{source} at {corpus.path}: row ids are not unique")
        split_rows = _draw_split(good, protocol, seed, len(corpus.classes))
        rows_per_part = _rows_per_part(good)
        positions = good.column("position").to_numpy()
        _remove_previous(out)
        splits = _write_splits(spool, positions, split_rows, out, rows_per_part, progress)
    image = {"height": side, "width": side, "channels": 1 if mode == "L" else 3, "mode": mode}
    meta = _dataset_json(corpus, out, protocol, seed, image, summary, good, splits)
    meta["source_options"] = dict(source_options or {})
    where = storage.join(out, DATASET_FILE)
    storage.write_json(where, DatasetInfo.from_dict(meta, where).to_dict())
    return meta


def _dataset_json(
    corpus: Source,
    out: str,
    protocol: str,
    seed: int,
    image: dict,
    summary: pa.Table,
    good: pa.Table,
    splits: dict[str, dict],
) -> dict:
    """dataset.json: what was read, kept, skipped and split, and the images' shape."""
    skipped = _skipped_rows(corpus.skipped, summary)
    path = corpus.path
    return {
        "name": posixpath.basename(str(out).rstrip("/").replace(os.sep, "/")),
        "source": corpus.name,
        "source_path": path if path is None or storage.is_s3(path) else os.path.abspath(path),
        "protocol": protocol,
        "seed": seed,
        "classes": corpus.classes,
        "multi_label": pc.max(pc.list_value_length(good.column("labels"))).as_py() > 1,
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


def _spool_good_rows(checked: ray.data.Dataset, spool: _Spool, progress: bool) -> pa.Table:
    """Run the validation pass; good rows go to the spool, the rest of every row comes back.

    Returns (id, labels, reason, official_split, source, nbytes, position): ``position`` is the
    row's place in the spool, -1 for a skipped row; ``source`` is kept for skipped rows.
    """
    summaries = []
    batches = checked.iter_batches(batch_size=None, batch_format="pyarrow")
    with tqdm(desc="validating", unit="img", disable=not progress) as bar:
        for batch in batches:
            ok = pc.equal(batch.column("reason"), "").to_numpy(zero_copy_only=False)
            position = np.full(batch.num_rows, -1, dtype=np.int64)
            # Filtering copies every image; most blocks are all good and go to the spool as they
            # are.
            good = batch if ok.all() else batch.filter(ok)
            position[ok] = spool.append(good.select(IMAGE_SCHEMA.names))
            summaries.append(_summary(batch, ok, position))
            bar.update(batch.num_rows)
    if not summaries:
        raise ValueError("the corpus has no rows")
    return pa.concat_tables(summaries)


def _summary(batch: pa.Table, ok: np.ndarray, position: np.ndarray) -> pa.Table:
    """What the split and dataset.json need of a validated block, copied out of it.

    A copy because zero-copy columns would keep the whole block, images included, alive in Ray's
    object store (and mapped into this process) until prepare ends: memory growing with the
    corpus. Good rows' sources are in the spool; the summary keeps the skipped rows' only.
    """
    columns = {name: batch.column(name) for name in ("id", "labels", "reason", "official_split")}
    columns["source"] = pc.if_else(pa.array(ok), "", batch.column("source"))
    columns["nbytes"] = batch.column("nbytes")
    copied = pa.table(columns).take(pa.array(np.arange(batch.num_rows)))
    return copied.append_column("position", pa.array(position))


def _draw_split(
    good: pa.Table, protocol: str, seed: int, num_classes: int
) -> dict[str, np.ndarray | None]:
    """Row numbers of ``good`` (sorted by id) per split; ``database`` None when it is the train
    split."""
    official = good.column("official_split").to_numpy(zero_copy_only=False)
    has_official = bool((official != "").all())
    if protocol in OFFICIAL_SPLITS and (has_official or protocol not in PROTOCOLS):
        if not has_official:
            raise ValueError(
                f"protocol {protocol!r} needs a source with an official split (mnist, cifar10)"
            )
        rows = {
            split: np.flatnonzero(official == name)
            for split, name in OFFICIAL_SPLITS[protocol].items()
        }
        return {"train": rows["train"], "query": rows["query"], "database": None}
    labels = _label_array(good.column("labels"), num_classes)
    return split_indices(labels, protocol, seed, official_split=official if has_official else None)


def _label_array(labels: pa.ChunkedArray, num_classes: int) -> np.ndarray:
    """Class ids (n,) when every row has one label, else multi-hot (n, num_classes)."""
    lists = labels.combine_chunks()
    lengths = pc.list_value_length(lists).to_numpy(zero_copy_only=False)
    values = lists.flatten().to_numpy().astype(np.int64)
    if (lengths == 1).all():
        return values
    return multi_hot(values, np.concatenate([[0], np.cumsum(lengths)]), num_classes)


def _rows_per_part(good: pa.Table) -> int:
    """Rows per Parquet part: about TARGET_PART_BYTES of images, at most MAX_ROWS_PER_PART."""
    mean_bytes = max(1, pc.sum(good.column("nbytes")).as_py() // good.num_rows)
    return int(max(1, min(MAX_ROWS_PER_PART, TARGET_PART_BYTES // mean_bytes)))


def _remove_previous(out: str) -> None:
    """Delete an earlier run's dataset.json (first: the directory stops being valid) and splits."""
    fs, root = storage.filesystem(out)
    manifest = posixpath.join(root, DATASET_FILE)
    if fs.get_file_info(manifest).type == pafs.FileType.File:
        fs.delete_file(manifest)
    for split in SPLITS:
        folder = posixpath.join(root, split)
        if fs.get_file_info(folder).type == pafs.FileType.Directory:
            fs.delete_dir(folder)


class _Spool:
    """Good rows on local disk, one Arrow file per validated block, taken back by position.

    One file per block, memory-mapped only while rows are taken from it: the pages the kernel maps
    in around each row read stay within one block, so peak memory does not grow with the corpus
    (one big mapped file ends up wholly resident, as rows of a part lie all over it).
    """

    def __init__(self, folder: str) -> None:
        self.folder = folder
        self.files: list[str] = []
        self.starts = [0]  # position of the first row of each file, then the total

    def append(self, rows: pa.Table) -> np.ndarray:
        """Store ``rows`` (IMAGE_SCHEMA columns); their positions."""
        first = self.starts[-1]
        if rows.num_rows:
            path = os.path.join(self.folder, f"block-{len(self.files):06d}.arrow")
            with pa.OSFile(path, "wb") as sink, pa.ipc.new_file(sink, IMAGE_SCHEMA) as writer:
                writer.write_table(rows.cast(IMAGE_SCHEMA))
            self.files.append(path)
            self.starts.append(first + rows.num_rows)
        return np.arange(first, first + rows.num_rows)

    def take(self, positions: np.ndarray) -> pa.Table:
        """Rows at ``positions``, in that order, copied out; each file is mapped once."""
        order = np.argsort(positions, kind="stable")
        ascending = positions[order]
        starts = np.asarray(self.starts)
        file_of = np.searchsorted(starts, ascending, side="right") - 1
        pieces = [
            _take_rows(self.files[f], ascending[file_of == f] - starts[f])
            for f in np.unique(file_of)
        ]
        gathered = pa.concat_tables(pieces)
        return gathered.take(pa.array(np.argsort(order)))  # position order -> id order


def _take_rows(path: str, rows: np.ndarray) -> pa.Table:
    """Copies of ``rows`` of one spool file; the mapping is gone when this returns."""
    with pa.memory_map(path) as mapped:
        return pa.ipc.open_file(mapped).read_all().take(pa.array(rows))


def _write_splits(
    spool: _Spool,
    positions: np.ndarray,
    split_rows: dict[str, np.ndarray | None],
    out: str,
    rows_per_part: int,
    progress: bool,
) -> dict[str, dict]:
    """Write each split's spooled rows (in id order) as ``{split}/part-NNNNN.parquet``.

    One part at a time: a second writer thread barely shortens this phase but doubles its peak
    memory, and the extra grows with the number of spool files a part gathers from
    (tests/pipelines/test_prepare_memory.py bounds the driver's growth).
    """
    jobs, splits = [], {}
    for split, rows in split_rows.items():
        if rows is None:
            splits[split] = {"same_as": "train"}
            continue
        fs, folder = storage.filesystem(storage.join(out, split))
        fs.create_dir(folder, recursive=True)
        starts = range(0, len(rows), rows_per_part)
        names = [f"part-{number:05d}.parquet" for number in range(len(starts))]
        splits[split] = {"rows": len(rows), "files": [f"{split}/{name}" for name in names]}
        jobs += [
            (fs, posixpath.join(folder, name), positions[rows[first : first + rows_per_part]])
            for name, first in zip(names, starts)
        ]
    total = sum(len(part) for _, _, part in jobs)
    with tqdm(total=total, desc="writing", unit="img", disable=not progress) as bar:
        for job in jobs:
            bar.update(_write_part(spool, *job))
    return splits


def _write_part(spool: _Spool, fs: pafs.FileSystem, path: str, positions: np.ndarray) -> int:
    """One Parquet part of the spooled rows at ``positions``; its row count."""
    part = spool.take(positions)
    pq.write_table(part, path, filesystem=fs)
    rows = part.num_rows
    del part
    # Give the part's memory back: the allocator's cache otherwise grows part by part.
    pa.default_memory_pool().release_unused()
    return rows


def _skipped_rows(listing_skipped: list[dict[str, str]], summary: pa.Table) -> list[dict[str, str]]:
    """Every skipped row as {id, source, reason}, sorted by id (the listing's refusals included)."""
    bad = summary.filter(pc.less(summary.column("position"), 0)).select(["id", "source", "reason"])
    return sorted([*listing_skipped, *bad.to_pylist()], key=lambda row: (row["id"], row["source"]))


@contextlib.contextmanager
def _data_context(progress: bool) -> Iterator[None]:
    """Ray Data settings for the Datasets made inside the block: progress bars off unless
    ``progress``, and no per-operator resource reservation.

    Why no reservation: Ray 2.60's allocator takes the cluster's size from its autoscaling
    coordinator, whose answer arrives a second after an execution starts; until then the limits
    are zero and the allocator lets one task run at a time (10k images: six blocks in a row on
    one worker while the other cores idled, then four at once). prepare is a single fused map
    whose consumer, the driver's spool, is far faster than the tasks, so the reservation has
    nothing to share out; Ray still runs at most one task per logical CPU, and the object store
    caps and spills what waits.
    """
    context = ray.data.DataContext.get_current()
    before = context.enable_progress_bars, context.op_resource_reservation_enabled
    context.enable_progress_bars = before[0] and progress
    context.op_resource_reservation_enabled = False
    try:
        yield
    finally:
        context.enable_progress_bars, context.op_resource_reservation_enabled = before
