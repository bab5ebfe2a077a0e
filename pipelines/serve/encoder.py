"""The ``Encoder`` deployment: uploaded image files -> packed codes with the trained model.

Images are normalised as training did (``normalize_image`` to the size and mode of the model
card's ``image``, then its ``mean``/``std``) and concurrent uploads go through the model together
(``@serve.batch``). Images over ``MAX_IMAGE_PIXELS`` are refused from their header, before
anything is decoded; an unusable file raises ``BadImage``.
"""

import asyncio
import io
from typing import Any

import numpy as np
import torch
from PIL import Image
from ray import serve

from hashing.codes import pack_codes
from hashing.training import images_to_tensor
from pipelines.images import BadImage, decode_image, normalize_image
from pipelines.model_store import load_for_inference

__all__ = ["MAX_IMAGE_PIXELS", "Encoder"]

MAX_IMAGE_PIXELS = 4096 * 4096  # checked from the file header, before anything is decoded


class Encoder:
    """Uploaded image files -> packed codes with the trained model; ``@serve.batch`` groups them."""

    def __init__(self, model: str, tracking_uri: str | None) -> None:
        self._model, card = load_for_inference(model, tracking_uri=tracking_uri)
        self._size, self._mode = (card.image.width, card.image.height), card.image.mode
        self._mean, self._std = card.mean, card.std
        self._identity = {"bits": card.bits, "model_version": card.model_version}

    async def describe(self) -> dict[str, Any]:
        """The codes this model makes: bits and model version."""
        return self._identity

    async def encode(self, data: bytes) -> bytes:
        """An image file's bytes -> its packed code (bits/8 bytes); ``BadImage`` if unusable."""
        # decoding runs in a thread so the event loop keeps collecting batches meanwhile
        return await self._embed(await asyncio.to_thread(self._pixels, data))

    def _pixels(self, data: bytes) -> np.ndarray:
        _check_pixels(data)
        return decode_image(normalize_image(data, size=self._size, mode=self._mode))

    @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.005)
    async def _embed(self, images: list[np.ndarray]) -> list[bytes]:
        """Normalised uint8 images (H x W x C each) -> packed codes, in one model call."""
        with torch.inference_mode():
            outputs = self._model.embed(images_to_tensor(np.stack(images), self._mean, self._std))
        return [code.tobytes() for code in pack_codes(outputs)]


def _check_pixels(data: bytes) -> None:
    """Refuse images over ``MAX_IMAGE_PIXELS`` from their header, before anything is decoded."""
    try:
        with Image.open(io.BytesIO(data)) as probe:
            width, height = probe.size
    except Exception:  # noqa: BLE001 - Pillow raises many types; normalize_image says which
        return
    if width * height > MAX_IMAGE_PIXELS:
        raise BadImage("too many pixels", f"{width}x{height}, at most {MAX_IMAGE_PIXELS}")
