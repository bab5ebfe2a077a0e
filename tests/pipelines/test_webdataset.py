"""The webdataset source: tar shards the tests write member by member, prepared on a real local Ray.

Also what makes Ray Data's own reader unfit here (its docstring says so): a truncated shard ends
the job; a test pins that, so the day Ray reads damaged shards gracefully we hear of it.
"""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
from corpora import kept_rows, pixels, png_bytes, write_tar
from PIL import Image

from pipelines.prepare import prepare

pytestmark = [pytest.mark.ray, pytest.mark.timeout(300)]


def jpeg_bytes(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def test_shards_with_class_ids(ray_cluster, tmp_path):
    rng = np.random.default_rng(21)
    expected = {}  # row id -> (pixels, class id)
    for shard in range(2):
        members = []
        for i in range(8):
            key, label = f"img/{shard}{i:03d}", (shard + i) % 3
            image = rng.integers(0, 256, (6, 6, 3), dtype=np.uint8)
            if i == 0:  # one JPEG per shard: compared with PIL's decoding of the same bytes
                data = jpeg_bytes(image)
                members.append((f"{key}.jpg", data))
                image = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
            else:
                members.append((f"{key}.png", png_bytes(image)))
            members.append((f"{key}.cls", f"{label}\n".encode()))
            expected[f"shard-{shard}.tar/{key}"] = (image, label)
        write_tar(tmp_path / "shards" / f"shard-{shard}.tar", members)
    (tmp_path / "shards" / "README.txt").write_text("not a shard: ignored")

    meta = prepare(
        "webdataset",
        str(tmp_path / "out"),
        path=str(tmp_path / "shards"),
        image_size=6,
        progress=False,
    )
    assert meta["source"] == "webdataset" and meta["classes"] == ["0", "1", "2"]
    assert meta["counts"] == {"input": 16, "kept": 16, "skipped": 0}
    rows = kept_rows(tmp_path / "out", meta)
    assert sorted(row["id"] for row in rows) == sorted(expected)
    for row in rows:
        image, label = expected[row["id"]]
        assert row["labels"] == [label]
        np.testing.assert_array_equal(pixels(row["image"]), image)
        shard, _, key = row["id"].partition("/")
        assert row["source"] == f"{tmp_path / 'shards' / shard}#{key}"


def test_json_labels_and_damaged_shards(ray_cluster, tmp_path):
    rng = np.random.default_rng(22)

    def png() -> bytes:
        return png_bytes(rng.integers(0, 256, (6, 6, 3), dtype=np.uint8))

    def labels(value) -> bytes:
        return json.dumps(value).encode()

    write_tar(
        tmp_path / "shards" / "a.tar",
        [
            ("both.png", png()),
            ("both.json", labels({"labels": ["cat", "dog"]})),
            ("one.png", png()),
            ("one.json", labels({"label": "dog"})),
            ("noimage.json", labels({"label": "cat"})),
            ("nolabel.png", png()),
            ("badjson.png", png()),
            ("badjson.json", b"{not json"),
            ("bird.png", png()),
            ("bird.cls", b"bird"),
            ("junk.jpg", rng.bytes(300)),
            ("junk.cls", b"cat"),
            ("split.png", png()),
            ("between.png", png()),
            ("between.cls", b"cat"),
            ("split.cls", b"dog"),
        ],
    )
    # Three samples of 1 KB each (a 512-byte header + the padded contents per member); the
    # copy is cut inside the third sample's image, so the first two are whole.
    whole = write_tar(
        tmp_path / "whole.tar",
        [
            (f"t{i}.{suffix}", data)
            for i in range(3)
            for suffix, data in (("png", png()), ("cls", b"cat"))
        ],
    )
    (tmp_path / "shards" / "b.tar").write_bytes(whole[: 4 * 1024 + 512 + 40])
    (tmp_path / "shards" / "c.tar").write_bytes(rng.bytes(2000))  # not a tar at all

    meta = prepare(
        "webdataset",
        str(tmp_path / "out"),
        path=str(tmp_path / "shards"),
        classes=["cat", "dog"],
        image_size=6,
        progress=False,
    )
    kept = {row["id"]: row["labels"] for row in kept_rows(tmp_path / "out", meta)}
    assert kept == {
        "a.tar/both": [0, 1],
        "a.tar/one": [1],
        "a.tar/between": [0],
        "b.tar/t0": [0],
        "b.tar/t1": [0],
    }
    assert meta["multi_label"] is True
    assert [(row["id"], row["reason"]) for row in meta["skipped"]] == [
        ("a.tar/badjson", "unreadable labels"),
        ("a.tar/bird", "unknown label 'bird'"),
        ("a.tar/junk", "not an image"),
        ("a.tar/noimage", "no image"),
        ("a.tar/nolabel", "no labels"),
        ("a.tar/split", "no labels"),
        ("a.tar/split#9", "key not contiguous in the shard"),
        ("b.tar#damaged", "truncated shard"),
        ("c.tar#damaged", "unreadable"),
    ]
    assert meta["counts"] == {"input": 14, "kept": 5, "skipped": 9}

    # Without a class list the names come from the shards (a first pass over them).
    found = prepare(
        "webdataset",
        str(tmp_path / "out2"),
        path=str(tmp_path / "shards"),
        image_size=6,
        progress=False,
    )
    assert found["classes"] == ["bird", "cat", "dog"]
    assert found["counts"]["kept"] == 6  # the bird sample now has a known label


def test_ray_data_reader_ends_the_job_on_a_truncated_shard(ray_cluster, tmp_path):
    """Why the source reads shards itself (see pipelines/sources/webdataset.py)."""
    import ray.data

    whole = write_tar(tmp_path / "whole.tar", [("k0.png", b"x" * 2000), ("k0.cls", b"1")])
    (tmp_path / "shards").mkdir()
    (tmp_path / "shards" / "cut.tar").write_bytes(whole[:1200])
    with pytest.raises(Exception, match="unexpected end of data"):
        ray.data.read_webdataset(str(tmp_path / "shards"), decoder=None).take_all()
