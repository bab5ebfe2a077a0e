"""What every corpus reader produces, and the shared reader for corpora that list image files.

Every source yields rows with the same columns, so ``prepare`` treats them alike:

- ``id`` (str): unique and stable across runs; for files, the path relative to the corpus root
- ``data`` (bytes): the encoded image file as found (validated later, in ``prepare``)
- ``labels`` (list[int]): class ids into ``Source.classes``
- ``source`` (str): where the row came from (a path, URI or ``file#index``)
- ``error`` (str): why the row cannot be used (e.g. "missing file"); "" when it can
- ``official_split`` (str): "train" / "test" as the corpus publishes it; "" when it has none

Rows refused while reading a listing (a manifest row with an unknown label) never become rows;
they are returned in ``Source.skipped``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import ray.data

from pipelines import storage

__all__ = ["ROWS_PER_BLOCK", "ROW_SCHEMA", "Source", "file_rows", "row_table"]

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
# Rows per block for sources listed on the driver, so reading and decoding spread over tasks.
ROWS_PER_BLOCK = 2000
_LABELS = pa.list_(pa.int32())
_LISTING_SCHEMA = pa.schema([("id", pa.string()), ("uri", pa.string()), ("labels", _LABELS)])


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


def file_rows(ids: list[str], uris: list[str], labels: list[list[int]]) -> ray.data.Dataset:
    """ROW_SCHEMA rows for listed files (row id, URI, class ids), each read in a Ray Data task.

    A file that is gone or unreadable by the time its task runs becomes a row with an ``error``,
    never a failed job.
    """
    table = pa.table(
        [pa.array(ids, pa.string()), pa.array(uris, pa.string()), pa.array(labels, _LABELS)],
        schema=_LISTING_SCHEMA,
    )
    blocks = [table.slice(i, ROWS_PER_BLOCK) for i in range(0, table.num_rows, ROWS_PER_BLOCK)]
    # Filesystems are built here, not in the tasks: workers may lack the driver's S3 environment.
    filesystems = {False: pafs.LocalFileSystem()}
    if pc.any(pc.starts_with(table.column("uri"), "s3://")).as_py():
        filesystems[True] = storage.filesystem("s3://bucket")[0]
    return ray.data.from_arrow(blocks).map_batches(
        _read_listed_files, batch_format="pyarrow", fn_kwargs={"filesystems": filesystems}
    )


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
        except OSError as err:  # S3 access denied, an archived object, a folder, a dead disk...
            data.append(b"")
            errors.append("missing file" if "not found" in str(err).lower() else "unreadable")
    return row_table(
        batch,
        data=data,
        error=errors,
        source=batch.column("uri"),
        official_split=[""] * batch.num_rows,
    )


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
