"""The three file contracts between hashray's stages, defined once (docs/architecture.md).

Model card: ``model.json`` beside ``model.pt`` in a model directory (``ModelCard``). Written by
``hashray train`` only; read by encode, serve and the model store. It holds the network
(``backbone``, ``bits``, ``in_channels``, ``shift_average``, ``has_rotation``: what
``hashing.models.load_model`` rebuilds), the input it was trained on (``image`` height, width and
channels; pixels scaled as ``(x / 255 - mean) / std``) and provenance (method, dataset, classes,
MLflow run, best epoch). Every field is required, ``image`` included: a card without one predates
this contract, and encode and serve refuse it alike.

Prepared dataset: ``dataset.json`` beside ``<split>/part-NNNNN.parquet`` (``DatasetInfo``).
Written last by ``hashray prepare``, so a directory without it is half-written. The splits are
``SPLITS``; each lists its part files and rows, or is ``same_as`` another (the database is the
train split under most protocols). Parts have columns ``id``, ``image`` (PNG bytes of ``image``'s
shape), ``labels`` (list<int32>) and ``source``.

Codes directory: ``part-NNNNN.parquet`` files with columns ``id`` (string), ``code``
(fixed_size_binary[bits/8], ``hashing.codes`` bit order), optional ``labels`` (list<int32>) and
``embedding`` (list<float32>); Parquet schema metadata ``hashray.<key>`` (string values) for the
keys in ``CODES_METADATA_KEYS``, ``hashray.bits`` always; and ``_SUCCESS.json``
(``CodesManifest``: rows, bits, every part's path, rows and sha256). The manifest is removed first
and written last, so a directory without it is half-written and readers refuse it.

Every file is validated when read: a missing field, a value of the wrong type (no coercion: ``"8"``
is not 8) or an unknown key raises ``ContractError`` naming the file and the fields at fault.
Unknown keys are refused rather than dropped: each file has exactly one writer here, so one means
another hashray version or a hand edit, and either should be looked at, not served.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, ClassVar, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

__all__ = [
    "CODES_METADATA_KEYS",
    "CODE_COLUMN",
    "DATASET_FILE",
    "EMBEDDING_COLUMN",
    "ID_COLUMN",
    "LABELS_COLUMN",
    "MANIFEST",
    "METADATA_PREFIX",
    "MODEL_CARD_FILE",
    "PART_PREFIX",
    "SPLITS",
    "CodesManifest",
    "ContractError",
    "DatasetInfo",
    "ImageSpec",
    "ModelCard",
    "PartFile",
    "PreparedImage",
    "SameAs",
    "SplitFiles",
]

MODEL_CARD_FILE = "model.json"
DATASET_FILE = "dataset.json"
SPLITS = ("train", "query", "database")
MANIFEST = "_SUCCESS.json"
PART_PREFIX = "part-"
ID_COLUMN, CODE_COLUMN, LABELS_COLUMN, EMBEDDING_COLUMN = "id", "code", "labels", "embedding"
METADATA_PREFIX = "hashray."
CODES_METADATA_KEYS = (
    "bits",  # code length; equals the manifest's
    "method",  # training method of the model
    "model_uri",  # the model as encode was given it (directory, runs:/ or models:/ URI)
    "model_version",  # the model card's model_version: codes of two versions never mix
    "mlflow_run_id",  # the run that trained the model; evaluate logs its report there
    "created_at",  # ISO-8601 UTC (SOURCE_DATE_EPOCH when set)
    "protocol",  # the prepared dataset's split protocol
    "dataset",  # the prepared dataset's name
    "num_classes",  # width of multi-hot labels
    "split",  # which split of the dataset these codes are
)


class ContractError(ValueError):
    """A contract file with a missing, mistyped or unknown field."""


class _Contract(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)
    _remedy: ClassVar[str] = ""

    @classmethod
    def from_dict(cls, data: Any, source: str) -> Self:
        """Validate ``data``, read from ``source`` (named in the ``ContractError``)."""
        try:
            return cls.model_validate(data)
        except ValidationError as err:
            raise ContractError(f"{source}: {_describe(err)}{cls._remedy}") from None

    def to_dict(self) -> dict[str, Any]:
        """The JSON document; ``from_dict`` of it gives this object back."""
        return self.model_dump(mode="json")


def _describe(err: ValidationError) -> str:
    """Missing fields, unknown fields, then each bad value with what was expected of it."""
    named = {"missing": [], "extra_forbidden": [], "other": []}
    for error in err.errors():
        where = ".".join(map(str, error["loc"])) or "the document"
        kind = error["type"] if error["type"] in named else "other"
        named[kind].append(where if kind != "other" else f"{where}: {error['msg']}")
    parts = [f"missing {', '.join(named['missing'])}"] if named["missing"] else []
    parts += [f"unknown {', '.join(named['extra_forbidden'])}"] if named["extra_forbidden"] else []
    return "; ".join(parts + named["other"])


class ImageSpec(_Contract):
    """The images a model was trained on: height, width, channels (1: grey "L", 3: "RGB")."""

    height: int = Field(gt=0)
    width: int = Field(gt=0)
    channels: Literal[1, 3]

    @property
    def mode(self) -> Literal["L", "RGB"]:
        """The Pillow mode of such images."""
        return "L" if self.channels == 1 else "RGB"

    @property
    def shape(self) -> tuple[int, int, int]:
        """(H, W, C) of a decoded image."""
        return self.height, self.width, self.channels


class ModelCard(_Contract):
    """``model.json``: the network, the input it takes, and where it came from."""

    _remedy = " (re-train the model with this hashray)"

    backbone: str
    bits: int = Field(gt=0)
    in_channels: Literal[1, 3]
    shift_average: bool
    has_rotation: bool
    method: str
    image: ImageSpec
    mean: float
    std: float = Field(gt=0)
    classes: list[str]
    dataset: str
    model_version: str
    mlflow_run_id: str
    best_epoch: int = Field(ge=1)
    best_val_map: float | None  # None: nothing was held out for validation
    rotation: str  # post-hoc rotation fitted after training ("none", "itq", ...)
    pretrain_epochs: int = Field(ge=0)

    @model_validator(mode="after")
    def _image_fits_the_network(self) -> ModelCard:
        if self.image.channels != self.in_channels:
            raise ValueError(
                f"image.channels is {self.image.channels}, in_channels {self.in_channels}"
            )
        return self

    @classmethod
    def read(cls, path: str | Path) -> ModelCard:
        """The card in a model directory, or at the path of a ``model.json``."""
        path = Path(path)
        file = path / MODEL_CARD_FILE if path.is_dir() else path
        try:
            text = file.read_text()
        except FileNotFoundError:
            raise FileNotFoundError(f"{file} not found: not a hashray model directory") from None
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise ContractError(f"{file}: not JSON ({err})") from None
        return cls.from_dict(data, str(file))

    def write(self, directory: str | Path) -> Path:
        """Write ``directory/model.json`` (replacing one); its path."""
        file = Path(directory) / MODEL_CARD_FILE
        file.write_text(json.dumps(self.to_dict(), indent=2, sort_keys=True))
        return file


class PreparedImage(_Contract):
    """Shape and encoding of every image stored in a prepared dataset."""

    height: int = Field(gt=0)
    width: int = Field(gt=0)
    channels: Literal[1, 3]
    mode: Literal["L", "RGB"]
    format: Literal["png"]


class SplitFiles(_Contract):
    """A split's Parquet parts (relative to the dataset directory, in id order) and its rows."""

    rows: int = Field(ge=0)
    files: list[str]


class SameAs(_Contract):
    """A split that is another split (the database is the train split)."""

    same_as: str


class DatasetCounts(_Contract):
    """Rows read from the source, kept, and skipped (unreadable or unlabelled)."""

    input: int = Field(ge=0)
    kept: int = Field(ge=0)
    skipped: int = Field(ge=0)


class SkippedRow(_Contract):
    """A row prepare left out, and why."""

    id: str
    source: str
    reason: str


class DatasetInfo(_Contract):
    """``dataset.json``: what was read, kept, skipped and split, and the images' shape."""

    _remedy = " (re-run hashray prepare)"

    name: str
    source: str
    source_path: str | None  # None: a built-in corpus
    protocol: str
    seed: int
    classes: list[str]  # label i is classes[i]
    multi_label: bool
    image: PreparedImage
    splits: dict[str, SplitFiles | SameAs]
    counts: DatasetCounts
    skipped_reasons: dict[str, int]
    skipped: list[SkippedRow]  # the first of them, sorted by id
    created_at: str
    source_options: dict[str, Any]

    @model_validator(mode="after")
    def _every_split_has_files(self) -> DatasetInfo:
        if sorted(self.splits) != sorted(SPLITS):
            raise ValueError(f"splits are {sorted(self.splits)}, not {list(SPLITS)}")
        aliases = {name: e.same_as for name, e in self.splits.items() if isinstance(e, SameAs)}
        for name, target in aliases.items():
            if target not in self.splits or target in aliases:
                raise ValueError(f"split {name!r} is the same as {target!r}, which has no files")
        return self

    def split(self, name: str) -> SplitFiles:
        """The parts holding split ``name``, ``same_as`` followed."""
        if name not in SPLITS:
            raise ValueError(f"unknown split {name!r}; choose one of {list(SPLITS)}")
        entry = self.splits[name]
        return self.splits[entry.same_as] if isinstance(entry, SameAs) else entry


class PartFile(_Contract):
    """One part of a codes directory: file name, rows, sha256 of its bytes."""

    path: str
    rows: int = Field(ge=0)
    sha256: str = Field(pattern="^[0-9a-f]{64}$")


class CodesManifest(_Contract):
    """``_SUCCESS.json`` of a codes directory: total rows, code length, the parts in order."""

    _remedy = " (re-run hashray encode)"

    rows: int = Field(ge=0)
    bits: int = Field(gt=0)
    files: list[PartFile]
