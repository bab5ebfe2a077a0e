"""CIFAR-10 from its "python version" folder (cifar-10-batches-py): data_batch_1..5 are the
official train split, test_batch the test split; ``batches.meta`` names the classes.

One Ray Data task per batch file unpickles it and yields PNG rows (ROW_SCHEMA) in blocks of at most
ROWS_PER_BLOCK; a batch that cannot be read becomes one error row named after it; the job goes on.
Row ids: ``cifar10-<batch>-<row:05d>``.

Why a restricted unpickler: the batches are Python pickles, and unpickling runs any callable the
file names. ``_CifarUnpickler`` resolves only the globals NumPy needs to rebuild a uint8 array
(plus the latin-1 ``bytes`` helper of protocol-2 pickles); dicts, lists, bytes, str and int need no
globals at all. A file naming anything else (``os.system``...) fails to load and is skipped;
nothing it names is ever imported or called.
"""

from __future__ import annotations

import codecs
import io
import pickle
from collections.abc import Iterator
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs

from pipelines import storage
from pipelines.images import encode_png
from pipelines.sources import register
from pipelines.sources.rows import ROWS_PER_BLOCK, Source, error_row, row_table, task_per_item

__all__ = ["CIFAR10_CLASSES", "cifar10_source", "load_cifar_batch"]

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


@register("cifar10")
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
    rows = task_per_item(
        items,
        _cifar_rows,
        fs=fs,
        scheme="s3://" if storage.is_s3(path) else "",
        num_classes=len(names),
    )
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
    """One batch file (uri, batch, split) -> ROW_SCHEMA blocks of PNG rows; a bad file -> one error
    row."""
    for uri, name, split in zip(*(batch.column(c).to_pylist() for c in ("uri", "batch", "split"))):
        source = scheme + uri
        try:
            with fs.open_input_stream(uri) as stream:
                images, labels = load_cifar_batch(stream.read())
        except OSError:
            yield error_row(f"cifar10-{name}", source, "unreadable", split)
            continue
        except Exception:  # noqa: BLE001 - a damaged or hostile pickle raises almost anything
            yield error_row(f"cifar10-{name}", source, "not a CIFAR-10 batch", split)
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
