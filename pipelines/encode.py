"""``hashray encode``: a Ray Data actor pool turns a prepared dataset's images into codes Parquet.

One pipeline reads every file the requested splits need (the database shares the train files when
``dataset.json`` says ``same_as: train``), an ``ActorPoolStrategy`` of ``EncoderUDF`` actors runs
the model, and the driver collects the small code rows, sorts each split by id and writes it with
``codes_io.write_codes`` into ``<out>/<split>``.

Re-runs. Part file names depend only on the row count (``rows_per_file`` rows each, ids sorted),
so re-running with the same model and data gives the same files with the same rows. Every byte is
the same too when ``SOURCE_DATE_EPOCH`` is set (the reproducible-builds convention): it fixes the
``hashray.created_at`` metadata, otherwise the encode start time. (Embeddings, when written, can
differ in the last float bits if Ray forms batches differently.) A split directory's manifest is
removed before and written after its parts, so an interrupted run leaves no ``_SUCCESS.json``
and the next run clears the stale parts and writes the split again.

Collecting rows on the driver costs about ``bits/8`` + id + labels bytes per image (plus
``4 * bits`` with embeddings): a few hundred MB for ten million images.
"""

from __future__ import annotations

import datetime as dt
import os
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import ray
import torch
from tqdm.auto import tqdm

from hashing.codes import pack_codes
from hashing.training import images_to_tensor
from pipelines import storage
from pipelines.codes_io import codes_table, write_codes
from pipelines.config import default_tracking_uri
from pipelines.contracts import DatasetInfo, ModelCard
from pipelines.dataset import PreparedDataset
from pipelines.images import decode_image
from pipelines.model_store import is_mlflow_uri, load_for_inference, resolve_model

__all__ = ["DEFAULT_SPLITS", "EncoderUDF", "encode"]

DEFAULT_SPLITS = ("query", "database")
DEFAULT_ROWS_PER_FILE = 250_000


class EncoderUDF:
    """Ray Data actor: prepared rows (id, image PNG bytes, labels) -> codes rows (+ source path).

    ``__init__`` loads the model once per actor; ``__call__`` decodes, checks the images have the
    shape the model card names, normalises as in training (the card's ``mean``/``std``), runs
    ``model.embed`` (with the fitted rotation, if any) and packs the signs.
    """

    def __init__(
        self, model_uri: str, tracking_uri: str | None, use_gpu: bool, embeddings: bool
    ) -> None:
        self.device = "cuda" if use_gpu else "cpu"
        self.model, card = load_for_inference(
            model_uri, tracking_uri=tracking_uri, device=self.device
        )
        self.mean, self.std, self.shape = card.mean, card.std, card.image.shape
        self.embeddings = embeddings

    def __call__(self, batch: pa.Table) -> pa.Table:
        """A pyarrow batch with id, image, labels, path -> id, code, labels, [embedding], path."""
        images = np.stack([decode_image(data) for data in batch.column("image").to_pylist()])
        if images.shape[1:] != self.shape:
            raise ValueError(
                f"images are {images.shape[1:]} (H, W, C), the model was trained on {self.shape}"
            )
        with torch.inference_mode():
            x = images_to_tensor(images, self.mean, self.std).to(self.device)
            outputs = self.model.embed(x).float().cpu().numpy()
        table = codes_table(
            batch.column("id"),
            pack_codes(outputs),
            labels=batch.column("labels"),
            embeddings=outputs if self.embeddings else None,
        )
        return table.append_column("path", batch.column("path"))


def encode(
    data: str,
    model: str,
    out: str,
    *,
    splits: list[str] | None = None,
    batch_size: int = 256,
    num_actors: int = 1,
    actor_cpus: float = 0.5,
    use_gpu: bool = False,
    embeddings: bool = False,
    progress: bool = True,
    rows_per_file: int = DEFAULT_ROWS_PER_FILE,
) -> dict[str, Any]:
    """Encode ``splits`` (default query and database) of the prepared dataset ``data`` into
    ``out/<split>``.

    ``model`` is a model directory, ``runs:/...`` or ``models:/...``. Returns a summary: rows,
    directory and files per split, bits, method, model version, seconds and images/s.
    """
    start = time.perf_counter()
    info = PreparedDataset.open(data).info
    splits = list(splits or DEFAULT_SPLITS)
    # Ray workers do not run in the caller's cwd: local paths travel as absolute paths.
    model_ref = model if is_mlflow_uri(model) else str(Path(model).resolve())
    tracking_uri = default_tracking_uri() if is_mlflow_uri(model) else None
    card = ModelCard.read(resolve_model(model_ref, tracking_uri=tracking_uri))
    created_at = _created_at()

    fs, root = storage.filesystem(data)
    split_paths = {split: [f"{root}/{f}" for f in info.split(split).files] for split in splits}
    paths = sorted({p for ps in split_paths.values() for p in ps})
    ds = ray.data.read_parquet(paths, filesystem=fs, include_paths=True, partitioning=None)
    ds = ds.select_columns(["id", "image", "labels", "path"])
    ds = ds.map_batches(
        EncoderUDF,
        fn_constructor_kwargs={
            "model_uri": model_ref,
            "tracking_uri": tracking_uri,
            "use_gpu": use_gpu,
            "embeddings": embeddings,
        },
        compute=ray.data.ActorPoolStrategy(size=num_actors),
        num_cpus=actor_cpus,
        num_gpus=1 if use_gpu else 0,
        batch_size=batch_size,
        batch_format="pyarrow",
    )
    total = sum(info.split(s).rows for s in _unique_file_splits(splits, info))
    by_path = _collect(ds, total=total, progress=progress)
    images = sum(t.num_rows for ts in by_path.values() for t in ts)
    encode_seconds = time.perf_counter() - start

    summary_splits = {}
    for split in splits:
        tables = [t for p in split_paths[split] for t in by_path.get(p, [])]
        rows = sum(t.num_rows for t in tables)
        if rows == 0 or rows != info.split(split).rows:
            raise RuntimeError(
                f"split {split!r}: encoded {rows} rows, dataset.json says {info.split(split).rows}"
            )
        table = pa.concat_tables(tables).drop_columns(["path"]).sort_by("id")
        if pc.count_distinct(table.column("id")).as_py() != rows:
            raise ValueError(f"split {split!r} of {data} has duplicate ids")
        directory = storage.join(out, split)
        manifest = write_codes(
            directory,
            (table.slice(i, rows_per_file) for i in range(0, rows, rows_per_file)),
            bits=card.bits,
            metadata={
                "method": card.method,
                "model_uri": model_ref,
                "model_version": card.model_version,
                "mlflow_run_id": card.mlflow_run_id,
                "created_at": created_at,
                "protocol": info.protocol,
                "dataset": info.name,
                "num_classes": len(info.classes),
                "split": split,
            },
        )
        summary_splits[split] = {
            "dir": directory,
            "rows": rows,
            "files": [f.path for f in manifest.files],
        }

    seconds = time.perf_counter() - start
    return {
        "out": out,
        "model": model_ref,
        "bits": card.bits,
        "method": card.method,
        "model_version": card.model_version,
        "splits": summary_splits,
        "images": images,
        "seconds": seconds,
        "images_per_s": images / encode_seconds if encode_seconds > 0 else None,
    }


def _collect(ds: ray.data.Dataset, *, total: int, progress: bool) -> dict[str, list[pa.Table]]:
    """Stream the encoded rows to the driver, grouped by the Parquet file they came from."""
    by_path: dict[str, list[pa.Table]] = defaultdict(list)
    with tqdm(total=total, unit="img", desc="encode", disable=not progress) as bar:
        for batch in ds.iter_batches(batch_format="pyarrow", batch_size=None):
            for path in pc.unique(batch.column("path")).to_pylist():
                by_path[path].append(batch.filter(pc.equal(batch.column("path"), path)))
            bar.update(batch.num_rows)
    return by_path


def _unique_file_splits(splits: list[str], info: DatasetInfo) -> list[str]:
    """One split per distinct file list, so the database sharing train is counted once."""
    seen: dict[tuple[str, ...], str] = {}
    for split in splits:
        seen.setdefault(tuple(info.split(split).files), split)
    return list(seen.values())


def _created_at() -> str:
    """ISO-8601 UTC time: ``SOURCE_DATE_EPOCH`` when set (reproducible outputs), else now."""
    epoch = os.environ.get("SOURCE_DATE_EPOCH")
    moment = dt.datetime.fromtimestamp(int(epoch), dt.UTC) if epoch else dt.datetime.now(dt.UTC)
    return moment.replace(microsecond=0).isoformat()
