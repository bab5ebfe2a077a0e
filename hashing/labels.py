"""Label lists as multi-hot matrices: the one conversion every stage uses.

Labels travel as ragged lists of class ids (Parquet ``list<int32>``: flat ``values`` plus
``offsets``, row ``i`` holding ``values[offsets[i]:offsets[i+1]]``); losses and metrics take a
multi-hot matrix (n x C) in which row ``i`` has a 1 for each of its classes. Single-label data is
the case of one id per row.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["multi_hot", "multi_hot_from_lists"]


def multi_hot(
    values: np.ndarray,
    offsets: np.ndarray,
    num_classes: int | None = None,
    dtype: np.dtype | type = np.uint8,
) -> np.ndarray:
    """Flat class ids (m,) split by ``offsets`` (n + 1,) -> multi-hot (n x C) of ``dtype``.

    ``num_classes`` defaults to the largest id + 1; an id outside [0, C) is an error.
    """
    values = np.asarray(values, dtype=np.int64)
    offsets = np.asarray(offsets, dtype=np.int64)
    n = len(offsets) - 1
    if num_classes is None:
        num_classes = int(values.max()) + 1 if len(values) else 0
    if len(values) and (values.min() < 0 or values.max() >= num_classes):
        raise ValueError(
            f"class ids must lie in [0, {num_classes}), got {values.min()}..{values.max()}"
        )
    out = np.zeros((n, num_classes), dtype=dtype)
    out[np.repeat(np.arange(n), np.diff(offsets)), values] = 1
    return out


def multi_hot_from_lists(
    rows: Sequence[Sequence[int]],
    num_classes: int | None = None,
    dtype: np.dtype | type = np.uint8,
) -> np.ndarray:
    """Label lists (one list of class ids per row) -> multi-hot (n x C) of ``dtype``."""
    lengths = np.fromiter((len(row) for row in rows), dtype=np.int64, count=len(rows))
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    values = np.concatenate([np.asarray(row, dtype=np.int64) for row in rows] or [[]])
    return multi_hot(values, offsets, num_classes, dtype)
