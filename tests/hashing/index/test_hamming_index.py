"""HammingIndex against the brute-force reference: every backend and strategy, ties, deletes and
updates, edge cases and input errors."""

from __future__ import annotations

import numpy as np
import pytest
from index_reference import (
    BACKENDS,
    assert_radius_matches,
    assert_top_k_matches,
    build,
    clustered_codes,
    fill,
    random_codes,
    reference_distances,
    shuffled_ids,
    straddling_ks,
    tied_codes,
)

from hashing.codes import pack_bits
from hashing.index import STRATEGIES, HammingIndex

BITS = [8, 32, 64, 128, 256]
STRATEGY_BITS = [12, 32, 48, 64, 128]  # also lengths that are not whole words or bytes of words


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("bits", BITS)
def test_search_equals_brute_force_with_many_ties(bits, backend):
    rng = np.random.default_rng(bits)
    codes = tied_codes(rng, 240, bits, distinct=6)
    ids = shuffled_ids(rng, len(codes))
    queries = np.concatenate([codes[:3], tied_codes(rng, 5, bits, distinct=5)])
    index = build(codes, ids, bits, backend)
    ks = straddling_ks(reference_distances(queries[:1], codes)[0]) + [1, 7, 239, 240, 241, 1000]
    assert_top_k_matches(index, queries, codes, ids, ks)
    assert_radius_matches(index, queries, codes, ids, [0, 1, bits // 4, bits // 2, bits])


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("bits", BITS)
def test_search_equals_brute_force_on_random_codes(bits, backend):
    rng = np.random.default_rng(1000 + bits)
    codes = rng.integers(0, 256, (300, bits // 8), dtype=np.uint8)
    ids = shuffled_ids(rng, len(codes))
    queries = rng.integers(0, 256, (6, bits // 8), dtype=np.uint8)
    index = build(codes, ids, bits, backend)
    assert_top_k_matches(index, queries, codes, ids, [1, 3, 10, 64, 300, 301])
    assert_radius_matches(index, queries, codes, ids, [0, 2, bits // 2 - 2, bits // 2])


@pytest.mark.parametrize("backend", BACKENDS)
def test_tie_group_of_distinct_codes_far_wider_than_k(backend):
    # 16-bit distinct codes: hundreds of different codes share each distance, so the group at the
    # k-th distance is much wider than any fixed fetch margin and must be gathered completely
    rng = np.random.default_rng(7)
    codes = rng.permutation(2**16).astype("<u2").view(np.uint8).reshape(-1, 2)
    ids = shuffled_ids(rng, len(codes))
    queries = rng.integers(0, 256, (2, 2), dtype=np.uint8)
    distances = reference_distances(queries, codes)
    kth = np.sort(distances[0])[19]
    assert (distances[0] == kth).sum() > 100
    index = build(codes, ids, 16, backend)
    assert_top_k_matches(index, queries, codes, ids, [20, 150])


@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("bits", STRATEGY_BITS)
def test_strategy_equals_brute_force_on_clustered_codes(bits, backend, strategy):
    rng = np.random.default_rng(bits)
    codes = clustered_codes(rng, 400, bits, centres=4)
    ids = shuffled_ids(rng, len(codes))
    distinct = len(np.unique(codes, axis=0))
    queries = np.concatenate(
        [codes[:4], clustered_codes(rng, 4, bits, centres=3), random_codes(rng, 2, bits)]
    )
    index = fill(codes, ids, bits, backend, strategy)
    # k below, at and above the number of distinct codes, and above the number of items
    ks = [1, 10, 99, distinct - 1, distinct, distinct + 1, 399, 400, 450]
    assert_top_k_matches(index, queries, codes, ids, ks)
    assert_radius_matches(index, queries, codes, ids, [0, 1, 2, 3, bits // 4])


@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.parametrize("bits", STRATEGY_BITS)
def test_strategy_equals_brute_force_on_random_codes(bits, strategy):
    rng = np.random.default_rng(500 + bits)
    codes = random_codes(rng, 300, bits)
    ids = shuffled_ids(rng, len(codes))
    queries = np.concatenate([codes[:2], random_codes(rng, 4, bits)])
    index = fill(codes, ids, bits, "faiss", strategy)
    assert_top_k_matches(index, queries, codes, ids, [1, 10, 100, 301])
    assert_radius_matches(index, queries, codes, ids, [0, 1, 2, 3, bits // 3])


@pytest.mark.parametrize("strategy", ["flat", "buckets", "mih"])
@pytest.mark.parametrize("in_id_order", [True, False])
def test_radius_search_with_thousands_of_hits_per_query(in_id_order, strategy):
    # answers this big are sorted query by query (hits.py _SORT_PER_QUERY); ids added in id
    # order need no rank-to-item gather; a second segment merges hits of two segments
    rng = np.random.default_rng(7)
    codes = tied_codes(rng, 3000, 64, distinct=5)
    ids = [f"{i:05d}" for i in range(3000)] if in_id_order else shuffled_ids(rng, 3000)
    queries = np.concatenate([codes[:3], tied_codes(rng, 3, 64, distinct=3)])
    index = HammingIndex(64, strategy=strategy)
    index.add(codes[:2600], ids[:2600])
    assert_radius_matches(index, queries, codes[:2600], ids[:2600], [0, 30, 64])
    index.add(codes[2600:], ids[2600:])
    assert_radius_matches(index, queries, codes, ids, [0, 30, 64])
    assert min(len(found) for _, found in index.radius_search(queries, 64)) == 3000


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_remove_update_and_add_after_search_match_brute_force(strategy):
    rng = np.random.default_rng(21)
    bits = 32
    codes = clustered_codes(rng, 500, bits, centres=5)
    ids = shuffled_ids(rng, len(codes))
    index = fill(codes, ids, bits, "faiss", strategy)
    queries = np.concatenate([codes[:3], clustered_codes(rng, 3, bits, centres=5)])
    index.search(queries, 5)  # builds the first segment, so what follows must not rebuild it
    segment = index._segments[0]

    removed = rng.choice(len(codes), 60, replace=False)
    index.remove([ids[i] for i in removed])
    kept = np.setdiff1d(np.arange(len(codes)), removed)
    assert len(index) == len(kept)
    assert sorted(index.ids.tolist()) == sorted(ids[i] for i in kept)
    live_codes, live_ids = codes[kept], [ids[i] for i in kept]
    assert_top_k_matches(index, queries, live_codes, live_ids, [1, 17, 200, 440, 441, 500])
    assert_radius_matches(index, queries, live_codes, live_ids, [0, 2, 3])

    # update: some live ids get new codes, a removed id comes back, new ids arrive
    changed = kept[:20]
    new_codes = clustered_codes(rng, 20, bits, centres=2)
    index.update(new_codes, [ids[i] for i in changed])
    index.add(codes[removed[:1]], [ids[removed[0]]])
    index.add(random_codes(rng, 5, bits), ["new-a", "new-b", "new-c", "new-d", "new-e"])
    assert index._segments[0].groups.codes is segment.groups.codes  # tables were not rebuilt
    current = {ids[i]: codes[i] for i in kept}
    current.update({ids[i]: code for i, code in zip(changed, new_codes)})
    current[ids[removed[0]]] = codes[removed[0]]
    for offset, name in enumerate(["new-a", "new-b", "new-c", "new-d", "new-e"]):
        current[name] = index._codes[-5 + offset]
    live_ids = list(current)
    live_codes = np.stack([current[i] for i in live_ids])
    assert len(index) == len(live_ids)
    assert_top_k_matches(index, queries, live_codes, live_ids, [1, 30, 445, 446, 600])
    assert_radius_matches(index, queries, live_codes, live_ids, [0, 1, 3])

    index.compact()
    assert len(index._ids) == len(index) == len(live_ids)
    assert_top_k_matches(index, queries, live_codes, live_ids, [1, 30, 446])
    with pytest.raises(KeyError, match="not in the index"):
        index.remove([ids[removed[1]]])
    with pytest.raises(ValueError, match="duplicate"):
        index.add(codes[:1], [live_ids[0]])


def test_many_removals_compact_on_the_next_query():
    rng = np.random.default_rng(4)
    codes = clustered_codes(rng, 200, 64, centres=3)
    ids = shuffled_ids(rng, 200)
    index = fill(codes, ids, 64, "numpy", "auto")
    index.remove(ids[:150])
    assert len(index._ids) == 200  # tombstones until a query
    assert_top_k_matches(index, codes[:2], codes[150:], ids[150:], [1, 50, 60])
    assert len(index._ids) == 50


@pytest.mark.parametrize("strategy", ["buckets", "mih"])
def test_top_k_looks_past_codes_whose_items_were_all_removed(strategy):
    # the nearest 150 distinct codes lose their only item: a scan's fetch margin holds no live one
    rng = np.random.default_rng(12)
    query = random_codes(rng, 1, 64)
    near_bits = np.repeat(np.unpackbits(query, bitorder="little")[None], 150, axis=0).astype(bool)
    near_bits[np.arange(150), rng.permutation(64 * 3)[:150] % 64] ^= True
    near = np.unique(pack_bits(near_bits), axis=0)
    far = clustered_codes(rng, 850, 64, centres=4)
    codes = np.concatenate([near, far])
    ids = shuffled_ids(rng, len(codes))
    index = fill(codes, ids, 64, "faiss", strategy)
    index.search(query, 1)
    index.remove(ids[: len(near)])
    assert len(index._ids) == len(codes)  # tombstones, not compacted
    assert_top_k_matches(index, query, far, ids[len(near) :], [1, 5, 40])


def test_integer_ids_are_compared_as_strings():
    index = HammingIndex(8, backend="numpy")
    index.add(np.zeros((3, 1), dtype=np.uint8), [3, 10, 2])
    distances, ids = index.search(np.zeros((1, 1), dtype=np.uint8), 3)
    assert ids.tolist() == [["10", "2", "3"]]
    assert distances.tolist() == [[0, 0, 0]]


@pytest.mark.parametrize("backend", BACKENDS)
def test_empty_index_returns_no_columns(backend):
    index = HammingIndex(32, backend=backend)
    queries = np.zeros((2, 4), dtype=np.uint8)
    distances, ids = index.search(queries, 5)
    assert distances.shape == ids.shape == (2, 0)
    assert [len(d) for d, _ in index.radius_search(queries, 3)] == [0, 0]
    grouped = index.radius_groups(queries, 3)
    assert len(grouped) == 2 and grouped.counts().tolist() == [0, 0]
    assert list(grouped.groups(1)) == [] and len(grouped.expand(0)[1]) == 0


def test_properties_and_read_only_ids():
    index = HammingIndex(16, backend="numpy")
    index.add(np.arange(8, dtype=np.uint8).reshape(4, 2), ["d", "b", "a", "c"])
    assert (len(index), index.bits, index.backend) == (4, 16, "numpy")
    assert index.ids.tolist() == ["d", "b", "a", "c"]
    with pytest.raises(ValueError):
        index.ids[0] = "z"


def test_unknown_strategy_is_refused():
    with pytest.raises(ValueError, match="strategy"):
        HammingIndex(64, strategy="lsh")


def test_bad_inputs_raise_clear_errors():
    index = HammingIndex(32, backend="numpy")
    good = np.zeros((2, 4), dtype=np.uint8)
    with pytest.raises(ValueError, match=r"shape \(n, 4\)"):
        index.add(np.zeros((2, 5), dtype=np.uint8), ["a", "b"])
    with pytest.raises(TypeError, match="uint8"):
        index.add(good.astype(np.int64), ["a", "b"])
    with pytest.raises(ValueError, match="one id per code"):
        index.add(good, ["a"])
    with pytest.raises(TypeError, match="strings or integers"):
        index.add(good, [1.5, 2.5])
    with pytest.raises(TypeError, match="strings or integers"):
        index.add(good, ["a", None])
    with pytest.raises(ValueError, match="duplicate"):
        index.add(good, ["a", "a"])
    index.add(good, ["a", "b"])
    with pytest.raises(ValueError, match=r"duplicate.*'b'"):
        index.add(good, ["c", "b"])
    assert index.ids.tolist() == ["a", "b"]  # a refused batch leaves the index untouched
    with pytest.raises(ValueError, match="k must be >= 1"):
        index.search(good, 0)
    with pytest.raises(TypeError, match="k must be an integer"):
        index.search(good, 2.0)
    with pytest.raises(ValueError, match="r must be >= 0"):
        index.radius_search(good, -1)
    with pytest.raises(ValueError, match=r"shape \(n, 4\)"):
        index.search(good[0], 1)
    with pytest.raises(TypeError, match="uint8"):
        index.search(good.astype(bool), 1)
    with pytest.raises(ValueError, match="positive"):
        HammingIndex(0)
    with pytest.raises(ValueError, match="backend"):
        HammingIndex(32, backend="annoy")
