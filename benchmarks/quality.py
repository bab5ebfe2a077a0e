"""Retrieval quality of every method through the real pipeline: prepare -> train -> encode -> evaluate.

Seed methods x bits and baselines x bits on ``mnist5k`` (or any protocol a local corpus supports),
plus the unsupervised floor (LSH, ITQ on raw pixels). Results go to
``benchmarks/results/quality.{json,md,png}``; finished cells are kept, so an interrupted run
continues where it stopped and a partial grid can be extended later.

    python benchmarks/quality.py                                  # the full mnist5k grid (hours on 2 CPUs)
    python benchmarks/quality.py --methods adsh --bits 32,48       # a few cells
    python benchmarks/quality.py --protocol cifar10-1k --source cifar10 --path /data/cifar-10-batches-py \
        --backbone resnet18 --image-size 224 --device cuda
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path
from typing import Any

import numpy as np

RESULTS = Path(__file__).resolve().parent / "results"
SEEDS, SEED_BITS = ("adsh", "sdsh", "exphash", "tql"), (12, 24, 32, 48)
BASELINES, BASELINE_BITS = ("dsh", "dpsh", "hashnet", "csq"), (12, 48)
FLOOR = ("lsh", "itq")
# EVALUATION.md reference numbers (CIFAR-10 cifar10-1k, mAP@all, 12/24/32/48 bits).
CIFAR_REFERENCE = {"adsh": (0.754, 0.780, 0.786, 0.795), "dsh": (0.644, 0.742, 0.770, 0.799),
                   "dpsh": (0.713, 0.727, 0.744, 0.757), "hashnet": (0.685, 0.707, 0.705, 0.705),
                   "itq": (0.127, 0.128, 0.126, 0.129)}  # fmt: skip
MNIST_REFERENCE = "deep supervised 0.97-0.99 (Mu & Liu: 0.99 at 12 bits); LSH/ITQ on pixels 0.2-0.45"


def run_cell(data: str, workdir: Path, method: str, bits: int, args: argparse.Namespace) -> dict[str, Any]:
    """Train, encode and evaluate one (method, bits) cell through the pipeline."""
    from hashing.recipe import Recipe
    from pipelines.config import TrainConfig
    from pipelines.encode import encode
    from pipelines.evaluate import evaluate
    from pipelines.train import train

    recipe = Recipe(method=method, bits=bits, backbone=args.backbone,
                    **({"epochs": args.epochs} if args.epochs else {}))  # fmt: skip
    config = TrainConfig(data=data, recipe=recipe, out=str(workdir / "runs"),
                         gpus_per_worker=1.0 if args.device == "cuda" else 0.0,
                         tracking_uri=f"sqlite:///{workdir / 'mlflow.db'}")  # fmt: skip
    start = time.perf_counter()
    run = train(config, progress=False)
    train_seconds = time.perf_counter() - start
    codes = str(workdir / "codes" / f"{method}-{bits}")
    encode(data, run["model_dir"], codes, progress=False, use_gpu=args.device == "cuda")
    report = evaluate(codes, mlflow_run_id=run["mlflow_run_id"], tracking_uri=run["tracking_uri"])
    return {"map_tie_aware": report["map_tie_aware"], "map_id_order": report["map_id_order"],
            "precision_radius_2": report["precision_radius_2"], "train_seconds": round(train_seconds, 1),
            "epochs": recipe.epochs, "best_val_map": run["best_val_map"]}  # fmt: skip


def run_floor(data: str, method: str, bits: int) -> dict[str, Any]:
    """LSH / ITQ on raw pixels: the unsupervised floor that shows the metric is not inflated."""
    from hashing import baselines, metrics
    from pipelines.dataset import PreparedDataset

    dataset = PreparedDataset.open(data)
    _, train_images, train_labels = dataset.load_split_numpy("database")
    _, query_images, query_labels = dataset.load_split_numpy("query")
    flat = lambda x: x.reshape(len(x), -1).astype(np.float32) / 255.0  # noqa: E731
    start = time.perf_counter()
    hasher = (baselines.LSH if method == "lsh" else baselines.ITQ)(bits, seed=0).fit(flat(train_images))
    db, q = hasher.encode(flat(train_images)), hasher.encode(flat(query_images))
    return {
        "map_tie_aware": metrics.mean_average_precision(q, db, query_labels, train_labels, ties="aware"),
        "map_id_order": metrics.mean_average_precision(q, db, query_labels, train_labels, ties="id"),
        "precision_radius_2": metrics.precision_within_radius(q, db, query_labels, train_labels, radius=2)[0],
        "train_seconds": round(time.perf_counter() - start, 1),
    }


def write_outputs(results: dict[str, Any], protocol: str) -> None:
    """JSON, a markdown table beside the reference numbers, and a PNG of mAP vs bits."""
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "quality.json").write_text(json.dumps(results, indent=2, sort_keys=True))
    cells = results["cells"]
    methods = sorted({c.split("@")[0] for c in cells}, key=lambda m: (m not in SEEDS, m not in FLOOR, m))
    all_bits = sorted({int(c.split("@")[1]) for c in cells})
    lines = [f"# Retrieval quality, protocol `{protocol}`", "",
             f"tie-aware mAP@all (id-order in parentheses); machine: {results['machine']}", "",
             f"command: `{results['command']}`", "",
             "| method | " + " | ".join(f"{b} bits" for b in all_bits) + " | P@r2 (largest bits) | train s |",
             "|---|" + "---|" * (len(all_bits) + 2)]  # fmt: skip
    for method in methods:
        row = [cells.get(f"{method}@{b}") for b in all_bits]
        last = next((c for c in reversed(row) if c), {})
        values = [f"{c['map_tie_aware']:.4f} ({c['map_id_order']:.4f})" if c else "-" for c in row]
        lines.append(f"| {method} | " + " | ".join(values)
                     + f" | {last.get('precision_radius_2', float('nan')):.4f} | {last.get('train_seconds', '-')} |")  # fmt: skip
    lines += ["", f"Reference: {MNIST_REFERENCE if protocol.startswith('mnist') else CIFAR_REFERENCE}"]
    (RESULTS / "quality.md").write_text("\n".join(lines) + "\n")

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for method in methods:
        points = sorted((int(c.split("@")[1]), v["map_tie_aware"]) for c, v in cells.items() if c.startswith(f"{method}@"))
        ax.plot(*zip(*points), marker="o", label=method)
    ax.set(xlabel="bits", ylabel="tie-aware mAP@all", title=f"{protocol}: mAP vs code length")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(RESULTS / "quality.png", dpi=100)
    plt.close(fig)


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--methods", default=",".join(SEEDS))
    parser.add_argument("--bits", default=",".join(map(str, SEED_BITS)))
    parser.add_argument("--baselines", default=",".join(BASELINES))
    parser.add_argument("--baseline-bits", default=",".join(map(str, BASELINE_BITS)))
    parser.add_argument("--floor", default=",".join(FLOOR), help="unsupervised floor methods")
    parser.add_argument("--epochs", type=int, help="training epochs (default: the recipe's)")
    parser.add_argument("--backbone", default="smallcnn")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--source", default="mnist5k")
    parser.add_argument("--protocol", default=None)
    parser.add_argument("--path", default=None, help="corpus path for file-based sources")
    parser.add_argument("--image-size", type=int, default=None)
    parser.add_argument("--workdir", default="benchmarks/.quality-work", help="data, runs and codes")
    args = parser.parse_args()

    from pipelines import cluster
    from pipelines.prepare import prepare

    workdir = Path(args.workdir).resolve()
    data = str(workdir / "data")
    cluster.connect()
    if not (Path(data) / "dataset.json").exists():
        prepare(args.source, data, path=args.path, protocol=args.protocol, image_size=args.image_size, progress=False)
    protocol = json.loads((Path(data) / "dataset.json").read_text())["protocol"]
    previous = json.loads((RESULTS / "quality.json").read_text()) if (RESULTS / "quality.json").exists() else {}
    results = {"cells": previous.get("cells", {}) if previous.get("protocol") == protocol else {},
               "protocol": protocol,
               "machine": f"{os.cpu_count()} CPUs, {platform.machine()}, device {args.device}",
               "command": "python benchmarks/quality.py " + " ".join(os.sys.argv[1:])}  # fmt: skip
    grid = [(m, b, "deep") for m in args.methods.split(",") if m for b in _ints(args.bits)]
    grid += [(m, b, "deep") for m in args.baselines.split(",") if m for b in _ints(args.baseline_bits)]
    grid += [(m, b, "floor") for m in args.floor.split(",") if m for b in _ints(args.baseline_bits)]
    for method, bits, kind in grid:
        key = f"{method}@{bits}"
        if key in results["cells"]:
            continue
        print(f"{key} ...", flush=True)
        results["cells"][key] = run_floor(data, method, bits) if kind == "floor" else run_cell(data, workdir, method, bits, args)
        print(f"{key}: tie-aware mAP {results['cells'][key]['map_tie_aware']:.4f}", flush=True)
        write_outputs(results, protocol)
    write_outputs(results, protocol)


if __name__ == "__main__":
    main()
