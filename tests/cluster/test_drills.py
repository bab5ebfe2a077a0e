"""Failure drills on a real local Ray cluster: a training worker killed mid-epoch, an encode actor
killed mid-task, and the whole job stopped between stages and re-run stage by stage.

Every kill is a SIGKILL to a process found under this test process (the session's Ray cluster),
chosen by its Ray title, never by name across the machine.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import yaml
from cluster_support import (
    RECIPE,
    descendants,
    drill_config,
    ordered_blocks,
    packed_signs,
    prepared_rows,
    process_title,
    reference_outputs,
)
from mlflow.tracking import MlflowClient
from shared_helpers import save_model_dir

from hashing.models import build
from pipelines.encode import encode
from pipelines.evaluate import evaluate
from pipelines.train import train

pytestmark = [pytest.mark.ray, pytest.mark.slow, pytest.mark.timeout(600)]

TRAIN_WORKER = "ray::RayTrainWorker"
ENCODE_ACTOR = "ray::MapWorker(MapBatches(EncoderUDF))"
BUSY = ".submit"  # the title suffix while an encode actor runs a batch task


class Killer(threading.Thread):
    """Once ``ready()``, SIGKILLs the first process below this test whose title ``pick`` accepts
    among those titled ``family``; meanwhile and after, notes every pid of the family (a restarted
    worker shows up as a new pid).
    """

    def __init__(self, ready: Callable[[], bool], pick: Callable[[str], bool], family: str) -> None:
        super().__init__(daemon=True)
        self.ready, self.pick, self.family = ready, pick, family
        self.stop = threading.Event()
        self.killed: dict = {}
        self.seen: set[int] = set()

    def run(self) -> None:
        last_scan = 0.0
        while not self.stop.is_set():
            # a full /proc walk costs milliseconds: often until the family appears, then rarely
            if time.monotonic() - last_scan > (0.5 if self.seen else 0.05):
                family = descendants(os.getpid()).items()
                self.seen |= {pid for pid, title in family if title.startswith(self.family)}
                last_scan = time.monotonic()
            if not self.killed and self.seen and self.ready():
                for pid in sorted(self.seen):
                    title = process_title(pid)
                    if self.pick(title):
                        os.kill(pid, signal.SIGKILL)
                        self.killed = {"pid": pid, "title": title, "family_before": set(self.seen)}
                        break
            self.stop.wait(0.05 if self.killed or not self.seen else 0.002)

    def finish(self) -> dict:
        """Stop watching; the killed pid and its title, and the family's pids before and after."""
        self.stop.set()
        self.join(10)
        return {**self.killed, "family_after": set(self.seen)}


def test_killed_training_worker_resumes_into_the_same_run(
    ray_cluster, prepared: str, mlflow_server: str, runs_dir: Path, undisturbed_run
) -> None:
    _, baseline = undisturbed_run
    config = drill_config(prepared, runs_dir, mlflow_server, "killed-worker")
    checkpoints = runs_dir / "killed-worker" / "ray"
    # Once epoch 1 is checkpointed the workers are in epoch 2: kill one of the two there.
    killer = Killer(
        ready=lambda: (checkpoints / "epoch-001").exists(),
        pick=lambda title: title.startswith(TRAIN_WORKER),
        family=TRAIN_WORKER,
    )
    killer.start()
    with ordered_blocks():
        summary = train(config, progress=False)
    kill = killer.finish()

    print(
        f"killed {kill.get('title')} pid {kill.get('pid')}; best val mAP "
        f"{summary['best_val_map']:.6f} vs {baseline['best_val_map']:.6f} undisturbed"
    )
    assert kill.get("pid"), f"no training worker was killed: {kill}"
    assert kill["family_after"] - kill["family_before"], f"no worker started after the kill: {kill}"
    assert summary["status"] == "finished" and summary["epochs_done"] == RECIPE.epochs, summary
    assert summary["best_val_map"] == pytest.approx(baseline["best_val_map"], abs=0.01)

    client = MlflowClient(mlflow_server)
    experiment = client.get_experiment_by_name(config.experiment).experiment_id
    runs = client.search_runs([experiment], "tags.`hashray.run_name` = 'killed-worker'")
    assert [r.info.run_id for r in runs] == [summary["mlflow_run_id"]]  # one run, resumed into
    assert runs[0].info.status == "FINISHED"
    steps = [m.step for m in client.get_metric_history(summary["mlflow_run_id"], "val_map")]
    # An epoch cut short by the kill may have logged before dying and log again: no gaps allowed.
    assert sorted(set(steps)) == list(range(1, RECIPE.epochs + 1))


def test_killed_encode_actor_leaves_every_id_exactly_once(
    ray_cluster, prepared: str, tmp_path: Path
) -> None:
    from ray.data import DataContext

    # A ResNet-18 (untrained: weights do not matter here) makes each batch task last long enough to
    # be killed while it runs; small blocks make many tasks for two actors.
    model_dir = save_model_dir(
        build("resnet18", bits=32, in_channels=1), tmp_path / "model", side=28
    )
    context = DataContext.get_current()
    block_size, context.target_max_block_size = context.target_max_block_size, 16 * 1024
    killer = Killer(
        ready=lambda: True,
        pick=lambda title: title.startswith(ENCODE_ACTOR + BUSY),
        family=ENCODE_ACTOR,
    )
    killer.start()
    try:
        summary = encode(
            prepared,
            str(model_dir),
            str(tmp_path / "codes"),
            batch_size=8,
            num_actors=2,
            embeddings=True,
            progress=False,
        )
    finally:
        context.target_max_block_size = block_size
        kill = killer.finish()

    assert kill.get("pid"), "no encode actor was caught running a task"
    assert kill["title"].endswith(BUSY)
    images = prepared_rows(prepared)
    tables = {split: pq.read_table(tmp_path / "codes" / split) for split in ("query", "database")}
    ids = [i for table in tables.values() for i in table["id"].to_pylist()]
    assert sorted(ids) == sorted(images) and len(ids) == len(set(ids))  # each input exactly once
    assert summary["images"] == len(images)

    reference = reference_outputs(prepared, model_dir)
    for table in tables.values():
        embeddings = np.asarray(table["embedding"].to_pylist(), dtype=np.float32)
        codes = np.frombuffer(b"".join(table["code"].to_pylist()), np.uint8).reshape(
            len(embeddings), -1
        )
        assert np.array_equal(codes, packed_signs(embeddings))
        expected = np.stack([reference[i] for i in table["id"].to_pylist()])
        np.testing.assert_allclose(embeddings, expected, rtol=1e-4, atol=1e-4)


def file_digests(root: Path, pattern: str) -> dict[str, str]:
    """Relative path -> sha256 of every file under ``root`` matching ``pattern``."""
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob(pattern))
        if p.is_file()
    }


def hashray(*args: str, env: dict[str, str]) -> dict:
    """Run ``hashray <args> --json`` in a new process (a new Ray job); its JSON result."""
    done = subprocess.run(
        [sys.executable, "-m", "pipelines.cli", *args, "--json"],
        check=False,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    try:
        return json.loads(done.stdout)
    except json.JSONDecodeError:
        pytest.fail(
            f"hashray {args[0]} --json printed more than JSON on stdout:\n{done.stdout[-3000:]}"
            f"\n--- stderr:\n{done.stderr[-3000:]}"
        )


def test_each_stage_reruns_idempotently_after_the_job_stops(
    ray_cluster,
    prepared: str,
    digits_folder: Path,
    mlflow_server: str,
    undisturbed_run,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Each stage ran in this process; the re-runs are new ``hashray`` processes, as after a
    stop."""
    config, trained = undisturbed_run
    epoch = "1700000000"
    monkeypatch.setenv("SOURCE_DATE_EPOCH", epoch)  # fixed created_at: encode output is byte-stable
    env = {
        **os.environ,
        "RAY_ADDRESS": ray_cluster.address_info["address"],
        "MLFLOW_TRACKING_URI": mlflow_server,
        "SOURCE_DATE_EPOCH": epoch,
    }
    data = Path(prepared)

    # prepare: the same corpus again into the same place -> the same Parquet bytes
    parquet = file_digests(data, "*.parquet")
    meta = json.loads((data / "dataset.json").read_text())
    again = hashray(
        "prepare",
        "--source",
        "folder",
        "--path",
        str(digits_folder),
        "--out",
        prepared,
        "--mode",
        "L",
        "--image-size",
        "28",
        env=env,
    )
    assert file_digests(data, "*.parquet") == parquet
    assert {k: v for k, v in again.items() if k != "created_at"} == {
        k: v for k, v in meta.items() if k != "created_at"
    }

    # train: the finished run is returned as it is, nothing is trained again
    (tmp_path / "train.yaml").write_text(yaml.safe_dump(config.to_dict()))
    checkpoints = file_digests(Path(trained["run_dir"]), "*")
    assert hashray("train", "--config", str(tmp_path / "train.yaml"), env=env) == trained
    assert file_digests(Path(trained["run_dir"]), "*") == checkpoints

    # encode: a run stopped while writing (no manifest, a cut part) is redone to the same bytes
    codes = tmp_path / "codes"
    encode(prepared, trained["model_dir"], str(codes), progress=False)
    written = file_digests(codes, "*")
    (codes / "database" / "_SUCCESS.json").unlink()
    part = codes / "database" / "part-00000.parquet"
    part.write_bytes(part.read_bytes()[:100])
    hashray(
        "encode", "--data", prepared, "--model", trained["model_dir"], "--out", str(codes), env=env
    )
    assert file_digests(codes, "*") == written

    # evaluate: the same codes give the same numbers
    first = evaluate(str(codes), tracking_uri=mlflow_server)
    second = hashray("evaluate", "--codes", str(codes), env=env)
    for key in (
        "map_tie_aware",
        "map_id_order",
        "precision_radius_2",
        "n_queries",
        "n_database",
        "pr_curve",
    ):
        assert second[key] == first[key]
    assert first["mlflow_run_id"] == second["mlflow_run_id"] == trained["mlflow_run_id"]
