"""A Parquet table (a file, or a folder of *.parquet files) with image bytes and labels columns.

Listed on the driver by row group; each Ray Data task reads one row group and yields ROW_SCHEMA
blocks of at most ROWS_PER_BLOCK rows. A row group that cannot be read becomes one error row named
after it; a row without image, id or known labels becomes an error row; the job goes on.
"""

from __future__ import annotations

from collections.abc import Iterator

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from pipelines import storage
from pipelines.sources import register
from pipelines.sources.rows import (
    ROWS_PER_BLOCK,
    Source,
    class_names,
    container_files,
    error_row,
    label_ids,
    row_table,
    task_per_item,
)

__all__ = ["parquet_source"]


@register("parquet")
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
    for inner, relative in container_files(fs, root, path, (".parquet",)):
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
    names = list(classes) if classes else class_names(label_chunks, path)
    rows = task_per_item(
        pieces,
        _parquet_rows,
        fs=fs,
        scheme="s3://" if storage.is_s3(path) else "",
        columns={"image": image_column, "labels": labels_column, "id": id_column},
        classes=names,
    )
    return Source("parquet", rows, names, "random", "RGB", 64)


def _parquet_rows(
    batch: pa.Table,
    fs: pafs.FileSystem,
    scheme: str,
    columns: dict[str, str | None],
    classes: list[str],
) -> Iterator[pa.Table]:
    """One row group (uri, name, group, first) -> ROW_SCHEMA blocks; an unreadable one -> an error
    row."""
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
            yield error_row(f"{name}#row-group-{group}", f"{scheme}{uri}", "unreadable")


def _table_rows(
    chunk: pa.RecordBatch,
    source: str,
    name: str,
    first: int,
    columns: dict[str, str | None],
    index: dict[str, int],
) -> pa.Table:
    """Parquet rows -> ROW_SCHEMA rows; a row without image, id or known labels gets an error."""
    images = chunk.column(columns["image"]).to_pylist()
    raw_labels = chunk.column(columns["labels"]).to_pylist()
    written_ids = chunk.column(columns["id"]).to_pylist() if columns["id"] else None
    ids, data, labels, errors = [], [], [], []
    for i, (image, value) in enumerate(zip(images, raw_labels)):
        fallback = f"{name}#{first + i}"
        row_id = fallback if written_ids is None else written_ids[i]
        ids.append(fallback if row_id is None else str(row_id))
        row_labels, error = label_ids(value, index)
        if row_id is None:
            error = "no id"
        elif image is None:
            error = "no image"
        labels.append([] if error else row_labels)
        data.append(b"" if error else image)
        errors.append(error)
    return row_table(
        None,
        id=ids,
        data=data,
        labels=labels,
        error=errors,
        source=[f"{source}#{first + i}" for i in range(len(ids))],
        official_split=[""] * len(ids),
    )
