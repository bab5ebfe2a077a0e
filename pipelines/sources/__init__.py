"""Corpus sources by name: ``read_source("folder", "photos/")``, ``list_sources()``.

A source turns a corpus into a ``Source``: a lazy ``ray.data.Dataset`` of rows in the one row
contract every source shares (``pipelines.sources.rows.ROW_SCHEMA``), its class names and what
``prepare`` defaults to for it. Every path may be local or ``s3://``.

A source is one module here whose reader function, ``read(path, classes, **options)``, is decorated
with ``@register("name")``, plus one import line at the bottom of this file. Its keyword-only
parameters are the options it takes (parquet: ``image_column``...); any other option is an error.
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable

from pipelines.sources.rows import ROW_SCHEMA, Source

__all__ = [
    "ROW_SCHEMA",
    "Source",
    "list_sources",
    "missing_hint",
    "read_source",
    "register",
    "source_path",
]

Reader = Callable[..., Source]


@dataclasses.dataclass(frozen=True)
class _Registered:
    read: Reader
    needs_path: bool
    default_path: str | None
    missing_hint: str | None


_REGISTRY: dict[str, _Registered] = {}


def register(
    name: str,
    *,
    needs_path: bool = True,
    default_path: str | None = None,
    missing_hint: str | None = None,
) -> Callable[[Reader], Reader]:
    """Function decorator adding a source reader to the registry under ``name``.

    ``needs_path=False``: a bundled corpus, read without a path; ``default_path``: where the corpus
    is read from when no path is given; ``missing_hint``: how to get the corpus, said when its path
    does not exist.
    """

    def add(read: Reader) -> Reader:
        if name in _REGISTRY:
            raise ValueError(
                f"source {name!r} is already registered by {_REGISTRY[name].read.__name__}"
            )
        _REGISTRY[name] = _Registered(read, needs_path, default_path, missing_hint)
        return read

    return add


def list_sources() -> list[str]:
    """Names of the registered sources, sorted."""
    return sorted(_REGISTRY)


def source_path(name: str) -> tuple[bool, str | None]:
    """``(needs a path, default path)`` of the registered source ``name``."""
    entry = _REGISTRY[name]
    return entry.needs_path, entry.default_path


def missing_hint(name: str) -> str | None:
    """How to get the corpus of source ``name`` when its path does not exist, if it says."""
    return _REGISTRY[name].missing_hint


def read_source(
    name: str,
    path: str | None = None,
    *,
    classes: list[str] | None = None,
    options: dict[str, str] | None = None,
) -> Source:
    """The corpus ``name`` at ``path`` (local or s3://; the source's default path when None).

    ``options`` are the source's own keyword settings (parquet: ``image_column``,
    ``labels_column``, ``id_column``); an option the source does not take is an error.
    """
    if name not in _REGISTRY:
        raise ValueError(f"unknown source {name!r}; valid sources: {', '.join(list_sources())}")
    entry, options = _REGISTRY[name], dict(options or {})
    path = path or entry.default_path
    if entry.needs_path and not path:
        raise ValueError(f"source {name!r} needs a path")
    accepted = [
        p.name
        for p in inspect.signature(entry.read).parameters.values()
        if p.kind is inspect.Parameter.KEYWORD_ONLY
    ]
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise ValueError(
            f"source {name!r} has no option {unknown[0]!r}; its options: {accepted or 'none'}"
        )
    return dataclasses.replace(entry.read(path, classes, **options), path=path)


# One line per source: importing the module registers it.
from pipelines.sources import (
    cifar10,  # noqa: F401
    folder,  # noqa: F401
    manifest,  # noqa: F401
    mnist,  # noqa: F401
    nuswide,  # noqa: F401
    parquet,  # noqa: F401
    webdataset,  # noqa: F401
)
