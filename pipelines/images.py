"""Image bytes in, validated PNG bytes out: the one place that decides what an unusable image is.

``normalize_image`` runs inside Ray Data tasks during ``prepare``; everything downstream (train,
encode, serve) only ever sees its output and reads it back with ``decode_image``. No Ray here.
"""

from __future__ import annotations

import io
import warnings

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

__all__ = ["MAX_PIXELS", "MODES", "BadImage", "decode_image", "encode_png", "normalize_image"]

# Refuse anything larger before decoding it: a small compressed file can expand to gigabytes.
MAX_PIXELS = 64 * 1024 * 1024
MODES = ("L", "RGB")
# Pillow opens 16-bit greyscale as one of these; their pixel range is 0..65535.
_SIXTEEN_BIT_MODES = ("I", "I;16", "I;16B", "I;16L", "I;16N")
_ALPHA_MODES = ("RGBA", "LA", "PA", "RGBa", "La")


class BadImage(ValueError):
    """An input that cannot become a training image; ``reason`` is a short category."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


def decode_image(data: bytes) -> np.ndarray:
    """Stored (already validated) PNG bytes -> uint8 pixels (H, W, C), C = 1 for "L", 3 for
    "RGB"."""
    with Image.open(io.BytesIO(data)) as image:
        if image.mode not in MODES:
            image = image.convert("RGB")
        pixels = np.asarray(image, dtype=np.uint8)
    return pixels[:, :, None] if pixels.ndim == 2 else pixels


def encode_png(pixels: np.ndarray) -> bytes:
    """uint8 pixels (H, W) or (H, W, 1|3) -> PNG bytes."""
    pixels = np.asarray(pixels, dtype=np.uint8)
    if pixels.ndim == 3 and pixels.shape[2] == 1:
        pixels = pixels[:, :, 0]
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def normalize_image(data: bytes, *, size: tuple[int, int] | None, mode: str) -> bytes:
    """Validate any image file's bytes, fix orientation and mode, resize to ``size`` (W, H); PNG
    out.

    Raises ``BadImage`` for anything unusable (empty, not an image, truncated, corrupt, too many
    pixels, a mode we cannot convert).
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if not data:
        raise BadImage("empty file")
    image = _open_checked(data)
    image = _to_mode(image, mode)
    if size is not None and image.size != tuple(size):
        image = image.resize(tuple(size), Image.Resampling.BICUBIC)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def _open_checked(data: bytes) -> Image.Image:
    """Fully decoded first frame, upright (EXIF orientation applied)."""
    with warnings.catch_warnings():
        # Pillow only warns below twice its own limit; a warning here is a refusal.
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            with Image.open(io.BytesIO(data)) as probe:
                width, height = probe.size
                if width * height > MAX_PIXELS:
                    raise BadImage("too many pixels", f"{width}x{height}")
                probe.verify()  # structure and checksums; the object is unusable afterwards
            image = Image.open(io.BytesIO(data))
            image.seek(0)  # animations: the first frame
            image.load()
            return ImageOps.exif_transpose(image)
        except BadImage:
            raise
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
            raise BadImage("too many pixels", str(err)) from err
        except UnidentifiedImageError as err:
            raise BadImage("not an image") from err
        except Exception as err:  # only Pillow runs in this block
            # Crafted or damaged files make Pillow raise almost anything (OSError, SyntaxError,
            # struct.error, ZeroDivisionError...); each one means this file is unusable.
            # Truncation shows up as "image file is truncated" / "Truncated File Read".
            text = str(err).lower()
            reason = "truncated" if ("truncat" in text or "eof" in text) else "corrupt"
            raise BadImage(reason, str(err)) from err


def _to_mode(image: Image.Image, mode: str) -> Image.Image:
    """Convert to ``mode``: transparency composited on white, 16-bit scaled to 8-bit."""
    try:
        if image.mode in _SIXTEEN_BIT_MODES:
            wide = np.asarray(image, dtype=np.float64)
            image = Image.fromarray(np.clip(np.rint(wide / 257.0), 0, 255).astype(np.uint8))
        if image.mode in _ALPHA_MODES or (image.mode == "P" and "transparency" in image.info):
            rgba = image.convert("RGBA")
            white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
            image = Image.alpha_composite(white, rgba)
        if image.mode not in ("L", "RGB"):
            image = image.convert("RGB")
        return image if image.mode == mode else image.convert(mode)
    except (ValueError, OSError) as err:
        raise BadImage("unsupported mode", f"{image.mode}: {err}") from err
