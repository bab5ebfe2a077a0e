"""SDSH: Deep Supervised Hashing with Spherical Embedding.

Pidhorskyi, Jafari, Doretto et al., "Deep Supervised Hashing with Spherical Embedding", ACCV 2018.
Tags as in docs/methods.md: [code] follows the authors' TensorFlow code (podgorskiy/SDSH),
[choice] is our own reading.

Embedding z = h / ||h|| and D_xy = ||z_x - z_y||^2 in [0, 4].

- ``variant="spring"`` (default) [code]: over every valid in-batch triplet (anchor a, positive p
  similar to a, negative q dissimilar to a),
      E = (2 sqrt(2) - sqrt(max(4 + D_aq - D_ap, 1e-8)))^2,   loss = mean of E,
  zero exactly when p coincides with a and q is antipodal. The triplets are one dense n^3 mask,
  no loops (n = 150 is 3.4M entries). p = a counts as a positive [code] (``self_positive``), so
  a batch without positive pairs still pushes its negatives apart. No margin, no balance term.
- ``variant="simple"`` [code]: over dissimilar pairs only, d = sqrt(D + 1e-3) - sqrt(1e-3) and
  loss = mean of (2 - d)^2, which pushes every dissimilar pair towards antipodal.

Stage "rotation" [code]: after training the trainer fits a rotation R of the outputs, by default
``hashing.rotations.map_rotation_search`` (ITQ is the cheaper option), and codes are sgn(h R).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from hashing.losses import register
from hashing.losses.base import (
    HashLoss,
    distinct_pairs,
    masked_mean,
    pairwise_sq_distances,
    similarity_matrix,
    triplet_mask,
)

_VARIANTS = ("spring", "simple")
_SQRT_EPS = 1e-8  # floor of the spring's sqrt argument [code]
_SIMPLE_EPS = 1e-3  # offset inside the simple variant's sqrt [code]


@register("sdsh")
class SDSHLoss(HashLoss):
    """Spring energy of in-batch triplets on the unit sphere (or the simple pairwise variant)."""

    stages = ("rotation",)

    def __init__(
        self, *, bits: int, num_classes: int, variant: str = "spring", self_positive: bool = True
    ) -> None:
        super().__init__(bits=bits, num_classes=num_classes)
        if variant not in _VARIANTS:
            raise ValueError(f"variant must be one of {', '.join(_VARIANTS)}, got {variant!r}")
        self.variant = variant
        self.self_positive = self_positive

    def compute_loss(
        self, outputs: torch.Tensor, labels: torch.Tensor
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Loss and its parts from outputs (n x K) and 0/1 float labels (n x C)."""
        distances = pairwise_sq_distances(F.normalize(outputs, dim=1))  # (n x n) in [0, 4]
        similar = similarity_matrix(labels, labels)
        if self.variant == "simple":
            d = torch.sqrt(distances + _SIMPLE_EPS) - math.sqrt(_SIMPLE_EPS)
            dissimilar = distinct_pairs(len(outputs), outputs.device) & ~similar
            loss = masked_mean((2 - d) ** 2, dissimilar)
            return loss, {"simple_spring": loss}
        mask = triplet_mask(similar, self_positive=self.self_positive)  # [a, p, q]
        # 4 + D_aq - D_ap, indexed [a, p, q]
        stretch = 4 + distances[:, None, :] - distances[:, :, None]
        energy = (2 * math.sqrt(2) - torch.sqrt(stretch.clamp(min=_SQRT_EPS))) ** 2
        loss = masked_mean(energy, mask)
        return loss, {"spring": loss}
