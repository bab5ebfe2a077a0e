"""Connecting to Ray: the cluster in ``RAY_ADDRESS`` if set, else a local one started for us."""

from __future__ import annotations

import logging
import os

import ray

from pipelines import console

__all__ = ["connect"]

_WORKER_NICENESS = "RAY_worker_niceness"


def connect(num_cpus: int | None = None) -> bool:
    """Initialise Ray once; returns True when this call started a local cluster (caller shuts it
    down).

    A local cluster gets at least 4 logical CPUs: training workers and Serve replicas take
    fractions of a CPU, and Ray Data still needs a budget to run beside them on a small laptop.
    Its workers run at nice 0, as Ray's job submission starts them: by default Ray starts workers at
    nice 15, where any other busy process starves the job's own work (docs/operations.md).
    ``RAY_worker_niceness`` set by the user wins.
    """
    if ray.is_initialized():
        return False
    if os.environ.get("RAY_ADDRESS"):
        ray.init(address=os.environ["RAY_ADDRESS"], logging_level=logging.WARNING)
        console.install_worker_filter()
        return False
    os.environ.setdefault(_WORKER_NICENESS, "0")  # read by ray.init, passed on to the raylet
    ray.init(
        num_cpus=num_cpus or max(4, os.cpu_count() or 1),
        # The dashboard also serves the state API that Ray Train's placement-group cleaner polls;
        # without it that cleaner warns every few seconds.
        include_dashboard=True,
        logging_level=logging.WARNING,
    )
    console.install_worker_filter()
    return True
