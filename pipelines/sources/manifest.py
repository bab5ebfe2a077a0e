"""A manifest: a .csv (``path,labels``) or .jsonl (``{path, labels}``) file listing images and
their class names (several per row: ``;`` or ``|`` in CSV, a list in JSONL).

Relative paths are relative to the manifest (also for s3:// manifests) and are the row ids;
absolute paths and URIs are their own ids. Rows without a path or labels, repeated paths and
unknown labels are skipped with a reason; the files are read in Ray Data tasks (``file_rows``).
"""

from __future__ import annotations

import csv
import io
import json
import os
import posixpath
import re

from pipelines import storage
from pipelines.sources import register
from pipelines.sources.rows import Source, file_rows

__all__ = ["manifest_source"]


@register("manifest")
def manifest_source(path: str | None, classes: list[str] | None) -> Source:
    entries, skipped = _read_manifest(path)
    names = list(classes) if classes else sorted({label for e in entries for label in e["labels"]})
    index = {name: i for i, name in enumerate(names)}
    usable = []
    for entry in entries:
        unknown = [label for label in entry["labels"] if label not in index]
        if unknown:
            reason = f"unknown label {unknown[0]!r}"
            skipped.append({"id": entry["id"], "source": entry["uri"], "reason": reason})
        else:
            usable.append(entry)
    if not usable:
        raise ValueError(f"{path}: no usable rows in the manifest")
    rows = file_rows(
        [e["id"] for e in usable],
        [e["uri"] for e in usable],
        [[index[label] for label in e["labels"]] for e in usable],
    )
    return Source("manifest", rows, names, "random", "RGB", 64, skipped)


def _read_manifest(path: str) -> tuple[list[dict], list[dict[str, str]]]:
    """Manifest entries ``{id, uri, labels: [names]}`` and the rows refused (no path, no labels,
    duplicates)."""
    text = storage.read_bytes(path).decode("utf-8-sig")
    if path.endswith((".jsonl", ".ndjson")):
        records = [json.loads(line) for line in text.splitlines() if line.strip()]
    elif path.endswith(".csv"):
        records = list(csv.DictReader(io.StringIO(text)))
    else:
        raise ValueError(
            f"{path}: a manifest is a .csv (path,labels) or .jsonl ({{path, labels}}) file"
        )
    base = posixpath.dirname(path) if storage.is_s3(path) else None
    entries, skipped, seen = [], [], set()
    for number, record in enumerate(records, start=1):
        written = str(record.get("path") or "").strip()
        labels = record.get("labels") or []
        if isinstance(labels, str):
            labels = re.split(r"[;|]", labels)
        labels = [str(label).strip() for label in labels if str(label).strip()]
        uri, entry_id = _resolve(written, path, base)
        if not written or not labels or entry_id in seen:
            reason = "no path" if not written else "no labels" if not labels else "duplicate path"
            skipped.append({"id": entry_id, "source": uri or f"{path}:{number}", "reason": reason})
            continue
        seen.add(entry_id)
        entries.append({"id": entry_id, "uri": uri, "labels": list(dict.fromkeys(labels))})
    return entries, skipped


def _resolve(written: str, manifest: str, s3_base: str | None) -> tuple[str, str]:
    """(uri to read, row id) for a manifest path: ids of relative paths are those paths."""
    if not written:
        return "", ""
    if storage.is_s3(written) or os.path.isabs(written):
        return written, written
    relative = posixpath.normpath(written.replace("\\", "/"))
    if s3_base is not None:
        return posixpath.join(s3_base, relative), relative
    return os.path.join(os.path.dirname(os.path.abspath(manifest)), relative), relative
