"""Batch image augmentation on tensors (device-agnostic, no PIL): small random affine maps,
optionally mirrored left-right."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["RandomAffine"]


class RandomAffine(nn.Module):
    """Random rotation, scale and translation per image of a batch (n x C x H x W), and with
    ``hflip`` a left-right mirror of half the images.

    Digits and natural images alike survive a few degrees and pixels of jitter. Mirroring suits
    corpora whose classes are left-right symmetric (clothing, most photos) but not digits or text,
    so it is off unless asked for.
    """

    def __init__(
        self,
        degrees: float = 10.0,
        translate: float = 0.1,
        scale: tuple[float, float] = (0.9, 1.1),
        hflip: bool = False,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        self.degrees, self.translate, self.scale = degrees, translate, scale
        self.hflip = hflip
        self.generator = generator

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Images (n x C x H x W) float -> augmented images, same shape; identity in eval mode."""
        if not self.training:
            return images
        n = images.shape[0]

        def uniform(low: float, high: float) -> torch.Tensor:
            u = torch.rand(n, generator=self.generator)
            return (low + (high - low) * u).to(images.device, images.dtype)

        angle = uniform(-self.degrees, self.degrees) * (math.pi / 180)
        factor = 1.0 / uniform(*self.scale)
        tx, ty = uniform(-self.translate, self.translate), uniform(-self.translate, self.translate)
        cos, sin = torch.cos(angle) * factor, torch.sin(angle) * factor
        # A mirror is the affine map's x column negated: one grid_sample does both.
        mirror = torch.where(uniform(0, 1) < 0.5, -1.0, 1.0) if self.hflip else torch.ones_like(cos)
        theta = torch.stack(
            [
                torch.stack([cos * mirror, -sin, 2 * tx], 1),
                torch.stack([sin * mirror, cos, 2 * ty], 1),
            ],
            1,
        )
        grid = F.affine_grid(theta, list(images.shape), align_corners=False)
        # Pad with the image minimum (the background after normalisation), not with zero.
        low = images.amin(dim=(1, 2, 3), keepdim=True)
        warped = F.grid_sample(images - low, grid, align_corners=False, padding_mode="zeros")
        return warped + low
