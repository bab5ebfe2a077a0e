"""hashing.rotations: ITQ and SDSH's mAP rotation search on constructed embeddings."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from hashing.codes import pack_codes
from hashing.metrics import mean_average_precision
from hashing.rotations import itq_rotation, map_rotation_search, pseudo_split

pytestmark = pytest.mark.usefixtures("one_thread")


def assert_orthogonal(rotation: np.ndarray, size: int) -> None:
    assert rotation.dtype == np.float32 and rotation.shape == (size, size)
    np.testing.assert_allclose(rotation @ rotation.T, np.eye(size), atol=1e-5)


def quantization_error(h: np.ndarray, rotation: np.ndarray) -> float:
    """||sgn(H R) - H R||_F with sgn(0) = +1, written out independently."""
    rotated = h @ rotation
    return float(np.linalg.norm(np.where(rotated >= 0, 1.0, -1.0) - rotated))


def axis_aligned_classes(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Four classes centred on +-e1, +-e2 in 2-D: each straddles two sign quadrants.

    Rotated by 45 degrees every class falls inside one quadrant, so a good rotation exists.
    """
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 4, n)
    centres = np.array([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [0.0, -1.0]])
    return centres[labels] + 0.1 * rng.standard_normal((n, 2)), labels


def split_map(h, labels, rotation, n_queries, n_database, seed) -> float:
    """Tie-aware mAP of the rotated codes on the search's own pseudo split."""
    q, db = pseudo_split(len(h), n_queries, n_database, seed)
    codes = pack_codes(h @ rotation)
    return mean_average_precision(codes[q], codes[db], labels[q], labels[db])


# ---------------------------------------------------------------- ITQ


def test_itq_is_orthogonal_and_reduces_quantization_error():
    rng = np.random.default_rng(0)
    h = rng.standard_normal((600, 16)) * np.linspace(0.3, 3.0, 16)  # anisotropic, like PCA output
    rotation = itq_rotation(h, seed=0)
    assert_orthogonal(rotation, 16)
    fitted = quantization_error(h, rotation.astype(np.float64))
    assert fitted < quantization_error(h, np.eye(16))
    for _ in range(20):
        random_rotation, _ = np.linalg.qr(rng.standard_normal((16, 16)))
        assert fitted < quantization_error(h, random_rotation)
    # more iterations never hurt; seeded and deterministic; tensors accepted
    longer = itq_rotation(h, iterations=200, seed=0)
    assert quantization_error(h, longer.astype(np.float64)) <= fitted + 1e-6
    np.testing.assert_array_equal(rotation, itq_rotation(torch.from_numpy(h), seed=0))


def test_itq_iterations_never_increase_the_error():
    """Each B-step and Procrustes R-step can only lower ||B - H R||: the error is monotone."""
    rng = np.random.default_rng(1)
    h = rng.standard_normal((300, 8)) * np.linspace(0.5, 2.0, 8)
    errors = [
        quantization_error(h, itq_rotation(h, iterations=k, seed=3).astype(np.float64))
        for k in range(12)
    ]
    assert all(b <= a + 1e-4 for a, b in itertools.pairwise(errors))
    assert errors[-1] < errors[0]


def test_itq_recovers_a_rotated_hypercube():
    """H = B0 R0^T + noise for +-1 codes B0: from some seed ITQ reaches the hidden rotation's error.

    ITQ is a local method (other seeds stop in local minima), so the best of five seeds is used.
    """
    rng = np.random.default_rng(1)
    codes = np.where(rng.random((400, 8)) < 0.5, -1.0, 1.0)
    hidden, _ = np.linalg.qr(rng.standard_normal((8, 8)))
    h = codes @ hidden.T + 0.01 * rng.standard_normal((400, 8))
    fitted = [itq_rotation(h, iterations=300, seed=s).astype(np.float64) for s in range(5)]
    best = min(quantization_error(h, rotation) for rotation in fitted)
    assert best < 1.05 * quantization_error(h, hidden) < 0.05 * quantization_error(h, np.eye(8))


def test_itq_fixes_axis_aligned_classes():
    h, labels = axis_aligned_classes(400, seed=2)
    rotation = itq_rotation(h, seed=0)
    assert_orthogonal(rotation, 2)
    before = split_map(h, labels, np.eye(2), 100, 300, 0)
    after = split_map(h, labels, rotation, 100, 300, 0)
    assert before < 0.7 and after > 0.95


# ---------------------------------------------------------------- the mAP search


def test_pseudo_split_is_disjoint_and_seeded():
    q, db = pseudo_split(50, n_queries=30, n_database=100, seed=3)
    assert len(q) == 25 and len(db) == 25  # queries take at most half
    assert not set(q) & set(db) and set(q) | set(db) == set(range(50))
    q2, db2 = pseudo_split(50, n_queries=10, n_database=20, seed=3)
    assert len(q2) == 10 and len(db2) == 20
    np.testing.assert_array_equal(q2, pseudo_split(50, 10, 20, seed=3)[0])
    with pytest.raises(ValueError, match="at least 2 rows"):
        pseudo_split(1, 1, 1, seed=0)


def test_search_rotates_axis_aligned_classes_to_quadrants():
    h, labels = axis_aligned_classes(500, seed=4)
    reported = []
    rotation = map_rotation_search(
        h,
        labels,
        steps=150,
        n_queries=150,
        n_database=350,
        seed=0,
        progress=lambda step, best: reported.append((step, best)),
    )
    assert_orthogonal(rotation, 2)
    before = split_map(h, labels, np.eye(2), 150, 350, 0)
    after = split_map(h, labels, rotation.astype(np.float64), 150, 350, 0)
    assert before < 0.7 and after > 0.95
    # progress: the starting mAP, then one non-decreasing best per step, ending at the result
    assert [step for step, _ in reported] == list(range(151))
    values = [best for _, best in reported]
    assert values[0] == pytest.approx(before) and values[-1] == pytest.approx(after, abs=1e-6)
    assert all(b >= a for a, b in itertools.pairwise(values))


def test_search_never_lowers_map_in_higher_dimensions():
    """8-D class clusters rotated off the axes in every plane; multi-hot labels; tensors in."""
    rng = np.random.default_rng(5)
    n, size = 600, 8
    labels = np.zeros((n, 5), dtype=np.int64)
    labels[np.arange(n), rng.integers(0, 5, n)] = 1
    labels[::7, 4] = 1  # some rows carry a second label
    centres = rng.standard_normal((5, size))
    h = labels @ centres + 0.6 * rng.standard_normal((n, size))
    rotation = map_rotation_search(
        torch.from_numpy(h), torch.from_numpy(labels), steps=80, n_queries=150, n_database=450
    )
    assert_orthogonal(rotation, size)
    before = split_map(h, labels, np.eye(size), 150, 450, 0)
    after = split_map(h, labels, rotation.astype(np.float64), 150, 450, 0)
    assert after >= before - 1e-6
    assert after > before  # 80 random plane rotations find at least one improvement here
    same = map_rotation_search(h, labels, steps=80, n_queries=150, n_database=450)
    np.testing.assert_array_equal(rotation, same)


def test_search_rejects_bad_input():
    with pytest.raises(ValueError, match="labels"):
        map_rotation_search(np.zeros((10, 4)), np.zeros(9, dtype=int), steps=1)
    with pytest.raises(ValueError, match="at least 2 bits"):
        map_rotation_search(np.zeros((10, 1)), np.zeros(10, dtype=int), steps=1)
    with pytest.raises(ValueError, match=r"\(n x K\)"):
        itq_rotation(np.zeros(5))
