"""HammingIndex against a brute-force reference: full distance matrix, sorted by (distance, id)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from hashing.index import HammingIndex

BACKENDS = ["faiss", "numpy"]
BITS = [8, 32, 64, 128, 256]


def reference_distances(queries: np.ndarray, codes: np.ndarray) -> np.ndarray:
    """Hamming distances (q x n) by unpacking every bit and counting the differing ones."""
    q_bits = np.unpackbits(queries, axis=1)
    c_bits = np.unpackbits(codes, axis=1)
    return (q_bits[:, None, :] != c_bits[None, :, :]).sum(axis=2)


def reference_ranking(distances: np.ndarray, ids: list[str]) -> list[tuple[int, str]]:
    """All (distance, id) pairs of one query, ordered by distance then id (Python str order)."""
    return sorted(zip(distances.tolist(), ids))


def tied_codes(rng: np.random.Generator, n: int, bits: int, distinct: int) -> np.ndarray:
    """n codes drawn from a few distinct values, so most distances are shared by many items."""
    values = rng.integers(0, 256, (distinct, bits // 8), dtype=np.uint8)
    return values[rng.integers(0, distinct, n)]


def shuffled_ids(rng: np.random.Generator, n: int) -> list[str]:
    """String ids whose sorted order differs from insertion order (and from numeric order)."""
    return [f"item-{i}" for i in rng.permutation(n)]


def build(codes: np.ndarray, ids: list[str], bits: int, backend: str) -> HammingIndex:
    """An index filled in three uneven batches."""
    index = HammingIndex(bits, backend=backend)
    for part in np.array_split(np.arange(len(codes)), [len(codes) // 5, len(codes) // 2]):
        index.add(codes[part], [ids[i] for i in part])
    return index


def assert_top_k_matches(index, queries, codes, ids, ks):
    distances = reference_distances(queries, codes)
    for k in ks:
        got_distances, got_ids = index.search(queries, k)
        width = min(k, len(codes))
        assert got_distances.shape == got_ids.shape == (len(queries), width)
        assert got_distances.dtype == np.int32
        for row in range(len(queries)):
            expected = reference_ranking(distances[row], ids)[:k]
            assert list(zip(got_distances[row].tolist(), got_ids[row].tolist())) == expected


def assert_radius_matches(index, queries, codes, ids, radii):
    """radius_search and radius_groups (expanded, and group by group) equal brute force."""
    distances = reference_distances(queries, codes)
    code_of = {i: code.tobytes() for i, code in zip(ids, codes)}
    for r in radii:
        results = index.radius_search(queries, r)
        grouped = index.radius_groups(queries, r)
        assert len(results) == len(grouped) == len(queries)
        for row, (got_distances, got_ids) in enumerate(results):
            expected = [pair for pair in reference_ranking(distances[row], ids) if pair[0] <= r]
            assert list(zip(got_distances.tolist(), got_ids.tolist())) == expected
            expanded_distances, expanded_ids = grouped.expand(row)
            assert list(zip(expanded_distances.tolist(), expanded_ids.tolist())) == expected
            assert grouped.counts()[row] == len(expected)
            # each group: one code, its ids in id order, groups by distance
            groups = list(grouped.groups(row))
            assert [d for d, _ in groups] == sorted(d for d, _ in groups)
            for _, group_ids in groups:
                assert len({code_of[i] for i in group_ids.tolist()}) == 1
                assert group_ids.tolist() == sorted(group_ids.tolist())


def straddling_ks(distances: np.ndarray) -> list[int]:
    """k values just before, at and just after the end of each tie group of one query."""
    group_ends = np.cumsum(np.bincount(distances))
    group_ends = group_ends[group_ends > 0]
    return sorted({int(k) for end in group_ends for k in (end - 1, end, end + 1) if k >= 1})


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


@pytest.mark.parametrize("strategy", ["flat", "buckets", "mih"])
@pytest.mark.parametrize("in_id_order", [True, False])
def test_radius_search_with_thousands_of_hits_per_query(in_id_order, strategy):
    # answers this big are sorted query by query (index.py _SORT_PER_QUERY); ids added in id
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


@pytest.mark.parametrize("backend", BACKENDS)
def test_save_load_round_trip_gives_identical_results(tmp_path, backend):
    rng = np.random.default_rng(11)
    codes = tied_codes(rng, 200, 64, distinct=8)
    ids = shuffled_ids(rng, len(codes))
    queries = tied_codes(rng, 5, 64, distinct=5)
    index = build(codes, ids, 64, backend)
    index.save(tmp_path / "idx")
    loaded = HammingIndex.load(tmp_path / "idx", backend=backend)
    assert (len(loaded), loaded.bits, loaded.backend) == (200, 64, backend)
    assert sorted(loaded.ids.tolist()) == sorted(ids)
    for k in (1, 13, 200):
        for before, after in zip(index.search(queries, k), loaded.search(queries, k)):
            np.testing.assert_array_equal(before, after)
    for (d1, i1), (d2, i2) in zip(
        index.radius_search(queries, 9), loaded.radius_search(queries, 9)
    ):
        np.testing.assert_array_equal(d1, d2)
        np.testing.assert_array_equal(i1, i2)
    # a loaded index keeps rejecting duplicates and accepts new ids
    with pytest.raises(ValueError, match="duplicate"):
        loaded.add(codes[:1], [ids[0]])
    loaded.add(codes[:1], ["new"])
    assert len(loaded) == 201


def test_header_records_bits_count_version_model_and_checksums(tmp_path):
    index = HammingIndex(32, backend="numpy", model_version="adsh-64@3")
    index.add(np.ones((3, 4), dtype=np.uint8), ["a", "b", "c"])
    index.save(tmp_path)
    header = json.loads((tmp_path / "index.json").read_text())
    assert (header["bits"], header["count"], header["version"]) == (32, 3, 2)
    assert header["model_version"] == "adsh-64@3"
    assert set(header["arrays"]) == {"codes", "ids", "members", "offsets"}
    assert all(len(entry["sha256"]) == 64 for entry in header["arrays"].values())
    assert HammingIndex.load(tmp_path).model_version == "adsh-64@3"


@pytest.mark.parametrize("name", ["codes.npy", "ids.npy"])
def test_tampered_file_fails_checksum(tmp_path, name):
    index = HammingIndex(32, backend="numpy")
    index.add(np.arange(12, dtype=np.uint8).reshape(3, 4), ["a", "b", "c"])
    index.save(tmp_path)
    data = bytearray((tmp_path / name).read_bytes())
    data[-1] ^= 1
    (tmp_path / name).write_bytes(bytes(data))
    with pytest.raises(ValueError, match="checksum mismatch"):
        HammingIndex.load(tmp_path)


def test_load_refuses_directory_without_header(tmp_path):
    with pytest.raises(FileNotFoundError, match="index.json"):
        HammingIndex.load(tmp_path)


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
