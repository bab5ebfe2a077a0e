"""HammingIndex: exact Hamming search over packed binary codes, top-k and radius, by (distance, id).

Contract. Answers are exact and deterministic: items are ordered by Hamming distance, then by id
in string order, so search shards merge exactly and two runs agree item for item, whatever
strategy or backend answers a query. Ids are unique among live items (integers are stored as
their decimal strings). ``search`` returns ``min(k, len(self))`` columns; ``radius_search`` every
item within the radius; ``radius_groups`` the same answer as one group per distinct code
(hashing/index/groups.py).

Strategies (``strategy=``), identical in their answers: ``"flat"`` (every item's code scanned),
``"buckets"`` (distinct codes scanned), ``"mih"`` (multi-index hashing over the distinct codes,
hashing/index/mih.py) and ``"auto"``, which picks per query kind from a cost model
(hashing/index/planner.py); ``plan`` says what a query would use. Backends: ``"faiss"`` (C++
popcount scans, threaded over queries with OpenMP: give each process as many threads as it has
CPUs, OMP_NUM_THREADS, since oversubscribed threads slow it down) and ``"numpy"``; ``"auto"``
picks faiss when it imports. Speeds: benchmarks/results/search.md.

Mutations. ``remove`` marks items dead (tombstones) and drops them from the groups' posting
lists, without rebuilding scans or tables. ``add`` after the first search puts new items in a
second, small segment (hashing/index/segment.py) that is rebuilt alone; queries search both and
merge. ``compact`` drops dead items and rebuilds one segment; the next query runs it once dead
items outgrow ``_COMPACT_FRACTION`` of the index, and an ``add`` that would make the second
segment outgrow that share rebuilds one segment over everything instead.

Memory: a query holds the groups within its k-th distance (or radius) at once, and queries run in
chunks of ``_QUERY_CHUNK``. ``radius_groups`` keeps a copy of the ids in group order (the first
call after the index changes gathers it). Saved format: hashing/index/store.py.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from hashing.codes import code_bytes
from hashing.index import store
from hashing.index.groups import CodeGroups, RadiusGroups
from hashing.index.hits import Hits, IdOrder
from hashing.index.scan import SCANS
from hashing.index.segment import Segment

__all__ = ["STRATEGIES", "HammingIndex"]

STRATEGIES = ("auto", "flat", "buckets", "mih")
_QUERY_CHUNK = 1024  # queries per backend call: bounds the result buffers, keeps calls batched
_COMPACT_FRACTION = 0.25  # dead items or new-segment items, as a share of all, that trigger compact


class HammingIndex:
    """Exact Hamming index over packed uint8 codes (n x bits/8) with unique string ids."""

    def __init__(
        self,
        bits: int,
        backend: str = "auto",
        strategy: str = "auto",
        model_version: str | None = None,
    ) -> None:
        """Empty index for ``bits``-long codes; backend "auto", "faiss" or "numpy"; STRATEGIES."""
        self._bits = int(bits)
        self._nbytes = code_bytes(bits)
        self._backend = _resolve_backend(backend)
        if strategy not in STRATEGIES:
            raise ValueError(f"strategy must be one of {STRATEGIES}; got {strategy!r}")
        self._strategy = strategy
        self.model_version = model_version  # which model made the codes; kept by save/load
        self._codes = np.empty((0, self._nbytes), dtype=np.uint8)
        self._ids = np.empty(0, dtype="<U1")
        self._order = IdOrder.of(np.empty(0, dtype=np.int64))  # ranks: positions in id order
        self._alive = np.empty(0, dtype=bool)  # False: removed (a tombstone until compact)
        self._segments: list[Segment] = []  # built on the first query after a rebuild
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
        self._order = IdOrder.of(order)
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
        self._order = IdOrder.of(np.argsort(self._ids, kind="stable"))
        self._alive = np.ones(len(keep), dtype=bool)
        self._segments, self._built, self._stored_groups = [], 0, None

    def nbytes(self) -> int:
        """Bytes in memory: codes, ids, ranks, groups, scans and the tables built so far."""
        arrays = (self._codes, self._ids, self._order.rank, self._order.by_rank, self._alive)
        return sum(a.nbytes for a in arrays) + sum(s.nbytes() for s in self._segments)

    def plan(self, k: int | None = None, radius: int | None = None) -> list[str]:
        """Strategy per segment ("flat", "buckets", "mih"; radius also "neighbours") for a query."""
        if (k is None) == (radius is None):
            raise ValueError("give exactly one of k and radius")
        kind = ("top", _check_int(k, "k", 1)) if k is not None else ("radius", radius)
        return [segment.planner.plan(*kind) for segment in self._prepared()]

    def search(self, packed_queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Exact top-k per query (q x bits/8) -> (distances int32, ids), each (q x min(k, len)).

        Rows are ordered by (distance, id); when k exceeds len(self), len(self) columns come back.
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
            hits = Hits.concatenate([segment.within(chunk, r, self._order) for segment in segments])
            if len(segments) > 1:
                hits = hits.sorted(self._order)
            ids = self._ids.take(hits.items)  # take: faster than [] on millions of hits
            results.extend(
                (hits.distances[a:b], ids[a:b]) for a, b in itertools.pairwise(hits.bounds())
            )
        return results

    def radius_groups(self, packed_queries: np.ndarray, r: int) -> RadiusGroups:
        """``radius_search``'s answer as hit groups (hashing/index/groups.py), not as items.

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
            merged = Hits.concatenate(hits)
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
        """Write the live items to directory ``path`` (format: hashing/index/store.py)."""
        # live items in id order, so that load needs no sort
        by_id = self._order.by_rank[self._alive[self._order.by_rank]]
        codes = self._codes[by_id]
        groups = CodeGroups.distinct(codes, np.arange(len(codes)), np.arange(len(codes)))
        store.save(
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
        stored = store.load(path, verify=verify)
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
        index._order = IdOrder.of(np.arange(count))
        index._alive = np.ones(count, dtype=bool)
        if "members" in stored.arrays:
            index._stored_groups = (stored.arrays["members"], stored.arrays["offsets"])
        return index

    def _grouped_ids(self, segments: list[Segment]) -> np.ndarray:
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

    def _prepared(self) -> list[Segment]:
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
    ) -> Segment:
        """A segment over items (indices into the arrays); ``stored`` groups come from ``load``."""
        return Segment.build(
            self._codes,
            items,
            self._order,
            self._alive,
            self._bits,
            self._backend,
            self._strategy,
            stored,
        )

    def _merged_top_k(
        self, per_segment: list[tuple[np.ndarray, np.ndarray]], k: int
    ) -> tuple[np.ndarray, np.ndarray]:
        """Best k of each row of the segments' (items, distances) matrices, by (distance, rank)."""
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
