"""Multi-index hashing (Norouzi, Punjani & Fleet, TPAMI 2014): exact Hamming search by probes.

A code of ``bits`` bits is cut into ``s`` contiguous substrings (lengths differ by at most one).
Pigeonhole: if two codes differ in at most ``r`` bits, some substring differs in at most
``r // s`` bits. So every code within distance ``r`` of a query shares, in some table, a substring
value within ``r // s`` bits of the query's substring: probing each table with the query's
substring and all its neighbours up to ``r // s`` flips finds a superset of the answer, which is
then verified with exact popcount distances.

Tables are sorted arrays: per substring, the distinct substring values (``keys``) and a CSR posting
list of the codes holding each value (``offsets``/``postings``). A probe is a ``searchsorted``,
and a whole batch of queries times all its flip masks is one vectorised call, so the per-query
Python cost is constant.

Top-k grows the radius in steps of ``s``: after probing substring radii ``0..l``, every code within
``s * (l + 1) - 1`` has been seen, so a query is done once the items at distance <= that radius
number at least k. A query whose next level would need more probes than the caller's budget
(hashing/index/planner.py sets it at the cost of a scan) is handed to ``fallback`` instead, so MIH
is never much slower than the scan it replaces. Answers are exact whichever way a query ends.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from functools import cache

import numpy as np

from hashing.codes import to_words
from hashing.index.hits import Candidates

__all__ = ["MultiIndex", "ranges", "substring_count"]

_MAX_PAIRS = 4_000_000  # candidate (query, code) pairs verified at once: bounds memory per call
_MAX_CHUNK = 1024  # queries probed at once


def substring_count(bits: int, codes: int) -> int:
    """Substrings for ``codes`` distinct codes: about bits / log2(codes) (the paper's choice).

    Each substring fits one uint64 word, and none is shorter than 8 bits (a table of a few bits
    posts nearly every code under every key).
    """
    ideal = round(bits / max(np.log2(max(codes, 2)), 1.0))
    return int(np.clip(ideal, -(-bits // 64), max(1, bits // 8)))


class MultiIndex:
    """MIH tables over ``codes`` (m x bytes uint8: an index's distinct codes) of ``bits`` bits."""

    def __init__(self, codes: np.ndarray, bits: int, substrings: int | None = None) -> None:
        self._words = to_words(codes)
        self._count = len(codes)
        self.substrings = substrings or substring_count(bits, len(codes))
        bounds = np.linspace(0, bits, self.substrings + 1).round().astype(int)
        self._fields = list(itertools.pairwise(bounds.tolist()))  # (start, stop) bit ranges
        self._tables = [self._table(start, stop) for start, stop in self._fields]

    def _table(self, start: int, stop: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        values = bit_field(self._words, start, stop - start)
        postings = np.argsort(values, kind="stable").astype(np.int64)
        sorted_values = values[postings]
        first = np.flatnonzero(np.concatenate([[True], sorted_values[1:] != sorted_values[:-1]]))
        offsets = np.append(first, len(values))
        return sorted_values[first], offsets, postings

    def nbytes(self) -> int:
        """Bytes of the tables and of the codes as words."""
        return self._words.nbytes + sum(a.nbytes for table in self._tables for a in table)

    def probes_per_query(self, level: int) -> int:
        """Probes a query makes to search substring radii 0..level in every table."""
        return sum(_mask_total(stop - start, level) for start, stop in self._fields)

    def certified_radius(self, level: int) -> int:
        """Every code within this distance has been found after probing substring radii 0..level."""
        return self.substrings * (level + 1) - 1

    def within(self, queries: np.ndarray, radius: int) -> tuple[Candidates, int]:
        """Per query every code at distance <= radius, and the candidates verified to find them."""
        query_words = to_words(queries)
        level = radius // self.substrings
        found: Candidates = []
        verified = start = 0
        # chunks of queries sized from the candidates the previous chunk met: bounded memory
        per_query = self.probes_per_query(level)
        while start < len(queries):
            size = int(np.clip(_MAX_PAIRS // max(per_query, 1), 1, _MAX_CHUNK))
            chunk, checked = self._probe(query_words[start : start + size], level, radius)
            found.extend(chunk)
            verified += checked
            per_query = max(per_query, checked // len(chunk))
            start += size
        return found, verified

    def nearest(
        self,
        queries: np.ndarray,
        counts: np.ndarray,
        k: int,
        fallback: Callable[[np.ndarray], Candidates],
        max_probes: float = np.inf,
    ) -> Candidates:
        """Per query every code within the distance of its k-th item (items per code: ``counts``).

        Queries whose next probe level would make more than ``max_probes`` probes each go to
        ``fallback(queries)``, which must answer the same question (a scan does).
        """
        found: Candidates = [None] * len(queries)  # type: ignore[list-item]
        active = np.arange(len(queries))
        level = 0
        while len(active):
            too_costly = self.probes_per_query(level) > max_probes
            if too_costly or level > max(stop - start for start, stop in self._fields):
                for row, refound in zip(active, fallback(queries[active])):
                    found[row] = refound
                break
            radius = self.certified_radius(level)
            level_found, _ = self.within(queries[active], radius)
            done = []
            for position, (codes, distances) in enumerate(level_found):
                if counts[codes].sum() >= k:
                    found[active[position]] = (codes, distances)
                    done.append(position)
            active = np.delete(active, done)
            level += 1
        return found

    def _probe(self, query_words: np.ndarray, level: int, radius: int) -> tuple[Candidates, int]:
        """Probe substring radii 0..level for some queries; verify; keep distance <= radius."""
        query_rows, codes = [], []
        for (start, stop), (keys, offsets, postings) in zip(self._fields, self._tables):
            values = bit_field(query_words, start, stop - start)
            masks = _masks(stop - start, level)
            probes = (values[:, None] ^ masks[None, :]).ravel()
            slots = np.searchsorted(keys, probes)
            slots[slots == len(keys)] = 0
            hit = np.flatnonzero(keys[slots] == probes)
            first = offsets[slots[hit]]
            sizes = offsets[slots[hit] + 1] - first
            query_rows.append(np.repeat(hit // len(masks), sizes))
            codes.append(postings[ranges(first, sizes)])
        query_rows, codes = np.concatenate(query_rows), np.concatenate(codes)
        differing = np.bitwise_count(self._words[codes] ^ query_words[query_rows])
        distances = differing.sum(axis=1, dtype=np.int32)
        close = distances <= radius
        # the same code can come from several tables: keep one copy, ordered by query then code
        keys, first_copy = np.unique(
            query_rows[close] * self._count + codes[close], return_index=True
        )
        query_rows, codes = np.divmod(keys, self._count)
        distances = distances[close][first_copy]
        bounds = np.searchsorted(query_rows, np.arange(len(query_words) + 1))
        found = [(codes[a:b], distances[a:b]) for a, b in itertools.pairwise(bounds)]
        return found, len(close)


def bit_field(words: np.ndarray, start: int, length: int) -> np.ndarray:
    """Bits start..start+length-1 (length <= 64) of each row of uint64 words (n x w) as uint64."""
    word, offset = divmod(start, 64)
    values = words[:, word] >> np.uint64(offset)
    if offset + length > 64:
        values |= words[:, word + 1] << np.uint64(64 - offset)
    if length < 64:
        values &= np.uint64((1 << length) - 1)
    return values


@cache
def _masks(length: int, level: int) -> np.ndarray:
    """All ``length``-bit masks with at most ``level`` set bits, as uint64 (0 first)."""
    masks = [0]
    for flips in range(1, min(level, length) + 1):
        masks.extend(
            sum(1 << b for b in combo) for combo in itertools.combinations(range(length), flips)
        )
    return np.array(masks, dtype=np.uint64)


@cache
def _mask_total(length: int, level: int) -> int:
    """How many masks ``_masks(length, level)`` holds, without building them."""
    from math import comb

    return sum(comb(length, flips) for flips in range(min(level, length) + 1))


def ranges(first: np.ndarray, sizes: np.ndarray) -> np.ndarray:
    """Concatenated ranges first[i] .. first[i] + sizes[i] - 1, as one index array."""
    ends = np.cumsum(sizes)
    return np.repeat(first - (ends - sizes), sizes) + np.arange(ends[-1] if len(ends) else 0)
