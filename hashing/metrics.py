"""Retrieval metrics on packed binary codes: mAP (tie-aware and id-order), P@radius, PR curve, P@N.

Conventions (docs/evaluation.md):

- Relevance: a query and a database item are relevant when they share at least one label. Labels
  are multi-hot (n x C, any dtype; nonzero = has the label) or 1-D integer class ids.
- AP@K of one query = (sum of precision@k over the relevant positions k <= K) / (number of relevant
  items in the first K). A query with no relevant item in its first K scores 0. ``topk=None`` is
  K = the whole database.
- Ties. Hamming distance takes only bits+1 values, so the ranking inside a distance is a choice:
  ``ties="aware"`` gives the exact expectation of AP@K over a uniformly random order inside every
  distance (He et al., "Hashing as Tie-Aware Learning to Rank", CVPR 2018); ``ties="id"`` breaks
  ties by database id (stable, deterministic).
- Everything runs over blocks of queries, so memory stays at about ``_PAIRS_PER_CHUNK``
  query-database pairs whatever the sizes; per query the work is counting by distance value.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cached_property

import numpy as np

from hashing.codes import to_words
from hashing.labels import multi_hot

__all__ = [
    "DEFAULT_PRECISION_AT",
    "mean_average_precision",
    "mean_average_precision_real",
    "pr_curve",
    "precision_at_n",
    "precision_within_radius",
    "retrieval_report",
]

DEFAULT_PRECISION_AT: tuple[int, ...] = (1, 100, 500, *range(1000, 10001, 1000))

# Query-database pairs per block: ~4M pairs keeps each per-pair temporary at 4-32 MB.
_PAIRS_PER_CHUNK = 1 << 22


def mean_average_precision(
    query_codes: np.ndarray,
    db_codes: np.ndarray,
    query_labels: np.ndarray,
    db_labels: np.ndarray,
    *,
    topk: int | None = None,
    ties: str = "aware",
    db_ids: Sequence | np.ndarray | None = None,
    chunk_size: int | None = None,
) -> float:
    """mAP@topk of packed codes (q x bytes) against (n x bytes), Hamming ranking.

    ``ties="aware"``: the exact expected AP@K under a uniformly random order inside each distance.
    For ``topk=None`` this is He et al.'s closed form. For a cut-off K, the distance group that
    straddles position K contributes only its first m = K - (items before it) positions; which of
    its items land there is random, so the number X of relevant items in the first K is
    hypergeometric, and the result is E[(sum of precision@k over relevant k <= K) / (relevant in
    the first K)] taken over that distribution exactly (a ratio of expectations would be biased).
    ``ties="id"``: stable order by (distance, id); ``db_ids`` (ints or strings, compared as given)
    define the id order, the database row order by default. ``chunk_size`` is queries per block
    (default: about 4M query-database pairs per block).
    """
    if ties not in ("aware", "id"):
        raise ValueError(f"ties must be 'aware' or 'id', got {ties!r}")
    retrieval = _hamming_retrieval(query_codes, db_codes, query_labels, db_labels, db_ids)
    _check_topk(topk)
    if ties == "aware":
        tables = _TieTables(retrieval.n_db)
        stat = lambda chunk: _tie_aware_ap(chunk.histograms, topk, tables)
    else:
        stat = lambda chunk: _ap_from_ranked(chunk.ranked_relevance, topk)
    return float(_per_query(retrieval, chunk_size, ap=stat)["ap"].mean())


def precision_within_radius(
    query_codes: np.ndarray,
    db_codes: np.ndarray,
    query_labels: np.ndarray,
    db_labels: np.ndarray,
    *,
    radius: int = 2,
    chunk_size: int | None = None,
) -> tuple[float, float]:
    """(mean precision, mean number returned) of the items within Hamming ``radius``;
    no return = 0."""
    retrieval = _hamming_retrieval(query_codes, db_codes, query_labels, db_labels)
    hist = _per_query(retrieval, chunk_size, hist=_stacked_histograms)["hist"]
    curves = _radius_curves(hist)
    r = _check_radius(radius, retrieval.bits)
    return float(curves["precision"][:, r].mean()), float(curves["returned"][:, r].mean())


def pr_curve(
    query_codes: np.ndarray,
    db_codes: np.ndarray,
    query_labels: np.ndarray,
    db_labels: np.ndarray,
    *,
    chunk_size: int | None = None,
) -> dict[str, list]:
    """Precision and recall of the items within Hamming radius r = 0..bits, averaged over queries.

    A query that returns nothing at radius r has precision 0 there (the P@r2 rule); a query with no
    relevant item in the database has recall 0 at every radius (the mAP rule).
    Returns ``{"radius": [0..bits], "precision": [bits+1 floats], "recall": [bits+1 floats]}``.
    """
    retrieval = _hamming_retrieval(query_codes, db_codes, query_labels, db_labels)
    hist = _per_query(retrieval, chunk_size, hist=_stacked_histograms)["hist"]
    return _pr_curve_from(_radius_curves(hist))


def precision_at_n(
    query_codes: np.ndarray,
    db_codes: np.ndarray,
    query_labels: np.ndarray,
    db_labels: np.ndarray,
    *,
    ns: Sequence[int] = DEFAULT_PRECISION_AT,
    db_ids: Sequence | np.ndarray | None = None,
    chunk_size: int | None = None,
) -> dict[int, float]:
    """Mean precision of the first N of the id-order ranking, ``{N: value}``.

    N is capped at the database size and the key is the N actually used (so a small database
    yields fewer keys than ``ns``).
    """
    retrieval = _hamming_retrieval(query_codes, db_codes, query_labels, db_labels, db_ids)
    used = _capped_ns(ns, retrieval.n_db)
    stat = lambda chunk: _precision_at(chunk.ranked_relevance, used)
    values = _per_query(retrieval, chunk_size, p=stat)["p"].mean(axis=0)
    return {int(n): float(v) for n, v in zip(used, values)}


def retrieval_report(
    query_codes: np.ndarray,
    db_codes: np.ndarray,
    query_labels: np.ndarray,
    db_labels: np.ndarray,
    *,
    db_ids: Sequence | np.ndarray | None = None,
    radius: int = 2,
    topk: int | None = None,
    precision_at: Sequence[int] = DEFAULT_PRECISION_AT,
    chunk_size: int | None = None,
) -> dict:
    """All Hamming-ranking metrics in one pass over the distances, as plain numbers and lists.

    Keys: map_tie_aware, map_id_order, topk (None = all), radius, precision_radius,
    mean_returned_radius, pr_curve, precision_at_n, n_queries, n_database, bits,
    zero_relevant_queries (queries with no relevant item in the whole database; they score 0).
    Each metric follows the function of the same name in this module.
    """
    retrieval = _hamming_retrieval(query_codes, db_codes, query_labels, db_labels, db_ids)
    _check_topk(topk)
    r = _check_radius(radius, retrieval.bits)
    used = _capped_ns(precision_at, retrieval.n_db)
    tables = _TieTables(retrieval.n_db)
    per_query = _per_query(
        retrieval,
        chunk_size,
        hist=_stacked_histograms,
        ap_tie=lambda chunk: _tie_aware_ap(chunk.histograms, topk, tables),
        ap_id=lambda chunk: _ap_from_ranked(chunk.ranked_relevance, topk),
        p_at=lambda chunk: _precision_at(chunk.ranked_relevance, used),
    )
    curves = _radius_curves(per_query["hist"])
    p_at = per_query["p_at"].mean(axis=0)
    return {
        "map_tie_aware": float(per_query["ap_tie"].mean()),
        "map_id_order": float(per_query["ap_id"].mean()),
        "topk": topk,
        "radius": r,
        "precision_radius": float(curves["precision"][:, r].mean()),
        "mean_returned_radius": float(curves["returned"][:, r].mean()),
        "pr_curve": _pr_curve_from(curves),
        "precision_at_n": {int(n): float(v) for n, v in zip(used, p_at)},
        "n_queries": retrieval.n_queries,
        "n_database": retrieval.n_db,
        "bits": retrieval.bits,
        "zero_relevant_queries": int((per_query["hist"][:, 1].sum(axis=1) == 0).sum()),
    }


def mean_average_precision_real(
    query_emb: np.ndarray,
    db_emb: np.ndarray,
    query_labels: np.ndarray,
    db_labels: np.ndarray,
    topk: int | None = None,
    *,
    chunk_size: int | None = None,
) -> float:
    """mAP@topk ranking the database (n x dim) by Euclidean distance to each query (q x dim).

    For cosine distance, L2-normalise both sets first (same ranking). Exact distance ties are
    broken by database row order; they are negligible for continuous embeddings.
    """
    query_emb = np.asarray(query_emb, dtype=np.float64)
    db_emb = np.asarray(db_emb, dtype=np.float64)
    if query_emb.ndim != 2 or db_emb.ndim != 2 or query_emb.shape[1] != db_emb.shape[1]:
        raise ValueError(
            f"need (q x dim) and (n x dim) embeddings, got {query_emb.shape}, {db_emb.shape}"
        )
    _check_topk(topk)
    q_labels, d_labels = _label_pair(query_labels, db_labels, len(query_emb), len(db_emb))
    db_sq = (db_emb**2).sum(axis=1)

    def distances(rows: slice) -> np.ndarray:
        q = query_emb[rows]
        # ||q||^2 is the same for the whole row, so it cannot change the ranking: left out.
        return db_sq[None, :] - 2.0 * (q @ db_emb.T)

    retrieval = _Retrieval(distances, q_labels, d_labels, len(query_emb), len(db_emb), bits=0)
    stat = lambda chunk: _ap_from_ranked(chunk.ranked_relevance, topk)
    return float(_per_query(retrieval, chunk_size, ap=stat)["ap"].mean())


# --- the pieces ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Retrieval:
    """A query set against a database: a distance function over blocks of queries, and labels."""

    distances: Callable[[slice], np.ndarray]  # query rows -> (c x n_db), db already in id order
    query_labels: np.ndarray  # (q,) ids or (q x C) float32 multi-hot
    db_labels: np.ndarray  # (n_db,) ids or (n_db x C) float32 multi-hot
    n_queries: int
    n_db: int
    bits: int


class _Chunk:
    """Distances (c x n_db) and relevance (c x n_db bool) of a block of queries, plus derived
    views."""

    def __init__(self, dist: np.ndarray, rel: np.ndarray, n_values: int):
        self.dist, self.rel, self.n_values = dist, rel, n_values

    @cached_property
    def histograms(self) -> tuple[np.ndarray, np.ndarray]:
        """(all items, relevant items) per query and distance value: two (c x bits+1) int64."""
        # Key 2 * distance + relevant stays in the small distance dtype; a bincount per row casts
        # one cache-sized row to intp at a time, faster than one bincount over int64 block keys.
        keys = (self.dist << 1) | self.rel
        counts = np.stack([np.bincount(row, minlength=2 * self.n_values) for row in keys])
        counts = counts.reshape(len(keys), self.n_values, 2)
        return counts.sum(axis=2), counts[:, :, 1]

    @cached_property
    def ranked_relevance(self) -> np.ndarray:
        """Relevance in ranked order, ties by database id (db rows are in id order):
        (c x n_db) bool."""
        # Stable sort of small unsigned ints is a radix sort in numpy: linear per row.
        order = np.argsort(self.dist, axis=1, kind="stable")
        return np.take_along_axis(self.rel, order, axis=1)


def _per_query(
    retrieval: _Retrieval, chunk_size: int | None, **stats: Callable[[_Chunk], np.ndarray]
) -> dict[str, np.ndarray]:
    """Run each named per-chunk statistic over all query blocks; concatenated along queries."""
    if chunk_size is None:
        chunk_size = max(1, _PAIRS_PER_CHUNK // max(retrieval.n_db, 1))
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    parts: dict[str, list[np.ndarray]] = {name: [] for name in stats}
    for start in range(0, retrieval.n_queries, chunk_size):
        rows = slice(start, start + chunk_size)
        chunk = _Chunk(
            retrieval.distances(rows),
            _relevance(retrieval.query_labels[rows], retrieval.db_labels),
            retrieval.bits + 1,
        )
        for name, stat in stats.items():
            parts[name].append(stat(chunk))
    return {name: np.concatenate(values) for name, values in parts.items()}


def _hamming_retrieval(
    query_codes: np.ndarray,
    db_codes: np.ndarray,
    query_labels: np.ndarray,
    db_labels: np.ndarray,
    db_ids: Sequence | np.ndarray | None = None,
) -> _Retrieval:
    """Validate packed codes and labels; reorder the database by id so stable sorts
    break ties by id."""
    q_words, db_words = to_words(query_codes), to_words(db_codes)
    bits = 8 * np.asarray(query_codes).shape[1]
    if np.asarray(db_codes).shape[1] * 8 != bits:
        raise ValueError(f"code lengths differ: {bits} vs {np.asarray(db_codes).shape[1] * 8} bits")
    q_labels, d_labels = _label_pair(query_labels, db_labels, len(q_words), len(db_words))
    if db_ids is not None:
        db_ids = np.asarray(db_ids)
        if db_ids.shape != (len(db_words),):
            raise ValueError(f"db_ids must have shape ({len(db_words)},), got {db_ids.shape}")
        order = np.argsort(db_ids, kind="stable")
        db_words, d_labels = db_words[order], d_labels[order]
    # uint8 distances (doubled + relevance bit in histograms) up to 127 bits, else uint16.
    dtype = np.uint8 if bits < 128 else np.uint16

    def distances(rows: slice) -> np.ndarray:
        q = q_words[rows]
        dist = np.bitwise_count(q[:, None, 0] ^ db_words[None, :, 0]).astype(dtype, copy=False)
        for w in range(1, q_words.shape[1]):
            dist += np.bitwise_count(q[:, None, w] ^ db_words[None, :, w])
        return dist

    return _Retrieval(distances, q_labels, d_labels, len(q_words), len(db_words), bits)


def _label_pair(
    query_labels: np.ndarray, db_labels: np.ndarray, n_queries: int, n_db: int
) -> tuple[np.ndarray, np.ndarray]:
    """Both as 1-D int ids, or both as (n x C) float32 multi-hot (a 1-D side is one-hot encoded)."""
    q, d = np.asarray(query_labels), np.asarray(db_labels)
    for name, labels, n in (("query", q, n_queries), ("database", d, n_db)):
        if labels.ndim not in (1, 2) or len(labels) != n:
            raise ValueError(
                f"{name} labels must be (n,) ids or (n x C) multi-hot with n={n}, "
                f"got {labels.shape}"
            )
        if labels.ndim == 1 and labels.dtype.kind not in "iu":
            raise TypeError(f"1-D {name} labels must be integer class ids, got {labels.dtype}")
    if n_queries == 0 or n_db == 0:
        raise ValueError("need at least one query and one database item")
    if q.ndim == 1 and d.ndim == 1:
        return q, d
    n_classes = (q if q.ndim == 2 else d).shape[1]
    q, d = (_multi_hot(x, n_classes) for x in (q, d))
    if q.shape[1] != d.shape[1]:
        raise ValueError(f"query and database labels have {q.shape[1]} and {d.shape[1]} classes")
    return q, d


def _multi_hot(labels: np.ndarray, n_classes: int) -> np.ndarray:
    """(n x C) float32 0/1 from multi-hot of any dtype or 1-D ids in [0, n_classes)."""
    if labels.ndim == 2:
        return (labels != 0).astype(np.float32)
    return multi_hot(labels, np.arange(len(labels) + 1), n_classes, np.float32)


def _relevance(query_labels: np.ndarray, db_labels: np.ndarray) -> np.ndarray:
    """Share-at-least-one-label matrix (c x n_db) bool."""
    if query_labels.ndim == 1:
        return query_labels[:, None] == db_labels[None, :]
    return (query_labels @ db_labels.T) > 0


class _TieTables:
    """Harmonic numbers H[k] and log k! for k = 0..n_db, shared by all blocks of one evaluation."""

    def __init__(self, n_db: int):
        self.harmonic = np.concatenate([[0.0], np.cumsum(1.0 / np.arange(1, n_db + 1))])
        self.log_factorial = np.array([math.lgamma(k + 1) for k in range(n_db + 1)])

    def log_choose(self, n: np.ndarray, k: np.ndarray) -> np.ndarray:
        lf = self.log_factorial
        return lf[n] - lf[k] - lf[n - k]


def _expected_precision_sum(
    x: np.ndarray,
    m: np.ndarray,
    rel_before: np.ndarray,
    items_before: np.ndarray,
    harmonic: np.ndarray,
) -> np.ndarray:
    """E[sum of precision@k over relevant k] for m tied positions holding x relevant in random
    order.

    The positions follow ``items_before`` items of which ``rel_before`` are relevant. A position j
    (1..m) is relevant with probability x/m and then has (j-1)(x-1)/(m-1) relevant items of the
    group ahead on average, which gives He et al.'s per-group term; its sum over j reduces to
    harmonic numbers: sum 1/(N+j) = H[N+m] - H[N] and sum (j-1)/(N+j) = m - (N+1)(H[N+m] - H[N]).
    """
    dh = harmonic[items_before + m] - harmonic[items_before]
    # m = 0 implies x = 0 and m = 1 implies x(x-1) = 0, so the clamped denominators never matter.
    spread = (x - 1) / np.maximum(m - 1, 1) * (m - (items_before + 1) * dh)
    return x / np.maximum(m, 1) * ((rel_before + 1) * dh + spread)


def _tie_aware_ap(
    histograms: tuple[np.ndarray, np.ndarray], topk: int | None, tables: _TieTables
) -> np.ndarray:
    """Expected AP@topk per query under random order inside each distance: (c,) float64."""
    counts, rel_counts = histograms
    c = len(counts)
    n_db = int(counts[0].sum())
    k = n_db if topk is None else min(topk, n_db)
    items_before = np.cumsum(counts, axis=1) - counts
    rel_before = np.cumsum(rel_counts, axis=1) - rel_counts
    # The "straddling" group holds position k: the first distance whose group reaches k.
    cut = np.argmax(items_before + counts >= k, axis=1)
    whole = np.arange(counts.shape[1])[None, :] < cut[:, None]
    group_sums = _expected_precision_sum(
        rel_counts, counts, rel_before, items_before, tables.harmonic
    )
    before_sum = np.where(whole, group_sums, 0.0).sum(axis=1)

    rows = np.arange(c)
    n, r = counts[rows, cut], rel_counts[rows, cut]
    n_before, r_before = items_before[rows, cut], rel_before[rows, cut]
    m = k - n_before  # positions of the straddling group inside the cut, 1..n
    # X relevant among those m positions ~ hypergeometric(n, r, m): enumerate its support flat.
    lo, hi = np.maximum(0, m - (n - r)), np.minimum(r, m)
    sizes = hi - lo + 1
    owner = np.repeat(rows, sizes)
    x = lo[owner] + np.arange(sizes.sum()) - np.repeat(np.cumsum(sizes) - sizes, sizes)
    n, r, m, n_before, r_before = n[owner], r[owner], m[owner], n_before[owner], r_before[owner]
    prob = np.exp(
        tables.log_choose(r, x) + tables.log_choose(n - r, m - x) - tables.log_choose(n, m)
    )
    numerator = before_sum[owner] + _expected_precision_sum(
        x, m, r_before, n_before, tables.harmonic
    )
    # No relevant item in the first k means a zero numerator too: the query scores 0.
    found = np.maximum(r_before + x, 1)
    return np.bincount(owner, weights=prob * numerator / found, minlength=c)


def _ap_from_ranked(ranked_relevance: np.ndarray, topk: int | None) -> np.ndarray:
    """AP@topk per query from relevance in ranked order (c x n): (c,) float64, 0 if none found."""
    c, n = ranked_relevance[:, :topk].shape
    # flatnonzero on the contiguous block is several times faster than a 2-D nonzero.
    flat = np.flatnonzero(np.ascontiguousarray(ranked_relevance[:, :topk]))
    rows, cols = np.divmod(flat, n)
    found = np.bincount(rows, minlength=c)
    # Hits come row by row in rank order, so a hit's count so far is its index in its row.
    hits_so_far = np.arange(1, len(rows) + 1) - np.repeat(np.cumsum(found) - found, found)
    precision_sum = np.bincount(rows, weights=hits_so_far / (cols + 1), minlength=c)
    return precision_sum / np.maximum(found, 1)


def _precision_at(ranked_relevance: np.ndarray, ns: np.ndarray) -> np.ndarray:
    """Precision of the first N ranked items for each N in ``ns``: (c x len(ns)) float64."""
    hits = np.cumsum(ranked_relevance[:, : ns.max()], axis=1, dtype=np.int64)
    return hits[:, ns - 1] / ns


def _stacked_histograms(chunk: _Chunk) -> np.ndarray:
    """(all, relevant) counts per distance value stacked: (c x 2 x bits+1) int64."""
    return np.stack(chunk.histograms, axis=1)


def _radius_curves(hist: np.ndarray) -> dict[str, np.ndarray]:
    """Per query and radius r: items returned within r, their precision and recall: (q x bits+1)."""
    returned = np.cumsum(hist[:, 0], axis=1)
    relevant_returned = np.cumsum(hist[:, 1], axis=1)
    relevant_total = relevant_returned[:, -1:]
    return {
        "returned": returned,
        "precision": relevant_returned / np.maximum(returned, 1),
        "recall": relevant_returned / np.maximum(relevant_total, 1),
    }


def _pr_curve_from(curves: dict[str, np.ndarray]) -> dict[str, list]:
    return {
        "radius": list(range(curves["precision"].shape[1])),
        "precision": curves["precision"].mean(axis=0).tolist(),
        "recall": curves["recall"].mean(axis=0).tolist(),
    }


def _capped_ns(ns: Sequence[int], n_db: int) -> np.ndarray:
    ns = np.asarray(ns, dtype=np.int64)
    if ns.ndim != 1 or len(ns) == 0 or ns.min() < 1:
        raise ValueError(f"precision@N needs positive N values, got {ns}")
    return np.unique(np.minimum(ns, n_db))


def _check_topk(topk: int | None) -> None:
    if topk is not None and (not isinstance(topk, (int, np.integer)) or topk < 1):
        raise ValueError(f"topk must be a positive int or None, got {topk!r}")


def _check_radius(radius: int, bits: int) -> int:
    if not isinstance(radius, (int, np.integer)) or radius < 0:
        raise ValueError(f"radius must be a non-negative int, got {radius!r}")
    return min(int(radius), bits)
