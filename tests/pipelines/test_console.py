"""What a command shows: hashray's lines by default, Ray's with --verbose, one line per failure."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from pipelines import cli

HASHRAY = Path(sys.executable).parent / "hashray"
# Lines that only Ray (or MLflow) writes; none may reach a user who did not ask with --verbose.
RAY_CHATTER = (
    "Token authentication",
    "streaming_executor",
    "logging_progress",
    "(raylet)",
    " pid=",
    "core_worker",
    "INFO",
)


def test_native_stderr_goes_to_the_log_file_and_python_stderr_stays(tmp_path: Path) -> None:
    log = tmp_path / "logs" / "run.log"
    script = textwrap.dedent(f"""
        import os, sys
        from pathlib import Path
        from pipelines import console
        console.configure(verbose=False)
        with console.native_stderr_to(Path({str(log)!r})):
            os.write(2, b"native line\\n")
            print("python line", file=sys.stderr)
        os.write(2, b"after the block\\n")
    """)
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True
    )
    assert "python line" in done.stderr and "after the block" in done.stderr
    assert "native line" not in done.stderr
    assert log.read_text() == "native line\n"


def test_an_empty_log_file_is_not_left_behind(tmp_path: Path) -> None:
    script = textwrap.dedent(f"""
        from pathlib import Path
        from pipelines import console
        console.configure(verbose=False)
        with console.native_stderr_to(Path({str(tmp_path / "quiet.log")!r})):
            pass
    """)
    subprocess.run([sys.executable, "-c", script], check=True)
    assert not (tmp_path / "quiet.log").exists()


@pytest.mark.parametrize("verbose", [False, True])
def test_internal_failure_is_one_line_with_the_traceback_in_a_log(
    verbose: bool,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture,
) -> None:
    def broken(args: object) -> dict:
        raise RuntimeError("the disk caught fire\nsecond line of detail")

    monkeypatch.setattr(cli, "_evaluate", broken)
    monkeypatch.setenv("HASHRAY_LOG_DIR", str(tmp_path))
    argv = ["--verbose"] * verbose + ["evaluate", "--codes", "x"]
    assert cli.main(argv) == 1
    err = capsys.readouterr().err
    assert "hashray evaluate: failed: RuntimeError: the disk caught fire" in err
    assert "second line of detail" not in err.splitlines()[-2]
    [log] = tmp_path.glob("evaluate-*.log")
    assert f"traceback: {log}" in err
    assert "Traceback (most recent call last)" in log.read_text()
    assert ("Traceback (most recent call last)" in err) == verbose


def _prepare(tmp_path: Path, *flags: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "HASHRAY_LOG_DIR": str(tmp_path / "logs")}
    env.pop("RAY_ADDRESS", None)
    command = [HASHRAY, *flags, "prepare", "--source", "mnist5k", "--out", tmp_path / "data"]
    return subprocess.run(
        command, capture_output=True, text=True, env=env, timeout=300, check=False
    )


@pytest.mark.ray
@pytest.mark.slow
def test_ray_output_is_shown_only_with_verbose(tmp_path: Path) -> None:
    quiet = _prepare(tmp_path / "quiet")
    assert quiet.returncode == 0, quiet.stderr[-3000:]
    shown = quiet.stdout + quiet.stderr
    assert "prepared 5000 images" in shown
    assert [word for word in RAY_CHATTER if word in shown] == []

    loud = _prepare(tmp_path / "loud", "--verbose")
    assert loud.returncode == 0, loud.stderr[-3000:]
    assert "streaming_executor" in loud.stdout + loud.stderr  # Ray Data's INFO lines are back
