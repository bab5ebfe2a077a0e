"""Helpers shared by the pipeline and cluster tests (pytest puts tests/ on sys.path)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from hashing.datasets import load_mnist5k

__all__ = ["moto_endpoint", "write_digit_folder"]


def write_digit_folder(root: Path, per_class: int) -> Path:
    """A folder corpus of real digits: ``root/<class>/NNN.png``, ``per_class`` per class."""
    images, labels = load_mnist5k()
    for cls in range(10):
        (root / str(cls)).mkdir()
        for i, row in enumerate(np.flatnonzero(labels == cls)[:per_class]):
            Image.fromarray(images[row]).save(root / str(cls) / f"{i:03d}.png")
    return root


@contextmanager
def moto_endpoint() -> Iterator[str]:
    """A moto S3 server on 127.0.0.1 (a real HTTP endpoint) while the block runs; its URL."""
    moto_server = pytest.importorskip("moto.server")
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0)
    server.start()
    try:
        host, port = server.get_host_and_port()
        yield f"http://{host}:{port}"
    finally:
        server.stop()
