"""Checks of a command's inputs that run before any Ray cluster starts (fail fast, exit status 2).

Each check names the flag and the path and says which of three things is wrong, because each has
another remedy: the path **does not exist** (a typo), it exists but **is not** the kind of thing
the flag takes (a prepared dataset, a model directory, a codes directory: the wrong folder), or
it **is incomplete** (the run that wrote it was interrupted or is still running: run it again).
Local paths and ``s3://`` URIs are checked the same way; MLflow model URIs are left to the stage.
Docs: docs/failures.md lists every message with the test that produces it.
"""

from __future__ import annotations

import posixpath
from typing import Any

import pyarrow.fs as pafs

from pipelines import storage
from pipelines.codes_io import read_manifest
from pipelines.contracts import (
    DATASET_FILE,
    MANIFEST,
    MODEL_CARD_FILE,
    PART_PREFIX,
    SPLITS,
    CodesManifest,
    ContractError,
    DatasetInfo,
    ModelCard,
)

__all__ = [
    "InputError",
    "check_codes",
    "check_dataset",
    "check_encode_output",
    "check_model",
    "check_output",
    "check_source",
]


class InputError(ValueError):
    """An input the command cannot use; the message names the flag, the path and the remedy."""


def check_source(name: str, path: str | None) -> None:
    """``--source`` names a registered source; ``--path`` is given where needed and exists."""
    from pipelines.sources import list_sources, missing_hint, source_path

    if name not in list_sources():
        raise InputError(
            f"--source {name}: unknown source; valid sources: {', '.join(list_sources())}"
        )
    needs_path, default = source_path(name)
    path = path or default
    if needs_path and not path:
        raise InputError(f"--source {name} needs --path (the corpus folder, file or s3:// prefix)")
    if path and _kind(path) == pafs.FileType.NotFound:
        hint = missing_hint(name)
        raise InputError(f"--path {path}: does not exist" + (f" ({hint})" if hint else ""))


def check_dataset(path: str, flag: str = "--data") -> DatasetInfo:
    """A complete prepared dataset at ``path``: ``dataset.json`` valid and every part present."""
    _exists(path, flag)
    manifest = storage.join(path, DATASET_FILE)
    if _kind(manifest) != pafs.FileType.File:
        if _has_any(path, SPLITS):
            raise InputError(
                f"{flag} {path}: is incomplete: split folders but no {DATASET_FILE} (a prepare run "
                "was interrupted or is still running); re-run hashray prepare"
            )
        raise InputError(
            f"{flag} {path}: is not a prepared dataset (no {DATASET_FILE}); run hashray prepare "
            "first and pass its --out"
        )
    from pipelines.dataset import PreparedDataset  # imports Ray (not start it): only when needed

    try:
        info = PreparedDataset.open(path).info
    except (ContractError, ValueError) as err:
        raise InputError(f"{flag} {path}: is not a valid prepared dataset: {err}") from None
    for split in SPLITS:
        for name in info.split(split).files:
            if _kind(storage.join(path, name)) != pafs.FileType.File:
                raise InputError(
                    f"{flag} {path}: is incomplete: {DATASET_FILE} lists {name}, which is "
                    "missing; re-run hashray prepare"
                )
    return info


def check_model(uri: str, flag: str = "--model") -> ModelCard | None:
    """A local model directory with ``model.pt`` and a valid card; MLflow URIs pass (None)."""
    from hashing.models import MODEL_FILE
    from pipelines.model_store import is_mlflow_uri

    if is_mlflow_uri(uri):
        return None
    path = uri.removeprefix("file://")
    _exists(path, flag)
    card, weights = storage.join(path, MODEL_CARD_FILE), storage.join(path, MODEL_FILE)
    if _kind(card) != pafs.FileType.File or _kind(weights) != pafs.FileType.File:
        raise InputError(
            f"{flag} {uri}: is not a model directory (it needs {MODEL_FILE} and "
            f"{MODEL_CARD_FILE}; hashray train writes one under <runs>/<run name>/model)"
        )
    try:
        return ModelCard.read(path)
    except (ContractError, ValueError) as err:
        raise InputError(f"{flag} {uri}: has an invalid model card: {err}") from None


def check_codes(path: str, flag: str = "--codes") -> CodesManifest:
    """A complete codes directory (one split): ``_SUCCESS.json`` valid and every part present."""
    _exists(path, flag)
    manifest = storage.join(path, MANIFEST)
    if _kind(manifest) != pafs.FileType.File:
        if _has_parts(path):
            raise InputError(
                f"{flag} {path}: is incomplete: part files but no {MANIFEST} (the encode run was "
                "interrupted or is still running); re-run hashray encode"
            )
        splits = [s for s in ("query", "database") if _kind(storage.join(path, s)) != _MISSING]
        hint = f"; it holds {' and '.join(f'{s}/' for s in splits)}: pass one" if splits else ""
        raise InputError(f"{flag} {path}: is not a codes directory (no {MANIFEST}){hint}")
    try:
        codes = read_manifest(path)
    except (ContractError, ValueError) as err:
        raise InputError(f"{flag} {path}: is not a valid codes directory: {err}") from None
    for entry in codes.files:
        if _kind(storage.join(path, entry.path)) != pafs.FileType.File:
            raise InputError(
                f"{flag} {path}: is incomplete: {MANIFEST} lists {entry.path}, which is missing; "
                "re-run hashray encode"
            )
    return codes


def check_encode_output(path: str, flag: str = "--codes") -> None:
    """An encode output: ``query/`` and ``database/``, each a complete codes directory."""
    _exists(path, flag)
    if not _has_any(path, ("query", "database")):
        if _kind(storage.join(path, MANIFEST)) == pafs.FileType.File:
            raise InputError(
                f"{flag} {path}: is one codes directory, not an encode output with query/ and "
                "database/; pass --queries DIR --database DIR"
            )
        raise InputError(f"{flag} {path}: is not an encode output (no query/ or database/)")
    for split in ("query", "database"):
        check_codes(storage.join(path, split), flag)


def check_output(path: str, flag: str = "--out") -> None:
    """``--out`` is a directory or does not exist yet (then it is created)."""
    if _kind(path) == pafs.FileType.File:
        raise InputError(f"{flag} {path}: is a file, not a directory")


_MISSING = pafs.FileType.NotFound


def _exists(path: str, flag: str) -> None:
    kind = _kind(path)
    if kind == _MISSING:
        raise InputError(f"{flag} {path}: does not exist")
    if kind != pafs.FileType.Directory:
        raise InputError(f"{flag} {path}: is a file, not a directory")


def _kind(path: str) -> Any:
    """The pyarrow file type at ``path`` (local or s3://); an S3 prefix counts as a directory."""
    fs, inner = storage.filesystem(path)
    return fs.get_file_info(inner).type


def _has_any(path: str, names: tuple[str, ...]) -> bool:
    return any(_kind(storage.join(path, name)) != _MISSING for name in names)


def _has_parts(path: str) -> bool:
    fs, inner = storage.filesystem(path)
    found = fs.get_file_info(pafs.FileSelector(inner, allow_not_found=True))
    return any(posixpath.basename(info.path).startswith(PART_PREFIX) for info in found)
