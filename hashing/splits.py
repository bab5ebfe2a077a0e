"""Evaluation protocols: which rows are queries, train and database (docs/evaluation.md).

Splits are drawn per class with a seeded generator, so the same labels and seed always give the
same split; callers write the resulting ids down next to the data. For multi-label data a row is
assigned to the class of its first label when drawing per-class quotas. An ``official`` protocol
draws its queries from the corpus's published test rows and its train rows from its train rows.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["PROTOCOLS", "Protocol", "holdout", "split_indices"]


@dataclass(frozen=True)
class Protocol:
    """Per-class quotas: queries first, then train drawn from what remains.

    ``train_per_class=None`` means every non-query row is train; ``database`` is ``"train"`` (the
    database is the train split), ``"rest"`` (all non-query rows, train included) or
    ``"rest-excluding-train"``; ``query_fraction`` replaces ``queries_per_class`` when set.
    ``official``: queries come from the rows the corpus publishes as test, train from its train
    rows (``queries_per_class=None``: every test row is a query).
    """

    name: str
    queries_per_class: int | None
    train_per_class: int | None
    database: str
    metric_topk: int | None = None
    query_fraction: float | None = None
    official: bool = False


PROTOCOLS: dict[str, Protocol] = {
    p.name: p
    for p in (
        Protocol("mnist5k", 100, None, "train"),
        Protocol("mnist-1k", 100, 500, "rest"),
        Protocol("cifar10-1k", 100, 500, "rest"),
        Protocol("cifar10-54k", 100, 500, "rest-excluding-train"),
        Protocol("cifar10-full", 1000, None, "train"),
        Protocol("nuswide21", 100, 500, "rest", metric_topk=5000),
        Protocol("random", None, None, "train", query_fraction=0.1),
        Protocol("fashion-mnist", None, None, "train", official=True),
        Protocol("fashion-mnist-1k", 100, None, "train", official=True),
    )
}


def split_indices(
    labels: np.ndarray,
    protocol: str | Protocol,
    seed: int = 0,
    official_split: np.ndarray | None = None,
) -> dict[str, np.ndarray | None]:
    """Row indices per split for ``labels`` (n, class ids; or n x C multi-hot).

    ``official_split`` (n, "train" / "test") is the corpus's published split, which ``official``
    protocols draw from. Returns ``{"query", "train", "database"}`` as sorted int64 arrays;
    ``database`` is None when the protocol's database is the train split (stored once, not twice).
    """
    if isinstance(protocol, str) and protocol not in PROTOCOLS:
        raise ValueError(f"unknown protocol {protocol!r}; choose one of {sorted(PROTOCOLS)}")
    proto = PROTOCOLS[protocol] if isinstance(protocol, str) else protocol
    primary = _primary_class(labels)
    if proto.official:
        query_idx, train_idx = _draw_official(primary, proto, seed, official_split)
    else:
        query_idx, train_idx = _draw(primary, proto, seed)
    if proto.database == "train":
        database = None
    else:
        rest = np.setdiff1d(np.arange(len(primary)), query_idx)
        database = rest if proto.database == "rest" else np.setdiff1d(rest, train_idx)
    return {"query": query_idx, "train": train_idx, "database": database}


def _draw(primary: np.ndarray, proto: Protocol, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(query, train) sorted row indices: per class, queries first, then train from the rest."""
    rng = np.random.default_rng(seed)
    query, train = [], []
    for cls in np.unique(primary):
        rows = rng.permutation(np.flatnonzero(primary == cls))
        if proto.query_fraction is not None:
            n_query = max(1, round(proto.query_fraction * len(rows)))
            n_query = min(n_query, len(rows) - 1) if len(rows) > 1 else 0
        else:
            n_query = proto.queries_per_class
        n_train = len(rows) - n_query if proto.train_per_class is None else proto.train_per_class
        if n_query + n_train > len(rows):
            raise ValueError(
                f"protocol {proto.name!r} needs {n_query + n_train} rows of class {cls}, "
                f"the data has {len(rows)}"
            )
        query.append(rows[:n_query])
        train.append(rows[n_query : n_query + n_train])
    return np.sort(np.concatenate(query)), np.sort(np.concatenate(train))


def _draw_official(
    primary: np.ndarray, proto: Protocol, seed: int, official_split: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray]:
    """(query, train) sorted row indices: per class, queries from the official test rows and
    train from the official train rows (all of them where the quota is None)."""
    if official_split is None or len(official_split) != len(primary):
        raise ValueError(
            f"protocol {proto.name!r} needs the corpus's official train/test split "
            "(a source such as mnist, fashion-mnist or cifar10)"
        )
    official_split = np.asarray(official_split)
    rng = np.random.default_rng(seed)
    query, train = [], []
    for cls in np.unique(primary):
        for part, quota, out in (
            ("test", proto.queries_per_class, query),
            ("train", proto.train_per_class, train),
        ):
            rows = np.flatnonzero((primary == cls) & (official_split == part))
            if quota is not None and quota > len(rows):
                raise ValueError(
                    f"protocol {proto.name!r} needs {quota} {part} rows of class {cls}, "
                    f"the data has {len(rows)}"
                )
            out.append(rows if quota is None else rng.permutation(rows)[:quota])
    return np.sort(np.concatenate(query)), np.sort(np.concatenate(train))


def holdout(n: int, fraction: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Split ``range(n)`` into (kept, held_out) sorted index arrays; held_out has
    ~fraction * n rows."""
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"holdout fraction must be in [0, 1), got {fraction}")
    perm = np.random.default_rng(seed).permutation(n)
    n_out = round(fraction * n)
    return np.sort(perm[n_out:]), np.sort(perm[:n_out])


def _primary_class(labels: np.ndarray) -> np.ndarray:
    labels = np.asarray(labels)
    if labels.ndim == 1:
        return labels.astype(np.int64)
    if labels.ndim == 2:
        if not labels.any(axis=1).all():
            raise ValueError("every row needs at least one label")
        return labels.astype(bool).argmax(axis=1)
    raise ValueError(f"labels must be 1-D ids or 2-D multi-hot, got shape {labels.shape}")
