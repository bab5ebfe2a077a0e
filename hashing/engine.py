"""Training and evaluation steps shared by the plain example and the Ray Train worker.

Batches are ``(images, labels)`` pairs: images float (n x C x H x W), labels multi-hot (n x C) or
class ids (n,). Any iterable of such pairs works (a DataLoader, Ray's ``iter_torch_batches``
adapted by the caller), so the Ray layer stays a short recipe around these functions.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from hashing import metrics
from hashing.codes import pack_codes

__all__ = [
    "Objective",
    "build_optimizer",
    "build_scheduler",
    "classification_loss",
    "compute_outputs",
    "evaluate_retrieval",
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
        return 0.5 * (
            1.0 + math.cos(math.pi * min(progress, 1.0))
        )  # a float: checkpoints load weights_only

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
    """Cross-entropy for single-label rows (ids or one-hot), binary cross-entropy for multi-label."""
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
    """Continuous outputs used for codes (n x bits, float32) and the labels (as given) of every batch."""
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
    """Encode queries and database with ``model``; tie-aware and id-order mAP@topk of their codes."""
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
