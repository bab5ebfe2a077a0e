"""NUS-WIDE as published: an image list, one 0/1 label file per concept, the images under Flickr/.

Rows are listed on the driver and read in Ray Data tasks (``file_rows``); the default classes are
the NUSWIDE_CONCEPTS most frequent concepts (protocol ``nuswide21``, docs/evaluation.md).
"""

from __future__ import annotations

import re

import numpy as np
import pyarrow.fs as pafs

from pipelines import storage
from pipelines.sources import register
from pipelines.sources.rows import Source, file_rows

__all__ = ["NUSWIDE_CONCEPTS", "nuswide_source"]

# nuswide21: the 21 most frequent of NUS-WIDE's 81 concepts (docs/evaluation.md).
NUSWIDE_CONCEPTS = 21


@register("nuswide")
def nuswide_source(path: str | None, classes: list[str] | None) -> Source:
    """NUS-WIDE as published: ``ImageList/Imagelist.txt`` names one image per line (Windows paths
    such as ``C:\\ImageData\\Flickr\\actor\\0001_2124494179.jpg``); ``Groundtruth/AllLabels/
    Labels_<concept>.txt`` holds one 0/1 per line, in the list's order; the images lie under
    ``Flickr/<folder>/<file>``, found by the last two parts of each listed path (also the row id).

    Classes: the NUSWIDE_CONCEPTS most frequent concepts (ties by name), in alphabetical order, or
    the concepts named by ``classes``. An image with none of them is skipped with a reason.
    """
    listed = storage.read_bytes(storage.join(path, "ImageList", "Imagelist.txt"))
    images = [line.strip() for line in listed.decode("utf-8-sig").splitlines() if line.strip()]
    concepts, matrix = _nuswide_labels(path, len(images))
    if classes:
        missing = [name for name in classes if name not in concepts]
        if missing:
            raise ValueError(f"{path}: no concept {missing[0]!r} in Groundtruth/AllLabels")
        names = list(classes)
    else:
        counts = matrix.sum(axis=0)
        ranked = sorted(range(len(concepts)), key=lambda j: (-int(counts[j]), concepts[j]))
        names = sorted(concepts[j] for j in ranked[:NUSWIDE_CONCEPTS])
    chosen = matrix[:, [concepts.index(name) for name in names]]
    ids, uris, labels, skipped = [], [], [], []
    for written, row in zip(images, chosen):
        relative = "/".join(written.replace("\\", "/").split("/")[-2:])
        uri = storage.join(path, "Flickr", *relative.split("/"))
        if row.any():
            ids.append(relative)
            uris.append(uri)
            labels.append(np.flatnonzero(row).tolist())
        else:
            skipped.append({"id": relative, "source": uri, "reason": "none of the classes"})
    if not ids:
        raise ValueError(f"{path}: no image carries any of the concepts {names}")
    return Source("nuswide", file_rows(ids, uris, labels), names, "nuswide21", "RGB", 64, skipped)


def _nuswide_labels(path: str, n: int) -> tuple[list[str], np.ndarray]:
    """Concept names (sorted) and the 0/1 matrix (n, concepts) from Groundtruth/AllLabels."""
    fs, folder = storage.filesystem(storage.join(path, "Groundtruth", "AllLabels"))
    found = {}
    for info in fs.get_file_info(pafs.FileSelector(folder, allow_not_found=True)):
        match = re.fullmatch(r"Labels_(.+)\.txt", info.base_name)
        if match and info.type == pafs.FileType.File:
            found[match.group(1)] = info.path
    if not found:
        raise FileNotFoundError(f"{path}: no Groundtruth/AllLabels/Labels_<concept>.txt files")
    concepts = sorted(found)
    columns = []
    for concept in concepts:
        with fs.open_input_stream(found[concept]) as stream:
            text = np.frombuffer(stream.read(), dtype=np.uint8)
        if not np.isin(text, np.frombuffer(b"01 \t\r\n", dtype=np.uint8)).all():
            raise ValueError(f"{found[concept]}: expected one 0 or 1 per line")
        digits = text[(text == ord("0")) | (text == ord("1"))] - ord("0")
        if len(digits) != n:
            raise ValueError(f"{found[concept]}: {len(digits)} labels for {n} listed images")
        columns.append(digits)
    return concepts, np.stack(columns, axis=1)
