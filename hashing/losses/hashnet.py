"""HashNet: weighted pairwise cross-entropy on tanh(beta h) with continuation.

Cao, Long, Wang, Yu, "HashNet: Deep Learning to Hash by Continuation", ICCV 2017.
[code] follows the authors' PyTorch release; [choice] marks our own reading.

    u = tanh(beta h),   ip_ij = alpha * u_i . u_j
    L = weighted mean over pairs i < j of [ log(1 + e^ip_ij) - s_ij ip_ij ]

- Continuation (paper): beta = (1 + ``beta_gamma`` * step)^``beta_power``, 0.005 and 0.5 [code],
  step a buffer counting training-mode calls (see ``Continuation``).
- ``alpha`` = 10 / K [code] (the release's "sigmoid_param"): the inner product scale.
- Pair weights (paper): similar pairs weighted |S| / |S_1|, dissimilar |S| / |S_0|; as a
  normalised mean this is the mean of the two group means (``balanced_pair_mean``). The release
  sums the two group means instead, twice our value: only the learning rate notices.
- Pairs i < j of the batch [choice] (the release also counts each sample with itself).
"""

from __future__ import annotations

import torch

from hashing.losses import register
from hashing.losses.base import (
    Continuation,
    HashLoss,
    balanced_pair_mean,
    pair_neg_log_likelihood,
    similarity_matrix,
)


@register("hashnet")
class HashNetLoss(HashLoss):
    """Class-balanced logistic pair loss on alpha * tanh(beta h_i) . tanh(beta h_j)."""

    def __init__(
        self,
        *,
        bits: int,
        num_classes: int,
        alpha: float | None = None,
        beta_gamma: float = 0.005,
        beta_power: float = 0.5,
    ) -> None:
        super().__init__(bits=bits, num_classes=num_classes)
        self.alpha = 10.0 / bits if alpha is None else alpha
        self.continuation = Continuation(beta_gamma, beta_power)

    def compute_loss(
        self, outputs: torch.Tensor, labels: torch.Tensor
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Loss and its parts from outputs (n x K) and 0/1 float labels (n x C)."""
        inner, beta = self.continuation.relaxed_inner_products(outputs)
        similar = similarity_matrix(labels, labels)
        pair_loss = pair_neg_log_likelihood(self.alpha * inner, similar)
        loss = balanced_pair_mean(pair_loss, similar)
        return loss, {"pair_cross_entropy": loss, "beta": torch.tensor(beta)}
