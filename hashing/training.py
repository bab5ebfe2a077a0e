"""Training of a hashing network: the step functions and the one ``fit`` loop built on them.

Both the plain example (``examples/train_mnist5k.py``) and the Ray Train worker
(``pipelines/train.py``) train through ``build_training`` + ``fit``, so the same recipe gives the
same model whichever runs it; the Ray layer adds only its data shards, DDP wrapping and reporting,
as callbacks.

Batches are ``(images, labels)`` pairs: images float (n x C x H x W), labels multi-hot (n x C) or
class ids (n,). Any iterable of such pairs works (a DataLoader, Ray Data batches adapted by the
caller).

Invariants of ``fit``: epochs run in order from ``state.epoch + 1``; the first
``pretrain_epochs`` train the classifier (the recipe's stage plan), the rest the hashing loss; the
scheduler steps once per epoch; the best epoch is the one with the highest validation mAP, or the
last one when there is no validation; callbacks run in the order given, after the state is updated.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, fields
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from hashing import losses, metrics
from hashing.codes import pack_codes
from hashing.recipe import Recipe

__all__ = [
    "EpochCallback",
    "FitState",
    "Objective",
    "TrainingSetup",
    "build_optimizer",
    "build_scheduler",
    "build_training",
    "classification_loss",
    "compute_outputs",
    "epoch_line",
    "evaluate_retrieval",
    "fit",
    "images_to_tensor",
    "train_one_epoch",
]

Batch = tuple[torch.Tensor, torch.Tensor]


def images_to_tensor(images: np.ndarray, mean: float = 0.5, std: float = 0.5) -> torch.Tensor:
    """uint8 images (n x H x W [x C]) -> normalised float tensor (n x C x H x W)."""
    x = torch.as_tensor(np.asarray(images))
    if x.ndim == 3:
        x = x.unsqueeze(-1)
    return (x.permute(0, 3, 1, 2).float().div_(255.0) - mean) / std


def build_optimizer(
    params: Iterable[torch.nn.Parameter], name: str, lr: float, weight_decay: float
) -> torch.optim.Optimizer:
    """Optimizer by name: ``adam``, ``adamw`` or ``sgd`` (momentum 0.9)."""
    params = list(params)
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=weight_decay)
    raise ValueError(f"unknown optimizer {name!r}; choose adam, adamw or sgd")


def build_scheduler(
    optimizer: torch.optim.Optimizer, epochs: int, warmup_epochs: int = 0
) -> torch.optim.lr_scheduler.LRScheduler:
    """Per-epoch schedule: linear warm-up, then cosine decay to zero over ``epochs``."""

    def factor(epoch: int) -> float:
        if epoch < warmup_epochs:
            return (epoch + 1) / (warmup_epochs + 1)
        progress = (epoch - warmup_epochs) / max(1, epochs - warmup_epochs)
        # a Python float: checkpoints are read back with torch.load(weights_only=True)
        return 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


class Objective(nn.Module):
    """Network and loss as one module: ``objective(images, labels) -> scalar loss``.

    Losses may own parameters (ADSH's class weights); wrapping both in one module lets a
    data-parallel wrapper (DDP via ``ray.train.torch.prepare_model``) synchronise all of them.
    With ``num_classes`` it also holds a classifier on ``tanh`` of the hash layer, used while
    ``pretraining`` is set: the classification pre-training stage of Mu & Liu (``exphash``).
    """

    def __init__(self, model: nn.Module, loss: nn.Module, num_classes: int | None = None) -> None:
        super().__init__()
        self.model, self.loss = model, loss
        self.classifier = nn.Linear(model.bits, num_classes) if num_classes else None
        self.pretraining = False
        self._pretrain_terms: dict[str, float] = {}

    def forward(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Images (n x C x H x W), labels (n x C or n,) -> scalar loss."""
        outputs = self.model(images)
        if not self.pretraining:
            return self.loss(outputs, labels)
        if self.classifier is None:
            raise RuntimeError("pretraining needs an Objective built with num_classes")
        loss = classification_loss(self.classifier(torch.tanh(outputs)), labels)
        self._pretrain_terms = {"classification": float(loss.detach())}
        return loss

    @property
    def last_terms(self) -> dict[str, float]:
        """The parts of the last loss, for logging."""
        return self._pretrain_terms if self.pretraining else getattr(self.loss, "last_terms", {})


def classification_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy for single-label rows (ids or one-hot), binary cross-entropy for
    multi-label."""
    if labels.ndim == 1:
        return F.cross_entropy(logits, labels.long())
    labels = labels.float()
    if bool((labels.sum(dim=1) == 1).all()):
        return F.cross_entropy(logits, labels.argmax(dim=1))
    return F.binary_cross_entropy_with_logits(logits, labels)


def train_one_epoch(
    objective: nn.Module,
    batches: Iterable[Batch],
    optimizer: torch.optim.Optimizer,
    device: torch.device,
    *,
    augment: Callable[[torch.Tensor], torch.Tensor] | None = None,
    max_grad_norm: float | None = 10.0,
) -> dict[str, float]:
    """One pass over ``batches`` with an ``Objective`` (or a DDP wrapper of one).

    Returns the mean loss, the mean of each loss term, images seen and images/s.
    """
    objective.train()
    inner = getattr(objective, "module", objective)  # unwrap DDP
    totals: dict[str, float] = {}
    n_images, n_steps, start = 0, 0, time.perf_counter()
    for images, labels in batches:
        images, labels = images.to(device, non_blocking=True), labels.to(device)
        if augment is not None:
            images = augment(images)
        loss = objective(images, labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if max_grad_norm is not None:
            torch.nn.utils.clip_grad_norm_(
                [p for g in optimizer.param_groups for p in g["params"]], max_grad_norm
            )
        optimizer.step()
        for name, value in {"loss": loss.item(), **inner.last_terms}.items():
            totals[name] = totals.get(name, 0.0) + float(value)
        n_images += len(images)
        n_steps += 1
    if n_steps == 0:
        raise ValueError("train_one_epoch got no batches: is the training split empty?")
    seconds = time.perf_counter() - start
    means = {name: value / n_steps for name, value in totals.items()}
    return {**means, "images": n_images, "seconds": seconds, "images_per_s": n_images / seconds}


@torch.no_grad()
def compute_outputs(
    model: nn.Module, batches: Iterable[Batch], device: torch.device
) -> tuple[np.ndarray, np.ndarray]:
    """Continuous outputs used for codes (n x bits, float32) and the labels (as given) of every
    batch."""
    model.eval()
    embed = getattr(model, "embed", model)
    outputs, labels = [], []
    for images, batch_labels in batches:
        outputs.append(embed(images.to(device)).float().cpu().numpy())
        labels.append(np.asarray(batch_labels))
    if not outputs:
        raise ValueError("compute_outputs got no batches")
    return np.concatenate(outputs), np.concatenate(labels)


def evaluate_retrieval(
    model: nn.Module,
    query_batches: Iterable[Batch],
    database_batches: Iterable[Batch],
    device: torch.device,
    *,
    topk: int | None = None,
) -> dict[str, float]:
    """Encode queries and database with ``model``; tie-aware and id-order mAP@topk of their
    codes."""
    q_out, q_labels = compute_outputs(model, query_batches, device)
    db_out, db_labels = compute_outputs(model, database_batches, device)
    q_codes, db_codes = pack_codes(q_out), pack_codes(db_out)
    return {
        f"map_{ties}": float(
            metrics.mean_average_precision(
                q_codes, db_codes, q_labels, db_labels, topk=topk, ties=mode
            )
        )
        for ties, mode in (("tie_aware", "aware"), ("id_order", "id"))
    }


@dataclass
class FitState:
    """Progress of ``fit``; with ``TrainingSetup.checkpoint`` it is what a resume starts from.

    Epochs are 0-based; ``epoch`` is the last finished one (-1 before the first).
    ``best_val_map`` is None when no epoch was validated (the last epoch is then the best).
    """

    epoch: int = -1
    best_epoch: int = -1
    best_val_map: float | None = None
    best_model: dict[str, torch.Tensor] | None = None  # the model's state dict, on the CPU
    history: list[dict[str, float]] = field(default_factory=list)  # each epoch's metrics

    def to_dict(self) -> dict[str, Any]:
        """The fields as a plain dict (the tensors are not copied)."""
        return {f.name: getattr(self, f.name) for f in fields(self)}


# (epoch, metrics, state) after each epoch: epoch 0-based, metrics as appended to state.history.
EpochCallback = Callable[[int, dict[str, float], FitState], None]


@dataclass
class TrainingSetup:
    """What ``fit`` drives: the objective, its optimizer and schedule, and the recipe's stage plan.

    ``objective`` may be replaced by a data-parallel wrapper of itself (``prepare_model``) before
    ``fit``; ``inner`` is always the ``Objective``.
    """

    objective: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    pretrain_epochs: int  # classification epochs before the hashing ones
    epochs: int  # all epochs: pre-training plus hashing
    rotation: str  # post-hoc rotation after fit: "none", "itq" or "search"

    @property
    def inner(self) -> Objective:
        """The ``Objective``, unwrapped from DDP."""
        return getattr(self.objective, "module", self.objective)

    def checkpoint(self, state: FitState) -> dict[str, Any]:
        """Everything a resume needs: the fit state plus objective, optimizer and scheduler states.

        Plain tensors, numbers and containers only, so ``torch.load(weights_only=True)`` reads it.
        """
        return {
            **state.to_dict(),
            "objective": self.inner.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
        }

    def restore(self, checkpoint: dict[str, Any]) -> FitState:
        """Load a ``checkpoint`` written by ``checkpoint``; returns its fit state to resume from."""
        values = dict(checkpoint)
        self.inner.load_state_dict(values.pop("objective"))
        self.optimizer.load_state_dict(values.pop("optimizer"))
        self.scheduler.load_state_dict(values.pop("scheduler"))
        return FitState(**values)


def build_training(recipe: Recipe, model: nn.Module, num_classes: int) -> TrainingSetup:
    """The recipe's loss, stage plan, optimizer and schedule around ``model`` (a ``HashModel``).

    The classifier of the pre-training stage exists only when the stage plan has pre-training
    epochs; the schedule spans pre-training and hashing epochs together.
    """
    loss = losses.build(
        recipe.method, bits=recipe.bits, num_classes=num_classes, **recipe.loss_params
    )
    pretrain_epochs, rotation = recipe.stage_plan(loss.stages)
    epochs = pretrain_epochs + recipe.epochs
    objective = Objective(model, loss, num_classes=num_classes if pretrain_epochs else None)
    optimizer = build_optimizer(
        objective.parameters(), recipe.optimizer, recipe.lr, recipe.weight_decay
    )
    scheduler = build_scheduler(optimizer, epochs, recipe.warmup_epochs)
    return TrainingSetup(objective, optimizer, scheduler, pretrain_epochs, epochs, rotation)


def fit(
    setup: TrainingSetup,
    batches: Callable[[int], Iterable[Batch]],
    device: torch.device,
    *,
    validate: Callable[[nn.Module], float] | None = None,
    augment: Callable[[torch.Tensor], torch.Tensor] | None = None,
    state: FitState | None = None,
    callbacks: Sequence[EpochCallback] = (),
    stop_after_epochs: int | None = None,
) -> FitState:
    """Train ``setup`` from ``state`` (resume; None starts afresh) up to ``setup.epochs``.

    ``batches(epoch)`` gives that epoch's training batches. ``validate(model)`` scores the hash
    model (e.g. validation mAP; higher is better) after each epoch; without it every epoch
    replaces the best, so the last one is kept. Each epoch's metrics are ``epoch`` (1-based),
    ``train_<stat>`` of ``train_one_epoch``, ``val_map`` (when validated) and ``epoch_seconds``.
    ``stop_after_epochs`` ends the call once that many epochs are done, as an interruption would.
    Returns the state; ``state.best_model`` holds the selected weights.
    """
    state = FitState() if state is None else state
    inner = setup.inner
    for epoch in range(state.epoch + 1, setup.epochs):
        start = time.perf_counter()
        inner.pretraining = epoch < setup.pretrain_epochs
        stats = train_one_epoch(
            setup.objective, batches(epoch), setup.optimizer, device, augment=augment
        )
        setup.scheduler.step()
        epoch_metrics = {"epoch": epoch + 1, **{f"train_{k}": v for k, v in stats.items()}}
        val_map = None if validate is None else float(validate(inner.model))
        if val_map is not None:
            epoch_metrics["val_map"] = val_map
        epoch_metrics["epoch_seconds"] = time.perf_counter() - start
        state.history.append(epoch_metrics)
        if val_map is None or state.best_val_map is None or val_map > state.best_val_map:
            state.best_epoch, state.best_val_map = epoch, val_map
            state.best_model = {
                k: v.detach().cpu().clone() for k, v in inner.model.state_dict().items()
            }
        state.epoch = epoch
        for callback in callbacks:
            callback(epoch, epoch_metrics, state)
        if stop_after_epochs is not None and epoch + 1 >= stop_after_epochs:
            break
    inner.pretraining = False
    return state


def epoch_line(epoch_metrics: dict[str, float], epochs: int) -> str:
    """One progress line for an epoch's metrics: epoch, loss, validation mAP (if any), images/s."""
    val_map = epoch_metrics.get("val_map")
    val_text = "" if val_map is None else f"val mAP {val_map:.4f}  "
    return (
        f"epoch {epoch_metrics['epoch']}/{epochs}  loss {epoch_metrics['train_loss']:.4f}  "
        f"{val_text}{epoch_metrics['train_images_per_s']:.0f} img/s"
    )
