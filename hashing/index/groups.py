"""Items grouped by code, and radius answers handed back as those groups.

``CodeGroups`` is the layout every search runs on: groups of items, each group one distinct code
(or, for the flat strategy, one item), as CSR posting lists (``members``/``offsets``) of live
item indices, ordered by rank (id order) inside a group. Invariants: ``codes[g]`` is the code of
every member of group ``g``; removing items drops them from the posting lists and keeps the
groups (and their codes) as they are, so scans and tables built on ``codes`` stay valid; a group
may then be empty (``no_empty`` says whether any is).

``RadiusGroups`` is a radius answer in that layout: per query, one hit per distinct code within
the radius, each a distance and a zero-copy view of the ids holding that code. Learned codes
collapse onto few distinct codes, so an answer of many items comes from few groups, and
materialising the items (gathering their string ids, sorting them by (distance, id)) costs far
more than finding the groups (benchmarks/results/search.md, hashray-groups). A caller that pages
through an answer reads only the groups it shows; ``expand`` gives a query's full answer exactly
as ``HammingIndex.radius_search`` orders it.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from functools import cached_property

import numpy as np

from hashing.codes import to_words
from hashing.index.hits import Candidates, Hits, IdOrder
from hashing.index.mih import ranges

__all__ = ["CodeGroups", "RadiusGroups"]


@dataclass(frozen=True)
class CodeGroups:
    """Groups of items (one per distinct code, or one per item) with each group's code."""

    codes: np.ndarray  # (m x bytes) the code of each group
    members: np.ndarray  # live item indices, group after group, by rank inside a group
    offsets: np.ndarray  # (m + 1,) group g is members[offsets[g]:offsets[g + 1]]
    distinct: bool  # True: one group per distinct code; False: one group per item
    counts: np.ndarray = field(init=False)  # (m,) live items per group
    live: int = field(init=False)  # live items in all groups
    no_empty: bool = field(init=False)  # every group holds a live item
    _member_ranks: list = field(init=False)  # [rank array, rank of each member] for the last rank
    _member_ids: list = field(init=False)  # [id array, id of each member] for the last ids

    def __post_init__(self) -> None:
        object.__setattr__(self, "counts", np.diff(self.offsets))
        object.__setattr__(self, "live", len(self.members))
        object.__setattr__(self, "no_empty", bool(self.counts.all()))
        object.__setattr__(self, "_member_ranks", [None, None])
        object.__setattr__(self, "_member_ids", [None, None])

    def member_ranks(self, order: IdOrder) -> np.ndarray:
        """rank of each entry of ``members`` (kept until the ranks change with an add)."""
        if self._member_ranks[0] is not order.rank:
            self._member_ranks[:] = [order.rank, order.rank[self.members]]
        return self._member_ranks[1]

    def member_ids_nbytes(self) -> int:
        """Bytes of the ids gathered by ``member_ids``, if they were."""
        return self._member_ids[1].nbytes if self._member_ids[1] is not None else 0

    def member_ids(self, ids: np.ndarray) -> np.ndarray:
        """Read-only id of each entry of ``members`` (kept until the ids array changes)."""
        if self._member_ids[0] is not ids:
            grouped = ids.take(self.members)
            grouped.flags.writeable = False
            self._member_ids[:] = [ids, grouped]
        return self._member_ids[1]

    @classmethod
    def distinct(cls, codes: np.ndarray, items: np.ndarray, rank: np.ndarray) -> CodeGroups:
        """Items grouped by code value (codes: all items' codes), by rank inside a group."""
        words = to_words(codes[items])
        order = np.lexsort((rank[items], *words.T))  # by code, then by rank
        sorted_words = words[order]
        starts = np.flatnonzero(
            np.concatenate([[True], (sorted_words[1:] != sorted_words[:-1]).any(axis=1)])
        )
        members = items[order]
        return cls(codes[members[starts]], members, np.append(starts, len(members)), True)

    @classmethod
    def from_stored(cls, codes: np.ndarray, members: np.ndarray, offsets: np.ndarray) -> CodeGroups:
        """Groups saved by ``HammingIndex.save`` (no sort needed)."""
        return cls(np.ascontiguousarray(codes[members[offsets[:-1]]]), members, offsets, True)

    @classmethod
    def singletons(cls, codes: np.ndarray, items: np.ndarray, rank: np.ndarray) -> CodeGroups:
        """One group per item, in rank order (so a scan's label order is the tie-break order)."""
        items = items[np.argsort(rank[items])]
        return cls(codes[items], items, np.arange(len(items) + 1), False)

    def without(self, alive: np.ndarray) -> CodeGroups:
        """The same groups (and group codes) with dead items dropped from the posting lists."""
        live = alive[self.members]
        if live.all():
            return self
        kept_before = np.concatenate([[0], np.cumsum(live)])
        return replace(self, members=self.members[live], offsets=kept_before[self.offsets])

    @cached_property
    def _lookup_table(self) -> tuple[np.ndarray, np.ndarray]:
        """Group codes hashed to one uint64 each, sorted, and the group of each sorted key."""
        keys = _code_keys(to_words(self.codes))
        order = np.argsort(keys)
        return keys[order], order

    def lookup(self, queries: np.ndarray) -> np.ndarray:
        """(q,) the group whose code equals each query's (distinct groups only), or -1."""
        keys, groups = self._lookup_table
        if not len(keys):
            return np.full(len(queries), -1)
        query_words = to_words(queries)
        slots = np.minimum(np.searchsorted(keys, _code_keys(query_words)), len(keys) - 1)
        found = groups[slots]
        # a hash collision is a miss here, which only sends the query down the general path
        equal = (to_words(self.codes[found]) == query_words).all(axis=1)
        return np.where(equal, found, -1)

    def first_k(self, groups: np.ndarray, k: int) -> np.ndarray:
        """(q x k) the first k items by rank of each given group (each holds at least k)."""
        return self.members[self.offsets[groups][:, None] + np.arange(k)]

    def top_k(self, found: Candidates, k: int, order: IdOrder) -> tuple[np.ndarray, np.ndarray]:
        """Best k items per query by (distance, rank) -> (items, distances), each (q x k).

        ``found`` holds per query every group within the distance of its k-th item (and maybe
        more), and those groups hold at least k items.
        """
        hits = Hits.of(found).by_distance()
        counts = self.counts[hits.items]
        items_so_far = np.cumsum(counts)
        bounds = hits.bounds()
        items_so_far -= np.concatenate([[0], items_so_far])[bounds[:-1]][hits.query]
        # within a query's block the count only grows: its first hit reaching k follows the others
        short = np.bincount(hits.query[items_so_far < k], minlength=hits.queries)
        kth = hits.distances[bounds[:-1] + short][hits.query]
        closer = hits.distances < kth
        # every item closer than the k-th distance wins; at that distance a group gives at most
        # the places left, its first ones by rank
        left = k - np.bincount(hits.query[closer], weights=counts[closer], minlength=hits.queries)
        take = np.where(closer, counts, np.minimum(counts, left.astype(np.int64)[hits.query]))
        best = self.expand(hits.select(hits.distances <= kth), order, take[hits.distances <= kth])
        first_k = np.arange(len(best.items)) - best.bounds()[:-1][best.query] < k
        return best.items[first_k].reshape(-1, k), best.distances[first_k].reshape(-1, k)

    def expand(self, hits: Hits, order: IdOrder, take: np.ndarray | None = None) -> Hits:
        """Items of the groups hit (the first ``take`` of each), by (query, distance, rank)."""
        take = self.counts[hits.items] if take is None else take
        first = np.repeat(self.offsets[hits.items] - (np.cumsum(take) - take), take)
        # ranks read from contiguous runs of member_ranks, not gathered item by item
        ranks = self.member_ranks(order)[first + np.arange(take.sum())]
        query, distances = np.repeat(hits.query, take), np.repeat(hits.distances, take)
        return Hits.sorted_ranks(ranks, distances, query, hits.queries, order)


@dataclass(frozen=True)
class RadiusGroups:
    """Hit groups of a batch of queries as flat arrays: hit h is ids[starts[h]:stops[h]]."""

    ids: np.ndarray  # the index's live ids grouped by code, by id inside a group (read-only)
    starts: np.ndarray  # (h,) int64 first position of each hit group in ``ids``
    stops: np.ndarray  # (h,) int64 one past its last position
    distances: np.ndarray  # (h,) int32 Hamming distance of the group's code to its query
    bounds: np.ndarray  # (q + 1,) query i's hits are [bounds[i], bounds[i + 1])

    def __len__(self) -> int:
        """Number of queries."""
        return len(self.bounds) - 1

    def counts(self) -> np.ndarray:
        """(q,) items within the radius of each query (the length of its expanded answer)."""
        sizes = np.concatenate([[0], np.cumsum(self.stops - self.starts)])
        return np.diff(sizes[self.bounds])

    def groups(self, query: int) -> Iterator[tuple[int, np.ndarray]]:
        """(distance, ids) of each hit group of one query, by distance (ids: a read-only view).

        Groups at the same distance come in storage order, which means nothing: a caller that
        needs ties ordered by id across groups uses ``expand``.
        """
        for hit in range(self.bounds[query], self.bounds[query + 1]):
            yield int(self.distances[hit]), self.ids[self.starts[hit] : self.stops[hit]]

    def expand(self, query: int) -> tuple[np.ndarray, np.ndarray]:
        """One query's items as (distances int32, ids), by (distance, id): radius_search's row."""
        hits = slice(self.bounds[query], self.bounds[query + 1])
        sizes = self.stops[hits] - self.starts[hits]
        ids = self.ids[ranges(self.starts[hits], sizes)]
        distances = np.repeat(self.distances[hits], sizes)
        order = np.lexsort((ids, distances))
        return distances[order], ids[order]


def _code_keys(words: np.ndarray) -> np.ndarray:
    """One uint64 per row of words (n x w): the word itself, or a multiplicative hash of several."""
    keys = words[:, 0].copy()
    for column in range(1, words.shape[1]):
        keys = keys * np.uint64(0x9E3779B97F4A7C15) + words[:, column]
    return keys
