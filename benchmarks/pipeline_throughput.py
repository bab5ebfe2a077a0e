"""Ray pipeline vs the bare PyTorch loop: training and encoding images/s on the same data and cores.

Both sides train the same recipe through ``hashing.training.fit`` (smallcnn + ADSH, mnist5k fit
rows, same batch size, same augmentation) for the same epochs and encode the same 5,000 digits;
the ratio is Ray / bare.
Writes benchmarks/results/pipeline_throughput.{json,md}.

    python benchmarks/pipeline_throughput.py --epochs 3
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from hashing import models, splits, training
from hashing.augment import RandomAffine
from hashing.datasets import load_mnist5k
from hashing.recipe import Recipe

RESULTS = Path(__file__).resolve().parent / "results"


def bare(recipe: Recipe) -> dict[str, float]:
    """Training and encoding throughput of the plain ``fit`` loop over in-memory tensors."""
    images, labels = load_mnist5k()
    split = splits.split_indices(labels, "mnist5k", seed=0)
    keep, _ = splits.holdout(len(split["train"]), recipe.val_fraction, seed=recipe.seed)
    rows = split["train"][keep]
    x, y = training.images_to_tensor(images), torch.as_tensor(labels)
    torch.manual_seed(recipe.seed)
    model = models.build(recipe.backbone, bits=recipe.bits, in_channels=1)
    setup = training.build_training(recipe, model, num_classes=10)
    augment = RandomAffine(generator=torch.Generator().manual_seed(1))

    def batches(epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        order = torch.as_tensor(rows)[torch.randperm(len(rows))]
        for i in range(0, len(order), recipe.batch_size):
            yield x[order[i : i + recipe.batch_size]], y[order[i : i + recipe.batch_size]]

    state = training.fit(setup, batches, torch.device("cpu"), augment=augment)
    rates = [metrics["train_images_per_s"] for metrics in state.history]
    start = time.perf_counter()
    encode_batches = ((x[i : i + 256], y[i : i + 256]) for i in range(0, len(x), 256))
    training.compute_outputs(model, encode_batches, torch.device("cpu"))
    return {
        "train_images_per_s": float(np.mean(rates)),
        "encode_images_per_s": len(x) / (time.perf_counter() - start),
    }


def on_ray(recipe: Recipe, workdir: Path) -> dict[str, float]:
    """The same work through hashray's Ray pipeline (prepare is not timed)."""
    from pipelines import cluster
    from pipelines.config import TrainConfig
    from pipelines.encode import encode
    from pipelines.prepare import prepare
    from pipelines.train import train

    cluster.connect()
    data = str(workdir / "mnist5k")
    prepare("mnist5k", data, progress=False)
    config = TrainConfig(
        data=data,
        recipe=recipe,
        out=str(workdir / "runs"),
        tracking_uri=f"sqlite:///{workdir / 'mlflow.db'}",
    )
    run = train(config, progress=False)
    encoded = encode(data, run["model_dir"], str(workdir / "codes"), progress=False)
    return {
        "train_images_per_s": run["train_images_per_s"],
        "encode_images_per_s": encoded["images_per_s"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--epochs", type=int, default=3)
    args = parser.parse_args()
    recipe = Recipe(epochs=args.epochs)
    bare_rates = bare(recipe)
    with tempfile.TemporaryDirectory() as tmp:
        ray_rates = on_ray(recipe, Path(tmp))
    result = {
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "torch": torch.__version__,
        },
        "recipe": recipe.to_dict(),
        "bare": bare_rates,
        "ray": ray_rates,
        "ratio_ray_over_bare": {k: ray_rates[k] / bare_rates[k] for k in bare_rates},
        "command": f"python benchmarks/pipeline_throughput.py --epochs {args.epochs}",
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "pipeline_throughput.json").write_text(json.dumps(result, indent=2))
    lines = [
        "| stage | bare PyTorch (img/s) | Ray pipeline (img/s) | ratio Ray / bare |",
        "|---|---|---|---|",
    ]
    for key, label in (("train_images_per_s", "train"), ("encode_images_per_s", "encode")):
        lines.append(
            f"| {label} | {bare_rates[key]:.0f} | {ray_rates[key]:.0f} | "
            f"{result['ratio_ray_over_bare'][key]:.2f} |"
        )
    table = "\n".join(lines)
    (RESULTS / "pipeline_throughput.md").write_text(
        f"# Pipeline throughput\n\n`{result['command']}` on {os.cpu_count()} CPUs\n\n{table}\n"
    )
    print(table)


if __name__ == "__main__":
    main()
