"""ExpHash: the exponentiated hashing loss with a bilinear smooth approximation of the codes.

Mu & Liu, "Deep Hashing: A Joint Approach for Image Signature Learning", AAAI 2017.
Tags as in docs/methods.md: [abstract] is what the paper's abstract states, [choice] our own reading
(the full text could not be read).

    u = tanh(beta h),   A_ij = u_i . u_j / K in [-1, 1],   t_ij = +1 if similar else -1,
    loss = mean over pairs i < j of exp(-t_ij A_ij), positives weighted n_neg / n_pos.

- Exponentiated loss [abstract]; its pairwise form on the code affinity A_ij (Hamming distance
  K (1 - A_ij) / 2 for binary codes) [choice].
- Bilinear smooth approximation [abstract]: each sgn(h) replaced by tanh(beta h) [choice], so A_ij
  is the bilinear form tanh(beta h_i) . tanh(beta h_j) / K.
- Continuation [choice]: beta = (1 + ``beta_gamma`` * step)^``beta_power`` grows from 1 so the
  relaxation tightens towards sgn; 0.005 and 0.5 as in HashNet. ``beta_gamma=0`` keeps beta = 1.
  The step is a buffer (see ``Continuation``).
- Positive-pair weight n_neg / n_pos [choice]: the few similar pairs of a batch count as much as
  the many dissimilar ones (``balanced_pair_mean``).

Stage "classification_pretrain" [abstract]: the trainer first trains backbone + hash layer on
classification, then fine-tunes everything with this loss.
"""

from __future__ import annotations

import torch

from hashing.losses import register
from hashing.losses.base import Continuation, HashLoss, balanced_pair_mean, similarity_matrix


@register("exphash")
class ExpHashLoss(HashLoss):
    """Class-balanced exp(-t_ij A_ij) over in-batch pairs, codes relaxed to tanh(beta h)."""

    stages = ("classification_pretrain",)

    def __init__(
        self, *, bits: int, num_classes: int, beta_gamma: float = 0.005, beta_power: float = 0.5
    ) -> None:
        super().__init__(bits=bits, num_classes=num_classes)
        self.continuation = Continuation(beta_gamma, beta_power)

    def compute_loss(
        self, outputs: torch.Tensor, labels: torch.Tensor
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Loss and its parts from outputs (n x K) and 0/1 float labels (n x C)."""
        inner, beta = self.continuation.relaxed_inner_products(outputs)
        affinity = inner / self.bits  # (n x n) in [-1, 1]
        similar = similarity_matrix(labels, labels)
        signed = similar.to(outputs.dtype) * 2 - 1
        loss = balanced_pair_mean(torch.exp(-signed * affinity), similar)
        return loss, {"exp_loss": loss, "beta": torch.tensor(beta)}
