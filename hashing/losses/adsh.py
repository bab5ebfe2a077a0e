"""ADSH: Angular Deep Supervised Hashing.

Zhou, Po et al., "Angular Deep Supervised Hashing for Image Retrieval", IEEE Access 2019.
Tags as in docs/methods.md: [code] follows the CISiP FIRe reimplementation, [abstract] the paper's
abstract, [choice] our own reading.

    loss = CE(margin logits of cos(h_i, w_c)) - alpha * mean(D) + beta * var(D)

No quantization term: the angular loss alone pushes codes towards their class weights.

Hyperparameters:
- ``margin`` (target logit; the others are s * cos):
  "cosface" (default) [code]: s * (cos - m);
  "arcface" [code]: s * cos(theta + m) (not monotone for theta > pi - m, as in FIRe);
  "sphereface" [abstract] A-Softmax: ||h|| * (lambda cos + psi(theta)) / (1 + lambda), others
  ||h|| cos, psi(theta) = (-1)^k cos(m theta) - 2k on [k pi/m, (k+1) pi/m]; lambda =
  max(lambda_min, lambda_base * (1 + lambda_gamma * step)^-lambda_power) with 1000, 0.12, 1, 5
  [code] from SphereFace's prototxt; ``step`` (a buffer) counts training-mode calls.
- ``s`` = 10, ``m`` = 0.2 for cosface/arcface [code]; ``m`` = 4 (an integer) for sphereface.
- ``alpha`` = ``beta`` = 1 [code]: weights of the class-code separation, over D_cc' = (K - c_c .
  c_c') / 2 for c < c', with relaxed class codes c_c = tanh(t * w_c / ||w_c||).
- ``t`` = sqrt(K) [choice] so c_c is near +-1 and D a Hamming-distance proxy (FIRe uses t = 1).
- ``normalize_separation`` = True [choice]: use D / K in [0, 1], so the term has the scale of
  the cross-entropy whatever K; False uses raw D in [0, K].
- var(D) is the population variance [choice] (FIRe: unbiased), so two classes (one pair) work.
- Dynamic softmax [code]: a sample with several labels Y gets one extra logit, cos(h_i, mean of
  w_c over Y) with the margin, as its single target among C + 1 logits; its own classes' logits
  stay as competitors, as in FIRe. A single-label sample's extra logit is -inf [choice] (FIRe
  adds it to every sample), so single-label batches give exactly the plain loss.
- Class weights W (C x K, no bias), N(0, 1) init [choice]; learnable: see HashLoss on parameters.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from hashing.losses import register
from hashing.losses.base import HashLoss

_DEFAULT_MARGIN = {"cosface": 0.2, "arcface": 0.2, "sphereface": 4}


@register("adsh")
class ADSHLoss(HashLoss):
    """Angular softmax on cos(h, class weight) plus a class-code separation term."""

    def __init__(
        self,
        *,
        bits: int,
        num_classes: int,
        margin: str = "cosface",
        s: float = 10.0,
        m: float | None = None,
        alpha: float = 1.0,
        beta: float = 1.0,
        t: float | None = None,
        normalize_separation: bool = True,
        lambda_base: float = 1000.0,
        lambda_gamma: float = 0.12,
        lambda_power: float = 1.0,
        lambda_min: float = 5.0,
    ) -> None:
        super().__init__(bits=bits, num_classes=num_classes)
        if margin not in _DEFAULT_MARGIN:
            raise ValueError(f"margin must be one of {', '.join(_DEFAULT_MARGIN)}, got {margin!r}")
        if num_classes < 2:
            raise ValueError("adsh needs num_classes >= 2 (the separation term compares classes)")
        self.margin = margin
        self.m = _DEFAULT_MARGIN[margin] if m is None else m
        if margin == "sphereface" and (self.m != int(self.m) or self.m < 1):
            raise ValueError(f"sphereface needs a positive integer margin m, got {self.m!r}")
        self.s, self.alpha, self.beta = s, alpha, beta
        self.t = math.sqrt(bits) if t is None else t
        self.normalize_separation = normalize_separation
        self.lambda_schedule = (lambda_base, lambda_gamma, lambda_power, lambda_min)
        self.weight = nn.Parameter(torch.randn(num_classes, bits))
        if margin == "sphereface":
            self.register_buffer("step", torch.zeros((), dtype=torch.long))

    def compute_loss(
        self, outputs: torch.Tensor, labels: torch.Tensor
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Loss and its parts from outputs (n x K) and 0/1 float labels (n x C)."""
        counts = labels.sum(dim=1)
        if (counts == 0).any():
            raise ValueError("adsh needs at least one label per sample; drop unlabelled rows")
        weight = self.weight.to(outputs.dtype)
        unit = F.normalize(outputs, dim=1)
        # sum over Y has the direction of the mean of w_c over Y: all a cosine needs
        label_weight = F.normalize(labels @ weight, dim=1)  # (n x K)
        dynamic_cos = (unit * label_weight).sum(dim=1, keepdim=True)
        cos = torch.cat([unit @ F.normalize(weight, dim=1).T, dynamic_cos], dim=1)  # (n x C+1)
        multi = counts > 1
        target = torch.where(multi, self.num_classes, labels.argmax(dim=1))
        logits = self._margin_logits(cos, target, outputs.norm(dim=1))
        hidden = torch.zeros_like(logits, dtype=torch.bool)
        hidden[:, -1] = ~multi
        angular = F.cross_entropy(logits.masked_fill(hidden, float("-inf")), target)

        distances = self.class_code_distances().to(outputs.dtype)
        mean, var = distances.mean(), distances.var(unbiased=False)
        loss = angular - self.alpha * mean + self.beta * var
        return loss, {"angular": angular, "separation_mean": mean, "separation_var": var}

    def class_code_distances(self) -> torch.Tensor:
        """Relaxed Hamming distances D_cc' between class codes, c < c': (C(C-1)/2,), maybe / K."""
        codes = torch.tanh(self.t * F.normalize(self.weight, dim=1))
        pairs = torch.triu_indices(
            self.num_classes, self.num_classes, offset=1, device=codes.device
        )
        distances = (self.bits - (codes @ codes.T)[pairs[0], pairs[1]]) / 2
        return distances / self.bits if self.normalize_separation else distances

    def _margin_logits(
        self, cos: torch.Tensor, target: torch.Tensor, norms: torch.Tensor
    ) -> torch.Tensor:
        """Logits (n x C') from cosines (n x C'), with the margin applied at each target column."""
        target_cos = cos.gather(1, target[:, None])
        if self.margin == "cosface":
            target_logit = target_cos - self.m
        elif self.margin == "arcface":
            target_logit = torch.cos(torch.acos(target_cos.clamp(-1 + 1e-7, 1 - 1e-7)) + self.m)
        else:
            target_logit = self._sphereface_target(target_cos)
        logits = cos.scatter(1, target[:, None], target_logit)
        return logits * norms[:, None] if self.margin == "sphereface" else logits * self.s

    def _sphereface_target(self, cos: torch.Tensor) -> torch.Tensor:
        """A-Softmax target (n x 1): psi(theta) blended with cos by the annealed lambda."""
        m = int(self.m)
        cos = cos.clamp(-1, 1)
        # cos(m theta) as the Chebyshev polynomial T_m(cos): no acos in the gradient path
        prev, cos_m_theta = torch.ones_like(cos), cos
        for _ in range(m - 1):
            prev, cos_m_theta = cos_m_theta, 2 * cos * cos_m_theta - prev
        k = torch.floor(m * torch.acos(cos.detach()) / math.pi).clamp(max=m - 1)
        psi = (1 - 2 * (k % 2)) * cos_m_theta - 2 * k
        base, gamma, power, floor = self.lambda_schedule
        lam = max(floor, base * (1 + gamma * float(self.step)) ** -power)
        if self.training:
            self.step += 1
        return (lam * cos + psi) / (1 + lam)
