"""Helpers shared by the pipeline and cluster tests (pytest puts tests/ on sys.path)."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from hashing.datasets import load_mnist5k
from hashing.models import HashModel, save_model
from pipelines.contracts import ImageSpec, ModelCard

__all__ = ["moto_endpoint", "save_model_dir", "start_serve_on_loopback", "write_digit_folder"]


def write_digit_folder(root: Path, per_class: int) -> Path:
    """A folder corpus of real digits: ``root/<class>/NNN.png``, ``per_class`` per class."""
    images, labels = load_mnist5k()
    for cls in range(10):
        (root / str(cls)).mkdir()
        for i, row in enumerate(np.flatnonzero(labels == cls)[:per_class]):
            Image.fromarray(images[row]).save(root / str(cls) / f"{i:03d}.png")
    return root


def save_model_dir(model: HashModel, directory: Path, *, side: int, **card: Any) -> Path:
    """``model`` saved as train saves it: ``model.pt`` and a complete model card for
    ``side`` x ``side`` images. ``card`` overrides the card's provenance fields (test values)."""
    save_model(model, directory)
    fields = {
        "method": "adsh",
        "mean": 0.5,
        "std": 0.5,
        "classes": [],
        "dataset": "test",
        "model_version": "test",
        "mlflow_run_id": "test-run",
        "best_epoch": 1,
        "best_val_map": None,
        "rotation": "none" if model.rotation is None else "itq",
        "pretrain_epochs": 0,
    }
    channels = model.config["in_channels"]
    ModelCard(
        **model.config,
        has_rotation=model.rotation is not None,
        image=ImageSpec(height=side, width=side, channels=channels),
        **(fields | card),
    ).write(directory)
    return Path(directory)


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


def start_serve_on_loopback() -> str:
    """Start Ray Serve's HTTP proxy on a free 127.0.0.1 port (no access log); its base URL."""
    from ray import serve

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    serve.start(
        http_options={"host": "127.0.0.1", "port": port},
        logging_config={"enable_access_log": False},
    )
    return f"http://127.0.0.1:{port}"
