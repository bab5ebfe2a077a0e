"""Hashing losses by name: ``build("adsh", bits=32, num_classes=10)``, ``list_losses()``.

A method is one module here that decorates its ``HashLoss`` subclass with ``@register("name")``,
plus one import line at the bottom of this file.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

from hashing.losses.base import HashLoss, as_multihot, similarity_matrix

__all__ = ["HashLoss", "as_multihot", "build", "list_losses", "register", "similarity_matrix"]

_REGISTRY: dict[str, type[HashLoss]] = {}


def register(name: str) -> Callable[[type[HashLoss]], type[HashLoss]]:
    """Class decorator adding a HashLoss subclass to the registry under ``name``."""

    def add(cls: type[HashLoss]) -> type[HashLoss]:
        if name in _REGISTRY:
            raise ValueError(f"loss {name!r} is already registered by {_REGISTRY[name].__name__}")
        _REGISTRY[name] = cls
        return cls

    return add


def list_losses() -> list[str]:
    """Names of the registered losses, sorted."""
    return sorted(_REGISTRY)


def build(name: str, *, bits: int, num_classes: int, **params: Any) -> HashLoss:
    """Construct the loss registered as ``name``; params set to None keep the loss's defaults."""
    if name not in _REGISTRY:
        raise ValueError(f"unknown loss {name!r}; valid losses: {', '.join(list_losses())}")
    cls = _REGISTRY[name]
    accepted = set(inspect.signature(cls).parameters) - {"bits", "num_classes"}
    unknown = sorted(set(params) - accepted)
    if unknown:
        raise ValueError(
            f"loss {name!r} has no parameter(s) {', '.join(unknown)}; "
            f"accepted: {', '.join(sorted(accepted))}"
        )
    given = {key: value for key, value in params.items() if value is not None}
    return cls(bits=bits, num_classes=num_classes, **given)


# One line per method: importing the module registers it.
from hashing.losses import (
    adsh,  # noqa: F401
    csq,  # noqa: F401
    dpsh,  # noqa: F401
    dsh,  # noqa: F401
    exphash,  # noqa: F401
    hashnet,  # noqa: F401
    sdsh,  # noqa: F401
    tql,  # noqa: F401
)
