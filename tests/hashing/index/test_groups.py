"""Radius answers as hit groups: zero-copy views of the ids, the same after save and load."""

from __future__ import annotations

import numpy as np
from index_reference import (
    assert_radius_matches,
    fill,
    learned_like,
    shuffled_ids,
)

from hashing.index import HammingIndex


def test_radius_groups_views_ids_without_copying_them():
    rng = np.random.default_rng(2)
    codes, queries = learned_like(rng, 1000, 64)
    index = fill(codes, np.arange(len(codes)), 64, "faiss", "auto")
    grouped = index.radius_groups(queries, 2)
    assert grouped.counts().sum() > len(queries)  # many items, so groups hold several ids
    for _, group_ids in grouped.groups(0):
        assert np.shares_memory(group_ids, grouped.ids)
        assert not group_ids.flags.writeable
    # a second call reuses the grouped ids gathered by the first
    assert index.radius_groups(queries, 1).ids is grouped.ids


def test_loaded_index_answers_radius_groups_like_the_saved_one(tmp_path):
    rng = np.random.default_rng(12)
    codes, queries = learned_like(rng, 1000, 64)
    ids = shuffled_ids(rng, len(codes))
    index = fill(codes, ids, 64, "faiss", "auto")
    index.save(tmp_path / "idx")
    loaded = HammingIndex.load(tmp_path / "idx")
    assert loaded.plan(radius=2) == ["neighbours"]
    assert_radius_matches(loaded, queries, codes, ids, [0, 2, 3])
