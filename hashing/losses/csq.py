"""CSQ: Central Similarity Quantization (hash centres per class).

Yuan, Wang, Zhang et al., "Central Similarity Quantization for Efficient Image and Video
Retrieval", CVPR 2020. [code] follows the authors' release; [choice] marks our own reading.

    p = (tanh(h) + 1) / 2,   L = BCE(p, (c + 1) / 2) + lambda * mean (|tanh(h)| - 1)^2

- Centres (paper): rows of the K x K Hadamard matrix and of its negation when K is a power of two
  and C <= 2K (pairwise Hamming distance K/2, or K between a row and its negation); otherwise
  random +-1 centres with exactly K/2 ones [code], the best (largest minimum pairwise distance)
  of ``tries`` seeded draws [choice] (the release redraws until min > K/4 and mean >= K/2).
- Multi-label samples [code]: the centre is sgn of the mean of their classes' centres, a zero
  mean coordinate taken from a fixed seeded random +-1 vector.
- ``lam`` (lambda) = 1e-4 [code]. BCE is evaluated from logits (p = sigmoid(2h)): exact, stable.
- Centres and the tie vector are buffers, saved in the state dict; ``seed`` fixes them.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from hashing.losses import register
from hashing.losses.base import HashLoss, hard_sign


def hadamard(size: int) -> torch.Tensor:
    """Sylvester's Hadamard matrix (size x size) of +-1, rows mutually orthogonal; size = 2^k."""
    if size < 1 or size & (size - 1):
        raise ValueError(f"Sylvester's construction needs a power of two, got {size}")
    matrix = torch.ones(1, 1)
    while len(matrix) < size:
        matrix = torch.cat([torch.cat([matrix, matrix], 1), torch.cat([matrix, -matrix], 1)])
    return matrix


def hash_centres(num_classes: int, bits: int, *, seed: int = 0, tries: int = 20) -> torch.Tensor:
    """One +-1 hash centre per class (C x K) far apart in Hamming distance (see the module doc)."""
    if bits & (bits - 1) == 0 and num_classes <= 2 * bits:
        full = hadamard(bits)
        return torch.cat([full, -full])[:num_classes]
    gen = torch.Generator().manual_seed(seed)
    best, best_min = None, -1
    for _ in range(tries):
        # each centre: exactly K/2 of its bits set to +1, at random positions
        order = torch.rand(num_classes, bits, generator=gen).argsort(dim=1)
        centres = torch.where(order < bits // 2, 1.0, -1.0)
        distances = (bits - centres @ centres.T) / 2
        closest = distances.fill_diagonal_(bits).min() if num_classes > 1 else bits
        if closest > best_min:
            best, best_min = centres, closest
    return best


@register("csq")
class CSQLoss(HashLoss):
    """Binary cross-entropy of each output bit against its class's hash centre, plus
    quantization."""

    def __init__(self, *, bits: int, num_classes: int, lam: float = 1e-4, seed: int = 0) -> None:
        super().__init__(bits=bits, num_classes=num_classes)
        self.lam = lam
        self.register_buffer("centres", hash_centres(num_classes, bits, seed=seed))
        gen = torch.Generator().manual_seed(seed + 1)
        self.register_buffer("tie_break", torch.randint(0, 2, (bits,), generator=gen) * 2.0 - 1)

    def compute_loss(
        self, outputs: torch.Tensor, labels: torch.Tensor
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Loss and its parts from outputs (n x K) and 0/1 float labels (n x C)."""
        counts = labels.sum(dim=1, keepdim=True)
        if (counts == 0).any():
            raise ValueError("csq needs at least one label per sample; drop unlabelled rows")
        centres, tie_break = self.centres.to(outputs.dtype), self.tie_break.to(outputs.dtype)
        mean_centre = labels @ centres / counts  # (n x K)
        target = torch.where(mean_centre == 0, tie_break, hard_sign(mean_centre))
        # (tanh(h) + 1) / 2 = sigmoid(2h): BCE on logits 2h is the same loss, computed stably
        centre = F.binary_cross_entropy_with_logits(2 * outputs, (target + 1) / 2)
        quantization = (torch.tanh(outputs).abs() - 1).pow(2).mean()
        loss = centre + self.lam * quantization
        return loss, {"centre": centre, "quantization": quantization}
