"""DSH: Deep Supervised Hashing (contrastive loss with a binary-like regulariser).

Liu, Wang, Shan, Chen, "Deep Supervised Hashing for Fast Image Retrieval", CVPR 2016.
From the paper; [choice] marks our own reading.

    L = mean over pairs i < j of [ s_ij D_ij / 2 + (1 - s_ij) max(m - D_ij, 0) / 2 ]
        + alpha * mean_i || |h_i| - 1 ||_1,          D_ij = ||h_i - h_j||^2

- ``margin`` m = 2K: dissimilar pairs are pushed beyond squared distance 2K (paper).
- ``alpha`` = 0.01: weight of the regulariser pulling every output towards +-1 (paper).
- Means over pairs and samples instead of the paper's sums [choice], so the scale does not
  depend on the batch size.
"""

from __future__ import annotations

import torch

from hashing.losses import register
from hashing.losses.base import (
    HashLoss,
    distinct_pairs,
    masked_mean,
    pairwise_sq_distances,
    similarity_matrix,
)


@register("dsh")
class DSHLoss(HashLoss):
    """Contrastive loss on real outputs plus alpha * L1 distance of |h| from 1."""

    def __init__(
        self, *, bits: int, num_classes: int, margin: float | None = None, alpha: float = 0.01
    ) -> None:
        super().__init__(bits=bits, num_classes=num_classes)
        self.margin = 2.0 * bits if margin is None else margin
        self.alpha = alpha

    def compute_loss(
        self, outputs: torch.Tensor, labels: torch.Tensor
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Loss and its parts from outputs (n x K) and 0/1 float labels (n x C)."""
        distances = pairwise_sq_distances(outputs)
        similar = similarity_matrix(labels, labels)
        pair_loss = torch.where(similar, distances, torch.relu(self.margin - distances)) / 2
        contrastive = masked_mean(pair_loss, distinct_pairs(len(outputs), outputs.device))
        regulariser = (outputs.abs() - 1).abs().sum(dim=1).mean()
        loss = contrastive + self.alpha * regulariser
        return loss, {"contrastive": contrastive, "regulariser": regulariser}
