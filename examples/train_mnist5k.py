"""Plain PyTorch (no Ray): train a hashing network on the bundled MNIST digits, print mAP@all.

The reference the Ray pipeline must match, and the bare loop the throughput benchmark compares
against: the same ``hashing.training.fit`` loop and stage plan (exphash's classification
pre-training, sdsh's post-hoc rotation search). Protocol ``mnist5k`` (docs/evaluation.md):
1,000 queries (100/class); the other 4,000 digits are train and database; model selection uses a
validation split held out from train (``--set val_fraction=0`` trains on all 4,000 and keeps the
last epoch), on which a rotation is also fitted.

    python examples/train_mnist5k.py --method adsh --bits 32
    python examples/train_mnist5k.py --config configs/mnist5k-adsh-48-tuned.yaml --seed 1
    python examples/train_mnist5k.py --config configs/mnist5k-adsh-48-tuned.yaml --set batch_size=32

``--config`` takes the recipe of a pipeline config (its ``recipe:`` section); ``--set`` changes
one recipe key (the value is read as YAML). The pipeline reads the same recipe, so both train the
same model up to data order (Ray Data shuffles with a local buffer).
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Iterator

import numpy as np
import torch
import yaml

from hashing import models, rotations, splits, training
from hashing.augment import RandomAffine
from hashing.datasets import load_mnist5k
from hashing.recipe import Recipe


def batches(
    images: torch.Tensor, labels: torch.Tensor, size: int, shuffle: torch.Generator | None
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
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
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="one more recipe key, e.g. batch_size=32 (repeatable)",
    )
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    args = parser.parse_args()
    recipe = _recipe(args)
    torch.manual_seed(recipe.seed)
    start = time.perf_counter()

    images, labels = load_mnist5k()
    split = splits.split_indices(labels, "mnist5k", seed=0)
    keep, val = splits.holdout(len(split["train"]), recipe.val_fraction, seed=recipe.seed)
    x = training.images_to_tensor(images)
    y = torch.as_tensor(labels)
    fit_rows, val_rows = split["train"][keep], split["train"][val]

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = models.build(
        recipe.backbone, bits=recipe.bits, in_channels=1, shift_average=recipe.shift_average
    ).to(device)
    try:  # the stage plan refuses a rotation without a validation split
        setup = training.build_training(recipe, model, num_classes=10)
    except ValueError as err:
        raise SystemExit(f"bad recipe: {err}") from err
    setup.objective.to(device)
    shuffle = torch.Generator().manual_seed(recipe.seed)
    augment = RandomAffine(
        hflip=recipe.hflip, generator=torch.Generator().manual_seed(recipe.seed + 1)
    )

    def validate(hash_model: torch.nn.Module) -> float:
        return training.evaluate_retrieval(
            hash_model,
            batches(x[val_rows], y[val_rows], 512, None),
            batches(x[fit_rows], y[fit_rows], 512, None),
            device,
        )["map_tie_aware"]

    def report(epoch: int, metrics: dict[str, float], state: training.FitState) -> None:
        print(training.epoch_line(metrics, setup.epochs), flush=True)

    state = training.fit(
        setup,
        lambda epoch: batches(x[fit_rows], y[fit_rows], recipe.batch_size, shuffle),
        device,
        validate=validate if len(val_rows) else None,  # none held out: the last epoch is kept
        augment=augment if recipe.augment else None,
        callbacks=[] if args.json else [report],
    )
    model.load_state_dict(state.best_model)
    if setup.rotation != "none":  # fitted on training-side rows (validation and fit), never queries
        rows = split["train"]
        outputs, row_labels = training.compute_outputs(
            model, batches(x[rows], y[rows], 512, None), device
        )
        rotation = rotations.fit_rotation(setup.rotation, outputs, row_labels, recipe.seed)
        model.set_rotation(rotation.to(device))

    result = training.evaluate_retrieval(
        model,
        batches(x[split["query"]], y[split["query"]], 512, None),
        batches(x[split["train"]], y[split["train"]], 512, None),
        device,
    )
    result.update(
        method=recipe.method,
        bits=recipe.bits,
        protocol="mnist5k",
        best_val_map=state.best_val_map,
        seconds=round(time.perf_counter() - start, 1),
        recipe=recipe.to_dict(),
    )
    if args.json:
        print(json.dumps(result))
    else:
        print(
            f"mnist5k {recipe.method} {recipe.bits} bits: tie-aware mAP@all "
            f"{result['map_tie_aware']:.4f}  id-order {result['map_id_order']:.4f}  "
            f"({result['seconds']} s)"
        )


def _recipe(args: argparse.Namespace) -> Recipe:
    """The config's recipe (or the defaults), then ``--set`` keys, then the named flags."""
    try:
        values = Recipe.from_yaml(args.config).to_dict() if args.config else {}
        for item in args.set:
            key, sep, text = item.partition("=")
            if not sep:
                raise SystemExit(f"--set takes KEY=VALUE, got {item!r}")
            values[key.strip()] = yaml.safe_load(text)
        flags = {"method": args.method, "bits": args.bits, "epochs": args.epochs, "seed": args.seed}
        values.update({key: value for key, value in flags.items() if value is not None})
        return Recipe.from_dict(values)
    except (TypeError, ValueError) as err:
        raise SystemExit(f"bad recipe: {err}") from err


if __name__ == "__main__":
    np.set_printoptions(precision=4)
    main()
