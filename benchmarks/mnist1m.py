"""MNIST-1M: deterministic augmentations of the mnist5k train split, written as a prepared dataset.

Run:
``python benchmarks/mnist1m.py --data /tmp/hashray-bench/mnist5k --out /tmp/hashray-bench/mnist1m``
(after ``hashray prepare --source mnist5k --out /tmp/hashray-bench/mnist5k``), then
``hashray encode --data /tmp/hashray-bench/mnist1m --model <trained model> --out <codes dir>``.

Every output image is one train digit under a small random affine map (a few degrees, pixels and
percent of scale) plus elastic jitter (a smooth random displacement field of about a pixel), drawn
from a generator seeded by the batch number, so the same command always writes the same bytes. The
output follows the contract of ``hashray prepare`` (dataset.json plus Parquet parts with id, image
PNG bytes, labels, source); the query split is the mnist5k query split, copied unchanged.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
import torch.nn.functional as F
from PIL import Image

from pipelines.contracts import DATASET_FILE, DatasetInfo
from pipelines.dataset import PreparedDataset

ROWS_PER_PART = 50_000
SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("image", pa.binary()),
        ("labels", pa.list_(pa.int32())),
        ("source", pa.string()),
    ]
)


def augment(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Images (n x 1 x H x W, float in [0, 1]) under a random affine map plus elastic jitter."""
    n, _, height, width = images.shape

    def uniform(low: float, high: float, *shape: int) -> torch.Tensor:
        return low + (high - low) * torch.rand(*shape, generator=generator)

    angle = uniform(-8, 8, n) * (math.pi / 180)
    factor = 1.0 / uniform(0.92, 1.08, n)
    shift = uniform(-0.08, 0.08, n, 2)
    cos, sin = torch.cos(angle) * factor, torch.sin(angle) * factor
    theta = torch.stack(
        [torch.stack([cos, -sin, shift[:, 0]], 1), torch.stack([sin, cos, shift[:, 1]], 1)], 1
    )
    grid = F.affine_grid(theta, [n, 1, height, width], align_corners=False)
    # elastic jitter: a 4 x 4 field of random offsets, smoothly upsampled; 0.07 in grid units is
    # about one pixel of a 28-pixel image
    coarse = uniform(-0.07, 0.07, n, 2, 4, 4)
    field = F.interpolate(coarse, size=(height, width), mode="bicubic", align_corners=True)
    return F.grid_sample(images, grid + field.permute(0, 2, 3, 1), align_corners=False)


def png_bytes(image: np.ndarray) -> bytes:
    """One uint8 (H x W) image as PNG bytes."""
    buffer = io.BytesIO()
    Image.fromarray(image, mode="L").save(buffer, format="PNG")
    return buffer.getvalue()


def write_part(
    path: Path,
    originals: np.ndarray,
    labels: np.ndarray,
    ids: np.ndarray,
    first: int,
    count: int,
    seed: int,
) -> None:
    """Rows first..first+count-1: row i augments train image i % len(originals)."""
    rows = np.arange(first, first + count)
    source = rows % len(originals)
    generator = torch.Generator().manual_seed(seed * 1_000_003 + first)
    pixels = torch.from_numpy(originals[source]).float().div(255).unsqueeze(1)
    augmented = augment(pixels, generator).squeeze(1).mul(255).round().clamp(0, 255)
    images = augmented.to(torch.uint8).numpy()
    table = pa.table(
        {
            "id": [f"mnist1m-{row:07d}" for row in rows],
            "image": [png_bytes(image) for image in images],
            "labels": [np.flatnonzero(labels[s]).astype(np.int32).tolist() for s in source],
            "source": ids[source].tolist(),
        },
        schema=SCHEMA,
    )
    pq.write_table(table, path)


def main() -> None:
    """Write the augmented train split and copy the query split of a prepared mnist5k."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="prepared mnist5k directory")
    parser.add_argument("--out", required=True)
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    dataset = PreparedDataset.open(args.data)
    ids, images, labels = dataset.load_split_numpy("train")
    out = Path(args.out)
    (out / "train").mkdir(parents=True, exist_ok=True)
    (out / DATASET_FILE).unlink(missing_ok=True)  # written last: its presence marks completion
    files = []
    for part, first in enumerate(range(0, args.n, ROWS_PER_PART)):
        name = f"train/part-{part:05d}.parquet"
        count = min(ROWS_PER_PART, args.n - first)
        write_part(out / name, images[..., 0], labels, ids, first, count, args.seed)
        files.append(name)
        print(f"wrote {name} ({first + count:,} / {args.n:,})", flush=True)
    query_files = []
    for source in dataset.split_files("query"):
        name = f"query/{Path(source).name}"
        (out / "query").mkdir(exist_ok=True)
        shutil.copyfile(source, out / name)
        query_files.append(name)
    meta = dataset.info.to_dict()
    meta["name"] = "mnist1m"
    meta["counts"] = {"input": args.n, "kept": args.n, "skipped": 0}
    meta["source_options"] = {"augmented_from": str(args.data), "seed": args.seed}
    meta["splits"] = {
        "train": {"files": files, "rows": args.n},
        "query": {"files": query_files, "rows": dataset.num_rows("query")},
        "database": {"same_as": "train"},
    }
    info = DatasetInfo.from_dict(meta, str(out / DATASET_FILE))
    (out / DATASET_FILE).write_text(json.dumps(info.to_dict(), indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
