"""hashing.labels: ragged label lists -> multi-hot, checked against a loop."""

from __future__ import annotations

import numpy as np
import pytest

from hashing.labels import multi_hot, multi_hot_from_lists


def test_multi_hot_matches_a_loop() -> None:
    rng = np.random.default_rng(3)
    rows = [sorted(rng.choice(7, size=rng.integers(0, 4), replace=False)) for _ in range(40)]
    expected = np.zeros((40, 7), dtype=np.uint8)
    for row, classes in enumerate(rows):
        for c in classes:
            expected[row, c] = 1
    np.testing.assert_array_equal(multi_hot_from_lists(rows, 7), expected)
    widest = max(c for row in rows for c in row) + 1
    assert multi_hot_from_lists(rows).shape == (40, widest)
    assert multi_hot_from_lists(rows, 7, np.float32).dtype == np.float32


def test_flat_values_and_offsets_give_the_same_rows() -> None:
    got = multi_hot(np.array([2, 0, 1, 2]), np.array([0, 1, 1, 4]), 3)
    np.testing.assert_array_equal(got, [[0, 0, 1], [0, 0, 0], [1, 1, 1]])


@pytest.mark.parametrize("rows", [[[0], [9]], [[-1]]])
def test_an_id_outside_the_classes_is_an_error(rows: list[list[int]]) -> None:
    with pytest.raises(ValueError, match="class ids must lie in"):
        multi_hot_from_lists(rows, 5)
