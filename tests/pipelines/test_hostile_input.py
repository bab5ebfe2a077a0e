"""Broken and unusual files, each made here, through the whole prepare job (real local Ray):
good rows are all kept, bad ones are listed in dataset.json with a reason, the job never dies."""

from __future__ import annotations

import io
import json
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from corpora import kept_rows, pixels
from PIL import Image

from pipelines.prepare import prepare

pytestmark = [pytest.mark.ray, pytest.mark.timeout(300)]
SIDE = 8


def encoded(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def png_bomb() -> bytes:
    """A tiny PNG declaring 100,000 x 100,000 pixels (chunks: length, type, body, CRC)."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return (
            struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
        )

    header = struct.pack(">IIBBBBB", 100_000, 100_000, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"\0" * 1000))
        + chunk(b"IEND", b"")
    )


def hostile_corpus(root: Path) -> tuple[dict[str, str], dict[str, np.ndarray]]:
    """Class folders a/ and b/ full of trouble: {file: reason} for the bad, {file: RGB} for the
    good.

    Good images are SIDE x SIDE (or 1 x 1), so the expected pixels need no resampling.
    """
    rng = np.random.default_rng(11)
    rgb = rng.integers(0, 256, (SIDE, SIDE, 3), dtype=np.uint8)
    jpeg, png = (
        encoded(Image.fromarray(rgb), "JPEG", quality=95),
        encoded(Image.fromarray(rgb), "PNG"),
    )
    bad = {
        "a/zero.png": b"",
        "a/cut.jpg": jpeg[: len(jpeg) // 2],
        "a/cut.png": png[: len(png) // 2],
        "a/noise.jpg": rng.bytes(3000),
        "a/notes.png": b"these are my notes, not a picture\n" * 10,
        "a/bomb.png": png_bomb(),
        "zzz/other.png": png,  # a folder that is not in the class list
    }
    reasons = {
        "a/zero.png": "empty file",
        "a/cut.jpg": "truncated",
        "a/cut.png": "truncated",
        "a/noise.jpg": "not an image",
        "a/notes.png": "not an image",
        "a/bomb.png": "too many pixels",
        "zzz/other.png": "unknown class",
    }

    grey = rng.integers(0, 256, (SIDE, SIDE), dtype=np.uint8)
    rgba = rng.integers(0, 256, (SIDE, SIDE, 4), dtype=np.uint8)
    rgba[:, :, 3] = np.where(rng.random((SIDE, SIDE)) < 0.5, 0, 255)  # fully clear or opaque
    la = np.stack([grey, rgba[:, :, 3]], axis=2)
    palette = rng.integers(0, 256, (256, 3), dtype=np.uint8)
    index = rng.integers(0, 4, (SIDE, SIDE), dtype=np.uint8)
    paletted = Image.fromarray(index, "P")
    paletted.putpalette(palette.flatten().tolist())
    deep = rng.integers(0, 65536, (SIDE, SIDE), dtype=np.uint16)
    frames = [Image.new("L", (SIDE, SIDE), v).convert("P") for v in (10, 200, 90)]
    upright = np.zeros((SIDE, SIDE), dtype=np.uint8)
    upright[:, : SIDE // 2] = 255  # stored with the left half white...
    exif = Image.Exif()
    exif[0x0112] = 6  # ...and "rotate 90 degrees clockwise to view": the top half is white
    white = 255.0
    good = {
        "a/plain.png": (png, rgb),
        "a/grey.png": (encoded(Image.fromarray(grey), "PNG"), np.repeat(grey[:, :, None], 3, 2)),
        "a/rgba.png": (
            encoded(Image.fromarray(rgba, "RGBA"), "PNG"),
            np.where(rgba[:, :, 3:] == 0, white, rgba[:, :, :3]),
        ),
        "a/la.png": (
            encoded(Image.fromarray(la, "LA"), "PNG"),
            np.repeat(np.where(la[:, :, 1] == 0, white, grey)[:, :, None], 3, 2),
        ),
        "b/palette.png": (
            encoded(paletted, "PNG", transparency=0),
            np.where((index == 0)[:, :, None], white, palette[index]),
        ),
        "b/cmyk.jpg": (
            encoded(Image.new("CMYK", (SIDE, SIDE), (0, 0, 0, 0)), "JPEG"),
            np.full((SIDE, SIDE, 3), white),
        ),
        "b/deep.png": (
            encoded(Image.fromarray(deep), "PNG"),
            np.repeat(np.rint(deep / 257.0)[:, :, None], 3, 2),
        ),
        "b/anim.gif": (
            encoded(frames[0], "GIF", save_all=True, append_images=frames[1:]),
            np.full((SIDE, SIDE, 3), 10),
        ),
        "b/rotated.jpg": (
            encoded(Image.fromarray(upright), "JPEG", quality=95, exif=exif),
            np.repeat(np.rot90(upright, k=-1)[:, :, None], 3, 2),
        ),
        "b/dot.png": (encoded(Image.new("L", (1, 1), 77), "PNG"), np.full((SIDE, SIDE, 3), 77)),
    }
    for name, data in {**bad, **{k: v[0] for k, v in good.items()}}.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    return reasons, {name: expected for name, (_, expected) in good.items()}


def check_kept(rows: list[dict], expected: dict[str, np.ndarray]) -> None:
    """Every good file is kept once, labelled by its folder, with the expected pixels."""
    assert sorted(row["id"] for row in rows) == sorted(expected)
    for row in rows:
        assert row["labels"] == [["a", "b"].index(row["id"][0])]
        got = pixels(row["image"]).astype(np.float64)
        lossy = row["id"].endswith(".jpg")
        assert np.abs(got - expected[row["id"]]).max() <= (40 if lossy else 1), row["id"]


def test_every_hostile_file_in_a_folder(ray_cluster, tmp_path):
    reasons, expected = hostile_corpus(tmp_path / "corpus")
    meta = prepare(
        "folder",
        str(tmp_path / "out"),
        path=str(tmp_path / "corpus"),
        classes=["a", "b"],
        image_size=SIDE,
        progress=False,
    )
    assert {row["id"]: row["reason"] for row in meta["skipped"]} == reasons
    total = len(reasons) + len(expected)
    assert meta["counts"] == {"input": total, "kept": len(expected), "skipped": len(reasons)}
    on_disk = json.loads((tmp_path / "out" / "dataset.json").read_text())
    assert on_disk["skipped"] == meta["skipped"]
    assert on_disk["skipped_reasons"]["truncated"] == 2
    check_kept(kept_rows(tmp_path / "out", meta), expected)


def test_every_hostile_file_in_a_manifest(ray_cluster, tmp_path):
    reasons, expected = hostile_corpus(tmp_path / "corpus")
    listed = [name for name in [*reasons, *expected] if not name.startswith("zzz/")]
    lines = [{"path": name, "labels": [name[0]]} for name in listed]
    lines += [
        {"path": "a/never-written.png", "labels": ["a"]},
        {"path": "zzz/other.png", "labels": ["zzz"]},
    ]
    manifest = tmp_path / "corpus" / "list.jsonl"
    manifest.write_text("".join(json.dumps(line) + "\n" for line in lines))
    meta = prepare(
        "manifest",
        str(tmp_path / "out"),
        path=str(manifest),
        classes=["a", "b"],
        image_size=SIDE,
        progress=False,
    )
    assert {row["id"]: row["reason"] for row in meta["skipped"]} == {
        **reasons,
        "a/never-written.png": "missing file",
        "zzz/other.png": "unknown label 'zzz'",
    }
    check_kept(kept_rows(tmp_path / "out", meta), expected)
