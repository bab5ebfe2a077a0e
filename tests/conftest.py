"""Shared fixtures: one real local Ray cluster per test session (starting one costs 5-7 s)."""

from __future__ import annotations

import os

import pytest


@pytest.fixture(scope="session")
def ray_cluster():
    """A real local Ray cluster (not local mode) shared by every Ray test of the session.

    Four logical CPUs on a 2-core box: train workers and Serve replicas take fractions, and Ray
    Data still gets a budget (RAY_NOTES.md, "the hang that looks like nothing").
    """
    import ray

    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    if ray.is_initialized():
        ray.shutdown()
    ctx = ray.init(
        num_cpus=4,
        object_store_memory=400 * 1024**2,
        include_dashboard=False,
        log_to_driver=False,
        configure_logging=False,
    )
    from ray.data import DataContext

    DataContext.get_current().enable_progress_bars = False
    yield ctx
    ray.shutdown()
