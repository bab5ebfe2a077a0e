"""The training recipe: every knob of one training run, with defaults that work on mnist5k.

The plain example and the Ray trainer both read a ``Recipe``, so the same settings give the same
model whichever runs them; the pipeline config embeds it (its ``recipe:`` section) and adds the
cluster-side options. Unknown keys are errors, so a typo in a config never silently does nothing.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import yaml

__all__ = ["Recipe"]


@dataclass
class Recipe:
    """Hyperparameters of one run; ``loss_params`` go to ``hashing.losses.build``
    (None = default)."""

    method: str = "adsh"
    bits: int = 32
    backbone: str = "smallcnn"
    pretrained_path: str | None = None
    epochs: int = 30
    batch_size: int = 64
    optimizer: str = "adam"
    lr: float = 1e-3
    weight_decay: float = 1e-4
    warmup_epochs: int = 1
    augment: bool = True
    # Also mirror half the training images left-right (symmetric classes: clothing, photos).
    hflip: bool = False
    seed: int = 0
    # Share of train held out to pick the best epoch; 0 fits every row and keeps the last epoch.
    val_fraction: float = 0.1
    loss_params: dict[str, Any] = field(default_factory=dict)
    # Method stages (a loss's ``stages``); None picks the method's default.
    pretrain_epochs: int | None = None  # classification epochs before hashing (exphash: 3)
    rotation: str | None = None  # post-hoc rotation: "none", "itq" or "search" (sdsh: "search")
    # Codes from the mean output over each image and its four one-pixel shifts (5x encode cost).
    shift_average: bool = False

    def stage_plan(self, stages: tuple[str, ...]) -> tuple[int, str]:
        """(classification pre-training epochs, rotation kind) for a method declaring ``stages``.

        A rotation is fitted on the validation split held out from train, so it needs
        ``val_fraction`` above 0.
        """
        pretrain = self.pretrain_epochs
        if pretrain is None:
            pretrain = 3 if "classification_pretrain" in stages else 0
        rotation = self.rotation or ("search" if "rotation" in stages else "none")
        if rotation not in ("none", "itq", "search"):
            raise ValueError(f"rotation must be none, itq or search, got {rotation!r}")
        if rotation != "none" and self.val_fraction == 0:
            raise ValueError(
                f"the {rotation!r} rotation is fitted on the validation split held out from "
                f"train; val_fraction 0 holds none out (use e.g. 0.1, or rotation: none)"
            )
        return pretrain, rotation

    def for_method(self, method: str) -> Recipe:
        """This recipe for ``method``. Loss parameters belong to the method they were tuned for,
        so another method starts from its own defaults; every other setting is kept."""
        if method == self.method:
            return self
        return replace(self, method=method, loss_params={})

    def to_dict(self) -> dict[str, Any]:
        """Plain dict (JSON/YAML-ready)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> Recipe:
        """Build from a dict, refusing unknown keys so a typo in a config is an error, not a
        no-op."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown recipe keys {unknown}; valid keys: {sorted(known)}")
        return cls(**values)

    @classmethod
    def from_yaml(cls, path: str | Path) -> Recipe:
        """The ``recipe:`` section of a config YAML (a pipeline config); defaults when absent."""
        loaded = yaml.safe_load(Path(path).read_text()) or {}
        if not isinstance(loaded, dict):
            raise TypeError(
                f"{path}: a config file must hold a mapping, got {type(loaded).__name__}"
            )
        return cls.from_dict(dict(loaded.get("recipe") or {}))
