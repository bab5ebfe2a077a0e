"""Connecting to Ray: the cluster in ``RAY_ADDRESS`` if set, else a local one started for us."""

from __future__ import annotations

import logging
import os

import ray

__all__ = ["connect"]


def connect(num_cpus: int | None = None) -> bool:
    """Initialise Ray once; returns True when this call started a local cluster (caller shuts it down).

    A local cluster gets at least 4 logical CPUs: training workers and Serve replicas take
    fractions of a CPU, and Ray Data still needs a budget to run beside them on a 2-core laptop.
    """
    if ray.is_initialized():
        return False
    if os.environ.get("RAY_ADDRESS"):
        ray.init(address=os.environ["RAY_ADDRESS"], logging_level=logging.WARNING)
        return False
    ray.init(
        num_cpus=num_cpus or max(4, os.cpu_count() or 1),
        # The dashboard also serves the state API that Ray Train's placement-group cleaner polls;
        # without it that cleaner warns every few seconds.
        include_dashboard=True,
        logging_level=logging.WARNING,
    )
    return True
