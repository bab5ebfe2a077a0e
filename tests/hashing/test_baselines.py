"""hashing.baselines: LSH and ITQ on sklearn's digits (a tiny real set) and their defining
properties."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.datasets import load_digits
from sklearn.decomposition import PCA

from hashing.baselines import ITQ, LSH
from hashing.codes import hamming_distance, pack_bits
from hashing.metrics import mean_average_precision

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def digits():
    """1,797 8x8 digit images as (n x 64) pixels: 300 queries, the rest the database."""
    features, labels = load_digits(return_X_y=True)
    order = np.random.default_rng(0).permutation(len(labels))
    query, database = order[:300], order[300:]
    return features[query], labels[query], features[database], labels[database]


@pytest.mark.parametrize("hasher", [LSH, ITQ])
def test_codes_contract_and_determinism(hasher, digits):
    q, _, db, _ = digits
    codes = hasher(32, seed=1).fit(db).encode(q)
    assert codes.dtype == np.uint8 and codes.shape == (300, 4)
    np.testing.assert_array_equal(codes, hasher(32, seed=1).fit(db).encode(q))
    assert hasher(12).fit(db).encode(q).shape == (300, 2)  # 12 bits pad to 2 bytes
    with pytest.raises(RuntimeError, match="fitted"):
        hasher(32).encode(q)
    with pytest.raises(ValueError, match="fitted on 64"):
        hasher(32).fit(db).encode(q[:, :10])
    with pytest.raises(ValueError, match="bits"):
        hasher(0)


def test_map_well_above_random_and_itq_at_least_lsh(digits):
    """Tie-aware mAP@all at 32 bits; random codes score about the relevant fraction, ~0.1."""
    q, q_labels, db, db_labels = digits
    scores = {}
    for name, hasher in (("lsh", LSH(32, seed=0)), ("itq", ITQ(32, seed=0))):
        hasher.fit(db)
        scores[name] = mean_average_precision(
            hasher.encode(q), hasher.encode(db), q_labels, db_labels
        )
    rng = np.random.default_rng(0)
    random_codes = pack_bits(rng.random((len(q) + len(db), 32)) < 0.5)
    scores["random"] = mean_average_precision(
        random_codes[: len(q)], random_codes[len(q) :], q_labels, db_labels
    )
    # measured: lsh 0.48, itq 0.64, random 0.10
    assert scores["random"] < 0.13
    assert scores["lsh"] > 0.4 and scores["itq"] > 0.55
    assert scores["itq"] >= scores["lsh"] - 0.02


def test_lsh_hamming_distance_estimates_the_angle():
    """Random hyperplanes (Charikar): P(bit differs) = angle / pi between the centred vectors."""
    rng = np.random.default_rng(2)
    data = rng.standard_normal((200, 20)) + 5.0  # far from the origin: centring matters
    bits = 4096
    hasher = LSH(bits, seed=0).fit(data)
    codes = hasher.encode(data[:10])
    centred = data[:10] - data.mean(axis=0)
    unit = centred / np.linalg.norm(centred, axis=1, keepdims=True)
    angles = np.arccos(np.clip(unit @ unit.T, -1, 1))
    np.testing.assert_allclose(hamming_distance(codes, codes) / bits, angles / np.pi, atol=0.04)


def test_itq_projects_on_the_top_principal_components(digits):
    """ITQ's projection spans sklearn's PCA subspace and is orthonormal (PCA basis times a
    rotation)."""
    _, _, db, _ = digits
    itq = ITQ(16, seed=0).fit(db)
    projection = itq.projection
    np.testing.assert_allclose(projection.T @ projection, np.eye(16), atol=1e-5)
    components = PCA(16).fit(db).components_.T  # (64 x 16)
    np.testing.assert_allclose(projection @ projection.T, components @ components.T, atol=1e-6)
    np.testing.assert_allclose(itq.mean, db.mean(axis=0))
    with pytest.raises(ValueError, match="bits <= feature dimension"):
        ITQ(65).fit(db)
