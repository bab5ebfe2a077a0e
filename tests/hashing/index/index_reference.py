"""Shared by the index tests: a brute-force reference (full distance matrix, sorted by
(distance, id)), code generators and index builders."""

from __future__ import annotations

import numpy as np

from hashing.codes import pack_bits
from hashing.index import HammingIndex

BACKENDS = ["faiss", "numpy"]


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


def learned_like(rng: np.random.Generator, n: int, bits: int) -> tuple[np.ndarray, np.ndarray]:
    """Codes like learned ones (a few centres, a third of the items one bit off: many items per
    code) and queries: stored codes, codes 2 or 3 bits off a centre (mostly unstored), random."""
    centres = rng.random((4, bits)) < 0.5
    codes = centres[rng.integers(0, len(centres), n)]
    flip = rng.random(n) < 0.3
    codes[flip, rng.integers(0, bits, flip.sum())] ^= True
    off = centres[rng.integers(0, len(centres), 6)]
    for row, flips in enumerate([2, 2, 3, 3, 3, 3]):
        off[row, rng.choice(bits, flips, replace=False)] ^= True
    queries = np.concatenate([pack_bits(codes[:5]), pack_bits(off), random_codes(rng, 2, bits)])
    return pack_bits(codes), queries


def build(codes: np.ndarray, ids: list[str], bits: int, backend: str) -> HammingIndex:
    """An index filled in three uneven batches."""
    index = HammingIndex(bits, backend=backend)
    for part in np.array_split(np.arange(len(codes)), [len(codes) // 5, len(codes) // 2]):
        index.add(codes[part], [ids[i] for i in part])
    return index


def fill(codes, ids, bits, backend, strategy) -> HammingIndex:
    index = HammingIndex(bits, backend=backend, strategy=strategy)
    index.add(codes, ids)
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
