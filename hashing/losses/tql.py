"""TQL: Deep Hashing with Triplet Quantization Loss.

Zhou, Huang, Zhang, Wang, "Deep Hashing with Triplet Quantization Loss", VCIP 2017.
Tags as in docs/methods.md: [abstract] is what the paper's abstract states, [choice] our own reading
(the full text could not be read).

On tanh outputs u = tanh(h), codes b = sgn(u) and in-batch triplets (a, p, q), with d the squared
Euclidean distance:

    L_tri = mean max(0, d(u_a, u_p) - d(u_a, u_q) + alpha)
    L_tq  = mean max(0, d(b_a, b_p) - d(b_a, b_q) + alpha_q)
    L     = L_tri + lambda * L_tq

- Quantization loss measured on triplets, so the ranking survives binarization [abstract]; no
  ||u - sgn(u)||^2 term [abstract].
- b gets a straight-through gradient [choice]: db/du = 1 (|u| <= 1 always holds for tanh).
- ``alpha`` = ``alpha_q`` = K / 2 [choice]: one flipped bit changes d(b, b') by 4, so the binary
  margin asks for K / 8 more differing bits to the negative; ``lam`` (lambda) = 1 [choice].
- ``mining`` [choice]: "all" valid triplets (default), or "semi-hard": only triplets with
  d(u_a, u_p) < d(u_a, u_q) < d(u_a, u_p) + alpha (chosen without gradient); both terms average
  over the same triplets. p = a counts as a positive (``self_positive``, as in the SDSH code), so a
  batch without positive pairs still pushes its negatives beyond the margin.
- Use class-balanced batches (P classes x M images) so that batches hold valid triplets.
"""

from __future__ import annotations

import torch

from hashing.losses import register
from hashing.losses.base import (
    HashLoss,
    hard_sign,
    masked_mean,
    pairwise_sq_distances,
    similarity_matrix,
    triplet_mask,
)

_MINING = ("all", "semi-hard")


def _triplet_hinge(distances: torch.Tensor, margin: float) -> torch.Tensor:
    """max(0, d_ap - d_aq + margin) for every [a, p, q] from distances (n x n): (n x n x n)."""
    return torch.relu(distances[:, :, None] - distances[:, None, :] + margin)


@register("tql")
class TQLLoss(HashLoss):
    """Triplet loss on tanh outputs plus the same triplet loss on their straight-through signs."""

    def __init__(
        self,
        *,
        bits: int,
        num_classes: int,
        alpha: float | None = None,
        alpha_q: float | None = None,
        lam: float = 1.0,
        mining: str = "all",
        self_positive: bool = True,
    ) -> None:
        super().__init__(bits=bits, num_classes=num_classes)
        if mining not in _MINING:
            raise ValueError(f"mining must be one of {', '.join(_MINING)}, got {mining!r}")
        self.alpha = bits / 2 if alpha is None else alpha
        self.alpha_q = bits / 2 if alpha_q is None else alpha_q
        self.lam, self.mining, self.self_positive = lam, mining, self_positive

    def compute_loss(
        self, outputs: torch.Tensor, labels: torch.Tensor
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Loss and its parts from outputs (n x K) and 0/1 float labels (n x C)."""
        relaxed = torch.tanh(outputs)
        codes = relaxed + (hard_sign(relaxed) - relaxed).detach()  # straight-through sgn
        real_distances = pairwise_sq_distances(relaxed)
        mask = triplet_mask(similarity_matrix(labels, labels), self_positive=self.self_positive)
        if self.mining == "semi-hard":
            d = real_distances.detach()
            d_ap, d_aq = d[:, :, None], d[:, None, :]
            mask = mask & (d_aq > d_ap) & (d_aq < d_ap + self.alpha)
        triplet = masked_mean(_triplet_hinge(real_distances, self.alpha), mask)
        quantization = masked_mean(_triplet_hinge(pairwise_sq_distances(codes), self.alpha_q), mask)
        loss = triplet + self.lam * quantization
        return loss, {"triplet": triplet, "triplet_quantization": quantization}
