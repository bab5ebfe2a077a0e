"""What every corpus reader produces, the helpers sources share, and the reader for listed files.

Every source yields rows with the same columns, so ``prepare`` treats them alike:

- ``id`` (str): unique and stable across runs; for files, the path relative to the corpus root
- ``data`` (bytes): the encoded image file as found (validated later, in ``prepare``)
- ``labels`` (list[int]): class ids into ``Source.classes``
- ``source`` (str): where the row came from (a path, URI or ``file#index``)
- ``error`` (str): why the row cannot be used (e.g. "missing file"); "" when it can
- ``official_split`` (str): "train" / "test" as the corpus publishes it; "" when it has none

Rows refused while reading a listing (a manifest row with an unknown label) never become rows;
they are returned in ``Source.skipped``.

Read tasks carry only their own block of the listing (Ray ships a slice of a table, not the table
it was cut from) and are named functions: Ray Data names a large read task by its function.
"""

from __future__ import annotations

import functools
import math
import posixpath
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import ray.data
from ray.data.block import BlockMetadata
from ray.data.datasource import Datasource, ReadTask

from pipelines import storage

__all__ = [
    "READ_BLOCK_BYTES",
    "ROWS_PER_BLOCK",
    "ROW_SCHEMA",
    "Source",
    "class_names",
    "container_files",
    "error_row",
    "file_rows",
    "label_ids",
    "listed_rows",
    "row_table",
    "task_per_item",
]

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
# Most rows per block (one Ray Data task's work) for sources listed on the driver.
ROWS_PER_BLOCK = 2000
# A listing is cut into at least this many blocks (of at least MIN_ROWS_PER_BLOCK rows): with
# only a few, the last task runs alone and leaves cores idle; with many, Ray's cost per task (CPU
# in the driver and raylet) shows (benchmarks/results/prepare_throughput.md).
TARGET_BLOCKS = 16
MIN_ROWS_PER_BLOCK = 100
# A task reading listed files hands them on in blocks of about this many bytes, so a task's
# memory does not grow with the files' size (2000 photos of 1 MB would be 2 GB in one block).
READ_BLOCK_BYTES = 32 * 1024**2
_LABELS = pa.list_(pa.int32())
_LISTING_SCHEMA = pa.schema([("id", pa.string()), ("uri", pa.string()), ("labels", _LABELS)])


@dataclass(frozen=True)
class Source:
    """A corpus read lazily: ``rows`` (ROW_SCHEMA) plus what ``prepare`` defaults to for it;
    ``path`` is where it was read from (set by ``read_source``; None for a bundled corpus)."""

    name: str
    rows: ray.data.Dataset
    classes: list[str]
    default_protocol: str
    default_mode: str
    default_size: int
    skipped: list[dict[str, str]] = field(default_factory=list)
    path: str | None = None


def file_rows(ids: list[str], uris: list[str], labels: list[list[int]]) -> ray.data.Dataset:
    """ROW_SCHEMA rows for listed files (row id, URI, class ids), each read in a Ray Data task.

    A file that is gone or unreadable by the time its task runs becomes a row with an ``error``,
    never a failed job.
    """
    table = pa.table(
        [pa.array(ids, pa.string()), pa.array(uris, pa.string()), pa.array(labels, _LABELS)],
        schema=_LISTING_SCHEMA,
    )
    # Filesystems are built here, not in the tasks: workers may lack the driver's S3 environment.
    filesystems = {False: pafs.LocalFileSystem()}
    if pc.any(pc.starts_with(table.column("uri"), "s3://")).as_py():
        filesystems[True] = storage.filesystem("s3://bucket")[0]
    return listed_rows("ListedFiles", table, _read_listed_files, filesystems=filesystems)


def listed_rows(
    name: str, table: pa.Table, read: Callable[..., Iterator[pa.Table]], **kwargs: object
) -> ray.data.Dataset:
    """A Dataset whose read tasks each run ``read(block, **kwargs)`` on one block of ``table``
    (rows listed on the driver), yielding the rows it makes of them; ``name`` names the read
    operator in Ray Data's plan and progress ("Read<name>").

    A Datasource rather than ``ray.data.from_arrow(blocks).map_batches(read)``: from_arrow puts
    every block into the object store and runs one Ray task per block for its metadata before the
    pass can start; read tasks carry their slice of the listing and fuse with the map that
    follows them.
    """
    return ray.data.read_datasource(_ListedBlocks(name, table, functools.partial(read, **kwargs)))


class _ListedBlocks(Datasource):
    """Blocks of a driver-side table, each turned into rows by ``read`` inside a read task."""

    def __init__(
        self, name: str, table: pa.Table, read: Callable[[pa.Table], Iterator[pa.Table]]
    ) -> None:
        super().__init__()
        self._name = name
        self._blocks = _listed_blocks(table)
        self._read = read

    def get_name(self) -> str:
        return self._name

    def estimate_inmemory_data_size(self) -> int:
        return sum(block.nbytes for block in self._blocks)

    def get_read_tasks(
        self, parallelism: int, per_task_row_limit: int | None = None, data_context: object = None
    ) -> list[ReadTask]:
        # One task per listed block, whatever the parallelism asked: _listed_blocks already cut
        # the listing for the cluster's cores.
        tasks = []
        for block in self._blocks:
            metadata = BlockMetadata(
                num_rows=block.num_rows, size_bytes=block.nbytes, input_files=None, exec_stats=None
            )
            tasks.append(
                ReadTask(
                    _reader(self._read, block), metadata, per_task_row_limit=per_task_row_limit
                )
            )
        return tasks


def _reader(
    read: Callable[[pa.Table], Iterator[pa.Table]], block: pa.Table
) -> Callable[[], Iterator[pa.Table]]:
    """``read(block)`` as a function of its own: Ray Data reads a read task's ``__name__`` when the
    task is large (a ``functools.partial`` has none, and the whole job fails)."""

    def read_block() -> Iterator[pa.Table]:
        return read(block)

    return read_block


def _listed_blocks(table: pa.Table) -> list[pa.Table]:
    """``table`` (rows listed on the driver) cut into blocks, one Ray Data task each."""
    rows = min(ROWS_PER_BLOCK, max(MIN_ROWS_PER_BLOCK, math.ceil(table.num_rows / TARGET_BLOCKS)))
    return [table.slice(i, rows) for i in range(0, table.num_rows, rows)]


def _read_listed_files(
    batch: pa.Table, filesystems: dict[bool, pafs.FileSystem]
) -> Iterator[pa.Table]:
    """(id, uri, labels) rows -> ROW_SCHEMA blocks of about READ_BLOCK_BYTES; a missing or
    unreadable file becomes an error row.

    ``filesystems`` maps "is an s3:// URI" to the filesystem that reads it.
    """
    first, data, errors, size = 0, [], [], 0
    uris = batch.column("uri").to_pylist()
    for number, uri in enumerate(uris, start=1):
        content, error = _read_file(filesystems[storage.is_s3(uri)], uri)
        data.append(content)
        errors.append(error)
        size += len(content)
        if size >= READ_BLOCK_BYTES or number == len(uris):
            rows = batch.slice(first, len(data))
            yield row_table(
                rows,
                data=data,
                error=errors,
                source=rows.column("uri"),
                official_split=[""] * rows.num_rows,
            )
            first, data, errors, size = number, [], [], 0


def _read_file(fs: pafs.FileSystem, uri: str) -> tuple[bytes, str]:
    """(contents, "") or (b"", why the file cannot be read)."""
    try:
        with fs.open_input_stream(storage.inner_path(uri)) as stream:
            return stream.read(), ""
    except FileNotFoundError:
        return b"", "missing file"
    except OSError as err:  # S3 access denied, an archived object, a folder, a dead disk...
        return b"", "missing file" if "not found" in str(err).lower() else "unreadable"


def row_table(batch: pa.Table | None, **columns) -> pa.Table:
    """A ROW_SCHEMA table: ``columns`` (lists or arrays) first, the rest taken from ``batch``."""
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


def error_row(row_id: str, source: str, reason: str, split: str = "") -> pa.Table:
    """One ROW_SCHEMA row for a container piece (a file, a row group, a shard) that could not be
    read."""
    return row_table(
        None,
        id=[row_id],
        data=[b""],
        labels=[[]],
        source=[source],
        error=[reason],
        official_split=[split],
    )


def task_per_item(items: list[dict], fn: Callable[..., Any], **kwargs: Any) -> ray.data.Dataset:
    """``fn(one-row table, **kwargs)`` in a Ray Data task of its own for each item (a batch file,
    a row-group range): each yields many rows, so one item per block keeps tasks even."""
    return ray.data.from_items(items, override_num_blocks=len(items)).map_batches(
        fn, batch_size=1, batch_format="pyarrow", fn_kwargs=kwargs
    )


def container_files(
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


def class_names(chunks: list[pa.Array], path: str) -> list[str]:
    """Class names found in a labels column: sorted strings, or "0".."max" for integer ids."""
    values = [chunk.flatten() if pa.types.is_list(chunk.type) else chunk for chunk in chunks]
    kinds = {
        (
            "str"
            if pa.types.is_string(v.type) or pa.types.is_large_string(v.type)
            else "int"
            if pa.types.is_integer(v.type)
            else str(v.type)
        )
        for v in values
    }
    if not kinds <= {"str", "int"} or len(kinds) != 1:
        raise ValueError(f"{path}: labels must be strings or integers, found {sorted(kinds)}")
    found = {x for v in values for x in v.drop_null().to_pylist()}
    if kinds == {"str"}:
        return sorted(found)
    if any(x < 0 for x in found):
        raise ValueError(f"{path}: negative class id {min(found)}")
    return [str(i) for i in range(max(found, default=-1) + 1)]


def label_ids(value: Any, index: dict[str, int]) -> tuple[list[int], str]:
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
