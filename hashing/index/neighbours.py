"""Neighbour lists among the distinct codes of an index: radius search as a table read.

Learned codes collapse: most queries' codes are themselves codes of the index. For such a query,
every code within radius ``r`` is known in advance: the neighbour list of its own code,
precomputed once for all distinct codes. A radius query then costs a hash lookup of its code and
a slice of the table, instead of multi-index probes that verify many candidates (learned codes
crowd the same substring buckets).

The table holds, per distinct code, every distinct code within ``radius`` (itself included),
ordered by (distance, code index), as CSR arrays; ``starts[c, d]`` is where code ``c``'s
neighbours at distance ``d`` begin, so one table of radius R answers every radius <= R. It is
built by multi-index hashing of all the codes against themselves, in ``max(2, round(bits / 40))``
substrings (2 for 32 and 64 bits, 3 for 128): fewer, longer substrings than the index's own MIH
uses, since learned codes crowd short substrings and make them verify many times more
candidates. Its size is the number of (code, neighbour) pairs within the radius and its build
time grows with the number of codes, so the planner (hashing/index/planner.py) builds one only
for few codes and few pairs.
"""

from __future__ import annotations

import numpy as np

from hashing.index.mih import MultiIndex, ranges

__all__ = ["NeighbourTable"]

_SUBSTRING_BITS = 40  # about this many bits per substring for the self-join (module docstring)


class NeighbourTable:
    """Per distinct code (m x bytes uint8) of ``bits`` bits, every code within ``radius``."""

    def __init__(self, codes: np.ndarray, bits: int, radius: int) -> None:
        self.radius = radius
        substrings = max(2, round(bits / _SUBSTRING_BITS))
        found, _ = MultiIndex(codes, bits, substrings).within(codes, radius)
        lengths = np.array([len(neighbours) for neighbours, _ in found], dtype=np.int64)
        owner = np.repeat(np.arange(len(codes)), lengths)
        neighbours = np.concatenate([n for n, _ in found]) if found else np.empty(0, np.int64)
        distances = np.concatenate([d for _, d in found]) if found else np.empty(0, np.int32)
        # by (code, distance, neighbour): each code's found list is already by neighbour
        order = np.lexsort((distances, owner))
        self.neighbours = neighbours[order].astype(np.int32)
        self.distances = distances[order].astype(np.uint8)
        levels = owner[order] * (radius + 2) + self.distances
        self.starts = np.searchsorted(levels, np.arange(len(codes) * (radius + 2))).reshape(
            len(codes), radius + 2
        )

    def nbytes(self) -> int:
        """Bytes of the table."""
        return self.neighbours.nbytes + self.distances.nbytes + self.starts.nbytes

    def within(self, codes: np.ndarray, r: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Neighbours within ``r`` (<= radius) of each given code -> (row, neighbour, distance).

        ``row`` says which of ``codes`` a neighbour belongs to; the output is ordered by (row,
        distance, neighbour).
        """
        first = self.starts[codes, 0]
        sizes = self.starts[codes, r + 1] - first
        positions = ranges(first, sizes)
        rows = np.repeat(np.arange(len(codes)), sizes)
        return rows, self.neighbours[positions], self.distances[positions]
