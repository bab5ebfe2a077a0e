"""Read and write codes directories, local or ``s3://``.

The contract (files, columns, ``hashray.*`` metadata keys, the ``_SUCCESS.json`` manifest) is
defined in ``pipelines/contracts.py``; this module does the I/O. The manifest is removed first and
written last, so a directory without it is half-written and readers refuse it.
"""

from __future__ import annotations

import hashlib
import posixpath
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from hashing.codes import code_bytes
from hashing.labels import multi_hot
from pipelines import storage
from pipelines.contracts import (
    CODE_COLUMN,
    CODES_METADATA_KEYS,
    EMBEDDING_COLUMN,
    ID_COLUMN,
    LABELS_COLUMN,
    MANIFEST,
    METADATA_PREFIX,
    PART_PREFIX,
    CodesManifest,
    PartFile,
)

__all__ = [
    "Codes",
    "IncompleteCodesError",
    "codes_table",
    "read_codes",
    "read_manifest",
    "read_metadata",
    "write_codes",
]


class IncompleteCodesError(FileNotFoundError):
    """A codes directory without its ``_SUCCESS.json`` manifest (interrupted or still running)."""


@dataclass(frozen=True)
class Codes:
    """A whole codes directory in memory, rows in file order (encode writes them sorted by id)."""

    ids: np.ndarray  # (n,) object array of str
    codes: np.ndarray  # (n x bits/8) uint8
    label_values: np.ndarray | None  # all rows' labels concatenated, int32
    label_offsets: np.ndarray | None  # (n+1,) int64: row i's labels are values[off[i]:off[i+1]]
    embeddings: np.ndarray | None  # (n x dim) float32
    metadata: dict[str, str]  # schema metadata without the "hashray." prefix
    manifest: CodesManifest

    @property
    def bits(self) -> int:
        return self.manifest.bits

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def labels(self) -> list[np.ndarray] | None:
        """Per-row label lists (int32 arrays), or None when the codes carry no labels."""
        if self.label_values is None:
            return None
        return np.split(self.label_values, self.label_offsets[1:-1])

    def multi_hot(self, num_classes: int | None = None) -> np.ndarray:
        """Labels as multi-hot uint8 (n x C); C defaults to metadata ``num_classes`` or
        max label + 1."""
        if self.label_values is None:
            raise ValueError(f"these codes carry no labels (no {LABELS_COLUMN!r} column)")
        if num_classes is None and "num_classes" in self.metadata:
            num_classes = int(self.metadata["num_classes"])
        return multi_hot(self.label_values, self.label_offsets, num_classes)


def codes_table(
    ids: Any, codes: np.ndarray, *, labels: Any = None, embeddings: np.ndarray | None = None
) -> pa.Table:
    """Contract columns from ids (n,), packed codes uint8 (n x bytes), label lists,
    embeddings (n x dim)."""
    codes = np.ascontiguousarray(codes, dtype=np.uint8)
    if codes.ndim != 2:
        raise ValueError(f"codes must be (n x bytes) uint8, got shape {codes.shape}")
    n, nbytes = codes.shape
    columns = {
        ID_COLUMN: pa.array(ids, type=pa.string()),
        CODE_COLUMN: pa.FixedSizeBinaryArray.from_buffers(
            pa.binary(nbytes), n, [None, pa.py_buffer(codes.tobytes())]
        ),
    }
    if labels is not None:
        columns[LABELS_COLUMN] = (
            labels.cast(pa.list_(pa.int32()))
            if isinstance(labels, (pa.Array, pa.ChunkedArray))
            else pa.array([np.asarray(row, dtype=np.int32) for row in labels], pa.list_(pa.int32()))
        )
    if embeddings is not None:
        embeddings = np.ascontiguousarray(embeddings, dtype=np.float32)
        if embeddings.shape[0] != n or embeddings.ndim != 2:
            raise ValueError(f"embeddings must be ({n} x dim), got shape {embeddings.shape}")
        offsets = pa.array(np.arange(n + 1, dtype=np.int32) * embeddings.shape[1])
        columns[EMBEDDING_COLUMN] = pa.ListArray.from_arrays(offsets, pa.array(embeddings.ravel()))
    table = pa.table(columns)
    if any(len(col) != n for col in table.columns):
        raise ValueError("ids, codes, labels and embeddings must have the same number of rows")
    return table


def write_codes(
    out: str, parts: Iterable[pa.Table], *, bits: int, metadata: Mapping[str, Any]
) -> CodesManifest:
    """Replace the codes directory ``out`` with one part file per table; returns the manifest.

    Old manifest first, then old part files are removed; the manifest is written last. ``metadata``
    keys (``CODES_METADATA_KEYS``) get the ``hashray.`` prefix; values are stored as strings and
    None values are left out.
    """
    unknown = sorted(set(metadata) - set(CODES_METADATA_KEYS))
    if unknown:
        raise ValueError(f"unknown codes metadata {unknown}; the keys are {CODES_METADATA_KEYS}")
    nbytes = code_bytes(bits)
    schema_metadata = {
        f"{METADATA_PREFIX}{k}": str(v) for k, v in metadata.items() if v is not None
    }
    schema_metadata[f"{METADATA_PREFIX}bits"] = str(bits)
    _clear(out)
    files, schema = [], None
    for index, table in enumerate(parts):
        if table.schema.field(CODE_COLUMN).type != pa.binary(nbytes):
            raise ValueError(
                f"{bits}-bit codes need fixed_size_binary[{nbytes}], got {table.schema}"
            )
        schema = schema or table.schema
        if not table.schema.equals(schema, check_metadata=False):
            raise ValueError(f"every part needs the same columns: {table.schema} vs {schema}")
        if table.column(ID_COLUMN).null_count or table.column(CODE_COLUMN).null_count:
            raise ValueError("codes tables must not hold null ids or codes")
        table = table.replace_schema_metadata(schema_metadata)
        sink = pa.BufferOutputStream()
        pq.write_table(table, sink, compression="zstd")
        data = sink.getvalue().to_pybytes()
        name = f"{PART_PREFIX}{index:05d}.parquet"
        storage.write_bytes(storage.join(out, name), data)
        files.append(
            PartFile(path=name, rows=table.num_rows, sha256=hashlib.sha256(data).hexdigest())
        )
    manifest = CodesManifest(rows=sum(f.rows for f in files), bits=bits, files=files)
    storage.write_json(storage.join(out, MANIFEST), manifest.to_dict())
    return manifest


def read_manifest(path: str) -> CodesManifest:
    """The ``_SUCCESS.json`` of a codes directory; raises ``IncompleteCodesError`` without one."""
    where = storage.join(path, MANIFEST)
    try:
        data = storage.read_json(where)
    except FileNotFoundError:
        raise IncompleteCodesError(
            f"incomplete codes directory: {path} has no {MANIFEST} (the run that wrote it was "
            "interrupted or is still running); re-run hashray encode"
        ) from None
    return CodesManifest.from_dict(data, where)


def read_metadata(path: str) -> tuple[CodesManifest, dict[str, str]]:
    """A complete codes directory's manifest and schema metadata (no prefix), reading no rows."""
    manifest = read_manifest(path)
    if not manifest.files:
        raise ValueError(f"{path}: {MANIFEST} lists no files")
    fs, inner = storage.filesystem(storage.join(path, manifest.files[0].path))
    return manifest, _metadata(pq.read_schema(inner, filesystem=fs))


def read_codes(path: str, *, verify: bool = False) -> Codes:
    """Load a complete codes directory; ``verify`` also checks every file's sha256 against the
    manifest."""
    manifest = read_manifest(path)
    tables = []
    for entry in manifest.files:
        data = storage.read_bytes(storage.join(path, entry.path))
        if verify and hashlib.sha256(data).hexdigest() != entry.sha256:
            raise ValueError(f"{entry.path} in {path} does not match its sha256 in {MANIFEST}")
        table = pq.read_table(pa.BufferReader(data))
        if table.num_rows != entry.rows:
            raise ValueError(
                f"{entry.path} in {path} has {table.num_rows} rows, {MANIFEST} says {entry.rows}"
            )
        tables.append(table)
    if not tables:
        raise ValueError(f"{path}: {MANIFEST} lists no files")
    table = pa.concat_tables(tables).combine_chunks()
    if table.num_rows != manifest.rows:
        raise ValueError(f"{path} has {table.num_rows} rows, {MANIFEST} says {manifest.rows}")
    metadata = _metadata(tables[0].schema)
    bits = manifest.bits
    width = table.schema.field(CODE_COLUMN).type
    if metadata.get("bits") != str(bits) or width != pa.binary(code_bytes(bits)):
        raise ValueError(
            f"{path}: code width or hashray.bits disagrees with {bits} bits in {MANIFEST}"
        )
    return Codes(
        ids=table.column(ID_COLUMN).to_numpy(zero_copy_only=False).astype(object),
        codes=_fixed_binary_to_uint8(table.column(CODE_COLUMN), bits),
        label_values=_list_values(table, LABELS_COLUMN, np.int32),
        label_offsets=_list_offsets(table, LABELS_COLUMN),
        embeddings=_embeddings(table),
        metadata=metadata,
        manifest=manifest,
    )


def _metadata(schema: pa.Schema) -> dict[str, str]:
    """A part's ``hashray.*`` schema metadata, keys without the prefix."""
    return {
        k.decode()[len(METADATA_PREFIX) :]: v.decode()
        for k, v in (schema.metadata or {}).items()
        if k.decode().startswith(METADATA_PREFIX)
    }


def _clear(out: str) -> None:
    """Remove a previous manifest (first) and part files so stale parts never mix with new ones."""
    fs, inner = storage.filesystem(out)
    manifest = posixpath.join(inner, MANIFEST)
    if fs.get_file_info(manifest).type == pafs.FileType.File:
        fs.delete_file(manifest)
    selector = pafs.FileSelector(inner, allow_not_found=True)
    for info in fs.get_file_info(selector):
        if info.type == pafs.FileType.File and info.base_name.startswith(PART_PREFIX):
            fs.delete_file(info.path)


def _fixed_binary_to_uint8(column: pa.ChunkedArray, bits: int) -> np.ndarray:
    array = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    nbytes = code_bytes(bits)
    buffer = np.frombuffer(array.buffers()[1], dtype=np.uint8)
    return (
        buffer[array.offset * nbytes : (array.offset + len(array)) * nbytes]
        .reshape(-1, nbytes)
        .copy()
    )


def _list_column(table: pa.Table, name: str) -> pa.ListArray | None:
    if name not in table.column_names:
        return None
    column = table.column(name)
    return column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column


def _list_values(table: pa.Table, name: str, dtype: type) -> np.ndarray | None:
    array = _list_column(table, name)
    return None if array is None else array.flatten().to_numpy(zero_copy_only=False).astype(dtype)


def _list_offsets(table: pa.Table, name: str) -> np.ndarray | None:
    array = _list_column(table, name)
    if array is None:
        return None
    offsets = array.offsets.to_numpy().astype(np.int64)
    return offsets - offsets[0]


def _embeddings(table: pa.Table) -> np.ndarray | None:
    values = _list_values(table, EMBEDDING_COLUMN, np.float32)
    if values is None:
        return None
    n = table.num_rows
    return values.reshape(n, -1) if n else values.reshape(0, 0)
