"""Multi-index hashing: every code within a radius, and top-k handing costly queries to a scan."""

from __future__ import annotations

import numpy as np
import pytest
from index_reference import (
    clustered_codes,
    random_codes,
    reference_distances,
)

from hashing.index.mih import MultiIndex


@pytest.mark.parametrize("substrings", [1, 2, 3, 5])
def test_multi_index_finds_every_code_within_radius(substrings):
    # radii that are and are not multiples of the substring count exercise the pigeonhole bound
    rng = np.random.default_rng(substrings)
    codes = np.unique(clustered_codes(rng, 3000, 40, centres=6), axis=0)
    queries = clustered_codes(rng, 12, 40, centres=6)
    mih = MultiIndex(codes, 40, substrings=substrings)
    distances = reference_distances(queries, codes)
    for radius in range(7):
        found, verified = mih.within(queries, radius)
        assert verified >= sum(len(codes_found) for codes_found, _ in found)
        for row, (codes_found, got) in enumerate(found):
            expected = np.flatnonzero(distances[row] <= radius)
            np.testing.assert_array_equal(np.sort(codes_found), expected)
            np.testing.assert_array_equal(got, distances[row, codes_found])


def test_multi_index_nearest_hands_costly_queries_to_the_fallback():
    rng = np.random.default_rng(9)
    codes = np.unique(random_codes(rng, 2000, 64), axis=0)
    counts = np.ones(len(codes), dtype=np.int64)
    handed = []

    def fallback(queries):
        handed.append(len(queries))
        return [(np.arange(len(codes)), reference_distances(q[None], codes)[0]) for q in queries]

    # a near-duplicate query ends at the first level; far random queries need a second level,
    # whose probes exceed a budget of the first level's
    near = codes[:1].copy()
    near[0, 0] ^= 1
    far = random_codes(rng, 3, 64)
    mih = MultiIndex(codes, 64)
    budget = mih.probes_per_query(0)
    found = mih.nearest(np.concatenate([near, far]), counts, 1, fallback, max_probes=budget)
    assert handed == [3]
    assert found[0][1].min() == 1
