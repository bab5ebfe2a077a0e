"""pipelines.images: every file the test makes itself, checked against plain NumPy references."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from pipelines import images
from pipelines.images import BadImage, decode_image, encode_png, normalize_image

RNG = np.random.default_rng(0)


def encoded(image: Image.Image, fmt: str = "PNG", **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def pixels_of(png: bytes) -> np.ndarray:
    """Independent decoder for the output: PIL straight to an array."""
    return np.asarray(Image.open(io.BytesIO(png)))


RGB = RNG.integers(0, 256, (12, 20, 3), dtype=np.uint8)
PNG = encoded(Image.fromarray(RGB))
JPEG = encoded(Image.fromarray(RGB), "JPEG", quality=95)


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "empty file"),
        (PNG[: len(PNG) // 2], "truncated"),
        (JPEG[: len(JPEG) // 2], "truncated"),
        (RNG.bytes(2000), "not an image"),
        (b"name,label\ncat.jpg,cat\n" * 20, "not an image"),
    ],
    ids=["zero-byte", "truncated-png", "truncated-jpeg", "random-bytes", "text"],
)
def test_unusable_files_raise_bad_image_with_reason(data, reason):
    with pytest.raises(BadImage) as caught:
        normalize_image(data, size=(8, 8), mode="RGB")
    assert caught.value.reason == reason


def test_pixel_count_limit_refuses_before_decoding(monkeypatch):
    monkeypatch.setattr(images, "MAX_PIXELS", 20 * 20 - 1)
    with pytest.raises(BadImage, match="too many pixels"):
        normalize_image(encoded(Image.new("L", (20, 20))), size=None, mode="L")
    monkeypatch.setattr(images, "MAX_PIXELS", 20 * 20)
    assert pixels_of(
        normalize_image(encoded(Image.new("L", (20, 20))), size=None, mode="L")
    ).shape == (20, 20)


def test_png_rgb_is_lossless_and_deterministic():
    out = normalize_image(PNG, size=None, mode="RGB")
    np.testing.assert_array_equal(pixels_of(out), RGB)
    assert normalize_image(PNG, size=None, mode="RGB") == out


def test_rgba_is_composited_on_white():
    rgba = RNG.integers(0, 256, (6, 7, 4), dtype=np.uint8)
    out = pixels_of(normalize_image(encoded(Image.fromarray(rgba, "RGBA")), size=None, mode="RGB"))
    alpha = rgba[:, :, 3:].astype(np.float64) / 255.0
    expected = rgba[:, :, :3] * alpha + 255.0 * (1.0 - alpha)
    assert out.shape == (6, 7, 3)
    assert np.abs(out.astype(np.float64) - expected).max() <= 1.0


def test_palette_with_transparency_and_plain_palette():
    palette = RNG.integers(0, 256, (256, 3), dtype=np.uint8)
    index = RNG.integers(0, 4, (5, 9), dtype=np.uint8)
    image = Image.fromarray(index, "P")
    image.putpalette(palette.flatten().tolist())
    plain = pixels_of(normalize_image(encoded(image), size=None, mode="RGB"))
    np.testing.assert_array_equal(plain, palette[index])
    transparent = pixels_of(normalize_image(encoded(image, transparency=0), size=None, mode="RGB"))
    expected = np.where((index == 0)[:, :, None], 255, palette[index])
    np.testing.assert_array_equal(transparent, expected)


def test_greyscale_to_rgb_repeats_the_channel_and_rgb_to_l_uses_luma():
    grey = RNG.integers(0, 256, (4, 5), dtype=np.uint8)
    out = pixels_of(normalize_image(encoded(Image.fromarray(grey)), size=None, mode="RGB"))
    np.testing.assert_array_equal(out, np.repeat(grey[:, :, None], 3, axis=2))
    luma = pixels_of(normalize_image(PNG, size=None, mode="L"))
    reference = RGB @ np.array([0.299, 0.587, 0.114])  # ITU-R 601, what "L" means
    assert luma.shape == (12, 20) and np.abs(luma - reference).max() <= 1.0


def test_sixteen_bit_png_is_scaled_to_eight_bits():
    wide = RNG.integers(0, 65536, (6, 8), dtype=np.uint16)
    data = encoded(Image.fromarray(wide))
    assert Image.open(io.BytesIO(data)).mode.startswith("I")
    out = pixels_of(normalize_image(data, size=None, mode="L"))
    np.testing.assert_array_equal(out, np.rint(wide / 257.0).astype(np.uint8))


def test_one_pixel_image_resizes_to_a_flat_image():
    out = pixels_of(normalize_image(encoded(Image.new("L", (1, 1), 77)), size=(5, 3), mode="L"))
    np.testing.assert_array_equal(out, np.full((3, 5), 77, dtype=np.uint8))


def test_size_is_width_height():
    assert pixels_of(normalize_image(PNG, size=(7, 4), mode="RGB")).shape == (4, 7, 3)


def test_exif_orientation_is_applied():
    # Orientation 6: the camera stored the picture rotated; viewers turn it 90 degrees clockwise.
    stored = np.zeros((10, 20), dtype=np.uint8)
    stored[:, :10] = 255  # left half white
    exif = Image.Exif()
    exif[0x0112] = 6
    out = pixels_of(
        normalize_image(encoded(Image.fromarray(stored), "JPEG", exif=exif), size=None, mode="L")
    )
    assert out.shape == (20, 10)
    assert out[:8].mean() > 200 and out[12:].mean() < 50  # the left half is now on top


def test_animation_keeps_the_first_frame():
    frames = [Image.new("L", (6, 6), value).convert("P") for value in (10, 200, 90)]
    buffer = io.BytesIO()
    frames[0].save(buffer, format="GIF", save_all=True, append_images=frames[1:])
    np.testing.assert_array_equal(
        pixels_of(normalize_image(buffer.getvalue(), size=None, mode="L")), np.full((6, 6), 10)
    )


def test_cmyk_jpeg_converts_to_rgb():
    out = pixels_of(
        normalize_image(
            encoded(Image.new("CMYK", (4, 4), (0, 0, 0, 0)), "JPEG"), size=None, mode="RGB"
        )
    )
    np.testing.assert_array_equal(out, np.full((4, 4, 3), 255))


def test_unknown_mode_is_a_caller_error():
    with pytest.raises(ValueError, match="mode"):
        normalize_image(PNG, size=None, mode="CMYK")


def test_decode_and_encode_round_trip_with_channel_axis():
    grey = RNG.integers(0, 256, (3, 4), dtype=np.uint8)
    np.testing.assert_array_equal(decode_image(encode_png(grey)), grey[:, :, None])
    np.testing.assert_array_equal(decode_image(encode_png(grey[:, :, None])), grey[:, :, None])
    np.testing.assert_array_equal(decode_image(PNG), RGB)
    assert decode_image(PNG).dtype == np.uint8


def png_chunk(kind: bytes, body: bytes) -> bytes:
    """One PNG chunk as the spec lays it out: length, type, body, CRC-32 of type + body."""
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def test_decompression_bombs_are_refused_by_their_declared_size():
    # A 300-byte PNG declaring 100,000 x 100,000 greyscale pixels (10 GB once decoded).
    header = struct.pack(">IIBBBBB", 100_000, 100_000, 8, 0, 0, 0, 0)
    png = b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", header)
    png += png_chunk(b"IDAT", zlib.compress(b"\0" * 1000)) + png_chunk(b"IEND", b"")
    # A real JPEG whose frame header (SOF0: marker, length, precision, height, width) says 65535^2.
    jpeg = bytearray(JPEG)
    sof = jpeg.index(b"\xff\xc0")
    jpeg[sof + 5 : sof + 9] = struct.pack(">HH", 65535, 65535)
    for bomb in (png, bytes(jpeg)):
        assert len(bomb) < 5000
        with pytest.raises(BadImage) as caught:
            normalize_image(bomb, size=(8, 8), mode="RGB")
        assert caught.value.reason == "too many pixels"


def test_la_transparency_is_composited_on_white():
    la = RNG.integers(0, 256, (5, 6, 2), dtype=np.uint8)
    data = encoded(Image.fromarray(la, "LA"))
    alpha = la[:, :, 1].astype(np.float64) / 255.0
    expected = la[:, :, 0] * alpha + 255.0 * (1.0 - alpha)
    grey = pixels_of(normalize_image(data, size=None, mode="L"))
    assert grey.shape == (5, 6) and np.abs(grey - expected).max() <= 1.0
    rgb = pixels_of(normalize_image(data, size=None, mode="RGB"))
    np.testing.assert_array_equal(rgb, np.repeat(grey[:, :, None], 3, axis=2))
