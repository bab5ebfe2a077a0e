"""Exact Hamming search over packed binary codes: top-k and radius queries ordered by (distance, id).

Results are exact and deterministic: items are ordered by Hamming distance, then by id in string
order, so search shards can be merged exactly and two runs agree item for item, whatever strategy
answers a query.

How it works. Items are grouped: each group holds the items of one code (or, for the flat
strategy, a single item), sorted by id rank (the position of the id in sorted order, so
tie-breaking compares integers, not strings). A search finds candidate groups with their
distances, then expands groups into items in (distance, rank) order. A top-k query finds the
distance ``t`` of the k-th item; every item closer than ``t`` is in the answer and the rest are
the lowest-ranked items at distance ``t``; so the group search must return *every* group at
distance <= t. Learned codes collapse: when the query's own code already holds k items (found by
a hash lookup of the distinct codes), its first k by rank are the answer and nothing is searched.
The flat strategy stores codes in rank order, and faiss keeps the lowest labels among ties, so
there faiss's own top-k is the exact answer.

Strategies (``strategy=``), all exact and identical in their answers:
- ``"flat"``: one group per item, scanned in full (faiss ``IndexBinaryFlat`` or numpy popcounts);
- ``"buckets"``: one group per distinct code, scanned in full; learned codes repeat a lot, so
  this scans far fewer codes;
- ``"mih"``: multi-index hashing over the distinct codes (hashing/mih.py): substring tables probed
  within a radius, growing the radius for top-k (however many probes that takes);
- ``"auto"`` (default): flat when nearly every code is distinct (grouping would save nothing),
  buckets otherwise; then per query kind (top-k for a k, radius r) multi-index hashing when its
  cost is below a scan's. Both costs are estimates in ns from counts measured on the index (codes
  scanned, probes made and candidates met by 64 indexed codes searched as queries) times per-unit
  costs fitted to timings on MNIST-1M and uniform codes (hashing/mih.py; a probe and a candidate
  cost more once the codes outgrow the cache), so the choice is deterministic. Even then a top-k
  query whose next probe level would cost more than a scan is scanned instead. For a radius of
  1 to ``_NEIGHBOUR_RADIUS`` over at most ``_NEIGHBOUR_CODES`` distinct codes, when the pairs of
  codes within the radius (estimated from the same sample) number at most
  ``_NEIGHBOURS_PER_ITEM`` per item, auto answers from neighbour lists instead
  (hashing/neighbours.py, built on the first such query: one MIH self-join, 2 to 5 s for the
  92k distinct 64-bit codes of MNIST-1M at radius 2): a query whose code is a stored code (92% of
  MNIST-1M's 64-bit queries) reads its list; the others are searched by MIH or a scan as above.
  ``plan`` says what a query would use ("neighbours" for that mix).

Radius results come in two forms: ``radius_search`` materialises every item, (distances, ids)
sorted by (distance, id); ``radius_groups`` returns per query the distinct codes within the
radius, each with a zero-copy view of its ids (hashing/radius_groups.py), which on learned codes
is tens of times cheaper (benchmarks/results/search.md) and lets a caller page through
an answer of tens of thousands of items.

Deletes and updates: ``remove`` marks items dead (tombstones) and drops them from the groups'
posting lists, without re-sorting anything or rebuilding the scan or substring tables. ``add``
after the first search puts new items in a second, small segment that is rebuilt alone; queries
search both segments and merge. ``compact`` (also run automatically when dead items or the new
segment outgrow ``_COMPACT_FRACTION`` of the index) drops dead items and rebuilds one segment.

Backends: ``"faiss"`` (C++ popcount scans, threaded over queries) and ``"numpy"``; ``"auto"``
picks faiss when it imports. faiss threads over queries with OpenMP; on an oversubscribed machine
more threads than free cores made it several times slower, so give each process (a Ray actor, say)
as many faiss threads as it has CPUs (OMP_NUM_THREADS). Speeds: benchmarks/search.py.

Memory: a query holds the groups within its k-th distance (or radius) at once, and queries run in
chunks of ``_QUERY_CHUNK``. Radius answers on learned codes run to thousands of items a query:
their hits are sorted by (distance, rank) one query at a time on 32-bit keys, and ids are
gathered once for the whole chunk. ``radius_groups`` keeps a copy of the ids in group order
(the first call after the index changes gathers it). Save format: hashing/index_store.py.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from functools import cached_property, partial
from pathlib import Path

import numpy as np

from hashing import index_store
from hashing.codes import code_bytes, to_words
from hashing.hamming_scan import SCANS, Candidates, FaissScan
from hashing.mih import FETCH_COST, SCAN_COST, MultiIndex
from hashing.neighbours import NeighbourTable
from hashing.radius_groups import RadiusGroups

__all__ = ["STRATEGIES", "HammingIndex"]

STRATEGIES = ("auto", "flat", "buckets", "mih")
_QUERY_CHUNK = 1024  # queries per backend call: bounds the result buffers, keeps calls batched
_FLAT_RATIO = 0.9  # distinct codes per item above which grouping by code saves nothing
_COMPACT_FRACTION = 0.25  # dead items or new-segment items, as a share of all, that trigger compact
_PLAN_SAMPLE = 64  # indexed codes used as queries to measure the cost of multi-index hashing
_SORT_PER_QUERY = 256  # hits per query from which each query's hits are sorted on their own
_NEIGHBOUR_RADIUS = 3  # largest radius answered from neighbour lists (their size grows fast)
_NEIGHBOUR_CODES = 1 << 18  # most distinct codes to build neighbour lists for (~20 us each)
_NEIGHBOURS_PER_ITEM = 16  # most (code, neighbour) pairs per item the lists may hold


class HammingIndex:
    """Exact Hamming index over packed uint8 codes (n x bits/8) with unique string ids."""

    def __init__(
        self,
        bits: int,
        backend: str = "auto",
        strategy: str = "auto",
        model_version: str | None = None,
    ) -> None:
        """Empty index for ``bits``-long codes; backend "auto"/"faiss"/"numpy"; strategy: STRATEGIES."""
        self._bits = int(bits)
        self._nbytes = code_bytes(bits)
        self._backend = _resolve_backend(backend)
        if strategy not in STRATEGIES:
            raise ValueError(f"strategy must be one of {STRATEGIES}; got {strategy!r}")
        self._strategy = strategy
        self.model_version = model_version  # which model made the codes; kept by save/load
        self._codes = np.empty((0, self._nbytes), dtype=np.uint8)
        self._ids = np.empty(0, dtype="<U1")
        self._order = _IdOrder.of(np.empty(0, dtype=np.int64))  # ranks: positions in id order
        self._alive = np.empty(0, dtype=bool)  # False: removed (a tombstone until compact)
        self._segments: list[_Segment] = []  # built on the first query after a rebuild
        self._built = 0  # items [0, _built) are in the first segment, the rest in the second
        self._stored_groups: tuple[np.ndarray, np.ndarray] | None = None  # from load: skip a sort
        self._joined_ids: tuple[list[np.ndarray], np.ndarray] | None = None  # see _grouped_ids

    @property
    def bits(self) -> int:
        """Code length in bits."""
        return self._bits

    @property
    def backend(self) -> str:
        """The backend in use after resolving "auto": "faiss" or "numpy"."""
        return self._backend

    @property
    def strategy(self) -> str:
        """The requested strategy (see ``plan`` for what a given query uses)."""
        return self._strategy

    @property
    def ids(self) -> np.ndarray:
        """Read-only view of the live ids (n,), in insertion order (id order after ``load``)."""
        view = self._ids.view() if self._alive.all() else self._ids[self._alive]
        view.flags.writeable = False
        return view

    def __len__(self) -> int:
        """Number of live items in the index."""
        return int(np.count_nonzero(self._alive))

    def add(self, packed_codes: np.ndarray, ids: Sequence[str | int] | np.ndarray) -> None:
        """Append packed codes (n x bits/8 uint8) with their ids (n,); live ids must stay unique."""
        codes = self._check_codes(packed_codes, "packed_codes")
        new_ids = _as_ids(ids, len(codes))
        all_ids = np.concatenate([self._ids, new_ids])
        alive = np.concatenate([self._alive, np.ones(len(new_ids), dtype=bool)])
        order = np.argsort(all_ids, kind="stable")
        live_sorted = all_ids[order][alive[order]]  # a removed id may come back
        repeated = live_sorted[1:][live_sorted[1:] == live_sorted[:-1]]
        if len(repeated):
            raise ValueError(
                f"duplicate ids ({len(repeated)}; already in the index or repeated in this batch),"
                f" e.g. {repeated[:5].tolist()}"
            )
        self._codes = np.concatenate([self._codes, codes])
        self._ids, self._alive = all_ids, alive
        self._order = _IdOrder.of(order)
        self._stored_groups = None
        # the first segment stays; the new items form (or join) the second one, rebuilt alone
        self._segments = self._segments[:1]
        if len(self._codes) - self._built > _COMPACT_FRACTION * len(self._codes):
            self._segments, self._built = [], 0

    def remove(self, ids: Sequence[str | int] | np.ndarray) -> None:
        """Delete the items with these ids (tombstones: no rebuild); unknown ids raise KeyError."""
        doomed = _as_ids(ids, len(np.asarray(ids)))
        live = np.flatnonzero(self._alive)
        by_id = live[np.argsort(self._ids[live], kind="stable")]
        slots = np.minimum(np.searchsorted(self._ids[by_id], doomed), max(len(by_id) - 1, 0))
        known = self._ids[by_id[slots]] == doomed if len(by_id) else np.zeros(len(doomed), bool)
        if not known.all():
            missing = doomed[~known]
            raise KeyError(f"ids not in the index ({len(missing)}), e.g. {missing[:5].tolist()}")
        self._alive[by_id[slots]] = False
        self._segments = [segment.without(self._alive) for segment in self._segments]

    def update(self, packed_codes: np.ndarray, ids: Sequence[str | int] | np.ndarray) -> None:
        """Set the codes of these ids, adding the ids that are new (remove + add)."""
        codes = self._check_codes(packed_codes, "packed_codes")
        new_ids = _as_ids(ids, len(codes))
        present = np.isin(new_ids, self._ids[self._alive])
        self.remove(new_ids[present])
        self.add(codes, new_ids)

    def compact(self) -> None:
        """Drop removed items for good and rebuild one segment over the rest."""
        keep = np.flatnonzero(self._alive)
        self._codes, self._ids = self._codes[keep], self._ids[keep]
        self._order = _IdOrder.of(np.argsort(self._ids, kind="stable"))
        self._alive = np.ones(len(keep), dtype=bool)
        self._segments, self._built, self._stored_groups = [], 0, None

    def nbytes(self) -> int:
        """Bytes held in memory: codes, ids, ranks, groups, scans and substring tables built so far."""
        arrays = (self._codes, self._ids, self._order.rank, self._order.by_rank, self._alive)
        return sum(a.nbytes for a in arrays) + sum(s.nbytes() for s in self._segments)

    def plan(self, k: int | None = None, radius: int | None = None) -> list[str]:
        """Strategy per segment ("flat", "buckets", "mih"; radius also "neighbours") for a query."""
        if (k is None) == (radius is None):
            raise ValueError("give exactly one of k and radius")
        kind = ("top", _check_int(k, "k", 1)) if k is not None else ("radius", radius)
        return [segment.plan(*kind) for segment in self._prepared()]

    def search(self, packed_queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Exact top-k per query (q x bits/8) -> (distances int32, ids), each (q x min(k, len)).

        Rows are ordered by (distance, id); when k exceeds len(self) only len(self) columns come back.
        """
        queries = self._check_codes(packed_queries, "packed_queries")
        k = min(_check_int(k, "k", minimum=1), len(self))
        items = np.empty((len(queries), k), dtype=np.int64)
        distances = np.empty((len(queries), k), dtype=np.int32)
        if k:
            segments = self._prepared()
            for start in range(0, len(queries), _QUERY_CHUNK):
                chunk = slice(start, start + _QUERY_CHUNK)
                best = [segment.top_k(queries[chunk], k, self._order) for segment in segments]
                items[chunk], distances[chunk] = self._merged_top_k(best, k)
        return distances, self._ids[items]

    def radius_search(
        self, packed_queries: np.ndarray, r: int
    ) -> list[tuple[np.ndarray, np.ndarray]]:
        """All items within distance <= r of each query (q x bits/8): q pairs (distances, ids)."""
        queries = self._check_codes(packed_queries, "packed_queries")
        r = _check_int(r, "r", minimum=0)
        if not len(self):
            return [(np.empty(0, dtype=np.int32), self._ids[:0]) for _ in queries]
        segments = self._prepared()
        results = []
        for start in range(0, len(queries), _QUERY_CHUNK):
            chunk = queries[start : start + _QUERY_CHUNK]
            hits = _Hits.concatenate(
                [segment.within(chunk, r, self._order) for segment in segments]
            )
            if len(segments) > 1:
                hits = hits.sorted(self._order)
            ids = self._ids.take(hits.items)  # take: a quarter faster than [] on millions of hits
            results.extend(
                (hits.distances[a:b], ids[a:b]) for a, b in itertools.pairwise(hits.bounds())
            )
        return results

    def radius_groups(self, packed_queries: np.ndarray, r: int) -> RadiusGroups:
        """``radius_search``'s answer as hit groups (hashing/radius_groups.py), not as items.

        Per query, one hit per distinct code within ``r``: its distance and a zero-copy view of
        the ids holding that code (live ids only, in id order), hits by distance. ``expand(i)``
        is exactly ``radius_search(packed_queries, r)[i]``. It skips what dominates a radius
        search on learned codes (gathering and sorting thousands of string ids per query), so a
        caller pays only for the groups it reads. The first call after an ``add`` or ``remove``
        gathers the ids in group order (a copy of the ids, kept until the index changes again).
        """
        queries = self._check_codes(packed_queries, "packed_queries")
        r = _check_int(r, "r", minimum=0)
        bounds = np.zeros(len(queries) + 1, np.int64)
        if not len(self):
            nothing = np.empty(0, np.int64)
            return RadiusGroups(self._ids[:0], nothing, nothing, nothing.astype(np.int32), bounds)
        segments = self._prepared()
        ids = self._grouped_ids(segments)
        shifts = np.cumsum([0] + [segment.groups.live for segment in segments])
        starts, stops, distances = [], [], []
        for first in range(0, len(queries), _QUERY_CHUNK):
            chunk = queries[first : first + _QUERY_CHUNK]
            hits = [segment.within_groups(chunk, r) for segment in segments]
            offsets = [(s.groups.offsets, shift) for s, shift in zip(segments, shifts)]
            chunk_starts = np.concatenate([o[h.items] + at for (o, at), h in zip(offsets, hits)])
            chunk_stops = np.concatenate([o[h.items + 1] + at for (o, at), h in zip(offsets, hits)])
            merged = _Hits.concatenate(hits)
            by_query = slice(None)
            if len(segments) > 1:  # each segment's hits are by (query, distance): merge them so
                by_query = np.argsort(merged.query_distance(), kind="stable")
            starts.append(chunk_starts[by_query])
            stops.append(chunk_stops[by_query])
            distances.append(merged.distances[by_query])
            bounds[first + 1 : first + len(chunk) + 1] = bounds[first] + np.cumsum(
                np.bincount(merged.query, minlength=len(chunk))
            )
        return RadiusGroups(
            ids, np.concatenate(starts), np.concatenate(stops), np.concatenate(distances), bounds
        )

    def save(self, path: str | Path) -> None:
        """Write the index to directory ``path`` (format: hashing/index_store.py); live items only."""
        by_id = self._order.by_rank[
            self._alive[self._order.by_rank]
        ]  # id order: load needs no sort
        codes = self._codes[by_id]
        groups = _Groups.distinct(codes, np.arange(len(codes)), np.arange(len(codes)))
        index_store.save(
            path,
            bits=self._bits,
            model_version=self.model_version,
            arrays={
                "codes": codes,
                "ids": self._ids[by_id],
                "members": groups.members,
                "offsets": groups.offsets,
            },
        )

    @classmethod
    def load(
        cls, path: str | Path, backend: str = "auto", strategy: str = "auto", verify: bool = True
    ) -> HammingIndex:
        """Read an index written by ``save`` (arrays memory-mapped); ``verify`` checks checksums."""
        stored = index_store.load(path, verify=verify)
        index = cls(stored.bits, backend, strategy, stored.model_version)
        codes, ids, count = stored.arrays["codes"], stored.arrays["ids"], stored.count
        if codes.dtype != np.uint8 or codes.shape != (count, index._nbytes):
            raise ValueError(
                f"{path}: codes are {codes.dtype} {codes.shape}, header says"
                f" uint8 ({count}, {index._nbytes})"
            )
        if ids.dtype.kind != "U" or ids.shape != (count,):
            raise ValueError(f"{path}: ids are {ids.dtype} {ids.shape}, header says ({count},) str")
        if count > 1 and not np.all(ids[1:] > ids[:-1]):
            raise ValueError(f"{path}: stored ids are not sorted and unique")
        index._codes, index._ids = codes, ids
        index._order = _IdOrder.of(np.arange(count))
        index._alive = np.ones(count, dtype=bool)
        if "members" in stored.arrays:
            index._stored_groups = (stored.arrays["members"], stored.arrays["offsets"])
        return index

    def _grouped_ids(self, segments: list[_Segment]) -> np.ndarray:
        """The live ids, segment after segment, grouped by code (group order, id order inside)."""
        parts = [segment.groups.member_ids(self._ids) for segment in segments]
        if len(parts) == 1:
            return parts[0]
        joined = self._joined_ids
        if (
            joined is None
            or len(joined[0]) != len(parts)
            or any(a is not b for a, b in zip(joined[0], parts))
        ):
            self._joined_ids = joined = (parts, np.concatenate(parts))
            joined[1].flags.writeable = False
        return joined[1]

    def _prepared(self) -> list[_Segment]:
        dead = len(self._alive) - len(self)
        if dead > _COMPACT_FRACTION * max(len(self._alive), 1):
            self.compact()
        if not self._segments:
            self._built = len(self._codes)
            self._segments = [self._segment(np.arange(self._built), self._stored_groups)]
        if len(self._segments) == 1 and self._built < len(self._codes):
            self._segments.append(self._segment(np.arange(self._built, len(self._codes))))
        return self._segments

    def _segment(
        self, items: np.ndarray, stored: tuple[np.ndarray, np.ndarray] | None = None
    ) -> _Segment:
        """A segment over items (indices into the arrays); ``stored`` groups come from ``load``."""
        if self._strategy == "flat":
            groups = _Groups.singletons(self._codes, items, self._order.rank)
        elif stored is not None:
            groups = _Groups.from_stored(self._codes, *stored)
        else:
            groups = _Groups.distinct(self._codes, items, self._order.rank)
            if self._strategy == "auto" and len(groups.codes) > _FLAT_RATIO * len(items):
                groups = _Groups.singletons(self._codes, items, self._order.rank)
        groups = groups.without(self._alive)
        return _Segment(groups, self._bits, self._backend, self._strategy)

    def _merged_top_k(
        self, per_segment: list[tuple[np.ndarray, np.ndarray]], k: int
    ) -> tuple[np.ndarray, np.ndarray]:
        """The best k of each row of the segments' (items, distances) matrices, by (distance, rank)."""
        if len(per_segment) == 1:
            return per_segment[0]
        items = np.concatenate([part[0] for part in per_segment], axis=1)
        distances = np.concatenate([part[1] for part in per_segment], axis=1)
        order = np.lexsort((self._order.rank[items], distances), axis=-1)[:, :k]
        return np.take_along_axis(items, order, 1), np.take_along_axis(distances, order, 1)

    def _check_codes(self, packed: np.ndarray, name: str) -> np.ndarray:
        packed = np.asarray(packed)
        if packed.dtype != np.uint8:
            raise TypeError(f"{name} must be uint8 packed codes, got dtype {packed.dtype}")
        if packed.ndim != 2 or packed.shape[1] != self._nbytes:
            raise ValueError(
                f"{name} must have shape (n, {self._nbytes}) for {self._bits}-bit codes,"
                f" got {packed.shape}"
            )
        return np.ascontiguousarray(packed)


@dataclass(frozen=True)
class _Groups:
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

    def member_ranks(self, order: _IdOrder) -> np.ndarray:
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
    def distinct(cls, codes: np.ndarray, items: np.ndarray, rank: np.ndarray) -> _Groups:
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
    def from_stored(cls, codes: np.ndarray, members: np.ndarray, offsets: np.ndarray) -> _Groups:
        """Groups saved by ``HammingIndex.save`` (no sort needed)."""
        return cls(np.ascontiguousarray(codes[members[offsets[:-1]]]), members, offsets, True)

    @classmethod
    def singletons(cls, codes: np.ndarray, items: np.ndarray, rank: np.ndarray) -> _Groups:
        """One group per item, in rank order (so a scan's label order is the tie-break order)."""
        items = items[np.argsort(rank[items])]
        return cls(codes[items], items, np.arange(len(items) + 1), False)

    def without(self, alive: np.ndarray) -> _Groups:
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

    def top_k(self, found: Candidates, k: int, order: _IdOrder) -> tuple[np.ndarray, np.ndarray]:
        """Best k items per query by (distance, rank) -> (items, distances), each (q x k).

        ``found`` holds per query every group within the distance of its k-th item (and maybe
        more), and those groups hold at least k items.
        """
        hits = _Hits.of(found).by_distance()
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

    def expand(self, hits: _Hits, order: _IdOrder, take: np.ndarray | None = None) -> _Hits:
        """The items of groups hit by queries (the first ``take`` of each), by (query, distance, rank)."""
        take = self.counts[hits.items] if take is None else take
        first = np.repeat(self.offsets[hits.items] - (np.cumsum(take) - take), take)
        # ranks read from contiguous runs of member_ranks, not gathered item by item
        ranks = self.member_ranks(order)[first + np.arange(take.sum())]
        query, distances = np.repeat(hits.query, take), np.repeat(hits.distances, take)
        return _Hits.sorted_ranks(ranks, distances, query, hits.queries, order)


@dataclass(frozen=True)
class _IdOrder:
    """Where each item stands in sorted id order (``rank``) and its inverse (``by_rank``)."""

    rank: np.ndarray  # (n,) rank[i]: position of ids[i] in sorted id order
    by_rank: np.ndarray  # (n,) by_rank[j]: the item of rank j
    identity: bool  # items are already in id order (a loaded index, ids added sorted): rank == item

    @classmethod
    def of(cls, by_rank: np.ndarray) -> _IdOrder:
        """From the items in sorted id order (an argsort of the ids)."""
        rank = np.empty(len(by_rank), dtype=np.int64)
        positions = np.arange(len(by_rank))
        rank[by_rank] = positions
        return cls(rank, by_rank, bool(np.array_equal(by_rank, positions)))

    def items_of(self, ranks: np.ndarray) -> np.ndarray:
        """The items of these ranks (no gather when items are in id order)."""
        return ranks if self.identity else self.by_rank.take(ranks)


@dataclass(frozen=True)
class _Hits:
    """Hits of a batch of queries as flat arrays: ``items`` (groups or items) at ``distances``."""

    items: np.ndarray  # (h,) int64 group or item indices
    distances: np.ndarray  # (h,) int32
    query: np.ndarray  # (h,) which query of the batch each hit belongs to
    queries: int  # queries in the batch

    @classmethod
    def of(cls, found: Candidates) -> _Hits:
        """Flatten per-query (indices, distances) pairs."""
        lengths = [len(indices) for indices, _ in found]
        return cls(
            np.concatenate([indices for indices, _ in found]).astype(np.int64, copy=False),
            np.concatenate([d for _, d in found]).astype(np.int32, copy=False),
            np.repeat(np.arange(len(found)), lengths),
            len(found),
        )

    @classmethod
    def concatenate(cls, parts: list[_Hits]) -> _Hits:
        """Hits of several segments for the same batch of queries."""
        if len(parts) == 1:
            return parts[0]
        fields = ("items", "distances", "query")
        return cls(
            *(np.concatenate([getattr(p, f) for p in parts]) for f in fields), parts[0].queries
        )

    def select(self, mask: np.ndarray) -> _Hits:
        """The hits where ``mask`` is True, in the same order."""
        return _Hits(self.items[mask], self.distances[mask], self.query[mask], self.queries)

    def by_distance(self) -> _Hits:
        """Ordered by (query, distance)."""
        return self.select(np.argsort(self.query_distance(), kind="stable"))

    def sorted(self, order: _IdOrder) -> _Hits:
        """Items ordered by (query, distance, rank)."""
        ranks = order.rank[self.items]
        return _Hits.sorted_ranks(ranks, self.distances, self.query, self.queries, order)

    @classmethod
    def sorted_ranks(
        cls,
        ranks: np.ndarray,
        distances: np.ndarray,
        query: np.ndarray,
        queries: int,
        order: _IdOrder,
    ) -> _Hits:
        """Items given by rank, ordered by (query, distance, rank)."""
        rank_bits = max(len(order.rank) - 1, 1).bit_length()
        distance_bits = int(distances.max() if len(distances) else 0).bit_length()
        grouped = not len(query) or bool(np.all(query[1:] >= query[:-1]))
        if grouped and len(ranks) >= _SORT_PER_QUERY * queries:
            # big answers (radius searches on learned codes): sorting each query's block alone
            # keeps it in cache, and without the query in it the key fits 32 bits (3x faster)
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
        # lexsort and the gathers an argsort needs several times over
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


class _Segment:
    """Groups of a part of the index, a full scan of their codes, (lazily) MIH and neighbours."""

    def __init__(self, groups: _Groups, bits: int, backend: str, strategy: str) -> None:
        self.groups = groups
        self._bits, self._backend, self._strategy = bits, backend, strategy
        self._scan = SCANS[backend](groups.codes, bits)
        self._mih: MultiIndex | None = None
        self._neighbours: NeighbourTable | None = None
        self._plans: dict[tuple[str, int], str] = {}  # what plan() chose
        self._searched_plans: dict[tuple[str, int], str] = {}  # what searched_plan() chose

    def nbytes(self) -> int:
        """Bytes of the groups (and ids, if gathered), the scan's codes, MIH and neighbours."""
        groups = self.groups.codes.nbytes + self.groups.members.nbytes + self.groups.offsets.nbytes
        grouped_ids = self.groups.member_ids_nbytes()
        tables = [self._mih, self._neighbours]
        built = sum(table.nbytes() for table in tables if table is not None)
        return groups + grouped_ids + self.groups.counts.nbytes + self.groups.codes.nbytes + built

    def without(self, alive: np.ndarray) -> _Segment:
        """This segment with dead items dropped; scan and tables are shared, plans re-measured."""
        segment = _Segment.__new__(_Segment)
        segment.__dict__.update(
            self.__dict__, groups=self.groups.without(alive), _plans={}, _searched_plans={}
        )
        return segment

    def plan(self, kind: str, value: int) -> str:
        """ "flat", "buckets", "mih" or "neighbours" for a ("top", k) or ("radius", r) query.

        "neighbours" (radius only): queries whose code is a code of the segment read its
        neighbour list; the others are searched as ``searched_plan`` says.
        """
        if self._strategy != "auto":
            return self._strategy
        if (kind, value) not in self._plans:
            fits = kind == "radius" and self._neighbours_fit(value)
            self._plans[kind, value] = "neighbours" if fits else self.searched_plan(kind, value)
        return self._plans[kind, value]

    def searched_plan(self, kind: str, value: int) -> str:
        """ "flat", "buckets" or "mih": the cheaper of a scan and multi-index hashing."""
        if self._strategy != "auto":
            return self._strategy
        if (kind, value) not in self._searched_plans:
            cheaper = self._mih_cost(kind, value) < self._scan_cost(kind, value)
            scan = "buckets" if self.groups.distinct else "flat"
            self._searched_plans[kind, value] = "mih" if cheaper else scan
        return self._searched_plans[kind, value]

    def _neighbours_fit(self, r: int) -> bool:
        """Are neighbour lists of radius r worth building: few codes, few pairs within r?"""
        codes, live = len(self.groups.codes), self.groups.live
        if not (self.groups.distinct and live and 1 <= r <= _NEIGHBOUR_RADIUS):
            return False
        if codes > _NEIGHBOUR_CODES:  # the build (one MIH search per code) would take too long
            return False
        if self._neighbours is not None and self._neighbours.radius >= r:
            return True
        found, _ = self._multi_index().within(self._sample(), r)
        pairs = np.mean([len(neighbours) for neighbours, _ in found]) * codes
        return bool(pairs <= _NEIGHBOURS_PER_ITEM * live)

    def _scan_cost(self, kind: str, value: int) -> float:
        """Estimated cost (ns per query) of a full scan of the group codes."""
        cost = SCAN_COST * len(self.groups.codes)
        if kind == "top":  # faiss's heap hands back k codes, or a margin past k to cut ties
            fetch = value if self._ranks_directly else 2 * value + 16
            cost += FETCH_COST * min(len(self.groups.codes), fetch)
        return cost

    @property
    def _ranks_directly(self) -> bool:
        """One live item per code, codes in rank order: faiss's own top-k is the answer."""
        return (
            isinstance(self._scan, FaissScan) and not self.groups.distinct and self.groups.no_empty
        )

    def top_k(self, queries: np.ndarray, k: int, order: _IdOrder) -> tuple[np.ndarray, np.ndarray]:
        """Per query its best k items of this segment (fewer if it holds fewer): 2 (q x k) arrays."""
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
        self, queries: np.ndarray, k: int, order: _IdOrder
    ) -> tuple[np.ndarray, np.ndarray]:
        counts = self.groups.counts
        plan = self.plan("top", k)
        if plan == "flat" and self._ranks_directly:
            labels, distances = self._scan.ranked(queries, k)
            return self.groups.members[labels], distances
        scan = partial(self._scan.nearest, counts=counts, k=k)
        if plan == "mih":
            # a forced "mih" probes on however costly it gets: it is what the strategy measures
            ceiling = np.inf if self._strategy == "mih" else self._scan_cost("top", k)
            found = self._multi_index().nearest(queries, counts, k, scan, ceiling)
        else:
            found = scan(queries)
        return self.groups.top_k(found, k, order)

    def within(self, queries: np.ndarray, r: int, order: _IdOrder) -> _Hits:
        """The items of this segment within distance r of each query, by (query, distance, rank)."""
        # expand sorts the items: the groups need no order beyond being grouped by query
        return self.groups.expand(self.within_groups(queries, r, ordered=False), order)

    def within_groups(self, queries: np.ndarray, r: int, ordered: bool = True) -> _Hits:
        """Groups with live items within distance r of each query, by (query, distance, group).

        ``ordered=False``: by query only (skips a sort of the groups found by a search).
        """
        plan = self.plan("radius", r)
        if self.groups.distinct and (r == 0 or plan == "neighbours"):
            # a query whose code is one of ours: the groups within r are known (r = 0: that one)
            exact = self.groups.lookup(queries)
            stored = np.flatnonzero(exact >= 0)
            if r == 0:
                hits = _Hits(exact[stored], np.zeros(len(stored), np.int32), stored, len(queries))
            else:
                rows, groups, distances = self._neighbour_table(r).within(exact[stored], r)
                hits = _Hits(
                    groups.astype(np.int64), distances.astype(np.int32), stored[rows], len(queries)
                )
                rest = np.flatnonzero(exact < 0)
                if len(rest):
                    plan = self.searched_plan("radius", r)
                    searched = self._searched_groups(queries[rest], r, plan, ordered)
                    searched = replace(searched, query=rest[searched.query], queries=len(queries))
                    both = _Hits.concatenate([hits, searched])
                    hits = both.select(np.argsort(both.query, kind="stable"))
        else:
            hits = self._searched_groups(queries, r, plan, ordered)
        if not self.groups.no_empty:  # groups whose items were all removed
            hits = hits.select(self.groups.counts[hits.items] > 0)
        return hits

    def _searched_groups(self, queries: np.ndarray, r: int, plan: str, ordered: bool) -> _Hits:
        """Groups within r of each query found by MIH or a scan, by query (and distance, group)."""
        if plan == "mih":
            found, _ = self._multi_index().within(queries, r)
        else:
            found = self._scan.within(queries, r)
        hits = _Hits.of(found)
        return (
            hits.select(np.lexsort((hits.items, hits.distances, hits.query))) if ordered else hits
        )

    def _neighbour_table(self, r: int) -> NeighbourTable:
        if self._neighbours is None or self._neighbours.radius < r:
            self._neighbours = NeighbourTable(self.groups.codes, self._bits, r)
        return self._neighbours

    def _sample(self) -> np.ndarray:
        """Codes of ``_PLAN_SAMPLE`` random live items (queries resemble items; popular codes
        hold many), to measure what a query would cost."""
        counts = self.groups.counts
        picks = np.random.default_rng(0).integers(0, counts.sum(), _PLAN_SAMPLE)
        return self.groups.codes[np.searchsorted(np.cumsum(counts), picks, side="right")]

    def _multi_index(self) -> MultiIndex:
        if self._mih is None:
            self._mih = MultiIndex(self.groups.codes, self._bits)
        return self._mih

    def _mih_cost(self, kind: str, value: int) -> float:
        """Estimated cost (ns per query) of MIH, from probing with a sample of indexed codes."""
        counts = self.groups.counts
        scan_cost = self._scan_cost(kind, value)
        if counts.sum() == 0:
            return 0.0
        mih = self._multi_index()
        sample = self._sample()
        if kind == "radius":
            probes = mih.probes_per_query(value // mih.substrings)
            if mih.probe_cost * probes > scan_cost:
                return np.inf  # the probes alone cost more than a scan
            _, verified = mih.within(sample, value)
            return mih.probe_cost * probes + mih.candidate_cost * verified / len(sample)
        # a sampled code finds its own item at distance 0, which a new query would not: ask one more
        k = min(value + 1, int(counts.sum()))
        spent, active, level = 0.0, sample, 0
        while len(active):
            probes = mih.probes_per_query(level)
            # as in MultiIndex.nearest: once probing costs more than a scan, the rest are scanned
            if mih.probe_cost * probes > scan_cost:
                spent += scan_cost * len(active)
                break
            found, verified = mih.within(active, mih.certified_radius(level))
            spent += mih.probe_cost * probes * len(active) + mih.candidate_cost * verified
            active = active[[counts[groups].sum() < k for groups, _ in found]]
            level += 1
        return spent / len(sample)


def _code_keys(words: np.ndarray) -> np.ndarray:
    """One uint64 per row of words (n x w): the word itself, or a multiplicative hash of several."""
    keys = words[:, 0].copy()
    for column in range(1, words.shape[1]):
        keys = keys * np.uint64(0x9E3779B97F4A7C15) + words[:, column]
    return keys


def _resolve_backend(backend: str) -> str:
    if backend not in ("auto", *SCANS):
        raise ValueError(f"backend must be one of 'auto', 'faiss', 'numpy'; got {backend!r}")
    if backend == "numpy":
        return backend
    try:
        import faiss  # noqa: F401
    except ImportError:
        if backend == "faiss":
            raise ImportError("backend='faiss' needs the faiss-cpu package") from None
        return "numpy"
    return "faiss"


def _as_ids(ids: Sequence[str | int] | np.ndarray, n: int) -> np.ndarray:
    """Ids as a 1-D numpy str array of length n; integers become their decimal strings."""
    array = np.asarray(ids)
    if array.ndim != 1 or len(array) != n:
        raise ValueError(f"need one id per code: {n} codes, ids of shape {array.shape}")
    if n == 0:
        return np.empty(0, dtype="<U1")
    if array.dtype.kind == "O":
        bad = [i for i in array if isinstance(i, bool) or not isinstance(i, (str, int, np.integer))]
        if bad:
            raise TypeError(f"ids must be strings or integers, got {type(bad[0]).__name__}")
    elif array.dtype.kind not in "Uiu":  # bool is kind "b", bytes "S": both refused
        raise TypeError(f"ids must be strings or integers, got dtype {array.dtype}")
    return array.astype(str)


def _check_int(value: int, name: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an integer, got {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return int(value)
