"""hashing.metrics against plain-Python references: sorts, loops, and every tie permutation."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hashing.metrics import (
    mean_average_precision,
    mean_average_precision_real,
    pr_curve,
    precision_at_n,
    precision_within_radius,
    retrieval_report,
)

# --- references: one query at a time, plain Python ----------------------------------------------


def ref_hamming(a: np.ndarray, b: np.ndarray) -> int:
    return sum((int(x) ^ int(y)).bit_count() for x, y in zip(a, b))


def ref_relevant(query_label, db_label) -> bool:
    """Share a label: ids equal, or multi-hot rows with a common nonzero entry."""
    if np.ndim(query_label) == 0:
        return int(query_label) == int(db_label)
    return any(bool(a) and bool(b) for a, b in zip(query_label, db_label))


def ref_ap(ranked_relevant: list[bool], k: int | None) -> float:
    """AP@k: mean of precision@i over relevant positions i <= k; 0 when nothing relevant there."""
    hits, total = 0, 0.0
    for i, rel in enumerate(ranked_relevant[:k], start=1):
        if rel:
            hits += 1
            total += hits / i
    return total / hits if hits else 0.0


def ref_items(query_code, db_codes, query_label, db_labels):
    return [
        (ref_hamming(query_code, db_codes[j]), j, ref_relevant(query_label, db_labels[j]))
        for j in range(len(db_codes))
    ]


def ref_map_id_order(qc, dc, ql, dl, k, db_ids=None):
    ids = list(range(len(dc))) if db_ids is None else list(db_ids)
    aps = []
    for q in range(len(qc)):
        items = sorted(ref_items(qc[q], dc, ql[q], dl), key=lambda t: (t[0], ids[t[1]], t[1]))
        aps.append(ref_ap([rel for _, _, rel in items], k))
    return sum(aps) / len(aps)


def ref_map_all_tie_orders(qc, dc, ql, dl, k):
    """Mean over queries of the exact average AP@k over every order inside each distance group."""
    aps = []
    for q in range(len(qc)):
        items = ref_items(qc[q], dc, ql[q], dl)
        groups = [
            [rel for d, _, rel in items if d == dist] for dist in sorted({d for d, _, _ in items})
        ]
        orders = itertools.product(*(itertools.permutations(g) for g in groups))
        values = [ref_ap([rel for group in order for rel in group], k) for order in orders]
        aps.append(sum(values) / len(values))
    return sum(aps) / len(aps)


def ref_radius(qc, dc, ql, dl, radius):
    """Per query: (precision within radius, 0 if nothing returned; recall; number returned)."""
    out = []
    for q in range(len(qc)):
        items = ref_items(qc[q], dc, ql[q], dl)
        returned = [rel for d, _, rel in items if d <= radius]
        total_rel = sum(rel for _, _, rel in items)
        precision = sum(returned) / len(returned) if returned else 0.0
        recall = sum(returned) / total_rel if total_rel else 0.0
        out.append((precision, recall, len(returned)))
    return out


# --- random small problems ----------------------------------------------------------------------

# Few distinct byte values so that Hamming distances tie often.
BYTE_POOL = [0, 1, 3, 7, 128, 255]


@st.composite
def problems(draw, max_db=7, max_queries=3):
    nbytes = draw(st.sampled_from([1, 2]))
    n_db = draw(st.integers(1, max_db))
    n_q = draw(st.integers(1, max_queries))
    byte = st.sampled_from(BYTE_POOL)
    qc = np.array(
        draw(
            st.lists(st.lists(byte, min_size=nbytes, max_size=nbytes), min_size=n_q, max_size=n_q)
        ),
        np.uint8,
    )
    dc = np.array(
        draw(
            st.lists(st.lists(byte, min_size=nbytes, max_size=nbytes), min_size=n_db, max_size=n_db)
        ),
        np.uint8,
    )
    n_classes = draw(st.integers(1, 4))
    if draw(st.booleans()):  # single-label ids
        ql = np.array(
            draw(st.lists(st.integers(0, n_classes - 1), min_size=n_q, max_size=n_q)), np.int64
        )
        dl = np.array(
            draw(st.lists(st.integers(0, n_classes - 1), min_size=n_db, max_size=n_db)), np.int64
        )
    else:  # multi-hot, rows may be empty (such a query has no relevant item)
        row = st.lists(st.booleans(), min_size=n_classes, max_size=n_classes)
        ql = np.array(draw(st.lists(row, min_size=n_q, max_size=n_q)), bool)
        dl = np.array(draw(st.lists(row, min_size=n_db, max_size=n_db)), bool)
    topk = draw(st.one_of(st.none(), st.integers(1, n_db + 2)))
    return qc, dc, ql, dl, topk


# --- mAP ----------------------------------------------------------------------------------------


@settings(deadline=None, max_examples=60)
@given(problems(max_db=6), st.integers(1, 4))
def test_tie_aware_map_is_the_average_over_every_tie_order(problem, chunk_size):
    qc, dc, ql, dl, topk = problem
    expected = ref_map_all_tie_orders(qc, dc, ql, dl, topk)
    got = mean_average_precision(qc, dc, ql, dl, topk=topk, ties="aware", chunk_size=chunk_size)
    assert got == pytest.approx(expected, rel=1e-9, abs=1e-12)


def test_tie_aware_map_with_one_big_straddling_group():
    # 7 items at one distance, 3 relevant: every cut-off straddles the group.
    qc = np.zeros((1, 1), np.uint8)
    dc = np.full((7, 1), 3, np.uint8)
    ql, dl = np.array([1]), np.array([1, 0, 1, 0, 0, 1, 0])
    for topk in [None, 1, 2, 3, 5, 7]:
        got = mean_average_precision(qc, dc, ql, dl, topk=topk)
        assert got == pytest.approx(ref_map_all_tie_orders(qc, dc, ql, dl, topk), rel=1e-12)


def test_tie_aware_map_at_cutoff_matches_random_id_orders_on_a_larger_database():
    # Averaging id-order AP@k over random database id orders samples the same expectation.
    rng = np.random.default_rng(0)
    qc = rng.integers(0, 256, (4, 1), dtype=np.uint8)
    dc = rng.integers(0, 256, (300, 1), dtype=np.uint8) & 0x0F  # 5 distances per query: big ties
    ql, dl = rng.integers(0, 3, 4), rng.integers(0, 3, 300)
    aware = mean_average_precision(qc, dc, ql, dl, topk=50)
    sampled = np.mean(
        [
            mean_average_precision(qc, dc, ql, dl, topk=50, ties="id", db_ids=rng.permutation(300))
            for _ in range(300)
        ]
    )
    assert aware == pytest.approx(sampled, abs=0.01)


@settings(deadline=None, max_examples=60)
@given(problems(max_db=30, max_queries=5), st.integers(1, 4))
def test_id_order_map_matches_a_stable_sort_by_distance_then_row(problem, chunk_size):
    qc, dc, ql, dl, topk = problem
    got = mean_average_precision(qc, dc, ql, dl, topk=topk, ties="id", chunk_size=chunk_size)
    assert got == pytest.approx(ref_map_id_order(qc, dc, ql, dl, topk), rel=1e-12, abs=1e-12)


@settings(deadline=None, max_examples=40)
@given(problems(max_db=30), st.randoms(use_true_random=False))
def test_db_ids_define_the_tie_order(problem, rand):
    qc, dc, ql, dl, topk = problem
    ids = [f"img_{i:03d}" for i in range(len(dc))]
    rand.shuffle(ids)
    got = mean_average_precision(qc, dc, ql, dl, topk=topk, ties="id", db_ids=ids)
    assert got == pytest.approx(
        ref_map_id_order(qc, dc, ql, dl, topk, db_ids=ids), rel=1e-12, abs=1e-12
    )
    # Tie-aware mAP and radius metrics do not depend on the database order at all.
    perm = np.argsort(ids)
    assert mean_average_precision(qc, dc[perm], ql, dl[perm], topk=topk) == pytest.approx(
        mean_average_precision(qc, dc, ql, dl, topk=topk), rel=1e-12, abs=1e-12
    )


def test_perfect_codes_score_one_and_random_codes_score_about_the_relevant_fraction():
    rng = np.random.default_rng(1)
    class_codes = rng.integers(0, 256, (10, 4), dtype=np.uint8)
    ql, dl = rng.integers(0, 10, 200), rng.integers(0, 10, 2000)
    report = retrieval_report(class_codes[ql], class_codes[dl], ql, dl)
    assert report["map_tie_aware"] == pytest.approx(1.0)
    assert report["map_id_order"] == pytest.approx(1.0)
    assert report["precision_radius"] == pytest.approx(1.0)

    qc = rng.integers(0, 256, (200, 4), dtype=np.uint8)
    dc = rng.integers(0, 256, (2000, 4), dtype=np.uint8)
    fraction = np.mean(ql[:, None] == dl[None, :])
    for ties in ("aware", "id"):
        assert mean_average_precision(qc, dc, ql, dl, ties=ties) == pytest.approx(
            fraction, abs=0.03
        )


def test_a_query_with_nothing_relevant_in_its_first_k_scores_zero():
    qc = np.array([[0]], np.uint8)
    dc = np.array([[0], [1], [3], [7]], np.uint8)  # distances 0, 1, 2, 3
    ql, dl = np.array([1]), np.array([0, 0, 0, 1])
    for ties in ("aware", "id"):
        assert mean_average_precision(qc, dc, ql, dl, topk=3, ties=ties) == 0.0
        assert mean_average_precision(qc, dc, ql, dl, ties=ties) == pytest.approx(1 / 4)
    # No relevant item anywhere: 0 as well, also through the report.
    report = retrieval_report(qc, dc, np.array([5]), dl)
    assert report["map_tie_aware"] == report["map_id_order"] == 0.0
    assert report["zero_relevant_queries"] == 1


# --- radius, PR curve, precision@N --------------------------------------------------------------


@settings(deadline=None, max_examples=50)
@given(problems(max_db=30, max_queries=5), st.integers(0, 20))
def test_radius_metrics_and_pr_curve_match_loops(problem, radius):
    qc, dc, ql, dl, _ = problem
    bits = 8 * qc.shape[1]
    per_query = ref_radius(qc, dc, ql, dl, min(radius, bits))
    precision, returned = precision_within_radius(qc, dc, ql, dl, radius=radius, chunk_size=2)
    assert precision == pytest.approx(np.mean([p for p, _, _ in per_query]), abs=1e-12)
    assert returned == pytest.approx(np.mean([n for _, _, n in per_query]), abs=1e-12)

    curve = pr_curve(qc, dc, ql, dl)
    assert curve["radius"] == list(range(bits + 1))
    for r in range(bits + 1):
        at_r = ref_radius(qc, dc, ql, dl, r)
        assert curve["precision"][r] == pytest.approx(np.mean([p for p, _, _ in at_r]), abs=1e-12)
        assert curve["recall"][r] == pytest.approx(np.mean([c for _, c, _ in at_r]), abs=1e-12)


@settings(deadline=None, max_examples=50)
@given(problems(max_db=30, max_queries=5), st.lists(st.integers(1, 40), min_size=1, max_size=5))
def test_precision_at_n_matches_the_id_order_ranking(problem, ns):
    qc, dc, ql, dl, _ = problem
    got = precision_at_n(qc, dc, ql, dl, ns=ns, chunk_size=3)
    assert sorted(got) == sorted({min(n, len(dc)) for n in ns})
    for n, value in got.items():
        per_query = []
        for q in range(len(qc)):
            ranked = sorted(ref_items(qc[q], dc, ql[q], dl))
            per_query.append(sum(rel for _, _, rel in ranked[:n]) / n)
        assert value == pytest.approx(np.mean(per_query), abs=1e-12)


# --- labels -------------------------------------------------------------------------------------


@settings(deadline=None, max_examples=30)
@given(problems(max_db=20, max_queries=4))
def test_class_ids_and_their_one_hot_give_the_same_report(problem):
    qc, dc, ql, dl, topk = problem
    if ql.ndim == 2:  # this test is about ids; make them from the multi-hot rows' first label
        ql, dl = ql.argmax(axis=1), dl.argmax(axis=1)
    eye = np.eye(int(max(ql.max(), dl.max())) + 1)
    as_ids = retrieval_report(qc, dc, ql, dl, topk=topk, precision_at=(1, 5))
    for q_labels, d_labels in [
        (eye[ql], eye[dl]),
        (ql, eye[dl].astype(np.int8)),
        (eye[ql] > 0, dl),
    ]:
        assert (
            retrieval_report(qc, dc, q_labels, d_labels, topk=topk, precision_at=(1, 5)) == as_ids
        )


def test_report_matches_the_separate_functions():
    rng = np.random.default_rng(2)
    qc = rng.integers(0, 256, (30, 2), dtype=np.uint8)
    dc = rng.integers(0, 256, (500, 2), dtype=np.uint8)
    ql = rng.random((30, 5)) < 0.3
    dl = rng.random((500, 5)) < 0.3
    ids = rng.permutation(500)
    report = retrieval_report(
        qc, dc, ql, dl, db_ids=ids, radius=3, topk=100, precision_at=(10, 1000)
    )
    assert report["map_tie_aware"] == mean_average_precision(qc, dc, ql, dl, topk=100)
    assert report["map_id_order"] == mean_average_precision(
        qc, dc, ql, dl, topk=100, ties="id", db_ids=ids
    )
    assert (report["precision_radius"], report["mean_returned_radius"]) == precision_within_radius(
        qc, dc, ql, dl, radius=3
    )
    assert report["pr_curve"] == pr_curve(qc, dc, ql, dl)
    assert report["precision_at_n"] == precision_at_n(qc, dc, ql, dl, ns=(10, 1000), db_ids=ids)
    assert list(report["precision_at_n"]) == [10, 500]
    assert (report["n_queries"], report["n_database"], report["bits"]) == (30, 500, 16)
    assert report["zero_relevant_queries"] == int((~(ql @ dl.T).any(axis=1)).sum())


# --- continuous embeddings ----------------------------------------------------------------------


@settings(deadline=None, max_examples=30)
@given(
    st.integers(1, 5),
    st.integers(1, 25),
    st.one_of(st.none(), st.integers(1, 30)),
    st.integers(0, 2**32 - 1),
)
def test_real_valued_map_ranks_by_euclidean_distance(n_q, n_db, topk, seed):
    rng = np.random.default_rng(seed)
    q, d = rng.normal(size=(n_q, 3)), rng.normal(size=(n_db, 3))
    ql, dl = rng.integers(0, 3, n_q), rng.integers(0, 3, n_db)
    aps = []
    for i in range(n_q):
        ranked = sorted(range(n_db), key=lambda j: math.dist(q[i], d[j]))
        aps.append(ref_ap([ql[i] == dl[j] for j in ranked], topk))
    got = mean_average_precision_real(q, d, ql, dl, topk=topk, chunk_size=2)
    assert got == pytest.approx(np.mean(aps), rel=1e-12, abs=1e-12)


# --- input checks -------------------------------------------------------------------------------


def test_bad_inputs_are_refused():
    codes, labels = np.zeros((3, 2), np.uint8), np.array([0, 1, 2])
    with pytest.raises(ValueError, match="ties"):
        mean_average_precision(codes, codes, labels, labels, ties="random")
    with pytest.raises(ValueError, match="code lengths"):
        mean_average_precision(codes, codes[:, :1], labels, labels)
    with pytest.raises(ValueError, match="labels"):
        mean_average_precision(codes, codes, labels[:2], labels)
    with pytest.raises(ValueError, match="topk"):
        mean_average_precision(codes, codes, labels, labels, topk=0)
    with pytest.raises(ValueError, match="db_ids"):
        mean_average_precision(codes, codes, labels, labels, ties="id", db_ids=[1, 2])
    with pytest.raises(TypeError, match="uint8"):
        mean_average_precision(codes.astype(np.int64), codes, labels, labels)
