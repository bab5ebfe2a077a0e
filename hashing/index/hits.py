"""Search results in flight: per-query candidates, flat hit arrays, and the id order of ties.

- ``Candidates``: what a scan or MIH hands back, per query (code or item indices, distances),
  in no particular order.
- ``Hits``: the hits of a batch of queries as flat arrays (``items``, ``distances``, ``query``);
  ``sorted_ranks`` orders them by (query, distance, rank), the order every answer comes in.
- ``IdOrder``: each item's rank, its position in sorted id order. Ties are broken by rank, so
  comparisons are on integers, never on strings, and answers match a sort by (distance, id).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["Candidates", "Hits", "IdOrder"]

Candidates = list[tuple[np.ndarray, np.ndarray]]  # per query: (code or item indices, distances)

_SORT_PER_QUERY = 256  # hits per query from which each query's hits are sorted on their own


@dataclass(frozen=True)
class IdOrder:
    """Where each item stands in sorted id order (``rank``) and its inverse (``by_rank``)."""

    rank: np.ndarray  # (n,) rank[i]: position of ids[i] in sorted id order
    by_rank: np.ndarray  # (n,) by_rank[j]: the item of rank j
    identity: bool  # items are already in id order (a loaded index, ids added sorted): rank == item

    @classmethod
    def of(cls, by_rank: np.ndarray) -> IdOrder:
        """From the items in sorted id order (an argsort of the ids)."""
        rank = np.empty(len(by_rank), dtype=np.int64)
        positions = np.arange(len(by_rank))
        rank[by_rank] = positions
        return cls(rank, by_rank, bool(np.array_equal(by_rank, positions)))

    def items_of(self, ranks: np.ndarray) -> np.ndarray:
        """The items of these ranks (no gather when items are in id order)."""
        return ranks if self.identity else self.by_rank.take(ranks)


@dataclass(frozen=True)
class Hits:
    """Hits of a batch of queries as flat arrays: ``items`` (groups or items) at ``distances``."""

    items: np.ndarray  # (h,) int64 group or item indices
    distances: np.ndarray  # (h,) int32
    query: np.ndarray  # (h,) which query of the batch each hit belongs to
    queries: int  # queries in the batch

    @classmethod
    def of(cls, found: Candidates) -> Hits:
        """Flatten per-query (indices, distances) pairs."""
        lengths = [len(indices) for indices, _ in found]
        return cls(
            np.concatenate([indices for indices, _ in found]).astype(np.int64, copy=False),
            np.concatenate([d for _, d in found]).astype(np.int32, copy=False),
            np.repeat(np.arange(len(found)), lengths),
            len(found),
        )

    @classmethod
    def concatenate(cls, parts: list[Hits]) -> Hits:
        """Hits of several segments for the same batch of queries."""
        if len(parts) == 1:
            return parts[0]
        fields = ("items", "distances", "query")
        return cls(
            *(np.concatenate([getattr(p, f) for p in parts]) for f in fields), parts[0].queries
        )

    def select(self, mask: np.ndarray) -> Hits:
        """The hits where ``mask`` is True (or at these positions), in that order."""
        return Hits(self.items[mask], self.distances[mask], self.query[mask], self.queries)

    def by_distance(self) -> Hits:
        """Ordered by (query, distance)."""
        return self.select(np.argsort(self.query_distance(), kind="stable"))

    def sorted(self, order: IdOrder) -> Hits:
        """Items ordered by (query, distance, rank)."""
        ranks = order.rank[self.items]
        return Hits.sorted_ranks(ranks, self.distances, self.query, self.queries, order)

    @classmethod
    def sorted_ranks(
        cls,
        ranks: np.ndarray,
        distances: np.ndarray,
        query: np.ndarray,
        queries: int,
        order: IdOrder,
    ) -> Hits:
        """Items given by rank, ordered by (query, distance, rank)."""
        rank_bits = max(len(order.rank) - 1, 1).bit_length()
        distance_bits = int(distances.max() if len(distances) else 0).bit_length()
        grouped = not len(query) or bool(np.all(query[1:] >= query[:-1]))
        if grouped and len(ranks) >= _SORT_PER_QUERY * queries:
            # big answers (radius searches on learned codes): sorting each query's block alone
            # keeps it in cache, and without the query in it the key fits 32 bits
            key_type = np.uint32 if distance_bits + rank_bits <= 32 else np.uint64
            keys = distances.astype(key_type) << key_type(rank_bits)
            keys |= ranks.astype(key_type, copy=False)
            bounds = np.searchsorted(query, np.arange(queries + 1))
            for row in np.flatnonzero(np.diff(bounds) > 1):
                keys[bounds[row] : bounds[row + 1]].sort()
            ranks = (keys & key_type((1 << rank_bits) - 1)).astype(np.int64)
            distances = (keys >> key_type(rank_bits)).astype(np.int32)
            return cls(order.items_of(ranks), distances, query, queries)
        # one int64 key holding all three, sorted in place and decoded with shifts, beats a
        # lexsort and the gathers an argsort needs
        keys = (query << (distance_bits + rank_bits)) | (distances.astype(np.int64) << rank_bits)
        keys |= ranks
        keys.sort()
        items = order.items_of(keys & ((1 << rank_bits) - 1))
        keys >>= rank_bits
        distances = (keys & ((1 << distance_bits) - 1)).astype(np.int32)
        return cls(items, distances, keys >> distance_bits, queries)

    def query_distance(self) -> np.ndarray:
        """(query, distance) packed into one int64 that sorts the same way."""
        return self.query * self._span() + self.distances

    def _span(self) -> int:
        return int(self.distances.max()) + 1 if len(self.distances) else 1

    def bounds(self) -> np.ndarray:
        """(queries + 1,) query i's hits are [bounds[i], bounds[i + 1]) once ordered by query."""
        return np.searchsorted(self.query, np.arange(self.queries + 1))
