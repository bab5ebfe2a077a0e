"""One sub-folder per class: ``<root>/<class>/.../<file>``; the row id is the path under the root.

Listed on the driver, read in Ray Data tasks (``file_rows``): a file that vanishes or cannot be
read costs one row, not the job. Files outside a class folder, or in a folder not among
``classes``, are skipped with a reason; hidden files and folders (``.DS_Store``, ``.git``) are not
part of the corpus.
"""

from __future__ import annotations

from pipelines import storage
from pipelines.sources import register
from pipelines.sources.rows import Source, file_rows

__all__ = ["folder_source"]


@register("folder")
def folder_source(path: str | None, classes: list[str] | None) -> Source:
    root = storage.inner_path(path).replace("\\", "/").rstrip("/")
    prefix = ("s3://" if storage.is_s3(path) else "") + root + "/"
    # Listed here, read in tasks: a file that vanishes or cannot be read costs one row, not the job.
    # Kept as plain columns (folder names shared): a 100k-file corpus lists in a few dozen MB.
    ids, uris, folders, found = [], [], [], {}
    for relative, is_file in storage.walk(path):
        if relative.startswith(".") or "/." in relative:
            continue  # .DS_Store, .git and friends are not part of the corpus
        top, _, rest = relative.partition("/")
        if not is_file:
            if not rest:
                found.setdefault(top, top)
            continue
        ids.append(relative)
        uris.append(prefix + relative)
        folders.append(found.setdefault(top, top) if rest else None)
    if not found:
        raise ValueError(f"{path}: no class sub-folders (expected one folder per class)")
    names = list(classes) if classes else sorted(found)
    index = {name: i for i, name in enumerate(names)}
    usable = [i for i, folder in enumerate(folders) if folder in index]
    skipped = [
        {
            "id": ids[i],
            "source": uris[i],
            "reason": "not in a class folder" if folder is None else "unknown class",
        }
        for i, folder in enumerate(folders)
        if folder not in index
    ]
    if not usable:
        raise ValueError(f"{path}: no image files in the class folders {names}")
    rows = file_rows(
        [ids[i] for i in usable], [uris[i] for i in usable], [[index[folders[i]]] for i in usable]
    )
    return Source("folder", rows, names, "random", "RGB", 64, skipped)
