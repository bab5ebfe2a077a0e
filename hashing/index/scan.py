"""Full scans of a code array: every query against every code, as faiss or numpy popcounts.

Both scans answer the two questions an index asks of a set of codes (the distinct codes of an
index, or every item's code for the flat strategy): ``within`` (every code within a radius) and
``nearest`` (every code within the distance of the k-th *item*, where code ``g`` stands for
``counts[g]`` items, possibly zero once items are deleted).

faiss notes: packed bytes go in as they are (faiss reads the bits of a byte in its own order, but a
Hamming distance does not depend on bit order when both sides use the same bytes).
``IndexBinaryFlat.range_search(x, radius)`` returns distances strictly below ``radius`` (checked
in tests/hashing/index/test_scan.py), so an inclusive radius ``r`` is asked as ``r + 1``. A faiss
top-k cuts a tie group anywhere, so ``nearest`` fetches a margin past k and re-asks with a range
search for the queries whose tie group (or run of empty codes) runs past that margin.
"""

from __future__ import annotations

import itertools

import numpy as np

from hashing.codes import code_bytes, to_words
from hashing.index.hits import Candidates

__all__ = ["SCANS", "FaissScan", "NumpyScan", "kth_distance"]


class FaissScan:
    """faiss IndexBinaryFlat over the codes (threaded over queries with OpenMP)."""

    def __init__(self, codes: np.ndarray, bits: int) -> None:
        import faiss

        self._bits = bits
        self._index = faiss.IndexBinaryFlat(8 * code_bytes(bits))  # whole bytes; padding is zero
        self._index.add(codes)

    def within(self, queries: np.ndarray, radius: int) -> Candidates:
        """Per query: every code at distance <= radius."""
        lims, distances, labels = self._index.range_search(queries, radius + 1)  # bound exclusive
        distances = distances.astype(np.int32)  # faiss hands Hamming distances back as float32
        return [(labels[a:b], distances[a:b]) for a, b in itertools.pairwise(lims)]

    def ranked(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Per query the k codes first by (distance, label): (labels int64, distances int32), q x k.

        faiss keeps the lowest labels among ties and returns them in that order (checked in
        tests/hashing/index/test_scan.py), so this is an exact top-k by (distance, label).
        """
        distances, labels = self._index.search(queries, k)
        return labels, distances.astype(np.int32)

    def nearest(self, queries: np.ndarray, counts: np.ndarray, k: int) -> Candidates:
        """Per query: every code at distance <= that of the k-th item (plus maybe farther ones)."""
        total = self._index.ntotal
        fetch = min(total, 2 * k + 16)  # a margin so the tie group at the k-th distance mostly fits
        distances, labels = self._index.search(queries, fetch)
        found: Candidates = list(zip(labels, distances.astype(np.int32)))
        held = counts[labels].sum(axis=1)
        short = (held < k) & (fetch < total)  # deleted items left fewer than k in the margin
        kth = np.array(
            [kth_distance(d, counts[g], k) if not s else -1 for (g, d), s in zip(found, short)]
        )
        # where the last fetched code sits at the k-th distance, faiss may have cut that tie group
        cut = ((distances[:, -1] == kth) & (fetch < total)) | short
        kth[short] = self._bits
        for radius in np.unique(kth[cut]):
            rows = np.flatnonzero(cut & (kth == radius))
            for row, refound in zip(rows, self.within(queries[rows], int(radius))):
                found[row] = refound
        return found


class NumpyScan:
    """np.bitwise_count over uint64 words of the codes, one query at a time."""

    def __init__(self, codes: np.ndarray, bits: int) -> None:
        self._words = to_words(codes)

    def within(self, queries: np.ndarray, radius: int) -> Candidates:
        """Per query: every code at distance <= radius."""
        found = []
        for distances in self._distances(queries):
            codes = np.flatnonzero(distances <= radius)
            found.append((codes, distances[codes]))
        return found

    def nearest(self, queries: np.ndarray, counts: np.ndarray, k: int) -> Candidates:
        """Per query: every code at distance <= that of the k-th item."""
        found = []
        for distances in self._distances(queries):
            items_within = np.cumsum(np.bincount(distances, weights=counts))
            kth = np.searchsorted(items_within, k)  # first distance reaching k items
            codes = np.flatnonzero(distances <= kth)
            found.append((codes, distances[codes]))
        return found

    def _distances(self, queries: np.ndarray):
        for query in to_words(queries):
            yield np.bitwise_count(self._words ^ query).sum(axis=1, dtype=np.int32)


SCANS = {"faiss": FaissScan, "numpy": NumpyScan}


def kth_distance(distances: np.ndarray, counts: np.ndarray, k: int) -> int:
    """Distance of the k-th item, given codes sorted by ascending distance and their item counts."""
    return int(distances[np.searchsorted(np.cumsum(counts), k)])
