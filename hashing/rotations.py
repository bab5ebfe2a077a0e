"""Post-hoc rotations of continuous outputs before the sign: ITQ and SDSH's mAP search.

Both return an orthogonal float32 (K x K) matrix R for ``HashModel.set_rotation``: codes become
sgn(h R). A rotation is fitted on training-side outputs, never on queries.

- ``itq_rotation``: Iterative Quantization (Gong & Lazebnik, CVPR 2011) minimises ||B - H R||_F
  by alternating B = sgn(H R) and the orthogonal Procrustes step for R.
- ``map_rotation_search``: the random search of the SDSH code (Pidhorskyi et al., ACCV 2018) that
  keeps random small rotations when they raise the tie-aware mAP of pseudo-queries against a
  pseudo-database drawn from the outputs.

Cost of the search: each step packs the rotated outputs of the pseudo-queries and pseudo-database
and computes one tie-aware ``mean_average_precision`` between them, so its time grows with
``steps`` x ``n_queries`` x ``n_database``. The defaults are SDSH's (docs/methods.md); fewer
``steps``, queries or database rows trade quality for time.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from threadpoolctl import threadpool_limits

from hashing.codes import pack_codes
from hashing.metrics import mean_average_precision

__all__ = [
    "fit_rotation",
    "itq_rotation",
    "map_rotation_search",
    "pseudo_split",
    "random_orthogonal",
]


def random_orthogonal(size: int, rng: np.random.Generator) -> np.ndarray:
    """A random orthogonal (size x size) float64 matrix: U V^T of the SVD of a Gaussian matrix."""
    u, _, vt = np.linalg.svd(rng.standard_normal((size, size)))
    return u @ vt


def itq_rotation(
    embeddings: np.ndarray | torch.Tensor, iterations: int = 50, seed: int = 0
) -> np.ndarray:
    """ITQ rotation R (K x K, float32, orthogonal) reducing ||sgn(H R) - H R|| for H (n x K).

    Starts from a seeded random rotation; each iteration sets B = sgn(H R) (sgn(0) = +1), then
    R = V U^T from the SVD B^T H = U S V^T, the orthogonal R that minimises ||B - H R||_F (its
    transpose U V^T does not: its error is not monotone). SDSH runs 500 iterations as its cheap
    option; 50 is the ITQ paper's count.
    """
    h = _as_matrix(embeddings)
    rotation = random_orthogonal(h.shape[1], np.random.default_rng(seed))
    for _ in range(iterations):
        codes = np.where(h @ rotation >= 0, 1.0, -1.0)
        u, _, vt = np.linalg.svd(codes.T @ h)
        rotation = vt.T @ u.T
    return rotation.astype(np.float32)


def pseudo_split(
    n: int, n_queries: int, n_database: int, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Disjoint seeded (query rows, database rows) of n rows; queries take at most half of them."""
    if n < 2:
        raise ValueError(f"need at least 2 rows to split into queries and database, got {n}")
    order = np.random.default_rng(seed).permutation(n)
    n_q = min(n_queries, n // 2)
    return order[:n_q], order[n_q : n_q + n_database]


def map_rotation_search(
    embeddings: np.ndarray | torch.Tensor,
    labels: np.ndarray | torch.Tensor,
    *,
    steps: int = 800,
    n_queries: int = 2000,
    n_database: int = 16000,
    seed: int = 0,
    progress: Callable[[int, float], None] | None = None,
) -> np.ndarray:
    """SDSH's random search for a rotation R (K x K, float32, orthogonal) maximising mAP.

    H (n x K) outputs, labels (n,) class ids or (n x C) multi-hot. Pseudo-queries and database are
    ``pseudo_split(n, n_queries, n_database, seed)``. From R = I, step t = 0..steps-1 draws an
    angle a = +-(steps - t) / steps (random sign), a random orthogonal Q and G = I with its top-left
    2x2 block a rotation by a; the candidate R Q^T G Q replaces R when its tie-aware mAP of
    sgn(H_q R) against sgn(H_db R) is higher. ``progress(step, best_map)`` is called with step 0
    for the starting mAP and after every step, so the search never reports a lower mAP.
    """
    h = _as_matrix(embeddings)
    labels = labels.detach().cpu().numpy() if isinstance(labels, torch.Tensor) else labels
    labels = np.asarray(labels)
    if len(labels) != len(h):
        raise ValueError(f"{len(h)} embeddings but {len(labels)} labels")
    size = h.shape[1]
    if size < 2:
        raise ValueError("the rotation search needs at least 2 bits")
    query_rows, db_rows = pseudo_split(len(h), n_queries, n_database, seed)
    h_q, h_db, l_q, l_db = h[query_rows], h[db_rows], labels[query_rows], labels[db_rows]
    rng = np.random.default_rng(seed)

    def score(rotation: np.ndarray) -> float:
        return mean_average_precision(
            pack_codes(h_q @ rotation), pack_codes(h_db @ rotation), l_q, l_db
        )

    rotation = np.eye(size)
    best = score(rotation)
    if progress is not None:
        progress(0, best)
    for t in range(steps):
        angle = (steps - t) / steps * rng.choice((-1.0, 1.0))
        basis = random_orthogonal(size, rng)
        plane = np.eye(size)
        plane[:2, :2] = [[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]]
        candidate = rotation @ basis.T @ plane @ basis
        value = score(candidate)
        if value > best:
            rotation, best = candidate, value
        if progress is not None:
            progress(t + 1, best)
    return rotation.astype(np.float32)


def fit_rotation(
    kind: str, embeddings: np.ndarray | torch.Tensor, labels: np.ndarray | torch.Tensor, seed: int
) -> torch.Tensor:
    """The post-hoc rotation of a recipe's stage plan, for ``HashModel.set_rotation``.

    ``kind`` "itq" (``itq_rotation``, labels unused) or "search" (``map_rotation_search``);
    embeddings (n x K) are training-side outputs, never queries. Returns float32 (K x K).
    """
    if kind not in ("itq", "search"):
        raise ValueError(f"rotation kind must be itq or search, got {kind!r}")
    # Many small matrix products: multi-threaded BLAS is much slower here, not faster.
    with threadpool_limits(1):
        if kind == "itq":
            rotation = itq_rotation(embeddings, seed=seed)
        else:
            rotation = map_rotation_search(embeddings, labels, seed=seed)
    return torch.as_tensor(rotation, dtype=torch.float32)


def _as_matrix(embeddings: np.ndarray | torch.Tensor) -> np.ndarray:
    """Embeddings (n x K) as a float64 array, with a clear error for other shapes."""
    if isinstance(embeddings, torch.Tensor):
        embeddings = embeddings.detach().cpu().numpy()
    h = np.asarray(embeddings, dtype=np.float64)
    if h.ndim != 2 or len(h) == 0:
        raise ValueError(f"embeddings must be a non-empty (n x K) array, got shape {h.shape}")
    return h
