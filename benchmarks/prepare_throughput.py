"""prepare throughput: hashray's Ray Data job vs a single-process PIL loop on the same files.

The corpus is N small JPEGs (32 x 32, 10 class folders), generated once into --workdir. Both sides
read every file, decode, validate, fix orientation and mode, resize and PNG-encode it with the same
function (``pipelines.images.normalize_image``) and write the results as Parquet parts; the ratio
is prepare / loop in images per second, measured in back-to-back rounds (the machine may be shared).
``prepare`` also lists the corpus, draws the split and sorts each split by id, as the real command
does; Ray start-up is timed apart, not in the ratio.

The machine's own ceiling: each round also runs the same loop split over one process per core
(files interleaved, no Ray), in a process of its own. Its ratio to the loop is what
perfect parallelism gets on this machine (a shared VM: less than the core count), and prepare's
ratio over it is the share of that ceiling Ray keeps.

Memory: each measurement runs in a fresh child process, whose sampler thread polls that process
and all its descendants (for Ray: the driver, raylet, GCS and every worker) every 0.2 s, but only
in runs kept for memory: one loop alone and one extra warm prepare. The timed runs are unsampled,
since the sampler is not free and its cost grows with the processes it reads: reading
smaps_rollup of Ray's dozen processes (each mapping the object store) cost the driver about 50 us
of CPU per image at 100k, a sixth of the work, and on 2 busy cores it took that from the workers,
where beside the one process of the loop it used the idle core. It reports
the tree's peak summed PSS (shared pages such as Ray's object store split between the processes
mapping them, so nothing is counted twice), the same without shared memory ("private": what grows
when a process holds data; the object store is capped by Ray and spills beyond the cap), peak
summed RSS, and the driver's own peak RSS and private PSS.

    python benchmarks/prepare_throughput.py --sizes 10000 100000 --repeat 3
Writes benchmarks/results/prepare_throughput.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import multiprocessing.pool
import os
import platform
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).resolve().parent / "results"
SIDE = 32
CLASSES = 10
PART_ROWS = 8192


# ---------------------------------------------------------------------------------------------
# The corpus


def make_corpus(root: Path, n: int) -> Path:
    """``root/corpus-<n>/c<k>/<i>.jpg``: n JPEGs of blocky colour with noise (made once)."""
    from PIL import Image

    folder = root / f"corpus-{n}"
    done = folder / ".complete"
    if done.exists():
        return folder
    rng = np.random.default_rng(n)
    for k in range(CLASSES):
        (folder / f"c{k}").mkdir(parents=True, exist_ok=True)
    for i in range(n):
        blocks = np.kron(rng.integers(0, 256, (8, 8, 3)), np.ones((4, 4, 1)))
        pixels = np.clip(blocks + rng.normal(0, 8, blocks.shape), 0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(folder / f"c{i % CLASSES}" / f"{i:06d}.jpg", quality=90)
    done.touch()
    return folder


# ---------------------------------------------------------------------------------------------
# Memory of a process tree, from /proc


def _children() -> dict[int, list[int]]:
    """Parent pid -> child pids, for every process visible in /proc."""
    tree: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as handle:
                    # the command name may hold spaces; the fields after its ")" are fixed
                    ppid = int(handle.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            tree.setdefault(ppid, []).append(int(entry))
    return tree


def _rollup(pid: int) -> tuple[int, int, int]:
    """(RSS, PSS, private PSS) of one process in bytes; zeros if it is gone. Private PSS counts
    anonymous and file-backed pages: PSS without shared memory (Ray's object store)."""
    values = {"Rss:": 0, "Pss:": 0, "Pss_Anon:": 0, "Pss_File:": 0}
    try:
        with open(f"/proc/{pid}/smaps_rollup") as handle:
            for line in handle:
                key = line.split(maxsplit=1)[0]
                if key in values:
                    values[key] = int(line.split()[1]) * 1024
    except OSError:
        pass
    return values["Rss:"], values["Pss:"], values["Pss_Anon:"] + values["Pss_File:"]


def _cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of one process so far; 0 if it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as handle:
            fields = handle.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime


class TreeMonitor:
    """Peak summed RSS/PSS of this process and its descendants (a background thread samples them),
    and their CPU time."""

    def __init__(self, interval: float = 0.2) -> None:
        self.interval = interval
        self.peak = dict.fromkeys(
            ("tree_pss", "tree_rss", "tree_private", "driver_rss", "driver_private", "processes"), 0
        )
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._sampling = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def pids(self) -> list[int]:
        """This process first, then every descendant."""
        tree, pids, todo = _children(), [], [os.getpid()]
        while todo:
            pid = todo.pop()
            pids.append(pid)
            todo += tree.get(pid, [])
        return pids

    def cpu_seconds(self) -> float:
        """CPU seconds used so far by the processes of the tree that are alive now."""
        return sum(_cpu_seconds(pid) for pid in self.pids())

    def sample(self) -> dict[str, int]:
        """One reading: summed RSS, PSS and private PSS over the tree, the driver's RSS and
        private PSS, the process count."""
        readings = [_rollup(pid) for pid in self.pids()]
        return {
            "tree_rss": sum(r[0] for r in readings),
            "tree_pss": sum(r[1] for r in readings),
            "tree_private": sum(r[2] for r in readings),
            "driver_rss": readings[0][0],
            "driver_private": readings[0][2],
            "processes": len(readings),
        }

    def take_peak(self) -> dict[str, int]:
        """The peaks since the last call (or the start), as peak_<name>; starts a new period."""
        reading = self.sample()
        with self._lock:
            peak = {f"peak_{k}": max(v, reading[k]) for k, v in self.peak.items()}
            self.peak = dict.fromkeys(self.peak, 0)
        return peak

    @contextmanager
    def sampling(self) -> Iterator[None]:
        """Sample memory in the background inside the block (timed runs stay outside one)."""
        self._sampling.set()
        try:
            yield
        finally:
            self._sampling.clear()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            if not self._sampling.is_set():
                continue
            reading = self.sample()
            with self._lock:
                self.peak = {k: max(v, reading[k]) for k, v in self.peak.items()}

    def __enter__(self) -> TreeMonitor:  # noqa: PYI034
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


# ---------------------------------------------------------------------------------------------
# The two contestants (each runs in its own child process)


def run_loop(corpus: Path, out: Path, share: int = 0, shares: int = 1) -> dict:
    """The single-process PIL loop: same per-image work as prepare, Parquet parts of PART_ROWS.

    With ``shares`` > 1 it does every ``shares``-th file from ``share`` (one process of the
    parallel loop), writing parts of its own."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from pipelines.images import BadImage, normalize_image

    start = time.perf_counter()
    classes = sorted(p.name for p in corpus.iterdir() if p.is_dir())
    files = sorted(p for name in classes for p in (corpus / name).iterdir())[share::shares]
    out.mkdir(parents=True, exist_ok=True)
    rows: dict[str, list] = {"id": [], "image": [], "labels": []}
    parts = kept = 0

    def flush() -> None:
        nonlocal parts
        table = pa.table(
            {
                "id": rows["id"],
                "image": pa.array(rows["image"], pa.binary()),
                "labels": pa.array(rows["labels"], pa.list_(pa.int32())),
            }
        )
        pq.write_table(table, out / f"part-{share}-{parts:05d}.parquet")
        parts += 1
        for column in rows.values():
            column.clear()

    for path in files:
        try:
            image = normalize_image(path.read_bytes(), size=(SIDE, SIDE), mode="RGB")
        except BadImage:
            continue
        rows["id"].append(str(path.relative_to(corpus)))
        rows["image"].append(image)
        rows["labels"].append([classes.index(path.parent.name)])
        kept += 1
        if len(rows["id"]) == PART_ROWS:
            flush()
    if rows["id"]:
        flush()
    return {"images": kept, "seconds": time.perf_counter() - start}


@contextmanager
def _timed(module: object, name: str, totals: dict[str, float]) -> Iterator[None]:
    """Add the wall time of every call of ``module.name`` to ``totals[name]`` inside the block."""
    original: Callable = getattr(module, name)

    def wrapper(*args, **kwargs):
        start = time.perf_counter()
        try:
            return original(*args, **kwargs)
        finally:
            totals[name] = totals.get(name, 0.0) + time.perf_counter() - start

    setattr(module, name, wrapper)
    try:
        yield
    finally:
        setattr(module, name, original)


def _timed_run(monitor: TreeMonitor, work: Callable[[], int], sampled: bool = False) -> dict:
    """Run ``work`` (returns images done): wall and tree CPU seconds, rates; with ``sampled``,
    also the memory peaks (the sampler then runs beside the work and costs it CPU)."""
    monitor.take_peak()
    cpu, start = monitor.cpu_seconds(), time.perf_counter()
    with monitor.sampling() if sampled else nullcontext():
        images = work()
    seconds, cpu = time.perf_counter() - start, monitor.cpu_seconds() - cpu
    run = {
        "images": images,
        "seconds": seconds,
        "images_per_s": images / seconds,
        "cpu_s": cpu,
        "cpu_us_per_image": 1e6 * cpu / images,
        "sampled": sampled,
    }
    return {**run, **monitor.take_peak()} if sampled else run


def run_loop_alone(corpus: Path, out: Path, monitor: TreeMonitor) -> dict:
    """The PIL loop once in a process of its own, sampled: its memory (and a warm page cache)."""
    return _timed_run(monitor, lambda: run_loop(corpus, out)["images"], sampled=True)


def _loop_share(corpus: Path, out: Path, share: int, shares: int) -> int:
    """Images kept by one process of the parallel loop (a pool worker)."""
    return run_loop(corpus, out, share, shares)["images"]


def _warm_loop_process(corpus: Path, out: Path) -> None:
    """Pool initializer: the loop once over a single file, so the timed run finds the imports
    done and Pillow's codecs and pyarrow's writer set up, as in the warm single loop."""
    run_loop(corpus, out / f"warm-up-{os.getpid()}", share=0, shares=10**9)


def _pid_after_a_moment(_: int) -> int:
    time.sleep(0.05)
    return os.getpid()


def _loop_pool(processes: int, corpus: Path, out: Path) -> multiprocessing.pool.Pool:
    """``processes`` spawned processes, each warmed by one loop over a file, all of them up."""
    context = multiprocessing.get_context("spawn")
    pool = context.Pool(processes, _warm_loop_process, (corpus, out))
    while len(set(pool.map(_pid_after_a_moment, range(2 * processes), chunksize=1))) < processes:
        pass
    return pool


def run_parallel_loop(corpus: Path, out: Path, monitor: TreeMonitor) -> dict:
    """The loop split over one process per core (files interleaved), timed once the pool's
    processes are up and warm."""
    cores = os.cpu_count() or 1
    with _loop_pool(cores, corpus, out) as pool:
        shares = [(corpus, out, k, cores) for k in range(cores)]
        return _timed_run(monitor, lambda: sum(pool.starmap(_loop_share, shares)))


def run_rounds(corpus: Path, out: Path, ray_cpus: int, repeat: int, monitor: TreeMonitor) -> dict:
    """hashray prepare on one fresh local Ray cluster: once cold (Ray's workers and Ray Data's
    helper actors start during the run), then ``repeat`` rounds of (PIL loop, warm prepare,
    parallel PIL loop) back to back, so all three meet the same load from the machine's other
    tenants (the idle cluster costs the loops a little), then one warm prepare sampled for
    memory. Ray start-up is timed apart."""
    import ray

    from pipelines import prepare as prepare_module

    start = time.perf_counter()
    ray.init(
        num_cpus=ray_cpus, include_dashboard=False, log_to_driver=False, configure_logging=False
    )
    startup = time.perf_counter() - start
    time.sleep(1.0)
    idle = monitor.sample()
    monitor.take_peak()

    def one(sampled: bool = False) -> dict:
        phases: dict[str, float] = {}
        # listing = read_source; validate = read + decode + normalise in Ray tasks, spooled by
        # the driver; write = the sorted Parquet parts; the rest: split draw and dataset.json.
        with (
            _timed(prepare_module, "read_source", phases),
            _timed(prepare_module, "_spool_good_rows", phases),
            _timed(prepare_module, "_write_splits", phases),
        ):
            run = _timed_run(
                monitor,
                lambda: prepare_module.prepare(
                    "folder",
                    str(out),
                    path=str(corpus),
                    image_size=SIDE,
                    mode="RGB",
                    progress=False,
                )["counts"]["kept"],
                sampled,
            )
        names = {"listing": "read_source", "validate": "_spool_good_rows", "write": "_write_splits"}
        return {**run, "phases_s": {name: phases[key] for name, key in names.items()}}

    cold = one()
    loop_out = out.with_name(out.name + "-loop")
    loops, warm, parallel = [], [], []
    for _ in range(repeat):
        loops.append(_timed_run(monitor, lambda: run_loop(corpus, loop_out)["images"]))
        warm.append(one())
        # A process of its own (which starts its pool, then times the work): no Ray threads to
        # fork, and its processes are gone before the memory run samples this tree.
        parallel.append(_run_child("parallel", corpus, loop_out))
    memory = one(sampled=True)
    ray.shutdown()
    return {
        "cold": cold,
        "loops": loops,
        "warm": warm,
        "parallel_loops": parallel,
        "memory": memory,
        "ray_startup_s": startup,
        "ray_idle_tree_pss": idle["tree_pss"],
        "ray_idle_processes": idle["processes"],
    }


def child(args: argparse.Namespace) -> None:
    """Run one contestant and print its result as JSON."""
    corpus, out = Path(args.corpus), Path(args.out)
    with TreeMonitor() as monitor:
        if args.child == "loop":
            result = run_loop_alone(corpus, out, monitor)
        elif args.child == "parallel":
            result = run_parallel_loop(corpus, out, monitor)
        else:
            result = run_rounds(corpus, out, args.ray_cpus, args.repeat, monitor)
    print(json.dumps(result))


# ---------------------------------------------------------------------------------------------
# Orchestration


def measure(kind: str, corpus: Path, out: Path, args: argparse.Namespace) -> dict:
    """One contestant in a fresh Python process; its JSON result."""
    # Read by ray.init and passed on to the raylet, which starts the workers at this niceness.
    environment = {**os.environ, "RAY_worker_niceness": str(args.worker_nice)}
    options = ("--ray-cpus", str(args.ray_cpus), "--repeat", str(args.repeat))
    return _run_child(kind, corpus, out, options, environment)


def _run_child(
    kind: str,
    corpus: Path,
    out: Path,
    options: tuple[str, ...] = (),
    environment: dict | None = None,
) -> dict:
    """``--child kind`` of this script in a fresh Python process; the JSON it prints."""
    command = [
        sys.executable,
        __file__,
        "--child",
        kind,
        "--corpus",
        str(corpus),
        "--out",
        str(out),
        *options,
    ]
    done = subprocess.run(command, capture_output=True, text=True, check=True, env=environment)
    return json.loads(done.stdout.strip().splitlines()[-1])


def _median(values: list[float]) -> float:
    return float(np.median(values))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument(
        "--repeat", type=int, default=3, help="(loop, warm prepare, parallel loop) rounds"
    )
    parser.add_argument("--workdir", default="/tmp/hashray-bench-prepare", help="corpus cache")
    # What pipelines.cluster.connect gives the local cluster of `hashray prepare`: on 2 cores,
    # 4 logical CPUs, so a task waiting to be scheduled never leaves a core idle.
    parser.add_argument(
        "--ray-cpus",
        type=int,
        default=max(4, os.cpu_count() or 1),
        help="Ray logical CPUs (default: as hashray's local cluster)",
    )
    # Ray starts its workers at nice 15 (the driver and raylet stay responsive). On a machine
    # shared with busy processes at nice 0 that leaves the workers a sliver of CPU while the loop,
    # at nice 0 too, gets its fair share: the ratio would measure priority, not throughput. 0
    # runs both sides at the same priority; 15 measures what `hashray prepare` gets by default.
    parser.add_argument(
        "--worker-nice",
        type=int,
        default=0,
        help="niceness of Ray's workers (Ray's default: 15; default here: 0)",
    )
    parser.add_argument("--child", choices=["loop", "parallel", "prepare"], help=argparse.SUPPRESS)
    parser.add_argument("--corpus", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args)

    workdir = Path(args.workdir)
    sizes = []
    for n in args.sizes:
        corpus = make_corpus(workdir, n)
        load_before = os.getloadavg()[0]
        loop = measure("loop", corpus, workdir / f"loop-{n}", args)
        ray_run = measure("prepare", corpus, workdir / f"prepared-{n}", args)
        pairs = [
            warm["images_per_s"] / loop_run["images_per_s"]
            for loop_run, warm in zip(ray_run["loops"], ray_run["warm"])
        ]
        ceiling = [
            parallel["images_per_s"] / loop_run["images_per_s"]
            for loop_run, parallel in zip(ray_run["loops"], ray_run["parallel_loops"])
        ]
        sizes.append(
            {
                "images": n,
                "load_avg_1m_before": load_before,
                "load_avg_1m_after": os.getloadavg()[0],
                "loop_alone": loop,
                "prepare": ray_run,
                "ratio_warm_pairs": pairs,
                "ratio_warm": _median(pairs),
                "ratio_parallel_loop_pairs": ceiling,
                "ratio_parallel_loop": _median(ceiling),
                "share_of_parallel_loop": _median([p / c for p, c in zip(pairs, ceiling)]),
                "ratio_cold": ray_run["cold"]["images_per_s"]
                / _median([loop_run["images_per_s"] for loop_run in ray_run["loops"]]),
            }
        )
        print(json.dumps(sizes[-1], indent=1), flush=True)
    result = {
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
        "ray_cpus": args.ray_cpus,
        "ray_worker_nice": args.worker_nice,
        "repeat": args.repeat,
        "image": f"{SIDE}x{SIDE} RGB JPEG -> PNG",
        "sizes": sizes,
        "command": f"python benchmarks/prepare_throughput.py --sizes "
        f"{' '.join(map(str, args.sizes))} --repeat {args.repeat} --worker-nice {args.worker_nice}",
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "prepare_throughput.json").write_text(json.dumps(result, indent=2) + "\n")
    (RESULTS / "prepare_throughput.md").write_text(markdown(result))
    print(markdown(result))


# The memory columns of the markdown table, in order.
_MEMORY = ("tree_pss", "tree_private", "tree_rss", "driver_rss", "driver_private")


def _seconds(runs: list[dict]) -> str:
    return " / ".join(f"{run['seconds']:.1f}" for run in runs)


def markdown(result: dict) -> str:
    """The results as markdown tables."""
    mib = 1024**2
    lines = [
        "# prepare throughput",
        "",
        (
            f"`{result['command']}` on {result['machine']['cpus']} CPUs (Ray: {result['ray_cpus']} "
            f"logical CPUs, as `hashray prepare` starts it; its workers at nice "
            f"{result['ray_worker_nice']}, the loop at 0); {result['image']}. After one cold "
            "prepare (the first on a fresh cluster: Ray's workers and Ray Data's helper actors "
            f"start inside it), {result['repeat']} rounds of (PIL loop, warm prepare, parallel "
            "PIL loop) run back to back; each ratio is the median over rounds, so all three meet "
            "the same load from the machine's other tenants. Ray start-up is not in the ratio. The "
            "parallel loop is the same loop split over one process per core without Ray: its ratio "
            "is the most any parallel job gets from this machine, and prepare / parallel the share "
            "of it that prepare keeps. CPU: user + system seconds "
            "of the whole process tree per image. Memory: peak over the process tree (PSS counts "
            "shared pages once; private: PSS without shared memory such as Ray's object store, "
            "which Ray caps; RSS in every process), sampled every 0.2 s only in the runs kept for "
            "it (the loop alone, in a process of its own, and one more warm prepare): the "
            "sampler's own CPU would slow the timed runs."
        ),
        "",
        (
            "| images | loop img/s | prepare cold img/s | ratio cold | prepare warm img/s "
            "| ratio warm (rounds) | parallel loop ratio (rounds) | prepare / parallel loop "
            "| CPU us/img loop / prepare | load 1m (before -> after) |"
        ),
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for size in result["sizes"]:
        run = size["prepare"]
        loop_ips = _median([r["images_per_s"] for r in run["loops"]])
        warm_ips = _median([r["images_per_s"] for r in run["warm"]])
        pairs = ", ".join(f"{x:.2f}" for x in size["ratio_warm_pairs"])
        ceiling = ", ".join(f"{x:.2f}" for x in size["ratio_parallel_loop_pairs"])
        cpu_loop = _median([r["cpu_us_per_image"] for r in run["loops"]])
        cpu_warm = _median([r["cpu_us_per_image"] for r in run["warm"]])
        lines.append(
            f"| {size['images']:,} | {loop_ips:.0f} | {run['cold']['images_per_s']:.0f} | "
            f"{size['ratio_cold']:.2f} | {warm_ips:.0f} | {size['ratio_warm']:.2f} ({pairs}) | "
            f"{size['ratio_parallel_loop']:.2f} ({ceiling}) | "
            f"{size['share_of_parallel_loop']:.2f} | "
            f"{cpu_loop:.0f} / {cpu_warm:.0f} | "
            f"{size['load_avg_1m_before']:.1f} -> {size['load_avg_1m_after']:.1f} |"
        )
    lines += [
        "",
        (
            "| images | run | seconds (each run) | list / validate / write (s), median "
            "| peak tree PSS | peak tree private | peak tree RSS | driver peak RSS "
            "| driver peak private |"
        ),
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for size in result["sizes"]:
        n, alone = f"{size['images']:,}", size["loop_alone"]
        lines.append(
            f"| {n} | PIL loop alone | {alone['seconds']:.1f} | - | "
            + " | ".join(f"{alone[f'peak_{key}'] / mib:.0f} MiB" for key in _MEMORY)
            + " |"
        )
        lines.append(
            f"| {n} | PIL loop in rounds | {_seconds(size['prepare']['loops'])} | - | | | | | |"
        )
        lines.append(
            f"| {n} | parallel PIL loop in rounds | {_seconds(size['prepare']['parallel_loops'])} "
            "| - | | | | | |"
        )
        run = size["prepare"]
        for name, runs in (
            ("cold", [run["cold"]]),
            ("warm", run["warm"]),
            ("warm, sampled for memory", [run["memory"]]),
        ):
            phases = {k: _median([r["phases_s"][k] for r in runs]) for k in runs[0]["phases_s"]}
            memory = [
                f"{max(r[f'peak_{key}'] for r in runs) / mib:.0f} MiB" if runs[0]["sampled"] else ""
                for key in _MEMORY
            ]
            lines.append(
                f"| {n} | prepare {name} | {_seconds(runs)} | "
                f"{phases['listing']:.1f} / {phases['validate']:.1f} / {phases['write']:.1f} | "
                + " | ".join(memory)
                + " |"
            )
    idle = [
        f"{size['images']:,}: {size['prepare']['ray_idle_tree_pss'] / mib:.0f} MiB in "
        f"{size['prepare']['ray_idle_processes']} processes, started in "
        f"{size['prepare']['ray_startup_s']:.1f} s"
        for size in result["sizes"]
    ]
    lines += ["", "Idle Ray cluster before the runs (tree PSS): " + "; ".join(idle) + "."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
