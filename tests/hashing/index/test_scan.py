"""The faiss behaviours the scans rely on: an exclusive range-search radius, lowest labels kept
among ties."""

from __future__ import annotations

import numpy as np
import pytest
from index_reference import (
    reference_distances,
)


def test_faiss_range_search_radius_is_exclusive():
    # the faiss backend relies on this: an inclusive radius r is asked as r + 1
    faiss = pytest.importorskip("faiss")
    rng = np.random.default_rng(3)
    codes = rng.integers(0, 256, (500, 8), dtype=np.uint8)
    query = codes[:1]
    index = faiss.IndexBinaryFlat(64)
    index.add(codes)
    distances = reference_distances(query, codes)[0]
    for radius in (0, 1, 28, 32):
        lims, _, _ = index.range_search(query, radius)
        assert lims[1] == (distances < radius).sum()


def test_faiss_top_k_keeps_the_lowest_labels_among_ties():
    # the flat strategy relies on this: codes stored in id order make faiss's top-k exact
    faiss = pytest.importorskip("faiss")
    rng = np.random.default_rng(6)
    codes = rng.integers(0, 256, (20_000, 2), dtype=np.uint8)  # 16 bits: huge tie groups
    queries = rng.integers(0, 256, (5, 2), dtype=np.uint8)
    index = faiss.IndexBinaryFlat(16)
    index.add(codes)
    distances = reference_distances(queries, codes)
    for k in (1, 50, 700):
        got_distances, labels = index.search(queries, k)
        for row in range(len(queries)):
            expected = np.lexsort((np.arange(len(codes)), distances[row]))[:k]
            np.testing.assert_array_equal(labels[row], expected)
            np.testing.assert_array_equal(got_distances[row], distances[row, expected])
