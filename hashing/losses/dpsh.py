"""DPSH: Deep Pairwise-Supervised Hashing (pairwise likelihood plus quantization).

Li, Wang, Kang, "Feature Learning based Deep Supervised Hashing with Pairwise Labels", IJCAI 2016.
From the paper; [choice] marks our own reading.

    theta_ij = h_i . h_j / 2
    L = mean over pairs i < j of [ log(1 + e^theta_ij) - s_ij theta_ij ]
        + eta * mean_i ||h_i - sgn(h_i)||^2

- The negative log-likelihood of s_ij under p(s_ij = 1) = sigmoid(theta_ij) (paper), with
  log(1 + e^x) as the numerically stable ``softplus``.
- ``eta`` = 0.1: weight of the quantization term (docs/methods.md); sgn is a constant (no gradient).
- Means over pairs and samples instead of the paper's sums [choice].
"""

from __future__ import annotations

import torch

from hashing.losses import register
from hashing.losses.base import (
    HashLoss,
    distinct_pairs,
    hard_sign,
    masked_mean,
    pair_neg_log_likelihood,
    similarity_matrix,
)


@register("dpsh")
class DPSHLoss(HashLoss):
    """Pairwise logistic likelihood of inner products plus eta * ||h - sgn(h)||^2."""

    def __init__(self, *, bits: int, num_classes: int, eta: float = 0.1) -> None:
        super().__init__(bits=bits, num_classes=num_classes)
        self.eta = eta

    def compute_loss(
        self, outputs: torch.Tensor, labels: torch.Tensor
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Loss and its parts from outputs (n x K) and 0/1 float labels (n x C)."""
        theta = outputs @ outputs.T / 2
        similar = similarity_matrix(labels, labels)
        pairs = distinct_pairs(len(outputs), outputs.device)
        likelihood = masked_mean(pair_neg_log_likelihood(theta, similar), pairs)
        quantization = (outputs - hard_sign(outputs)).pow(2).sum(dim=1).mean()
        loss = likelihood + self.eta * quantization
        return loss, {"likelihood": likelihood, "quantization": quantization}
