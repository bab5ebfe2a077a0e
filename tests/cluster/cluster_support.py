"""Helpers of the cluster tests: the shared recipe, ports, /proc process lookups, reference codes.

Process helpers read ``/proc`` so a drill only ever touches processes this test session started.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from hashing.models import load_model
from hashing.recipe import Recipe
from pipelines.config import TrainConfig
from pipelines.contracts import ModelCard

PER_CLASS = 30  # 300 digits: 270 train (= database), 30 queries
# Three short epochs: enough for a kill after the first checkpoint to land mid-run. No
# augmentation, so a run resumed from a checkpoint sees exactly the batches an unbroken run sees.
RECIPE = Recipe(epochs=3, batch_size=32, val_fraction=0.15, augment=False)
S3_KEYS = {
    "AWS_ACCESS_KEY_ID": "test",
    "AWS_SECRET_ACCESS_KEY": "test",
    "AWS_DEFAULT_REGION": "us-east-1",
}
ARTIFACT_BUCKET = "mlflow"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for(ready: Callable[[], bool], timeout: float, what: str) -> None:
    """Poll ``ready`` every 0.2 s; fail the test with ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not ready():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.2)


def process_title(pid: int) -> str:
    """The command line (Ray workers: their ``ray::Class.method`` title) of ``pid``; '' if gone."""
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].decode(errors="replace")
    except OSError:
        return ""


def descendants(root: int) -> dict[int, str]:
    """Every live process below ``root`` (children, grandchildren, ...) -> its title."""
    parents: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            # the command name in (...) may hold spaces: the fields after it are fixed
            parents[int(entry)] = int(stat.rsplit(")", 1)[1].split()[1])
    found, frontier = set(), {root}
    while frontier:
        frontier = {pid for pid, parent in parents.items() if parent in frontier} - found
        found |= frontier
    return {pid: title for pid in found if (title := process_title(pid))}


def running(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def stop_process_tree(process: subprocess.Popen, grace: float = 5.0) -> list[int]:
    """Stop ``process`` (started in a session of its own) and every process below it.

    SIGTERM to its process group and to each process of the tree (noted before anything stops,
    as orphans leave it), then SIGKILL whatever still runs after ``grace`` seconds. Returns the
    pids still running at the end: none, normally.
    """
    tree = {process.pid, *descendants(process.pid)}
    for sig in (signal.SIGTERM, signal.SIGKILL):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, sig)
        for pid in tree:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(grace)
        deadline = time.monotonic() + grace
        while any(running(pid) for pid in tree) and time.monotonic() < deadline:
            time.sleep(0.1)
        if not any(running(pid) for pid in tree):
            break
    return sorted(pid for pid in tree if running(pid))


@contextlib.contextmanager
def ordered_blocks() -> Iterator[None]:
    """Ray Data hands out blocks in a fixed order, so two 2-worker runs of one config match.

    Without it each worker's shard differs from run to run and the validation mAP of two
    identical tiny runs differed by 0.03 here, more than the drills' tolerance.
    """
    from ray.data import DataContext

    options = DataContext.get_current().execution_options
    before, options.preserve_order = options.preserve_order, True
    try:
        yield
    finally:
        options.preserve_order = before


def drill_config(data: str, out: Path, tracking_uri: str, name: str) -> TrainConfig:
    """The 2-worker config of the undisturbed run and of the drills (they differ only by name)."""
    return TrainConfig(
        data=data,
        recipe=RECIPE,
        out=str(out),
        name=name,
        workers=2,
        cpus_per_worker=0.5,
        max_failures=2,
        tracking_uri=tracking_uri,
    )


def prepared_rows(data: str) -> dict[str, np.ndarray]:
    """Every row of a prepared dataset read with plain pyarrow + PIL: id -> uint8 image (H x W)."""
    meta = json.loads((Path(data) / "dataset.json").read_text())
    files = {f for entry in meta["splits"].values() for f in entry.get("files", [])}
    rows = {}
    for name in sorted(files):
        table = pq.read_table(Path(data) / name, columns=["id", "image"])
        for row_id, png in zip(table["id"].to_pylist(), table["image"].to_pylist(), strict=True):
            rows[row_id] = np.asarray(Image.open(io.BytesIO(png)))
    return rows


def reference_outputs(data: str, model_dir: Path) -> dict[str, np.ndarray]:
    """id -> the model's continuous outputs (bits,) computed here, one image at a time."""
    model, card = load_model(model_dir), ModelCard.read(model_dir)
    outputs = {}
    with torch.inference_mode():
        for row_id, image in prepared_rows(data).items():
            x = torch.from_numpy(image.astype(np.float32) / 255.0)[None, None]  # 1 x 1 x H x W
            outputs[row_id] = model.embed((x - card.mean) / card.std)[0].numpy()
    return outputs


def packed_signs(outputs: np.ndarray) -> np.ndarray:
    """(n x bits) outputs -> (n x bits/8) uint8; bit i is bit i % 8 of byte i // 8, sgn(0) = +1."""
    return np.packbits(outputs >= 0, axis=1, bitorder="little")
