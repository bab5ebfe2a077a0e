"""prepare streams: ten times the images takes no more memory, in the driver or in Ray's workers.

A child process (a fresh interpreter, so other tests' allocations do not count) starts its own
local Ray cluster and prepares a folder corpus of N images, then one of 10 N, after a warm-up run
(Ray's workers and Ray Data's helper actors start there). During each run a thread samples, every
50 ms, the private memory (PSS of anonymous and file-backed pages) of the driver and of each other
process of its tree (raylet, GCS, workers). The object store's shared pages are left
out: Ray caps the store (here 300 MB) and spills beyond it, so it is bounded by configuration,
and how full it gets depends on Ray Data's budget rather than on the corpus.

Images are 64 x 64 noise, so each prepared PNG is about 12 KB: a driver or worker that kept the
images of the 10 N run (N = 800) would hold 9 N x 12 KB = 85 MB more. What may grow is the
driver's bookkeeping: the listing (pyarrow's file infos, ids, paths, labels) and a summary row
per image; measured here +17 MB for 10 N vs N (about 2.4 KB per listed file, transient, during
the listing). Tolerances: 40 MB for the driver and for the largest other process. The sum over the
tree is reported but not bounded: with N images fewer tasks overlap than with 10 N, so the peak
of the sum grows with how many workers are busy at once, not with the corpus (measured: +83 to
+97 MB over the same 14 processes, while no process but the driver grew by more than 2 MB).
Block and part sizes are pinned in the child, so both runs use the same ones (by default they grow
with the corpus up to a fixed cap, which is bounded too, but would give the small run smaller
blocks than the large one).
"""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

SMALL = 800
LARGE = 10 * SMALL
SIDE = 64
DRIVER_TOLERANCE = 40 * 1024**2
PROCESS_TOLERANCE = 40 * 1024**2


def write_noise_corpus(root: Path, n: int) -> Path:
    """``root/c<k>/<i>.jpg``: n 64 x 64 JPEGs of noise (64 distinct files, written in turn)."""
    rng = np.random.default_rng(0)
    encoded = []
    for _ in range(64):
        buffer = io.BytesIO()
        pixels = rng.integers(0, 256, (SIDE, SIDE, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(buffer, format="JPEG", quality=95)
        encoded.append(buffer.getvalue())
    for k in range(4):
        (root / f"c{k}").mkdir(parents=True)
    for i in range(n):
        (root / f"c{i % 4}" / f"{i:06d}.jpg").write_bytes(encoded[i % len(encoded)])
    return root


def test_ten_times_the_images_takes_no_more_memory(tmp_path):
    small = write_noise_corpus(tmp_path / "small", SMALL)
    large = write_noise_corpus(tmp_path / "large", LARGE)
    done = subprocess.run(
        [sys.executable, __file__, str(small), str(large), str(tmp_path / "out")],
        capture_output=True,
        check=False,
        text=True,
        timeout=540,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert done.returncode == 0, done.stderr[-3000:]
    runs = json.loads(done.stdout.strip().splitlines()[-1])
    assert [run["kept"] for run in runs] == [SMALL, LARGE]
    # The PNGs really are the size the tolerances assume.
    assert runs[1]["image_bytes"] > 11_000 * LARGE
    small_run, large_run = runs
    print("peak private PSS (bytes), N and 10 N images:", runs)
    assert large_run["driver_peak_pss"] - small_run["driver_peak_pss"] < DRIVER_TOLERANCE, runs
    assert large_run["process_peak_pss"] - small_run["process_peak_pss"] < PROCESS_TOLERANCE, runs


# ---------------------------------------------------------------------------------------------
# The child process


def _tree_pids() -> list[int]:
    """This process and every descendant."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as handle:
                    parent = int(handle.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(parent, []).append(int(entry))
    pids, todo = [], [os.getpid()]
    while todo:
        pid = todo.pop()
        pids.append(pid)
        todo += children.get(pid, [])
    return pids


def _private_pss(pid: int) -> int:
    """Proportional anonymous + file-backed memory of ``pid``: PSS without the object store."""
    try:
        with open(f"/proc/{pid}/smaps_rollup") as handle:
            text = handle.read()
    except OSError:
        return 0
    return 1024 * sum(
        int(x) for x in re.findall(r"^Pss_(?:Anon|File):\s+(\d+)", text, re.MULTILINE)
    )


def _measured(work: Callable[[], dict]) -> tuple[dict, list[int]]:
    """work() and peaks during it: private PSS of [driver, largest other process, tree],
    processes."""
    peaks, stop = [0, 0, 0, 0], threading.Event()

    def sample() -> None:
        while not stop.is_set():
            pids = _tree_pids()
            readings = [_private_pss(pid) for pid in pids]
            peaks[0] = max(peaks[0], readings[0])
            peaks[1] = max(peaks[1], *readings[1:], 0)
            peaks[2] = max(peaks[2], sum(readings))
            peaks[3] = max(peaks[3], len(pids))
            time.sleep(0.05)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        result = work()
    finally:
        stop.set()
        sampler.join()
    return result, peaks


def _child(small: str, large: str, out: str) -> None:
    import pyarrow.parquet as pq
    import ray
    import ray.data

    from pipelines import prepare as prepare_module
    from pipelines.sources import rows as source_rows

    source_rows.MIN_ROWS_PER_BLOCK = source_rows.ROWS_PER_BLOCK = 200
    prepare_module.TARGET_PART_BYTES = 2 * 1024**2
    ray.init(
        num_cpus=4,
        object_store_memory=300 * 1024**2,
        include_dashboard=False,
        log_to_driver=False,
        configure_logging=False,
    )
    ray.data.DataContext.get_current().enable_progress_bars = False

    def run(corpus: str) -> dict:
        return prepare_module.prepare("folder", out, path=corpus, progress=False)

    run(small)  # warm-up: workers and Ray Data's actors start here
    results = []
    for corpus in (small, large):
        meta, (driver, process, tree, processes) = _measured(lambda corpus=corpus: run(corpus))
        results.append(
            {
                "kept": meta["counts"]["kept"],
                "driver_peak_pss": driver,
                "process_peak_pss": process,
                "tree_peak_pss": tree,
                "processes": processes,
            }
        )
    # Read back only now: loading Parquet between the runs would raise the second one's baseline.
    files = {
        Path(out) / name for split in meta["splits"].values() for name in split.get("files", [])
    }
    results[-1]["image_bytes"] = sum(
        sum(len(x) for x in pq.read_table(f, columns=["image"]).column(0).to_pylist())
        for f in files
    )
    ray.shutdown()
    print(json.dumps(results))


if __name__ == "__main__":
    _child(*sys.argv[1:4])
