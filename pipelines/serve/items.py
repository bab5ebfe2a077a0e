"""Items of a prepared dataset by id, for the search service: labels, split and image thumbnails.

``ItemStore`` reads a prepared dataset (``hashray prepare``'s output, local or s3://) without
loading its images: at start it reads only the ``id`` and ``labels`` columns of every part and
keeps an id -> (part, row) map; an image is read when asked for, one Parquet row group's
``image`` column at a time. The last few row groups read are kept (up to ``CACHE_BYTES``), so
the thumbnails of one result page, which often share parts, cost one read per part.

An id in several splits (a database that repeats train rows) is reported under the first of
``database``, ``query``, ``train`` that holds it. Ids are only ever dictionary keys here, never
parts of a path. No Ray, no HTTP: the ``Search`` ingress calls this from a worker thread.
"""

from __future__ import annotations

import io
import threading
from collections import OrderedDict
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from pipelines import storage
from pipelines.dataset import PreparedDataset

__all__ = ["CACHE_BYTES", "SPLIT_ORDER", "THUMBNAIL_SIDE", "ItemStore"]

SPLIT_ORDER = ("database", "query", "train")  # which split an id shared by several is reported in
THUMBNAIL_SIDE = 256  # stored images larger than this are scaled down to fit it
CACHE_BYTES = 128 * 1024 * 1024


class ItemStore:
    """The items of the prepared dataset at ``path``: ``item(id)``, ``image(id)``, ``sample()``.

    ``item`` and ``image`` raise ``KeyError`` for an id the dataset does not hold; ``sample``
    raises ``KeyError`` for a split without rows. Safe to call from several threads.
    """

    def __init__(self, path: str) -> None:
        self.dataset = PreparedDataset.open(path)
        self._files: list[str] = []  # part URIs, each once (a split may be the same as another)
        self._groups: list[np.ndarray] = []  # per part: the first row of each row group, then rows
        self._index: dict[str, int] = {}  # id -> position in the arrays below
        self._ids: list[str] = []  # position -> id
        part_of, row_of, labels, split_of = [], [], [], []
        in_part: dict[str, list[int]] = {}  # part URI -> the positions of its rows' ids
        self._members: dict[str, np.ndarray] = {}  # split -> positions of its ids
        for split in SPLIT_ORDER:
            members = []
            for uri in self.dataset.split_files(split):
                if uri in in_part:  # a split stored as another: its ids are already here
                    members.extend(in_part[uri])
                    continue
                table, starts = _read_ids(uri)
                self._files.append(uri)
                self._groups.append(starts)
                part = len(self._files) - 1
                ids = table.column("id").to_pylist()
                lists = table.column("labels").to_pylist()
                in_part[uri] = []
                for row, (item, item_labels) in enumerate(zip(ids, lists, strict=True)):
                    position = self._index.setdefault(item, len(self._ids))
                    in_part[uri].append(position)
                    if position == len(self._ids):
                        self._ids.append(item)
                        part_of.append(part)
                        row_of.append(row)
                        labels.append(tuple(item_labels))
                        split_of.append(split)
                members.extend(in_part[uri])
            self._members[split] = np.asarray(members, dtype=np.int64)
        self._part_of = np.asarray(part_of, dtype=np.int32)
        self._row_of = np.asarray(row_of, dtype=np.int64)
        self._labels, self._split_of = labels, split_of
        self._cache: OrderedDict[tuple[int, int], pa.Array] = OrderedDict()
        self._cached_bytes = 0
        self._lock = threading.Lock()
        self._rng = np.random.default_rng()

    def __len__(self) -> int:
        return len(self._index)

    def summary(self) -> dict[str, Any]:
        """The dataset as the page needs it: name, classes, image shape, rows per split."""
        info = self.dataset.info
        return {
            "name": info.name,
            "classes": list(info.classes),
            "multi_label": info.multi_label,
            "image": {"height": info.image.height, "width": info.image.width},
            "splits": {split: self.dataset.num_rows(split) for split in SPLIT_ORDER},
            "items": len(self),
        }

    def item(self, item_id: str) -> dict[str, Any]:
        """``{"id", "split", "labels", "label_names"}`` of ``item_id``; KeyError if unknown."""
        position = self._index[item_id]
        labels = list(self._labels[position])
        classes = self.dataset.info.classes
        return {
            "id": item_id,
            "split": self._split_of[position],
            "labels": labels,
            "label_names": [classes[i] if 0 <= i < len(classes) else str(i) for i in labels],
        }

    def sample(self, split: str) -> dict[str, Any]:
        """A uniformly random item of ``split``; KeyError when the split has no rows."""
        members = self._members.get(split)
        if members is None or len(members) == 0:
            raise KeyError(split)
        position = int(members[self._rng.integers(len(members))])
        return self.item(self._ids[position])

    def image(self, item_id: str) -> bytes:
        """PNG bytes of ``item_id``: the stored image, or scaled to fit ``THUMBNAIL_SIDE``."""
        position = self._index[item_id]
        data = self._stored_png(int(self._part_of[position]), int(self._row_of[position]))
        spec = self.dataset.info.image
        if max(spec.height, spec.width) <= THUMBNAIL_SIDE:
            return data
        with Image.open(io.BytesIO(data)) as image:
            image.thumbnail((THUMBNAIL_SIDE, THUMBNAIL_SIDE))
            buffer = io.BytesIO()
            image.save(buffer, format="PNG")
        return buffer.getvalue()

    def _stored_png(self, part: int, row: int) -> bytes:
        starts = self._groups[part]
        group = int(np.searchsorted(starts, row, side="right")) - 1
        key = (part, group)
        with self._lock:  # one reader at a time: concurrent misses would read the same group
            column = self._cache.get(key)
            if column is None:
                fs, inner = storage.filesystem(self._files[part])
                with fs.open_input_file(inner) as handle:
                    table = pq.ParquetFile(handle).read_row_group(group, columns=["image"])
                column = table.column("image").combine_chunks()
                self._cache[key] = column
                self._cached_bytes += column.nbytes
                while self._cached_bytes > CACHE_BYTES and len(self._cache) > 1:
                    _, dropped = self._cache.popitem(last=False)
                    self._cached_bytes -= dropped.nbytes
            else:
                self._cache.move_to_end(key)
            return column[row - int(starts[group])].as_py()


def _read_ids(uri: str) -> tuple[pa.Table, np.ndarray]:
    """A part's ``id`` and ``labels`` columns, and the first row of each row group (then rows)."""
    fs, inner = storage.filesystem(uri)
    with fs.open_input_file(inner) as handle:
        parquet = pq.ParquetFile(handle)
        table = parquet.read(columns=["id", "labels"])
        sizes = [parquet.metadata.row_group(g).num_rows for g in range(parquet.num_row_groups)]
    return table, np.concatenate([[0], np.cumsum(sizes, dtype=np.int64)])
