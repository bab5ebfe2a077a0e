"""Reading a prepared dataset (the output of ``hashray prepare``): dataset.json plus Parquet parts.

The contract (``DatasetInfo``, the split names, the part columns) is in ``pipelines/contracts.py``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import ray.data

from hashing.labels import multi_hot_from_lists
from pipelines import storage
from pipelines.contracts import DATASET_FILE, DatasetInfo
from pipelines.images import decode_image

__all__ = ["PreparedDataset"]


@dataclass(frozen=True)
class PreparedDataset:
    """A prepared dataset at ``path`` (local or s3://) and its validated dataset.json ``info``."""

    path: str
    info: DatasetInfo

    @classmethod
    def open(cls, path: str) -> PreparedDataset:
        """Read ``path``/dataset.json; FileNotFoundError for a missing or half-written dataset,
        ``ContractError`` for a dataset.json that breaks the contract. A local ``path`` is made
        absolute: Ray workers read the parts from another working directory."""
        path = path if storage.is_s3(path) else os.path.abspath(path)
        where = storage.join(path, DATASET_FILE)
        try:
            data = storage.read_json(where)
        except FileNotFoundError as err:
            raise FileNotFoundError(
                f"{path}: not a prepared dataset: run hashray prepare first"
            ) from err
        return cls(str(path), DatasetInfo.from_dict(data, where))

    @property
    def classes(self) -> list[str]:
        """Class names; label ``i`` is ``classes[i]``."""
        return list(self.info.classes)

    @property
    def num_classes(self) -> int:
        """Number of classes (the width of multi-hot labels)."""
        return len(self.info.classes)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(H, W, C) of every stored image."""
        image = self.info.image
        return image.height, image.width, image.channels

    @property
    def multi_label(self) -> bool:
        """True when some image carries more than one label."""
        return self.info.multi_label

    def num_rows(self, split: str) -> int:
        """Rows in ``split`` (the database resolves to train when it is the train split)."""
        return self.info.split(split).rows

    def split_files(self, split: str) -> list[str]:
        """Paths or URIs of ``split``'s Parquet parts, in id order."""
        return [storage.join(self.path, name) for name in self.info.split(split).files]

    def read_split(self, split: str) -> ray.data.Dataset:
        """``split`` as a Ray Dataset with columns id, image (PNG bytes), labels, source."""
        files = self.split_files(split)
        fs, _ = storage.filesystem(files[0])
        return ray.data.read_parquet([storage.inner_path(f) for f in files], filesystem=fs)

    def load_split_numpy(self, split: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """ids (n,) str, images uint8 (n, H, W, C), multi-hot labels float32 (n, C); small data
        only."""
        table = self._read_table(split, ["id", "image", "labels"])
        ids = np.asarray(table.column("id").to_pylist(), dtype=str)
        images = np.zeros((table.num_rows, *self.image_shape), dtype=np.uint8)
        for i, data in enumerate(table.column("image").to_pylist()):
            images[i] = decode_image(data)
        lists = table.column("labels").to_pylist()
        return ids, images, multi_hot_from_lists(lists, self.num_classes, np.float32)

    def _read_table(self, split: str, columns: list[str]) -> pa.Table:
        """All of ``split``'s parts as one Arrow table (pyarrow only, no Ray)."""
        tables = []
        for uri in self.split_files(split):
            fs, inner = storage.filesystem(uri)
            tables.append(pq.read_table(inner, filesystem=fs, columns=columns))
        return pa.concat_tables(tables)
