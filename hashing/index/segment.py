"""One segment of a HammingIndex: its code groups, a scan of their codes, MIH and neighbour lists.

A segment answers top-k and radius queries for its own items, in (distance, rank) order; the
index merges the answers of its segments (one, or two after an ``add``: the second small and
rebuilt alone). A segment's codes never change: removing items gives a new segment (``without``)
that shares the scan, MIH tables and neighbour lists, with its plans measured again. MIH tables
and neighbour lists are built on the first query that needs them.

Top-k: a search finds the distance ``t`` of the k-th item; every item closer than ``t`` is in the
answer and the rest are the lowest-ranked items at distance ``t``, so the group search (a scan,
or MIH) returns *every* group at distance <= t (hashing/index/groups.py picks the items). Learned
codes collapse: when the query's own code already holds k items (a hash lookup of the distinct
codes), its first k by rank are the answer and nothing is searched. With one group per item in
rank order and a faiss scan, faiss's own top-k is the exact answer (faiss keeps the lowest labels
among ties).

Radius: the groups within r (a scan, MIH, or for a query whose code is a stored code, its
neighbour list), expanded into items. Groups emptied by removals are dropped from every answer.
"""

from __future__ import annotations

from dataclasses import replace
from functools import partial

import numpy as np

from hashing.index.groups import CodeGroups
from hashing.index.hits import Hits, IdOrder
from hashing.index.mih import MultiIndex
from hashing.index.neighbours import NeighbourTable
from hashing.index.planner import Planner, grouping_pays
from hashing.index.scan import SCANS, FaissScan

__all__ = ["Segment"]


class Segment:
    """Groups of a part of the index, a full scan of their codes, (lazily) MIH and neighbours."""

    def __init__(self, groups: CodeGroups, bits: int, backend: str, strategy: str) -> None:
        self.groups = groups
        self.strategy = strategy
        self._bits = bits
        self._scan = SCANS[backend](groups.codes, bits)
        self._mih: MultiIndex | None = None
        self._neighbours: NeighbourTable | None = None
        self.planner = Planner(self)

    @classmethod
    def build(
        cls,
        codes: np.ndarray,
        items: np.ndarray,
        order: IdOrder,
        alive: np.ndarray,
        bits: int,
        backend: str,
        strategy: str,
        stored: tuple[np.ndarray, np.ndarray] | None = None,
    ) -> Segment:
        """A segment over ``items`` (indices into ``codes``, the codes of all items).

        ``stored``: (members, offsets) of groups saved by ``HammingIndex.save`` (no sort needed).
        Only live items (``alive``) go into the groups.
        """
        if strategy == "flat":
            groups = CodeGroups.singletons(codes, items, order.rank)
        elif stored is not None:
            groups = CodeGroups.from_stored(codes, *stored)
        else:
            groups = CodeGroups.distinct(codes, items, order.rank)
            if strategy == "auto" and not grouping_pays(len(groups.codes), len(items)):
                groups = CodeGroups.singletons(codes, items, order.rank)
        return cls(groups.without(alive), bits, backend, strategy)

    def nbytes(self) -> int:
        """Bytes of the groups (and ids, if gathered), the scan's codes, MIH and neighbours."""
        groups = self.groups.codes.nbytes + self.groups.members.nbytes + self.groups.offsets.nbytes
        grouped_ids = self.groups.member_ids_nbytes()
        tables = [self._mih, self._neighbours]
        built = sum(table.nbytes() for table in tables if table is not None)
        return groups + grouped_ids + self.groups.counts.nbytes + self.groups.codes.nbytes + built

    def without(self, alive: np.ndarray) -> Segment:
        """This segment with dead items dropped; scan and tables are shared, plans re-measured."""
        segment = Segment.__new__(Segment)
        segment.__dict__.update(self.__dict__, groups=self.groups.without(alive))
        segment.planner = Planner(segment)
        return segment

    @property
    def ranks_directly(self) -> bool:
        """One live item per code, codes in rank order: faiss's own top-k is the answer."""
        return (
            isinstance(self._scan, FaissScan) and not self.groups.distinct and self.groups.no_empty
        )

    def has_neighbours(self, r: int) -> bool:
        """Whether neighbour lists covering radius r are built."""
        return self._neighbours is not None and self._neighbours.radius >= r

    def multi_index(self) -> MultiIndex:
        """The MIH tables over the group codes (built on the first call)."""
        if self._mih is None:
            self._mih = MultiIndex(self.groups.codes, self._bits)
        return self._mih

    def top_k(self, queries: np.ndarray, k: int, order: IdOrder) -> tuple[np.ndarray, np.ndarray]:
        """Per query its best k items here (fewer if it holds fewer): (items, distances), q x k."""
        counts = self.groups.counts
        k = min(k, self.groups.live)
        items = np.empty((len(queries), k), np.int64)
        distances = np.zeros((len(queries), k), np.int32)
        if k == 0:
            return items, distances
        rest = np.arange(len(queries))
        if self.groups.distinct:
            # learned codes collapse: often the query's own code holds k items, the answer
            exact = self.groups.lookup(queries)
            full = (exact >= 0) & (counts[exact] >= k)
            items[full] = self.groups.first_k(exact[full], k)
            rest = rest[~full]
        if len(rest):
            items[rest], distances[rest] = self._top_k_searched(queries[rest], k, order)
        return items, distances

    def _top_k_searched(
        self, queries: np.ndarray, k: int, order: IdOrder
    ) -> tuple[np.ndarray, np.ndarray]:
        counts = self.groups.counts
        plan = self.planner.plan("top", k)
        if plan == "flat" and self.ranks_directly:
            labels, distances = self._scan.ranked(queries, k)
            return self.groups.members[labels], distances
        scan = partial(self._scan.nearest, counts=counts, k=k)
        if plan == "mih":
            # a forced "mih" probes on however costly it gets: it is what the strategy measures
            budget = np.inf if self.strategy == "mih" else self.planner.probe_budget(k)
            found = self.multi_index().nearest(queries, counts, k, scan, budget)
        else:
            found = scan(queries)
        return self.groups.top_k(found, k, order)

    def within(self, queries: np.ndarray, r: int, order: IdOrder) -> Hits:
        """The items of this segment within distance r of each query, by (query, distance, rank)."""
        # expand sorts the items: the groups need no order beyond being grouped by query
        return self.groups.expand(self.within_groups(queries, r, ordered=False), order)

    def within_groups(self, queries: np.ndarray, r: int, ordered: bool = True) -> Hits:
        """Groups with live items within distance r of each query, by (query, distance, group).

        ``ordered=False``: by query only (skips a sort of the groups found by a search).
        """
        plan = self.planner.plan("radius", r)
        if self.groups.distinct and (r == 0 or plan == "neighbours"):
            # a query whose code is one of ours: the groups within r are known (r = 0: that one)
            exact = self.groups.lookup(queries)
            stored = np.flatnonzero(exact >= 0)
            if r == 0:
                hits = Hits(exact[stored], np.zeros(len(stored), np.int32), stored, len(queries))
            else:
                rows, groups, distances = self._neighbour_table(r).within(exact[stored], r)
                hits = Hits(
                    groups.astype(np.int64), distances.astype(np.int32), stored[rows], len(queries)
                )
                rest = np.flatnonzero(exact < 0)
                if len(rest):
                    plan = self.planner.searched_plan("radius", r)
                    searched = self._searched_groups(queries[rest], r, plan, ordered)
                    searched = replace(searched, query=rest[searched.query], queries=len(queries))
                    both = Hits.concatenate([hits, searched])
                    hits = both.select(np.argsort(both.query, kind="stable"))
        else:
            hits = self._searched_groups(queries, r, plan, ordered)
        if not self.groups.no_empty:  # groups whose items were all removed
            hits = hits.select(self.groups.counts[hits.items] > 0)
        return hits

    def _searched_groups(self, queries: np.ndarray, r: int, plan: str, ordered: bool) -> Hits:
        """Groups within r of each query found by MIH or a scan, by query (and distance, group)."""
        if plan == "mih":
            found, _ = self.multi_index().within(queries, r)
        else:
            found = self._scan.within(queries, r)
        hits = Hits.of(found)
        return (
            hits.select(np.lexsort((hits.items, hits.distances, hits.query))) if ordered else hits
        )

    def _neighbour_table(self, r: int) -> NeighbourTable:
        if not self.has_neighbours(r):
            self._neighbours = NeighbourTable(self.groups.codes, self._bits, r)
        return self._neighbours
