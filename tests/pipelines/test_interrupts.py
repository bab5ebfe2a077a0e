"""Ctrl-C and SIGTERM during prepare, train, encode and serve: each the real ``hashray`` command in
a subprocess with its own local Ray, as a user runs it, on a 300-image digit folder.
(tests/pipelines/test_cluster.py checks the signal handling itself, in-process and fast.)

The cases are the rows of docs/failures.md's "Interrupts" table. After each interrupt the command
has exited with the row's status and message and no traceback; no process it started is left
(its process tree just before the signal, every process of its session, every process naming its
Ray session: gcs_server, raylet, dashboard and agents, workers); and it left no output a rerun
or the next stage would trust. The stages run in order on the same folders, each interrupted run
followed by a rerun that must finish (train's must resume). Ctrl-C goes to the command's whole
process group, as a terminal sends it; SIGTERM to the command alone, as ``kill`` does. The moment
to interrupt is polled for, never slept for.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from failures_table import rows
from shared_helpers import write_digit_folder

pytestmark = [pytest.mark.ray, pytest.mark.slow, pytest.mark.timeout(900)]

HASHRAY = Path(sys.executable).parent / "hashray"
ROWS = rows("Interrupts")
RAY_SESSION = re.compile(r"session_\d{4}-\d\d-\d\d_\d\d-\d\d-\d\d_\d+_\d+")
STARTED: list[subprocess.Popen] = []  # every command run, its group killed when the module ends
TRAIN = ["train", "--data", "data", "--bits", "16", "--epochs", "2", "--out", "runs"]


def _processes() -> dict[int, tuple[int, int, str, str]]:
    """pid -> (parent pid, session id, state, command line) of every process, from /proc."""
    found = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:  # gone meanwhile
            continue
        state, parent, _, session = stat.rsplit(")", 1)[1].split()[:4]
        found[int(entry)] = (int(parent), int(session), state, cmdline)
    return found


def _tree(pid: int) -> dict[int, str]:
    """pid -> command line of ``pid``'s descendants."""
    table, found, todo = _processes(), {}, [pid]
    while todo:
        parent = todo.pop()
        for child, (ppid, _, _, cmdline) in table.items():
            if ppid == parent and child not in found:
                found[child] = cmdline
                todo.append(child)
    return found


class Command:
    """``hashray ARGS`` in ``work``, started as the leader of its own session, output in files."""

    def __init__(self, work: Path, name: str, *args: str) -> None:
        self.out, self.err = work / f"{name}.out", work / f"{name}.err"
        env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}  # its own local Ray
        env["HASHRAY_LOG_DIR"] = str(work / "logs")
        with open(self.out, "w") as out, open(self.err, "w") as err:
            self.process = subprocess.Popen(
                [str(HASHRAY), *args],
                cwd=work,
                env=env,
                stdout=out,
                stderr=err,
                start_new_session=True,
            )
        STARTED.append(self.process)

    def output(self) -> str:
        return self.out.read_text() + self.err.read_text()

    def wait_until(self, ready: Callable[[Command], bool], timeout: float = 420) -> None:
        deadline = time.monotonic() + timeout
        while not ready(self):
            assert self.process.poll() is None, f"ended before the interrupt:\n{self.tail()}"
            assert time.monotonic() < deadline, f"never ready to interrupt:\n{self.tail()}"
            time.sleep(0.1)

    def interrupt(self, sig: signal.Signals) -> tuple[int, list[str]]:
        """Send ``sig``; -> the exit status, and the processes the command left running."""
        snapshot = _tree(self.process.pid)
        [ray_session] = {m for cmdline in snapshot.values() for m in RAY_SESSION.findall(cmdline)}
        if sig == signal.SIGINT:
            os.killpg(self.process.pid, sig)  # Ctrl-C: the terminal signals the foreground group
        else:
            self.process.send_signal(sig)
        status = self.process.wait(timeout=180)
        left = [
            f"{pid} {cmdline[:100]}"
            for pid, (_, session, state, cmdline) in _processes().items()
            if state != "Z"  # a zombie has ended; only its parent has yet to reap it
            and (pid in snapshot or session == self.process.pid or ray_session in cmdline)
        ]
        return status, left

    def finish(self, timeout: float = 600) -> str:
        """Wait for a run that must succeed; -> its output."""
        assert self.process.wait(timeout=timeout) == 0, self.tail()
        return self.output()

    def tail(self) -> str:
        return self.output()[-3000:]


def training(command: Command) -> bool:
    """Ray Train's worker actor is up: fit() is running."""
    return any(
        title.startswith("ray::RayTrainWorker") for title in _tree(command.process.pid).values()
    )


def checkpointed(epoch: int) -> Callable[[Command], bool]:
    """Ray Train has recorded epoch ``epoch``'s checkpoint, the one a rerun resumes from."""

    def ready(command: Command) -> bool:
        snapshots = (command.out.parent / "runs").glob("*/ray/checkpoint_manager_snapshot.json")
        return any(f"epoch-{epoch:03d}" in path.read_text() for path in snapshots)

    return ready


def printed(text: str) -> Callable[[Command], bool]:
    return lambda command: text in command.output()


# id -> (argv, when to interrupt), in the order they run; each stage's rows run before its rerun.
CASES: dict[str, tuple[list[str], Callable[[Command], bool]]] = {
    "prepare-SIGTERM": (
        ["prepare", "--source", "folder", "--path", "digits", "--mode", "L", "--image-size", "28"]
        + ["--out", "data"],
        printed("validating:"),  # its progress bar: Ray is up, Ray Data is reading
    ),
    # Ctrl-C once epoch 1 is checkpointed; SIGTERM in the resumed run, before epoch 2 ends.
    "train-SIGINT": (TRAIN, checkpointed(1)),
    "train-SIGTERM": (TRAIN, training),
    "encode-SIGTERM": (
        ["encode", "--data", "data", "--model", "model", "--out", "codes"],
        printed("encode:"),  # its progress bar
    ),
    "serve-SIGINT": (
        ["serve", "--codes", "codes/database", "--model", "model"],
        printed("serving"),
    ),
    "serve-SIGTERM": (
        ["serve", "--codes", "codes/database", "--model", "model"],
        printed("serving"),
    ),
}


def test_every_interrupt_row_is_tried() -> None:
    assert sorted(ROWS) == sorted(CASES)
    stages = ["prepare", "train", "encode", "serve"]
    assert sorted({case.split("-")[0] for case in CASES}) == sorted(stages)
    assert all(f"{stage}-SIGTERM" in CASES for stage in stages)


def _interrupt(work: Path, stage: str, *extra: str) -> None:
    """Run and interrupt each of ``stage``'s rows in turn, on the same folders."""
    for case in [case for case in CASES if case.startswith(f"{stage}-")]:
        argv, ready = CASES[case]
        row, sig = ROWS[case], signal.Signals[case.split("-")[1]]
        command = Command(work, case, *argv, *extra)
        command.wait_until(ready)
        status, left = command.interrupt(sig)
        output = command.output()
        assert status == row.exit, output[-3000:]
        assert all(message in output for message in row.messages()), output[-3000:]
        assert "Traceback" not in output, output[-3000:]
        assert left == [], f"{case} left processes running:\n" + "\n".join(left)


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    work = tmp_path_factory.mktemp("interrupts")
    (work / "digits").mkdir()
    write_digit_folder(work / "digits", per_class=30)
    yield work
    for process in STARTED:  # a failed test may leave its command and its Ray running
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)


def test_prepare(work: Path) -> None:
    _interrupt(work, "prepare")
    assert not (work / "data" / "dataset.json").exists()  # so train refuses the folder
    Command(work, "prepare-rerun", *CASES["prepare-SIGTERM"][0]).finish()
    assert json.loads((work / "data" / "dataset.json").read_text())["counts"]["kept"] == 300


def test_train(work: Path) -> None:
    if not (work / "data" / "dataset.json").exists():
        pytest.skip("needs the dataset test_prepare writes")
    _interrupt(work, "train")
    [run] = (work / "runs").iterdir()
    assert json.loads((run / "run.json").read_text())["status"] == "running"
    assert not (run / "model").exists()  # no model for encode or serve to take
    output = Command(work, "train-rerun", *TRAIN).finish()
    assert "epoch 2/2" in output and "epoch 1/2" not in output  # resumed from epoch 1
    assert json.loads((run / "run.json").read_text())["status"] == "finished"
    (work / "model").symlink_to(run / "model")


def test_encode(work: Path) -> None:
    if not (work / "model").exists():
        pytest.skip("needs the model test_train writes")
    _interrupt(work, "encode")
    assert list((work / "codes").rglob("_SUCCESS.json")) == []  # serve refuses it as incomplete
    Command(work, "encode-rerun", *CASES["encode-SIGTERM"][0]).finish()
    for split in ("query", "database"):
        assert (work / "codes" / split / "_SUCCESS.json").exists()


def test_serve(work: Path) -> None:
    if not (work / "codes" / "database" / "_SUCCESS.json").exists():
        pytest.skip("needs the codes test_encode writes")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = str(s.getsockname()[1])
    before = {p for p in work.rglob("*") if "logs" not in p.parts}
    _interrupt(work, "serve", "--port", port)
    added = {p for p in work.rglob("*") if "logs" not in p.parts} - before
    cases = [case for case in CASES if case.startswith("serve-")]
    assert {p.name for p in added} == {
        f"{case}.{kind}" for case in cases for kind in ("out", "err")
    }
