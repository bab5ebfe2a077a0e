"""``pipelines.cluster.connect``: the local cluster a hashray command starts for itself."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

pytestmark = [pytest.mark.ray, pytest.mark.timeout(180)]

# Starts its own local Ray (the session's shared cluster would make connect() a no-op).
PROBE = """
import os, ray
from pipelines.cluster import connect
started = connect()
niceness = ray.get(ray.remote(lambda: os.nice(0)).remote())
print(started, niceness)
ray.shutdown()
"""


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
