"""Every HammingIndex strategy against the brute-force reference; deletes, updates, save format."""

from __future__ import annotations

import hashlib
import io
import json

import numpy as np
import pytest
from test_index import (
    assert_radius_matches,
    assert_top_k_matches,
    reference_distances,
    shuffled_ids,
)

from hashing.codes import pack_bits
from hashing.index import STRATEGIES, HammingIndex
from hashing.mih import MultiIndex

BACKENDS = ["faiss", "numpy"]
BITS = [12, 32, 48, 64, 128]


def clustered_codes(rng: np.random.Generator, n: int, bits: int, centres: int) -> np.ndarray:
    """Packed codes near a few centres (0, 1 or 2 bits flipped): learned-like, full of ties."""
    centre_bits = rng.random((centres, bits)) < 0.5
    codes = centre_bits[rng.integers(0, centres, n)]
    for _ in range(2):
        flip = rng.random(n) < 0.5
        codes[flip, rng.integers(0, bits, flip.sum())] ^= True
    return pack_bits(codes)


def random_codes(rng: np.random.Generator, n: int, bits: int) -> np.ndarray:
    """Uniform random packed codes, padding bits zero (as pack_bits leaves them)."""
    return pack_bits(rng.random((n, bits)) < 0.5)


def fill(codes, ids, bits, backend, strategy) -> HammingIndex:
    index = HammingIndex(bits, backend=backend, strategy=strategy)
    index.add(codes, ids)
    return index


@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("bits", BITS)
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
@pytest.mark.parametrize("bits", BITS)
def test_strategy_equals_brute_force_on_random_codes(bits, strategy):
    rng = np.random.default_rng(500 + bits)
    codes = random_codes(rng, 300, bits)
    ids = shuffled_ids(rng, len(codes))
    queries = np.concatenate([codes[:2], random_codes(rng, 4, bits)])
    index = fill(codes, ids, bits, "faiss", strategy)
    assert_top_k_matches(index, queries, codes, ids, [1, 10, 100, 301])
    assert_radius_matches(index, queries, codes, ids, [0, 1, 2, 3, bits // 3])


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

    # a near-duplicate query ends at the first level; far random queries need more than a scan
    near = codes[:1].copy()
    near[0, 0] ^= 1
    far = random_codes(rng, 3, 64)
    found = MultiIndex(codes, 64).nearest(np.concatenate([near, far]), counts, 1, fallback)
    assert handed == [3]
    assert found[0][1].min() == 1


def test_auto_scans_uniform_codes_and_probes_clustered_ones():
    rng = np.random.default_rng(1)
    uniform = fill(random_codes(rng, 20_000, 64), np.arange(20_000), 64, "faiss", "auto")
    # top-k on uniform codes needs a wide radius: too many probes; a small radius needs few
    assert uniform.plan(k=10) == ["flat"]
    assert uniform.plan(k=1000) == ["flat"]
    assert uniform.plan(radius=2) == ["mih"]
    clustered = fill(
        clustered_codes(rng, 20_000, 64, centres=50), np.arange(20_000), 64, "faiss", "auto"
    )
    assert clustered.plan(k=100) in (["mih"], ["buckets"])  # grouped by code, not flat
    forced = fill(random_codes(rng, 100, 64), np.arange(100), 64, "faiss", "buckets")
    assert forced.plan(k=10) == forced.plan(radius=1) == ["buckets"]
    with pytest.raises(ValueError, match="exactly one"):
        forced.plan(k=1, radius=1)


def test_auto_scans_for_a_large_top_k_when_faiss_hands_back_only_k_codes():
    # 1M uniform 32-bit codes: the flat scan's faiss top-1000 fetches 1000 codes (not a margin
    # of 2k + 16), which makes it cheaper than probing; a top-10 still probes
    rng = np.random.default_rng(3)
    n = 1_000_000
    uniform = fill(random_codes(rng, n, 32), np.arange(n), 32, "faiss", "auto")
    assert uniform.plan(k=1000) == ["flat"]
    assert uniform.plan(k=10) == ["mih"]


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


@pytest.mark.parametrize("strategy", ["flat", "mih"])
def test_saved_index_maps_arrays_and_drops_removed_items(tmp_path, strategy):
    rng = np.random.default_rng(8)
    codes = clustered_codes(rng, 300, 64, centres=6)
    ids = shuffled_ids(rng, 300)
    index = fill(codes, ids, 64, "faiss", strategy)
    index.remove(ids[:10])
    index.save(tmp_path)
    loaded = HammingIndex.load(tmp_path, strategy=strategy)
    assert isinstance(loaded._codes, np.memmap)
    assert len(loaded) == 290
    queries = codes[:5]
    for k in (1, 40, 290):
        for before, after in zip(index.search(queries, k), loaded.search(queries, k)):
            np.testing.assert_array_equal(before, after)
    assert_radius_matches(loaded, queries, codes[10:], ids[10:], [0, 2])


def test_version_1_directory_still_loads(tmp_path):
    # the layout before memory-mapped arrays: codes.npy and ids.npy, checksums in a sha256 map
    rng = np.random.default_rng(2)
    codes = random_codes(rng, 20, 32)
    ids = np.array(sorted(f"id-{i}" for i in range(20)))
    digests = {}
    for name, array in (("codes.npy", codes), ("ids.npy", ids)):
        buffer = io.BytesIO()
        np.save(buffer, array, allow_pickle=False)
        (tmp_path / name).write_bytes(buffer.getvalue())
        digests[name] = hashlib.sha256(buffer.getvalue()).hexdigest()
    header = {"format": "hashray.hamming_index", "version": 1, "bits": 32, "count": 20}
    (tmp_path / "index.json").write_text(json.dumps({**header, "sha256": digests}))
    loaded = HammingIndex.load(tmp_path)
    assert_top_k_matches(loaded, codes[:3], codes, ids.tolist(), [1, 20])


def test_unknown_strategy_is_refused():
    with pytest.raises(ValueError, match="strategy"):
        HammingIndex(64, strategy="lsh")


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
