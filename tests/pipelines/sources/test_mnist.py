"""idx sources (mnist, fashion-mnist): row ranges read in tasks, gzipped or not, damaged files,
the fashion-mnist protocols, and the real files of Debian's dataset-fashion-mnist package."""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest
from corpora import idx_bytes, pixels, read_split

from pipelines.cli import main
from pipelines.prepare import prepare
from pipelines.sources import mnist, read_source, rows
from pipelines.sources.mnist import FASHION_MNIST_CLASSES, FASHION_MNIST_PATH

pytestmark = pytest.mark.timeout(300)

DEBIAN_PACKAGE = "dataset-fashion-mnist"
IDX_NAMES = {
    ("train", "images"): "train-images-idx3-ubyte",
    ("train", "labels"): "train-labels-idx1-ubyte",
    ("test", "images"): "t10k-images-idx3-ubyte",
    ("test", "labels"): "t10k-labels-idx1-ubyte",
}


def write_idx(path: Path, array: np.ndarray, gzipped: bool) -> bytes:
    """``array`` as an idx file at ``path`` (gzipped or not); the bytes written."""
    raw = idx_bytes(array)
    data = gzip.compress(raw) if gzipped else raw
    path.write_bytes(data)
    return data


# --- row ranges, without Ray ------------------------------------------------------------------


@pytest.mark.parametrize("gzipped", [False, True], ids=["raw", "gz"])
def test_rows_are_read_by_range(tmp_path, monkeypatch, gzipped):
    monkeypatch.setattr(mnist, "_CHUNK_BYTES", 1000)  # skips and reads span many chunks
    images = np.random.default_rng(0).integers(0, 256, (257, 28, 28), dtype=np.uint8)
    labels = (np.arange(257) % 10).astype(np.uint8)
    write_idx(tmp_path / "images", images, gzipped)
    write_idx(tmp_path / "labels", labels, gzipped)
    fs = pafs.LocalFileSystem()

    image_file = mnist.read_idx_header(fs, str(tmp_path / "images"))
    label_file = mnist.read_idx_header(fs, str(tmp_path / "labels"))
    assert (image_file.gzipped, image_file.header_bytes, image_file.shape) == (
        gzipped,
        16,
        (257, 28, 28),
    )
    assert (label_file.header_bytes, label_file.shape, label_file.row_bytes) == (8, (257,), 1)
    for first, count in ((0, 1), (0, 257), (100, 57), (256, 1), (250, 20)):
        got = mnist.read_idx_rows(fs, image_file, first, count)
        np.testing.assert_array_equal(got, images[first : first + count])  # 250+20: 7 rows
        got = mnist.read_idx_rows(fs, label_file, first, count)
        np.testing.assert_array_equal(got, labels[first : first + count])


@pytest.mark.parametrize("gzipped", [False, True], ids=["raw", "gz"])
def test_a_truncated_file_keeps_the_rows_before_the_damage(tmp_path, monkeypatch, gzipped):
    monkeypatch.setattr(mnist, "_CHUNK_BYTES", 784)
    images = np.random.default_rng(1).integers(0, 256, (100, 28, 28), dtype=np.uint8)
    whole = write_idx(tmp_path / "images", images, gzipped)
    cut = len(whole) // 2 if gzipped else 16 + 40 * 784 + 300  # raw: 40 whole rows, then part
    (tmp_path / "images").write_bytes(whole[:cut])
    fs = pafs.LocalFileSystem()
    image_file = mnist.read_idx_header(fs, str(tmp_path / "images"))

    got = mnist.read_idx_rows(fs, image_file, 10, 80)
    assert 0 < len(got) < 80
    np.testing.assert_array_equal(got, images[10 : 10 + len(got)])
    if not gzipped:
        assert len(got) == 30
    assert len(mnist.read_idx_rows(fs, image_file, 95, 5)) == 0


def test_a_file_that_is_not_idx_is_refused(tmp_path):
    fs = pafs.LocalFileSystem()
    (tmp_path / "text").write_bytes(b"hello, world")
    (tmp_path / "floats").write_bytes(b"\x00\x00\x0d\x01\x00\x00\x00\x02" + b"\x00" * 8)
    (tmp_path / "short.gz").write_bytes(gzip.compress(b"\x00\x00"))
    for name in ("text", "floats", "short.gz"):
        with pytest.raises(ValueError, match="idx file"):
            mnist.read_idx_header(fs, str(tmp_path / name))


def test_fashion_mnist_without_its_files_names_the_debian_package(tmp_path):
    with pytest.raises(FileNotFoundError, match=f"apt-get install {DEBIAN_PACKAGE}"):
        read_source("fashion-mnist", str(tmp_path / "nowhere"))


# --- through Ray Data ---------------------------------------------------------------------------


def write_corpus(folder: Path, sizes: dict[str, int], gzipped: dict[str, bool], seed: int) -> dict:
    """The four idx files of ``sizes`` images per split; the images and labels written."""
    rng = np.random.default_rng(seed)
    folder.mkdir()
    written = {}
    for split, n in sizes.items():
        images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        labels = rng.permutation(np.arange(n) % 10).astype(np.uint8)
        for kind, array in (("images", images), ("labels", labels)):
            zipped = gzipped[kind]
            write_idx(folder / (IDX_NAMES[split, kind] + (".gz" if zipped else "")), array, zipped)
        written[split] = (images, labels)
    return written


@pytest.mark.ray
def test_tasks_read_their_own_ranges_across_the_split_boundary(ray_cluster, tmp_path, monkeypatch):
    # Blocks of 64 rows: 7 tasks, one of them reading train rows 256-299 and test rows 0-19.
    monkeypatch.setattr(rows, "ROWS_PER_BLOCK", 64)
    monkeypatch.setattr(rows, "MIN_ROWS_PER_BLOCK", 64)
    folder = tmp_path / "idx"
    written = write_corpus(
        folder, {"train": 300, "test": 130}, {"images": True, "labels": False}, seed=2
    )
    # Damage: test images end inside row 120; train label 7 is out of range.
    test_images = folder / "t10k-images-idx3-ubyte.gz"
    raw = idx_bytes(written["test"][0])[: 16 + 120 * 784 + 100]
    test_images.write_bytes(gzip.compress(raw))
    labels_file = folder / "train-labels-idx1-ubyte"
    damaged = bytearray(labels_file.read_bytes())
    damaged[8 + 7] = 10
    labels_file.write_bytes(bytes(damaged))

    meta = prepare("fashion-mnist", str(tmp_path / "out"), path=str(folder), progress=False)
    assert meta["protocol"] == "fashion-mnist" and meta["classes"] == list(FASHION_MNIST_CLASSES)
    assert meta["image"]["mode"] == "L" and meta["image"]["height"] == 28
    assert meta["counts"] == {"input": 430, "kept": 419, "skipped": 11}
    assert meta["skipped_reasons"] == {"truncated file": 10, "unknown label 10": 1}
    assert meta["skipped"][0]["source"] == f"{test_images}#120"
    for split, name, kept in (("train", "train", range(300)), ("query", "test", range(120))):
        table = read_split(tmp_path / "out", meta, split)
        kept = [i for i in kept if (name, i) != ("train", 7)]
        images, labels = written[name]
        assert table.column("id").to_pylist() == [f"fashion-mnist-{name}-{i:05d}" for i in kept]
        assert table.column("labels").to_pylist() == [[int(labels[i])] for i in kept]
        np.testing.assert_array_equal(
            np.stack([pixels(png) for png in table.column("image").to_pylist()]), images[kept]
        )
    assert meta["splits"]["database"] == {"same_as": "train"}


@pytest.mark.ray
def test_fashion_mnist_1k_queries_100_test_images_per_class(ray_cluster, tmp_path):
    folder = tmp_path / "idx"
    write_corpus(folder, {"train": 200, "test": 1100}, {"images": False, "labels": True}, seed=3)
    metas = [
        prepare(
            "fashion-mnist",
            str(tmp_path / name),
            path=str(folder),
            seed=seed,
            protocol="fashion-mnist-1k",
            progress=False,
        )
        for name, seed in (("a", 0), ("b", 1))
    ]
    queries = []
    for name, meta in zip("ab", metas):
        assert meta["protocol"] == "fashion-mnist-1k" and meta["splits"]["query"]["rows"] == 1000
        query = read_split(tmp_path / name, meta, "query")
        ids = query.column("id").to_pylist()
        assert all(i.startswith("fashion-mnist-test-") for i in ids)
        assert np.all(np.bincount([y for [y] in query.column("labels").to_pylist()]) == 100)
        train = read_split(tmp_path / name, meta, "train").column("id").to_pylist()
        assert train == [f"fashion-mnist-train-{i:05d}" for i in range(200)]
        assert meta["splits"]["database"] == {"same_as": "train"}
        queries.append(ids)
    assert queries[0] != queries[1]  # drawn by the seed


@pytest.mark.ray
def test_cli_reports_missing_fashion_mnist_in_one_line(ray_cluster, tmp_path, capsys):
    argv = [
        "prepare",
        "--source",
        "fashion-mnist",
        "--path",
        str(tmp_path / "nowhere"),
        "--out",
        str(tmp_path / "out"),
    ]
    assert main(argv) == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and f"apt-get install {DEBIAN_PACKAGE}" in error[0], error


# --- the real files: Debian's dataset-fashion-mnist -----------------------------------------------

# A generous bound on how far the driver's RSS (sampled: getrusage's maxrss would include the
# forked pytest process's) may rise during prepare: the driver holds a bookkeeping row per image,
# one block and one output part at a time, never the corpus.
DRIVER_PEAK_GROWTH = 256 * 1024**2


@pytest.mark.slow
@pytest.mark.ray
@pytest.mark.timeout(900)
def test_the_real_fashion_mnist_prepares_identically_in_bounded_memory(tmp_path):
    if not Path(FASHION_MNIST_PATH, "train-images-idx3-ubyte.gz").exists():
        pytest.skip(f"no Fashion-MNIST in {FASHION_MNIST_PATH}: apt-get install {DEBIAN_PACKAGE}")
    outs = [tmp_path / "a", tmp_path / "b"]
    root = Path(__file__).resolve().parents[3]
    # The child imports this module: it needs the repository and the tests' helpers on its path.
    paths = [str(root), str(root / "tests" / "pipelines"), os.environ.get("PYTHONPATH", "")]
    done = subprocess.run(
        [sys.executable, __file__, *map(str, outs)],
        capture_output=True,
        check=False,
        text=True,
        timeout=840,
        cwd=root,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(p for p in paths if p)},
    )
    assert done.returncode == 0, done.stderr[-3000:]
    runs = json.loads(done.stdout.strip().splitlines()[-1])
    print("70k Fashion-MNIST prepare:", runs)
    meta = json.loads((outs[0] / "dataset.json").read_text())
    assert meta["source"] == "fashion-mnist" and meta["protocol"] == "fashion-mnist"
    assert meta["source_path"] == FASHION_MNIST_PATH
    assert meta["counts"] == {"input": 70_000, "kept": 70_000, "skipped": 0}
    assert meta["splits"]["train"]["rows"] == 60_000 and meta["splits"]["query"]["rows"] == 10_000
    assert meta["splits"]["database"] == {"same_as": "train"}

    for split, name in (("train", "train"), ("query", "t10k")):
        labels = np.frombuffer(
            gzip.decompress(Path(FASHION_MNIST_PATH, f"{name}-labels-idx1-ubyte.gz").read_bytes()),
            np.uint8,
            offset=8,
        )
        images = np.frombuffer(
            gzip.decompress(Path(FASHION_MNIST_PATH, f"{name}-images-idx3-ubyte.gz").read_bytes()),
            np.uint8,
            offset=16,
        ).reshape(-1, 28, 28)
        table = read_split(outs[0], meta, split)
        official = "train" if split == "train" else "test"
        ids = [f"fashion-mnist-{official}-{i:05d}" for i in range(len(labels))]
        assert table.column("id").to_pylist() == ids
        assert table.column("labels").to_pylist() == [[int(y)] for y in labels]
        sample = range(0, len(labels), 97)
        pngs = table.column("image").to_pylist()
        np.testing.assert_array_equal(np.stack([pixels(pngs[i]) for i in sample]), images[sample])

    # A rerun writes the same bytes: ids, order and images do not depend on Ray's scheduling.
    files = sorted(p.relative_to(outs[0]) for p in outs[0].rglob("*.parquet"))
    assert files == sorted(p.relative_to(outs[1]) for p in outs[1].rglob("*.parquet"))
    assert all((outs[0] / f).read_bytes() == (outs[1] / f).read_bytes() for f in files)
    assert pq.read_metadata(outs[0] / files[0]).num_rows > 0
    for run in runs:
        assert run["peak"]["VmRSS"] - run["before"]["VmRSS"] < DRIVER_PEAK_GROWTH, runs


# ---------------------------------------------------------------------------------------------
# The child process: a fresh interpreter, so other tests' allocations do not count


def _memory() -> dict[str, int]:
    """This process's resident memory (bytes): all of it, anonymous, file-backed, shared memory."""
    with open("/proc/self/status") as handle:
        fields = dict(line.split(":", 1) for line in handle)
    return {
        k: int(fields[k].split()[0]) * 1024 for k in ("VmRSS", "RssAnon", "RssFile", "RssShmem")
    }


def _measured(out: str) -> dict:
    """prepare the real files into ``out``: seconds, and memory before and at the peak (sampled)."""
    before, peak, stop = _memory(), {"VmRSS": 0}, threading.Event()

    def sample() -> None:
        while not stop.is_set():
            now = _memory()
            if now["VmRSS"] > peak["VmRSS"]:
                peak.update(now)
            time.sleep(0.02)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    start = time.perf_counter()
    try:
        prepare("fashion-mnist", out, progress=False)
    finally:
        stop.set()
        sampler.join()
    return {"seconds": round(time.perf_counter() - start, 1), "before": before, "peak": peak}


def _child(outs: list[str]) -> None:
    import ray
    import ray.data

    ray.init(
        num_cpus=4,
        object_store_memory=400 * 1024**2,
        include_dashboard=False,
        log_to_driver=False,
        configure_logging=False,
    )
    ray.data.DataContext.get_current().enable_progress_bars = False
    runs = [_measured(out) for out in outs]
    ray.shutdown()
    print(json.dumps(runs))


if __name__ == "__main__":
    _child(sys.argv[1:])
