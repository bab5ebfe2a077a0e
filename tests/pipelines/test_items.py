"""ItemStore over a prepared dataset written here by the contract (pyarrow, small row groups).

No Ray: the store reads Parquet with pyarrow. The expected bytes are the PNGs written here.
"""

from __future__ import annotations

import io
import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from pipelines.serve import items as items_module
from pipelines.serve.items import ItemStore


def png(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def write_dataset(root, side: int = 28, *, same_as: bool = True) -> dict[str, tuple]:
    """query: 7 rows in one part; train: 30 rows over two parts of 4-row groups; database =
    train (or its own part repeating 5 train rows and 3 more). -> id: (png, labels, split)."""
    rng = np.random.default_rng(3)
    expected = {}

    def write(split, name, ids, group_rows=4):
        rows = []
        for item in ids:
            if item not in expected:
                pixels = rng.integers(0, 256, (side, side), dtype=np.uint8)
                labels = sorted({int(x) for x in rng.integers(0, 3, rng.integers(1, 3))})
                expected[item] = (png(pixels), labels, split)
            rows.append(item)
        table = pa.table(
            {
                "id": pa.array(rows, pa.string()),
                "image": pa.array([expected[i][0] for i in rows], pa.binary()),
                "labels": pa.array([expected[i][1] for i in rows], pa.list_(pa.int32())),
                "source": pa.array([f"/corpus/{i}" for i in rows], pa.string()),
            }
        )
        (root / split).mkdir(exist_ok=True)
        pq.write_table(table, root / split / name, row_group_size=group_rows)
        return {"rows": len(rows), "files": [f"{split}/{name}"]}

    query = write("query", "part-00000.parquet", [f"q/{i:02d}.png" for i in range(7)])
    first = write("train", "part-00000.parquet", [f"t/{i:02d}.png" for i in range(16)])
    second = write("train", "part-00001.parquet", [f"t/{i:02d}.png" for i in range(16, 30)])
    train = {"rows": 30, "files": first["files"] + second["files"]}
    if same_as:
        database = {"same_as": "train"}
    else:  # a database part of its own: five train rows again and three of its own
        ids = [f"t/{i:02d}.png" for i in range(5)] + [f"d/{i}.png" for i in range(3)]
        database = write("database", "part-00000.parquet", ids, group_rows=3)
    info = {
        "name": "tiny",
        "source": "folder",
        "source_path": "/corpus",
        "protocol": "random",
        "seed": 0,
        "classes": ["zero", "one", "two"],
        "multi_label": True,
        "image": {"height": side, "width": side, "channels": 1, "mode": "L", "format": "png"},
        "splits": {"query": query, "train": train, "database": database},
        "counts": {"input": 37, "kept": 37, "skipped": 0},
        "skipped_reasons": {},
        "skipped": [],
        "created_at": "2024-01-01T00:00:00+00:00",
        "source_options": {},
    }
    (root / "dataset.json").write_text(json.dumps(info))
    return expected


def test_items_labels_and_bytes(tmp_path):
    expected = write_dataset(tmp_path)
    store = ItemStore(str(tmp_path))
    assert len(store) == 37
    for item, (data, labels, split) in expected.items():
        # the database is the train split here, and database is reported first
        assert store.item(item) == {
            "id": item,
            "split": "database" if split == "train" else split,
            "labels": labels,
            "label_names": [["zero", "one", "two"][i] for i in labels],
        }
        assert store.image(item) == data  # the stored PNG, byte for byte
    summary = store.summary()
    assert summary["splits"] == {"database": 30, "query": 7, "train": 30}
    assert summary["items"] == 37 and summary["classes"] == ["zero", "one", "two"]
    for missing in ["nope", "../dataset.json", "", "q/00.png/"]:
        with pytest.raises(KeyError):
            store.item(missing)
        with pytest.raises(KeyError):
            store.image(missing)


def test_a_database_of_its_own_and_sampling(tmp_path):
    expected = write_dataset(tmp_path, same_as=False)
    store = ItemStore(str(tmp_path))
    assert len(store) == 40
    assert store.item("d/1.png")["split"] == "database"
    assert store.image("d/2.png") == expected["d/2.png"][0]
    assert store.item("t/03.png")["split"] == "database"  # in database and train: database
    seen = {store.sample("query")["id"] for _ in range(200)}
    assert seen == {f"q/{i:02d}.png" for i in range(7)}
    database = {f"t/{i:02d}.png" for i in range(5)} | {f"d/{i}.png" for i in range(3)}
    assert {store.sample("database")["id"] for _ in range(300)} == database
    with pytest.raises(KeyError):
        store.sample("validation")


def test_reads_stay_within_the_cache(tmp_path, monkeypatch):
    """Row groups are read on demand and evicted past CACHE_BYTES; answers stay right."""
    expected = write_dataset(tmp_path)
    store = ItemStore(str(tmp_path))
    one_group = max(len(data) for data, _, _ in expected.values()) * 4
    monkeypatch.setattr(items_module, "CACHE_BYTES", 2 * one_group)
    for item in sorted(expected, reverse=True) * 2:
        assert store.image(item) == expected[item][0]
        assert len(store._cache) <= 3 and store._cached_bytes <= 3 * one_group


def test_large_images_come_back_as_thumbnails(tmp_path):
    write_dataset(tmp_path, side=300)
    store = ItemStore(str(tmp_path))
    with Image.open(io.BytesIO(store.image("q/03.png"))) as image:
        assert image.format == "PNG" and image.size == (256, 256)
