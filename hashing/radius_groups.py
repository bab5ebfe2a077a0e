"""Radius answers as hit groups: one hit per distinct code within the radius, not one per item.

On learned codes a radius-2 answer holds ~20,000 items per query but only ~80 distinct codes.
Materialising the items (gathering their string ids, sorting them by (distance, id)) costs far
more than finding the codes. ``RadiusGroups`` hands back the codes instead: per query its hit
groups in order of distance, each a distance and a zero-copy view of the ids holding that code
(ids are stored grouped by code, in id order inside a group). A caller that pages through an
answer (Serve: the first page of a large answer) reads only the groups it shows; ``expand``
gives a query's full answer exactly as ``HammingIndex.radius_search`` orders it.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from hashing.mih import ranges

__all__ = ["RadiusGroups"]


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
