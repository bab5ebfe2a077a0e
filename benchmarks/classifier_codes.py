"""The "classifier codes" reference for the quality tables (Sablayrolles et al., "How should we
evaluate supervised hashing?", ICASSP 2017).

A plain classifier with the grid's backbone and training budget, whose code for an image is its
predicted class: the class index in 4 bits, stored in one byte (the zero high bits change no
Hamming distance). Ranked by Hamming distance, a query then retrieves the database items predicted
in its own class first, so the row shows what class prediction alone is worth to the metric; a
hashing method earns its place by beating it. The same row reports the classifier's test accuracy.

The classifier is the library's own: backbone + hash layer + ``tanh`` + a linear classifier
(``hashing.training.Objective``'s classification stage, the one exphash pre-trains with), trained
by ``hashing.training.fit`` with cross-entropy only, on the pipeline's share of fit rows (the
recipe's validation share held out and scored); the last epoch is kept, since ``fit`` keeps the
best epoch's network but not its classifier.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import numpy as np
import torch

from hashing import metrics, models, splits, training
from hashing.augment import RandomAffine
from hashing.recipe import Recipe

__all__ = ["run_classifier"]


def _batches(
    images: np.ndarray, labels: np.ndarray, size: int, shuffle: torch.Generator | None = None
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    order = torch.randperm(len(images), generator=shuffle) if shuffle else torch.arange(len(images))
    for start in range(0, len(images), size):
        rows = order[start : start + size].numpy()
        yield training.images_to_tensor(images[rows]), torch.from_numpy(labels[rows])


@torch.no_grad()
def _predict(setup: training.TrainingSetup, images: np.ndarray) -> np.ndarray:
    objective = setup.inner
    objective.eval()
    classes = [
        objective.classifier(torch.tanh(objective.model(x))).argmax(dim=1).numpy()
        for x, _ in _batches(images, np.zeros(len(images), np.int64), 512)
    ]
    return np.concatenate(classes)


def run_classifier(data: str, recipe: Recipe) -> dict[str, Any]:
    """Train the classifier with ``recipe``'s backbone, epochs, optimiser and augmentation on
    the prepared dataset ``data``; its codes' retrieval metrics and its query accuracy."""
    from pipelines.dataset import PreparedDataset  # reads Parquet with pyarrow only, no Ray

    torch.manual_seed(recipe.seed)
    dataset = PreparedDataset.open(data)
    if dataset.multi_label:
        raise ValueError("classifier codes need single-label data (one class per image)")
    _, train_x, train_y = dataset.load_split_numpy("train")
    _, db_x, db_y = dataset.load_split_numpy("database")
    _, q_x, q_y = dataset.load_split_numpy("query")
    train_classes = train_y.argmax(axis=1)
    fit_rows, val_rows = splits.holdout(len(train_x), recipe.val_fraction, seed=recipe.seed)
    model = models.build(recipe.backbone, bits=recipe.bits, in_channels=dataset.image_shape[2])
    # Every epoch is a classification epoch: the pre-training stage alone, no hashing loss.
    plain = replace(recipe, method="exphash", pretrain_epochs=recipe.epochs, epochs=0)
    setup = training.build_training(plain, model, dataset.num_classes)
    shuffle = torch.Generator().manual_seed(recipe.seed)
    augment = RandomAffine(
        hflip=recipe.hflip, generator=torch.Generator().manual_seed(recipe.seed + 1)
    )
    start = time.perf_counter()
    state = training.fit(
        setup,
        lambda epoch: _batches(
            train_x[fit_rows], train_classes[fit_rows], recipe.batch_size, shuffle
        ),
        torch.device("cpu"),
        augment=augment if recipe.augment else None,
    )
    seconds = time.perf_counter() - start
    q_pred, db_pred = _predict(setup, q_x), _predict(setup, db_x)
    val_pred = _predict(setup, train_x[val_rows]) if len(val_rows) else None
    q_codes, db_codes = q_pred.astype(np.uint8)[:, None], db_pred.astype(np.uint8)[:, None]
    report = metrics.retrieval_report(q_codes, db_codes, q_y, db_y, radius=0)
    return {
        "map_tie_aware": report["map_tie_aware"],
        "map_id_order": report["map_id_order"],
        "precision_radius_0": report["precision_radius"],
        "precision_at_1000": report["precision_at_n"].get(1000),
        "query_accuracy": float((q_pred == q_y.argmax(axis=1)).mean()),
        "val_accuracy": None
        if val_pred is None
        else float((val_pred == train_classes[val_rows]).mean()),
        "best_epoch": state.best_epoch + 1,
        "train_seconds": round(seconds, 1),
        "recipe": recipe.to_dict(),
    }
