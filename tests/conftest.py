"""Shared fixtures: one real local Ray cluster per test session (starting one costs 5-7 s)."""

from __future__ import annotations

import os
import sys

import pytest


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Every test that takes the Ray cluster fixture is a ``ray`` test (``make test-fast`` skips
    them)."""
    for item in items:
        if "ray_cluster" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.ray)


@pytest.fixture(autouse=True)
def _ray_stays_out_of_unmarked_tests(request: pytest.FixtureRequest):
    """A test without the ``ray`` mark that starts Ray in this process fails: mark it instead."""
    was_running = _ray_running()
    yield
    if request.node.get_closest_marker("ray") is None and _ray_running() and not was_running:
        pytest.fail("this test started Ray: mark it `ray` (or take the ray_cluster fixture)")


def _ray_running() -> bool:
    ray = sys.modules.get("ray")
    return ray is not None and ray.is_initialized()


@pytest.fixture(scope="session")
def ray_cluster():
    """A real local Ray cluster (not local mode) shared by every Ray test of the session.

    Four logical CPUs on a 2-core box: train workers and Serve replicas take fractions, and Ray
    Data still gets a budget (docs/operations.md).
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
