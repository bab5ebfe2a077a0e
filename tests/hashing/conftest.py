"""Fixtures of the library tests (no Ray)."""

from __future__ import annotations

import pytest
import torch
from threadpoolctl import threadpool_limits


@pytest.fixture(scope="module")
def one_thread():
    """Small tensors and matrices: extra torch or BLAS threads only contend for the cores (BLAS
    threads on a busy machine made ITQ's tall-skinny products many times slower)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    with threadpool_limits(1):
        yield
    torch.set_num_threads(threads)
