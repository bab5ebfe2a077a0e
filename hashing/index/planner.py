"""Strategy choice for one segment of a HammingIndex: the cost model behind ``strategy="auto"``.

Every strategy returns the same exact answer; the planner only decides which one is cheapest.
Its choices, per query kind (``("top", k)`` or ``("radius", r)``), are cached for the life of
a segment (a segment's codes never change; removing items makes a new segment and a new planner):

- grouping (when a segment is built): one group per distinct code (buckets) unless more than
  ``FLAT_RATIO`` of the items have distinct codes, where grouping would save nothing (flat);
- searched queries: multi-index hashing ("mih") when its estimated cost is below a full scan's
  ("buckets", or "flat" for one group per item); a top-k search by MIH also hands a query to
  the scan when its next probe level alone would cost more than the scan (``probe_budget``);
- radius 1 to ``NEIGHBOUR_RADIUS`` over at most ``NEIGHBOUR_CODES`` distinct codes, when the
  pairs of codes within the radius number at most ``NEIGHBOURS_PER_ITEM`` per item: neighbour
  lists ("neighbours"); a query whose code is not a stored code is searched as above.

Costs are estimates in ns per query: counts measured on the segment (codes scanned; probes made
and candidates verified when ``PLAN_SAMPLE`` seeded random items' codes are searched as queries)
times per-unit costs fitted to timings of benchmarks/search.py (benchmarks/results/search.md). A
probe and a candidate cost more once the codes outgrow the cache. The sample is seeded, so a
segment's plans are deterministic.
"""

from __future__ import annotations

from functools import cached_property
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from hashing.index.segment import Segment

__all__ = ["FLAT_RATIO", "Planner", "grouping_pays"]

# per-unit costs in ns on one core: one code of a faiss scan; one code a faiss top-k keeps in its
# heap and hands back; then for MIH a probe (a searchsorted into a substring table) and a verified
# candidate (a gather of its code, a popcount, the dedup), each (codes in cache, codes spilled)
SCAN_COST = 0.5
FETCH_COST = 400.0
PROBE_COST = (40.0, 130.0)
CANDIDATE_COST = (8.0, 30.0)
_CACHE_BYTES = 4 << 20  # codes (as words) from which candidates and probes cost the spilled price

FLAT_RATIO = 0.9  # distinct codes per item above which grouping by code saves nothing
PLAN_SAMPLE = 64  # indexed codes searched as queries to measure the cost of multi-index hashing
NEIGHBOUR_RADIUS = 3  # largest radius answered from neighbour lists (their size grows fast)
NEIGHBOUR_CODES = 1 << 18  # most distinct codes to build lists for (one MIH search per code)
NEIGHBOURS_PER_ITEM = 16  # most (code, neighbour) pairs per item the lists may hold


def grouping_pays(distinct_codes: int, items: int) -> bool:
    """Whether grouping ``items`` by code (``distinct_codes`` groups) saves a scan anything."""
    return distinct_codes <= FLAT_RATIO * items


class Planner:
    """The strategy one segment uses per query kind, and the costs behind that choice."""

    def __init__(self, segment: Segment) -> None:
        self._segment = segment
        self._plans: dict[tuple[str, int], str] = {}  # what plan() chose
        self._searched_plans: dict[tuple[str, int], str] = {}  # what searched_plan() chose

    def plan(self, kind: str, value: int) -> str:
        """ "flat", "buckets", "mih" or "neighbours" for a ("top", k) or ("radius", r) query.

        "neighbours" (radius only): queries whose code is a code of the segment read its
        neighbour list; the others are searched as ``searched_plan`` says.
        """
        if self._segment.strategy != "auto":
            return self._segment.strategy
        if (kind, value) not in self._plans:
            fits = kind == "radius" and self._neighbours_fit(value)
            self._plans[kind, value] = "neighbours" if fits else self.searched_plan(kind, value)
        return self._plans[kind, value]

    def searched_plan(self, kind: str, value: int) -> str:
        """ "flat", "buckets" or "mih": the cheaper of a scan and multi-index hashing."""
        if self._segment.strategy != "auto":
            return self._segment.strategy
        if (kind, value) not in self._searched_plans:
            cheaper = self._mih_cost(kind, value) < self.scan_cost(kind, value)
            scan = "buckets" if self._segment.groups.distinct else "flat"
            self._searched_plans[kind, value] = "mih" if cheaper else scan
        return self._searched_plans[kind, value]

    def scan_cost(self, kind: str, value: int) -> float:
        """Estimated cost (ns per query) of a full scan of the group codes."""
        codes = len(self._segment.groups.codes)
        cost = SCAN_COST * codes
        if kind == "top":  # faiss's heap hands back k codes, or a margin past k to cut ties
            fetch = value if self._segment.ranks_directly else 2 * value + 16
            cost += FETCH_COST * min(codes, fetch)
        return cost

    def probe_budget(self, k: int) -> float:
        """Probes per query past which a top-k search by MIH costs more than a scan."""
        return self.scan_cost("top", k) / self._unit_costs[0]

    @cached_property
    def _unit_costs(self) -> tuple[float, float]:
        """(probe, candidate) cost in ns, between the in-cache and spilled prices by code bytes."""
        codes = self._segment.groups.codes
        word_bytes = len(codes) * 8 * -(-codes.shape[1] // 8)
        spilled = min(word_bytes / _CACHE_BYTES, 1.0)
        probe = float(np.interp(spilled, [0, 1], PROBE_COST))
        candidate = float(np.interp(spilled, [0, 1], CANDIDATE_COST))
        return probe, candidate

    def _neighbours_fit(self, r: int) -> bool:
        """Are neighbour lists of radius r worth building: few codes, few pairs within r?"""
        groups = self._segment.groups
        codes, live = len(groups.codes), groups.live
        if not (groups.distinct and live and 1 <= r <= NEIGHBOUR_RADIUS):
            return False
        if codes > NEIGHBOUR_CODES:  # the build (one MIH search per code) would take too long
            return False
        if self._segment.has_neighbours(r):
            return True
        found, _ = self._segment.multi_index().within(self._sample(), r)
        pairs = np.mean([len(neighbours) for neighbours, _ in found]) * codes
        return bool(pairs <= NEIGHBOURS_PER_ITEM * live)

    def _sample(self) -> np.ndarray:
        """Codes of ``PLAN_SAMPLE`` random live items (queries resemble items; popular codes
        hold many), to measure what a query would cost."""
        groups = self._segment.groups
        picks = np.random.default_rng(0).integers(0, groups.counts.sum(), PLAN_SAMPLE)
        return groups.codes[np.searchsorted(np.cumsum(groups.counts), picks, side="right")]

    def _mih_cost(self, kind: str, value: int) -> float:
        """Estimated cost (ns per query) of MIH, from probing with a sample of indexed codes."""
        counts = self._segment.groups.counts
        scan_cost = self.scan_cost(kind, value)
        if counts.sum() == 0:
            return 0.0
        mih = self._segment.multi_index()
        probe_cost, candidate_cost = self._unit_costs
        sample = self._sample()
        if kind == "radius":
            probes = mih.probes_per_query(value // mih.substrings)
            if probe_cost * probes > scan_cost:
                return np.inf  # the probes alone cost more than a scan
            _, verified = mih.within(sample, value)
            return probe_cost * probes + candidate_cost * verified / len(sample)
        # a sampled code finds its own item at distance 0, which a new query would not: ask one more
        k = min(value + 1, int(counts.sum()))
        spent, active, level = 0.0, sample, 0
        while len(active):
            probes = mih.probes_per_query(level)
            # as in MultiIndex.nearest: once probing costs more than a scan, the rest are scanned
            if probe_cost * probes > scan_cost:
                spent += scan_cost * len(active)
                break
            found, verified = mih.within(active, mih.certified_radius(level))
            spent += probe_cost * probes * len(active) + candidate_cost * verified
            active = active[[counts[groups].sum() < k for groups, _ in found]]
            level += 1
        return spent / len(sample)
