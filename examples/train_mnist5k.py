"""Plain PyTorch (no Ray): train a hashing network on the bundled MNIST digits, print mAP@all.

The reference the Ray pipeline must match, and the bare loop the throughput benchmark compares
against. Protocol ``mnist5k`` (EVALUATION.md): 1,000 queries (100/class); the other 4,000 digits
are train and database; model selection uses a validation split held out from train
(``--set val_fraction=0`` trains on all 4,000 and keeps the last epoch).

    python examples/train_mnist5k.py --method adsh --bits 32
    python examples/train_mnist5k.py --config configs/mnist5k-adsh-48-tuned.yaml --seed 1
    python examples/train_mnist5k.py --config configs/mnist5k-adsh-48-tuned.yaml --set batch_size=32

``--config`` takes the recipe of a pipeline config (its ``recipe:`` section); ``--set`` changes
one recipe key (the value is read as YAML). The pipeline reads the same recipe, so both train the
same model up to data order (Ray Data shuffles with a local buffer).
"""

from __future__ import annotations

import argparse
import copy
import json
import time

import numpy as np
import torch
import yaml

from hashing import engine, losses, models, splits
from hashing.augment import RandomAffine
from hashing.datasets import load_mnist5k
from hashing.recipe import Recipe
from pipelines.config import load_train_config


def batches(images: torch.Tensor, labels: torch.Tensor, size: int, shuffle: torch.Generator | None):
    """Yield (images, labels) mini-batches; shuffled when a generator is given."""
    order = torch.randperm(len(images), generator=shuffle) if shuffle else torch.arange(len(images))
    for start in range(0, len(images), size):
        rows = order[start : start + size]
        yield images[rows], labels[rows]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--config", help="a pipeline config YAML whose recipe to train")
    parser.add_argument("--method", help=f"loss (default: the config's, else {Recipe.method})")
    parser.add_argument("--bits", type=int, help=f"code length (default {Recipe.bits})")
    parser.add_argument("--epochs", type=int, help=f"epochs (default {Recipe.epochs})")
    parser.add_argument("--seed", type=int, help="seed of init, order and holdout (default 0)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="one more recipe key, e.g. batch_size=32 (repeatable)")  # fmt: skip
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    args = parser.parse_args()
    recipe = _recipe(args)
    torch.manual_seed(recipe.seed)
    start = time.perf_counter()

    images, labels = load_mnist5k()
    split = splits.split_indices(labels, "mnist5k", seed=0)
    keep, val = splits.holdout(len(split["train"]), recipe.val_fraction, seed=recipe.seed)
    x = engine.images_to_tensor(images)
    y = torch.as_tensor(labels)
    fit_rows, val_rows = split["train"][keep], split["train"][val]

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = models.build(
        recipe.backbone, bits=recipe.bits, in_channels=1, shift_average=recipe.shift_average
    ).to(device)
    loss_fn = losses.build(recipe.method, bits=recipe.bits, num_classes=10, **recipe.loss_params)
    loss_fn.to(device)
    objective = engine.Objective(model, loss_fn)
    optimizer = engine.build_optimizer(
        objective.parameters(), recipe.optimizer, recipe.lr, recipe.weight_decay
    )
    scheduler = engine.build_scheduler(optimizer, recipe.epochs, recipe.warmup_epochs)
    shuffle = torch.Generator().manual_seed(recipe.seed)
    augment = RandomAffine(generator=torch.Generator().manual_seed(recipe.seed + 1))
    augment = augment if recipe.augment else None

    best, best_state = None, None  # stay None when nothing is held out (val_fraction 0)
    for epoch in range(recipe.epochs):
        stats = engine.train_one_epoch(
            objective, batches(x[fit_rows], y[fit_rows], recipe.batch_size, shuffle),
            optimizer, device, augment=augment,
        )  # fmt: skip
        scheduler.step()
        val_map = None
        if len(val_rows):
            val_map = engine.evaluate_retrieval(
                model, batches(x[val_rows], y[val_rows], 512, None),
                batches(x[fit_rows], y[fit_rows], 512, None), device,
            )["map_tie_aware"]  # fmt: skip
            if best is None or val_map > best:
                best, best_state = val_map, copy.deepcopy(model.state_dict())
        if not args.json:
            val_text = "" if val_map is None else f"val mAP {val_map:.4f}  "
            print(f"epoch {epoch + 1:2d}/{recipe.epochs}  loss {stats['loss']:.4f}  "
                  f"{val_text}{stats['images_per_s']:.0f} img/s", flush=True)  # fmt: skip

    if best_state is not None:
        model.load_state_dict(best_state)
    result = engine.evaluate_retrieval(
        model, batches(x[split["query"]], y[split["query"]], 512, None),
        batches(x[split["train"]], y[split["train"]], 512, None), device,
    )  # fmt: skip
    result.update(method=recipe.method, bits=recipe.bits, protocol="mnist5k",
                  best_val_map=best,
                  seconds=round(time.perf_counter() - start, 1), recipe=recipe.to_dict())  # fmt: skip
    print(json.dumps(result) if args.json else
          f"mnist5k {recipe.method} {recipe.bits} bits: tie-aware mAP@all {result['map_tie_aware']:.4f}"
          f"  id-order {result['map_id_order']:.4f}  ({result['seconds']} s)")  # fmt: skip


def _recipe(args: argparse.Namespace) -> Recipe:
    """The config's recipe (or the defaults), then ``--set`` keys, then the named flags."""
    values = {}
    if args.config:  # read as the pipeline reads it; the plain loop needs no dataset folder
        values = load_train_config(args.config, data="-").recipe.to_dict()
    for item in args.set:
        key, sep, text = item.partition("=")
        if not sep:
            raise SystemExit(f"--set takes KEY=VALUE, got {item!r}")
        values[key.strip()] = yaml.safe_load(text)
    flags = {"method": args.method, "bits": args.bits, "epochs": args.epochs, "seed": args.seed}
    values.update({key: value for key, value in flags.items() if value is not None})
    try:
        return Recipe.from_dict(values)
    except (TypeError, ValueError) as err:
        raise SystemExit(f"bad recipe: {err}") from err


if __name__ == "__main__":
    np.set_printoptions(precision=4)
    main()
