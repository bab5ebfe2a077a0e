"""The read tasks every listed source runs (pipelines.sources.rows.listed_rows)."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pyarrow as pa
import pytest

from pipelines.sources import rows

pytestmark = pytest.mark.timeout(300)


@pytest.mark.ray
def test_a_read_task_over_a_mebibyte_runs(ray_cluster, monkeypatch):
    """Ray Data looks up the name of a read task's function once the task is over 1 MiB: a
    ``functools.partial`` there failed the whole job (AttributeError: no attribute '__name__')."""
    monkeypatch.setattr(rows, "TARGET_BLOCKS", 1)  # one block, one read task
    n, side = 2000, 28 * 28  # 1.5 MB: MNIST's pixels as they were once listed
    table = pa.table(
        {
            "id": [f"row-{i:04d}" for i in range(n)],
            "pixels": pa.array([bytes([i % 256]) * side for i in range(n)], pa.binary()),
        }
    )
    assert table.nbytes > 1024**2

    # Nested, so that Ray's workers get the function by value (they cannot import tests).
    def passthrough(block: pa.Table, side: int) -> Iterator[pa.Table]:
        pixels = block.column("pixels").to_pylist()
        yield rows.row_table(
            None,
            id=block.column("id").to_pylist(),
            data=pixels,
            labels=[[len(p) // side] for p in pixels],
            source=["test"] * block.num_rows,
            error=[""] * block.num_rows,
            official_split=[""] * block.num_rows,
        )

    got = rows.listed_rows("Big", table, passthrough, side=side).take_all()
    assert sorted(row["id"] for row in got) == table.column("id").to_pylist()
    assert {row["data"][0] for row in got} == set(range(256))
    assert np.all([row["labels"] == [1] for row in got])
