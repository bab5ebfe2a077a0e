"""``pipelines.cluster``: the local cluster a hashray command starts for itself, and how Ctrl-C and
SIGTERM end a command (in this process, without Ray; tests/pipelines/test_interrupts.py runs each
long command and interrupts it for real)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest

from pipelines import cli, cluster

# Starts its own local Ray (the session's shared cluster would make connect() a no-op).
PROBE = """
import os, ray
from pipelines.cluster import connect
started = connect()
niceness = ray.get(ray.remote(lambda: os.nice(0)).remote())
print(started, niceness)
ray.shutdown()
"""


@pytest.mark.ray
@pytest.mark.timeout(180)
@pytest.mark.parametrize(("environment", "expected"), [({}, 0), ({"RAY_worker_niceness": "7"}, 7)])
def test_local_cluster_workers_run_at_nice_zero_unless_told(
    environment: dict[str, str], expected: int
) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_worker_niceness")}
    done = subprocess.run(
        [sys.executable, "-c", PROBE],
        env={**env, **environment},
        capture_output=True,
        text=True,
        timeout=150,
        check=True,
    )
    started, niceness = done.stdout.split()[-2:]
    assert started == "True"
    assert int(niceness) == expected + os.nice(0)


def test_sigterm_unwinds_the_block_as_ctrl_c_does() -> None:
    before = signal.getsignal(signal.SIGTERM)
    unwound = []
    with pytest.raises(cluster.Interrupted) as caught, cluster.interruptible():
        try:
            signal.raise_signal(signal.SIGTERM)  # the handler raises before the next line
            unwound.append("not interrupted")
        finally:
            unwound.append("finally")
    assert caught.value.signal == signal.SIGTERM
    assert unwound == ["finally"]
    assert signal.getsignal(signal.SIGTERM) is before


@pytest.mark.parametrize(
    ("raised", "expected"),
    [
        (KeyboardInterrupt(), signal.SIGINT),  # Ctrl-C, or Ray's re-raised KeyboardInterrupt
        (SystemExit(signal.SIGTERM), signal.SIGTERM),  # Ray's own handler, while ray.init runs
    ],
)
def test_ctrl_c_and_rays_sigterm_exit_are_interrupts(
    raised: BaseException, expected: signal.Signals
) -> None:
    with pytest.raises(cluster.Interrupted) as caught, cluster.interruptible():
        raise raised
    assert caught.value.signal == expected


def test_other_exits_and_errors_pass_through() -> None:
    with pytest.raises(SystemExit) as caught, cluster.interruptible():
        sys.exit(3)
    assert caught.value.code == 3
    with pytest.raises(RuntimeError), cluster.interruptible():
        raise RuntimeError("not an interrupt")


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_the_command_says_interrupted_and_exits_128_plus_the_signal(
    sig: signal.Signals,
    tmp_path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture,
) -> None:
    monkeypatch.setenv("HASHRAY_LOG_DIR", str(tmp_path))
    monkeypatch.setattr(cli, "_evaluate", lambda args: signal.raise_signal(sig))
    assert cli.main(["evaluate", "--codes", str(tmp_path)]) == 128 + sig
    err = capsys.readouterr().err
    assert err == f"hashray evaluate: interrupted ({sig.name})\n"
