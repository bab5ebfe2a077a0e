"""Radius search from neighbour lists: exact against brute force, through removes and updates."""

from __future__ import annotations

import numpy as np
import pytest
from index_reference import (
    assert_radius_matches,
    clustered_codes,
    fill,
    learned_like,
    reference_distances,
    shuffled_ids,
)

from hashing.index.neighbours import NeighbourTable


@pytest.mark.parametrize("bits", [12, 32, 64, 128])
def test_neighbour_table_lists_every_code_within_its_radius(bits):
    rng = np.random.default_rng(bits)
    codes = np.unique(clustered_codes(rng, 300, bits, centres=5), axis=0)
    table = NeighbourTable(codes, bits, radius=3)
    distances = reference_distances(codes, codes)
    for r in (1, 2, 3):  # a table of radius 3 answers every smaller radius too
        rows, neighbours, found = table.within(np.arange(len(codes)), r)
        expected = sorted(
            (row, int(distances[row, n]), n) for row, n in zip(*np.nonzero(distances <= r))
        )
        assert list(zip(rows.tolist(), found.tolist(), neighbours.tolist())) == expected


@pytest.mark.parametrize("backend", ["faiss", "numpy"])
def test_auto_answers_small_radii_from_neighbour_lists_exactly(backend):
    rng = np.random.default_rng(5)
    codes, queries = learned_like(rng, 2000, 64)
    ids = shuffled_ids(rng, len(codes))
    index = fill(codes, ids, 64, backend, "auto")
    index.search(queries[:1], 1)
    assert index.plan(radius=1) == index.plan(radius=2) == ["neighbours"]
    assert index._segments[0].groups.lookup(queries[5:]).min() == -1  # some queries search
    # radius 1 builds a table of radius 1; radius 2 rebuilds it; radius 1 then reads a prefix
    assert_radius_matches(index, queries, codes, ids, [1, 2, 1, 0])
    assert index._segments[0]._neighbours.radius == 2


def test_neighbour_lists_honour_removes_updates_and_a_second_segment():
    rng = np.random.default_rng(9)
    bits = 32
    codes, queries = learned_like(rng, 2000, bits)
    ids = shuffled_ids(rng, len(codes))
    index = fill(codes, ids, bits, "faiss", "auto")
    index.radius_groups(queries, 2)  # builds the segment and its neighbour lists
    table = index._segments[0]._neighbours
    assert table is not None

    # remove every item of the first query's code: its group stays in the table, empty
    emptied = np.flatnonzero((codes == queries[0]).all(axis=1))
    removed = np.union1d(emptied, rng.choice(len(codes), 40, replace=False))
    index.remove([ids[i] for i in removed])
    kept = np.setdiff1d(np.arange(len(codes)), removed)
    assert index.plan(radius=2) == ["neighbours"]
    assert_radius_matches(index, queries, codes[kept], [ids[i] for i in kept], [1, 2])
    assert index._segments[0]._neighbours is table  # lists are shared, not rebuilt
    assert len(index._segments[0].groups.codes) == len(table.starts)

    # update some codes and add new items after a search: they form a second segment
    changed = kept[:10]
    new_codes = clustered_codes(rng, 10, bits, centres=2)
    index.update(new_codes, [ids[i] for i in changed])
    index.add(queries[5:7], ["new-0", "new-1"])  # near misses: new codes
    current = {ids[i]: codes[i] for i in kept} | {ids[i]: c for i, c in zip(changed, new_codes)}
    current |= {"new-0": queries[5], "new-1": queries[6]}
    live_ids = list(current)
    live_codes = np.stack([current[i] for i in live_ids])
    assert len(index._prepared()) == 2
    assert_radius_matches(index, queries, live_codes, live_ids, [0, 1, 2, 3])
