"""Find a trained model by URI: a local model directory, ``runs:/<run_id>/<path>`` or
``models:/...``.

MLflow URIs are downloaded with ``mlflow.artifacts.download_artifacts`` into a cache
(``$HASHRAY_CACHE_DIR`` or ``~/.cache/hashray``) keyed by tracking URI and pinned URI. Registry
aliases, ``latest`` and stages are pinned to a version number first, so a cached copy is always the
artifact it names and a moved alias is downloaded afresh. Downloads land in a temporary folder and
are renamed into place, so concurrent encode actors on one node never see half a model.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch

from hashing.models import MODEL_FILE, HashModel, load_model
from pipelines.contracts import MODEL_CARD_FILE, ModelCard

__all__ = ["cache_dir", "is_mlflow_uri", "load_for_inference", "resolve_model"]

_MLFLOW_SCHEMES = ("runs:/", "models:/")


def is_mlflow_uri(uri: str) -> bool:
    """True for ``runs:/`` and ``models:/`` URIs."""
    return str(uri).startswith(_MLFLOW_SCHEMES)


def cache_dir() -> Path:
    """Where downloaded models are kept: ``$HASHRAY_CACHE_DIR/models`` or
    ``~/.cache/hashray/models``."""
    root = os.environ.get("HASHRAY_CACHE_DIR") or Path.home() / ".cache" / "hashray"
    return Path(root) / "models"


def resolve_model(uri: str, *, tracking_uri: str | None = None) -> Path:
    """Local directory holding ``model.pt`` + ``model.json`` for a local path or an MLflow URI."""
    if not is_mlflow_uri(uri):
        path = Path(uri.removeprefix("file://")).expanduser().resolve()
        if not path.is_dir():
            raise FileNotFoundError(f"model {uri!r}: no such directory")
        return _model_dir_in(path, uri)
    import mlflow.artifacts
    from mlflow import MlflowClient

    tracking_uri = tracking_uri or mlflow.get_tracking_uri()
    # The registry lives in the tracking store here; without this mlflow looks in its default one.
    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    pinned, source = _pin_version(uri, client)
    key = hashlib.sha256(f"{tracking_uri or ''}\n{pinned}".encode()).hexdigest()[:20]
    final = cache_dir() / key
    if (final / MODEL_CARD_FILE).is_file() and (final / MODEL_FILE).is_file():
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=final.parent, prefix=".download-"))
    try:
        local = mlflow.artifacts.download_artifacts(
            artifact_uri=source, dst_path=str(staging), tracking_uri=tracking_uri
        )
        found = _model_dir_in(Path(local), uri)
        try:
            found.rename(final)
        except OSError:  # another process on this node finished first; its copy is the same
            if not (final / MODEL_CARD_FILE).is_file():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return final


def load_for_inference(
    uri: str, *, tracking_uri: str | None = None, device: str | torch.device = "cpu"
) -> tuple[HashModel, ModelCard]:
    """The model named by ``uri`` in eval mode on ``device``, and its model card.

    The card is read (and validated) first, so a model without a valid card is refused before
    its weights are loaded.
    """
    directory = resolve_model(uri, tracking_uri=tracking_uri)
    card = ModelCard.read(directory)
    return load_model(directory).to(device).eval(), card


def _pin_version(uri: str, client: Any) -> tuple[str, str]:
    """``(pinned URI, artifact URI to download)``; aliases, ``latest`` and stages become a version.

    Registry URIs are turned into their artifact location here, with our client: mlflow's own
    ``models:/`` download looks the model up in the global default registry, not ours.
    """
    if not uri.startswith("models:/"):
        return uri, uri
    from mlflow.store.artifact.utils.models import get_model_name_and_version

    resolved = get_model_name_and_version(client, uri)
    if len(resolved) == 1:  # models:/<model_id>: a logged model id is immutable already
        return uri, client.get_logged_model(resolved[0]).artifact_location
    name, version = resolved
    return f"models:/{name}/{version}", client.get_model_version_download_uri(name, version)


def _model_dir_in(root: Path, uri: str) -> Path:
    """``root`` itself or the one folder below it that holds both model files; clear error
    otherwise."""
    candidates = sorted(
        {p.parent for p in root.rglob(MODEL_CARD_FILE) if (p.parent / MODEL_FILE).is_file()}
    )
    if (root / MODEL_CARD_FILE).is_file() and (root / MODEL_FILE).is_file():
        return root
    if len(candidates) == 1:
        return candidates[0]
    found = sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())[:10]
    reason = f"{len(candidates)} model folders" if candidates else f"files: {found or 'none'}"
    raise ValueError(
        f"{uri!r} is not a hashray model directory: expected {MODEL_FILE} + {MODEL_CARD_FILE} "
        f"({reason})"
    )
