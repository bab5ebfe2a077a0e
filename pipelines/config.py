"""Typed run configuration: defaults, then a YAML file, then command-line overrides.

A YAML config holds a ``recipe:`` section (``hashing.recipe.Recipe`` fields) and the cluster-side
keys of ``TrainConfig``; unknown keys are errors so a typo never silently does nothing. The resolved
config is written next to the run's outputs and logged to MLflow as flattened params.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from hashing.recipe import Recipe

__all__ = ["TrainConfig", "default_tracking_uri", "flatten", "load_train_config"]


@dataclass
class TrainConfig:
    """Everything ``hashray train`` needs: the data, the recipe, and where and how to run it."""

    data: str
    recipe: Recipe = field(default_factory=Recipe)
    out: str = "runs"
    name: str | None = None
    workers: int = 1
    cpus_per_worker: float = 0.5
    gpus_per_worker: float = 0.0
    max_failures: int = 0
    tracking_uri: str | None = None
    experiment: str = "hashray"
    register_as: str | None = None
    val_max_queries: int = 1000
    val_max_database: int = 5000

    @property
    def use_gpu(self) -> bool:
        return self.gpus_per_worker > 0

    def run_name(self, dataset_name: str) -> str:
        """Deterministic run name: the same recipe resumes the same run, a changed one starts
        anew."""
        if self.name:
            return self.name
        digest = hashlib.sha256(
            json.dumps(self.recipe.to_dict(), sort_keys=True).encode()
        ).hexdigest()
        return f"{dataset_name}-{self.recipe.method}-{self.recipe.bits}-{digest[:8]}"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def default_tracking_uri(base: str | Path = ".") -> str:
    """``MLFLOW_TRACKING_URI`` or an absolute local sqlite store under ``base``.

    Absolute, because Ray Train workers run in Ray's session folder, not the caller's cwd.
    """
    env = os.environ.get("MLFLOW_TRACKING_URI")
    if env:
        return env
    return f"sqlite:///{Path(base).resolve() / 'mlflow.db'}"


def load_train_config(
    path: str | Path | None, data: str | None, overrides: dict[str, Any] | None = None
) -> TrainConfig:
    """Merge YAML (optional) and overrides (None values ignored) over the defaults."""
    values: dict[str, Any] = {}
    if path is not None:
        loaded = yaml.safe_load(Path(path).read_text()) or {}
        if not isinstance(loaded, dict):
            raise ValueError(
                f"{path}: a config file must hold a mapping, got {type(loaded).__name__}"
            )
        values.update(loaded)
    config_recipe = Recipe.from_dict(dict(values.pop("recipe", None) or {}))
    recipe_values: dict[str, Any] = {}
    for key, value in (overrides or {}).items():
        if value is None:
            continue
        if key in {f.name for f in fields(Recipe)}:
            recipe_values[key] = value
        else:
            values[key] = value
    # Another method than the config's starts from its own loss parameters (Recipe.for_method).
    recipe = config_recipe.for_method(recipe_values.pop("method", config_recipe.method))
    if data is not None:
        values["data"] = data
    if "data" not in values:
        raise ValueError("no dataset given: pass --data DIR (a folder written by hashray prepare)")
    known = {f.name for f in fields(TrainConfig)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f"unknown config keys {unknown}; valid keys: {sorted(known | {'recipe'})}")
    config = TrainConfig(**values, recipe=Recipe.from_dict({**recipe.to_dict(), **recipe_values}))
    _validate(config)
    return config


def flatten(values: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested dict -> flat ``a.b.c`` keys (MLflow params are flat)."""
    flat: dict[str, Any] = {}
    for key, value in values.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat


def _validate(config: TrainConfig) -> None:
    recipe = config.recipe
    if not 1 <= recipe.bits <= 1024:
        raise ValueError(f"bits must be between 1 and 1024, got {recipe.bits}")
    if recipe.epochs < 1:
        raise ValueError(f"epochs must be >= 1, got {recipe.epochs}")
    if config.workers < 1:
        raise ValueError(f"workers must be >= 1, got {config.workers}")
    if not 0 < config.cpus_per_worker:
        raise ValueError(f"cpus_per_worker must be > 0, got {config.cpus_per_worker}")
