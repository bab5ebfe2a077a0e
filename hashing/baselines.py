"""Unsupervised hashing floors: LSH (random hyperplanes) and ITQ (PCA + rotation).

Both fit on features (n x d float: raw pixels or backbone features) and encode to packed uint8
codes (n x bits/8) in the codes contract; they show what retrieval looks like with no labels.

- ``LSH`` (Charikar, STOC 2002): codes sgn((x - mean) W) with W (d x bits) i.i.d. Gaussian. The
  features are centred first [choice]: raw pixels are all positive, and hyperplanes through the
  origin would then cut the data very unevenly.
- ``ITQ`` (Gong & Lazebnik, CVPR 2011): centre, project on the top ``bits`` principal components,
  then rotate by ``hashing.rotations.itq_rotation`` before the sign.
"""

from __future__ import annotations

import numpy as np

from hashing.codes import pack_codes
from hashing.rotations import itq_rotation

__all__ = ["ITQ", "LSH"]


class _LinearHasher:
    """Codes sgn((x - mean) P) for a fitted mean (d,) and projection P (d x bits)."""

    def __init__(self, bits: int, seed: int = 0) -> None:
        if isinstance(bits, bool) or not isinstance(bits, int) or bits <= 0:
            raise ValueError(f"bits must be a positive int, got {bits!r}")
        self.bits, self.seed = bits, seed
        self.mean: np.ndarray | None = None
        self.projection: np.ndarray | None = None

    def fit(self, features: np.ndarray):
        """Fit on training features (n x d); returns self."""
        x = _features(features)
        self.mean = x.mean(axis=0)
        self.projection = self._projection(x - self.mean)
        return self

    def encode(self, features: np.ndarray) -> np.ndarray:
        """Packed uint8 codes (n x bits/8) of features (n x d)."""
        if self.projection is None:
            raise RuntimeError(f"{type(self).__name__} must be fitted before encode")
        x = _features(features)
        if x.shape[1] != len(self.mean):
            raise ValueError(f"fitted on {len(self.mean)} features, got {x.shape[1]}")
        return pack_codes((x - self.mean) @ self.projection)

    def _projection(self, centred: np.ndarray) -> np.ndarray:
        raise NotImplementedError


class LSH(_LinearHasher):
    """Random-hyperplane LSH on centred features: ``LSH(bits, seed).fit(X).encode(X)``."""

    def _projection(self, centred: np.ndarray) -> np.ndarray:
        rng = np.random.default_rng(self.seed)
        return rng.standard_normal((centred.shape[1], self.bits))


class ITQ(_LinearHasher):
    """PCA to ``bits`` dimensions, then the ITQ rotation: ``ITQ(bits, seed=0).fit(X).encode(X)``."""

    def __init__(self, bits: int, iterations: int = 50, seed: int = 0) -> None:
        super().__init__(bits, seed)
        self.iterations = iterations

    def _projection(self, centred: np.ndarray) -> np.ndarray:
        if self.bits > centred.shape[1]:
            raise ValueError(
                f"ITQ needs bits <= feature dimension, got {self.bits} > {centred.shape[1]}"
            )
        # eigh returns ascending eigenvalues: the last ``bits`` columns are the top components
        _, vectors = np.linalg.eigh(centred.T @ centred)
        components = vectors[:, ::-1][:, : self.bits]
        rotation = itq_rotation(centred @ components, self.iterations, self.seed)
        return components @ rotation


def _features(features: np.ndarray) -> np.ndarray:
    """Features (n x d) as float64, with a clear error for other shapes."""
    x = np.asarray(features, dtype=np.float64)
    if x.ndim != 2 or len(x) == 0:
        raise ValueError(f"features must be a non-empty (n x d) array, got shape {x.shape}")
    return x
