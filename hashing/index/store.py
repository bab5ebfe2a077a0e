"""Save format of a HammingIndex: a directory of .npy arrays, memory-mapped on load, and a header.

Layout (version 2): ``index.json`` (format, version, bits, count, model_version and per array its
file and sha256) plus one ``.npy`` file per array. Arrays are plain little-endian .npy without
pickles, so ``load`` maps them (``np.load(mmap_mode="r")``) instead of reading them: opening a
large index costs the checksum pass (skippable with ``verify=False``) and nothing else, and pages
come in as queries touch them. The header is written last and removed first, so a directory
without it is a half-written index and will not load. Version 1 (codes.npy and ids.npy with a
``sha256`` map in the header) still loads. ``HammingIndex.save`` writes its live items' ``codes``
and ``ids`` in id order and their code groups (``members``, ``offsets``: hashing/index/groups.py),
so ``load`` needs no sort.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = ["StoredIndex", "load", "save"]

FORMAT = "hashray.hamming_index"
VERSION = 2
HEADER = "index.json"
_HASH_BLOCK = 1 << 22  # bytes hashed per read


@dataclass(frozen=True)
class StoredIndex:
    """What ``load`` returns: header fields and the (memory-mapped) arrays by name."""

    bits: int
    count: int
    model_version: str | None
    arrays: dict[str, np.ndarray]


def save(
    path: str | Path, *, bits: int, model_version: str | None, arrays: dict[str, np.ndarray]
) -> None:
    """Write ``arrays`` (the first one's length is the item count) and then the header."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    (path / HEADER).unlink(missing_ok=True)  # an old header must not vouch for new arrays
    entries = {}
    for name, array in arrays.items():
        file = path / f"{name}.npy"
        np.save(file, np.ascontiguousarray(array), allow_pickle=False)
        entries[name] = {"file": file.name, "sha256": _sha256(file)}
    header = {
        "format": FORMAT,
        "version": VERSION,
        "bits": int(bits),
        "count": len(next(iter(arrays.values()))),
        "model_version": model_version,
        "arrays": entries,
    }
    (path / HEADER).write_text(json.dumps(header, indent=2) + "\n")


def load(path: str | Path, verify: bool = True) -> StoredIndex:
    """Read the header and map the arrays; ``verify`` checks each file's sha256 first."""
    path = Path(path)
    header_path = path / HEADER
    if not header_path.is_file():
        raise FileNotFoundError(f"no {HEADER} in {path}: not a saved index or half-written")
    header = json.loads(header_path.read_text())
    version = header.get("version")
    if header.get("format") != FORMAT or version not in (1, VERSION):
        raise ValueError(
            f"{header_path}: expected format {FORMAT!r} version 1 or {VERSION}, got"
            f" {header.get('format')!r} version {version!r}"
        )
    if version == 1:
        entries = {
            Path(file).stem: {"file": file, "sha256": digest}
            for file, digest in header["sha256"].items()
        }
    else:
        entries = header["arrays"]
    arrays = {}
    for name, entry in entries.items():
        file = path / entry["file"]
        if verify and _sha256(file) != entry["sha256"]:
            raise ValueError(f"checksum mismatch for {file}: the index is corrupt or was modified")
        arrays[name] = np.load(file, mmap_mode="r", allow_pickle=False)
    return StoredIndex(
        int(header["bits"]), int(header["count"]), header.get("model_version"), arrays
    )


def _sha256(file: Path) -> str:
    digest = hashlib.sha256()
    with open(file, "rb") as stream:
        while block := stream.read(_HASH_BLOCK):
            digest.update(block)
    return digest.hexdigest()
