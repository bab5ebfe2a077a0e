"""The hashing-loss base class (public call and input checks written once) and shared helpers.

Helpers: label handling (``as_multihot``, ``similarity_matrix``), pair and triplet selection
(``distinct_pairs``, ``triplet_mask``), reductions (``masked_mean``, ``balanced_pair_mean``),
``pairwise_sq_distances``, ``hard_sign`` and the ``Continuation`` schedule for tanh(beta h).
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = [
    "Continuation",
    "HashLoss",
    "as_multihot",
    "balanced_pair_mean",
    "distinct_pairs",
    "hard_sign",
    "masked_mean",
    "pairwise_sq_distances",
    "similarity_matrix",
    "triplet_mask",
]


def as_multihot(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Labels as a bool multi-hot (n x C) tensor, from class ids (n,) int or
    multi-hot (n x C) 0/1."""
    if not isinstance(labels, torch.Tensor):
        raise TypeError(f"labels must be a torch.Tensor, got {type(labels).__name__}")
    if labels.ndim == 1:
        if labels.dtype == torch.bool or labels.is_floating_point() or labels.is_complex():
            raise ValueError(
                f"1-D labels must be integer class ids, got dtype {labels.dtype}; "
                f"pass multi-hot labels as a 2-D (n x {num_classes}) tensor"
            )
        if labels.numel() and (labels.min() < 0 or labels.max() >= num_classes):
            raise ValueError(
                f"class ids must lie in [0, {num_classes}), got range "
                f"[{int(labels.min())}, {int(labels.max())}]"
            )
        return torch.nn.functional.one_hot(labels.long(), num_classes).bool()
    if labels.ndim != 2:
        raise ValueError(
            f"labels must be 1-D class ids or 2-D multi-hot, got shape {tuple(labels.shape)}"
        )
    if labels.shape[1] != num_classes:
        raise ValueError(
            f"multi-hot labels have width {labels.shape[1]}, expected num_classes={num_classes}"
        )
    if labels.dtype != torch.bool and ((labels != 0) & (labels != 1)).any():
        raise ValueError("multi-hot labels must hold only 0 and 1")
    return labels.bool()


def similarity_matrix(labels_a: torch.Tensor, labels_b: torch.Tensor) -> torch.Tensor:
    """Pairs that share at least one label: multi-hot (n x C) and (m x C) -> bool (n x m)."""
    if labels_a.ndim != 2 or labels_b.ndim != 2 or labels_a.shape[1] != labels_b.shape[1]:
        raise ValueError(
            "similarity_matrix needs multi-hot labels of equal width, got shapes "
            f"{tuple(labels_a.shape)} and {tuple(labels_b.shape)}"
        )
    # float32 counts are exact far beyond any realistic number of classes
    return (labels_a.float() @ labels_b.float().T) > 0


def distinct_pairs(n: int, device: torch.device | None = None) -> torch.Tensor:
    """Each unordered pair once: bool (n x n), True where i < j."""
    return torch.ones(n, n, dtype=torch.bool, device=device).triu(diagonal=1)


def triplet_mask(similar: torch.Tensor, *, self_positive: bool) -> torch.Tensor:
    """Valid triplets [a, p, q] from a similarity (n x n) bool: p similar to a, q not ->
    (n x n x n).

    With ``self_positive`` the anchor also serves as its own positive (p = a, distance 0), as in
    the SDSH code: such triplets push negatives away even in a batch without a positive pair.
    """
    positive = similar.clone()
    if not self_positive:
        positive.fill_diagonal_(False)
    return positive[:, :, None] & ~similar[:, None, :]


def masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of ``values`` where ``mask`` (same shape, bool) holds; 0 (with a graph) if none does."""
    # where, not multiplication: values outside the mask never reach the sum or its gradient
    total = torch.where(mask, values, torch.zeros_like(values)).sum()
    return total / mask.sum().clamp(min=1)


def balanced_pair_mean(values: torch.Tensor, similar: torch.Tensor) -> torch.Tensor:
    """Pairs i < j of values (n x n) with similar and dissimilar pairs weighted equally: scalar.

    Equals the weighted mean with positives weighted n_neg / n_pos (HashNet, exphash): the mean of
    the two group means, or the one non-empty group's mean.
    """
    pairs = distinct_pairs(len(values), values.device)
    groups = (pairs & similar, pairs & ~similar)
    means = torch.stack([masked_mean(values, group) for group in groups])
    present = torch.stack([group.any() for group in groups]).to(values.dtype)
    return (means * present).sum() / present.sum().clamp(min=1)


def pair_neg_log_likelihood(inner: torch.Tensor, similar: torch.Tensor) -> torch.Tensor:
    """-log p(s_ij | inner_ij) with p(s = 1) = sigmoid(inner): log(1 + e^inner) - s * inner (n x n).

    The pairwise logistic likelihood of DPSH and HashNet; ``softplus`` keeps it stable.
    """
    return torch.nn.functional.softplus(inner) - similar.to(inner.dtype) * inner


def pairwise_sq_distances(x: torch.Tensor) -> torch.Tensor:
    """Squared Euclidean distances between rows of x (n x d): (n x n), exactly 0 on the diagonal."""
    # explicit differences: no cancellation error, and a zero (not NaN) gradient at distance 0
    return (x[:, None, :] - x[None, :, :]).pow(2).sum(dim=-1)


def hard_sign(x: torch.Tensor) -> torch.Tensor:
    """sgn with sgn(0) = +1 (the codes contract), same shape and dtype as x; no gradient."""
    return torch.where(x >= 0, 1.0, -1.0).to(x.dtype)


class Continuation(nn.Module):
    """HashNet's continuation beta = (1 + gamma * step)^power for tanh(beta h).

    ``step`` is a buffer (saved with the loss's state dict) counting training-mode calls, so a
    resumed run continues the schedule; evaluation-mode calls read beta without advancing it.
    """

    def __init__(self, gamma: float, power: float) -> None:
        super().__init__()
        self.gamma, self.power = gamma, power
        self.register_buffer("step", torch.zeros((), dtype=torch.long))

    def forward(self) -> float:
        """The current beta; advances the schedule by one step in training mode."""
        beta = (1.0 + self.gamma * float(self.step)) ** self.power
        if self.training:
            self.step += 1
        return beta

    def relaxed_inner_products(self, outputs: torch.Tensor) -> tuple[torch.Tensor, float]:
        """tanh(beta h_i) . tanh(beta h_j) for outputs (n x K): (n x n), and the beta used."""
        beta = self()
        relaxed = torch.tanh(beta * outputs)
        return relaxed @ relaxed.T, beta


class HashLoss(nn.Module):
    """A deep-hashing loss, called as ``loss(outputs, labels) -> scalar tensor``.

    ``outputs`` are continuous hash-layer outputs (n x bits); ``labels`` are multi-hot (n x C)
    bool/int/float 0-1 values, or 1-D int class ids (n,). ``forward`` checks both, turns the labels
    into a multi-hot tensor of the outputs' dtype and device, calls the subclass's
    ``compute_loss`` and keeps the summed parts in ``last_terms`` (detached Python floats) for
    logging. A subclass implements only ``compute_loss``.

    Learnable state: a loss may own parameters (adsh's class weights) and buffers (adsh's
    SphereFace step counter). The trainer must move the loss to the model's device, optimise
    ``loss.parameters()`` together with the model's, and save ``loss.state_dict()`` in checkpoints.
    Under DistributedDataParallel those parameters must sit inside the wrapped module (e.g. one
    module holding model and loss), or their gradients are not all-reduced across workers.

    ``stages`` names extra trainer stages the method needs (e.g. "classification_pretrain",
    "rotation"); the trainer runs them. Most methods need none.
    """

    stages: tuple[str, ...] = ()

    def __init__(self, *, bits: int, num_classes: int) -> None:
        super().__init__()
        for name, value in (("bits", bits), ("num_classes", num_classes)):
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        self.bits = bits
        self.num_classes = num_classes
        self.last_terms: dict[str, float] = {}

    def forward(self, outputs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Scalar loss of outputs (n x bits) under labels (n x C multi-hot, or (n,) class ids)."""
        if not isinstance(outputs, torch.Tensor) or not outputs.is_floating_point():
            raise TypeError("outputs must be a floating-point torch.Tensor")
        if outputs.ndim != 2 or outputs.shape[1] != self.bits:
            raise ValueError(
                f"outputs must be (n x bits={self.bits}), got shape {tuple(outputs.shape)}"
            )
        if outputs.shape[0] == 0:
            raise ValueError("empty batch: outputs has no rows")
        multihot = as_multihot(labels, self.num_classes)
        if multihot.shape[0] != outputs.shape[0]:
            raise ValueError(
                f"batch sizes differ: {outputs.shape[0]} outputs vs {multihot.shape[0]} labels"
            )
        multihot = multihot.to(device=outputs.device, dtype=outputs.dtype)
        loss, terms = self.compute_loss(outputs, multihot)
        self.last_terms = {name: float(value.detach()) for name, value in terms.items()}
        return loss

    def compute_loss(
        self, outputs: torch.Tensor, labels: torch.Tensor
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Loss and its named parts from outputs (n x bits) and 0/1 float labels (n x C)."""
        raise NotImplementedError
