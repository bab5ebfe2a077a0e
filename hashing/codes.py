"""Binary codes: sign -> bits, packing, hex, Hamming distances.

Bit order (the codes contract, see docs/architecture.md): bit ``i`` of a ``bits``-long code is bit
``i % 8`` (least significant first) of byte ``i // 8``. This is numpy's
``packbits(..., bitorder="little")`` and it makes a packed code a little-endian integer, so the
uint64 word view of the bytes is the same code. ``sgn(0) = +1``: a zero output is a 1 bit.

Packed codes are ``uint8`` arrays of shape ``(n, ceil(bits / 8))``. Lengths that are not a
multiple of 8 (12 bits, common in the literature) are padded with zero bits at the top of the last
byte; zero padding on both sides never changes a Hamming distance.
"""

from __future__ import annotations

import numpy as np
import torch

__all__ = [
    "binarize",
    "code_bytes",
    "from_hex",
    "hamming_distance",
    "pack_bits",
    "pack_codes",
    "popcount",
    "to_hex",
    "to_words",
    "unpack_bits",
]


def code_bytes(bits: int) -> int:
    """Number of bytes a ``bits``-long code packs into (padded up to whole bytes)."""
    if not isinstance(bits, (int, np.integer)) or isinstance(bits, bool) or bits <= 0:
        raise ValueError(f"bits must be a positive integer, got {bits!r}")
    return -(-int(bits) // 8)


def binarize(outputs: torch.Tensor | np.ndarray) -> np.ndarray:
    """Sign of continuous outputs (n x bits) as a bool array, with sgn(0) = +1 -> True."""
    if isinstance(outputs, torch.Tensor):
        outputs = outputs.detach().cpu().numpy()
    outputs = np.asarray(outputs)
    if outputs.ndim != 2:
        raise ValueError(f"expected a 2-D (n x bits) array, got shape {outputs.shape}")
    return outputs >= 0


def pack_bits(bits_array: np.ndarray) -> np.ndarray:
    """Pack a bool/0-1 array (n x bits) into uint8 codes (n x ceil(bits/8)),
    little-endian bit order."""
    bits_array = np.asarray(bits_array)
    if bits_array.ndim != 2:
        raise ValueError(f"expected a 2-D (n x bits) array, got shape {bits_array.shape}")
    code_bytes(bits_array.shape[1])
    # packbits pads a short last byte with zeros in its high (little-order: last) positions
    return np.packbits(bits_array.astype(bool), axis=1, bitorder="little")


def pack_codes(outputs: torch.Tensor | np.ndarray) -> np.ndarray:
    """Continuous outputs (n x bits) -> packed uint8 codes (n x bits/8):
    ``pack_bits(binarize(.))``."""
    return pack_bits(binarize(outputs))


def unpack_bits(packed: np.ndarray, bits: int | None = None) -> np.ndarray:
    """Packed uint8 codes (n x bytes) -> bool array (n x bits)."""
    packed = _as_packed(packed)
    if bits is not None and code_bytes(bits) != packed.shape[1]:
        raise ValueError(f"{bits}-bit codes need {code_bytes(bits)} bytes, got {packed.shape[1]}")
    unpacked = np.unpackbits(packed, axis=1, bitorder="little").astype(bool)
    return unpacked if bits is None else unpacked[:, :bits]


def to_words(packed: np.ndarray) -> np.ndarray:
    """Packed uint8 codes (n x bytes) -> uint64 words (n x ceil(bytes/8)), zero-padded."""
    packed = _as_packed(packed)
    n, nbytes = packed.shape
    nwords = -(-nbytes // 8)
    padded = np.zeros((n, nwords * 8), dtype=np.uint8)
    padded[:, :nbytes] = packed
    return padded.view("<u8")


def popcount(words: np.ndarray) -> np.ndarray:
    """Number of set bits per element of an unsigned integer array."""
    return np.bitwise_count(words)


def hamming_distance(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pairwise Hamming distances between packed codes a (n x bytes) and b (m x bytes):
    (n x m) int32."""
    a, b = _as_packed(a), _as_packed(b)
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"code lengths differ: {a.shape[1] * 8} vs {b.shape[1] * 8} bits")
    wa, wb = to_words(a), to_words(b)
    dist = np.zeros((wa.shape[0], wb.shape[0]), dtype=np.int32)
    for w in range(wa.shape[1]):  # one word column at a time keeps the temporary at n x m
        dist += np.bitwise_count(wa[:, w, None] ^ wb[None, :, w]).astype(np.int32)
    return dist


def to_hex(packed: np.ndarray) -> str | list[str]:
    """Hex string of one packed code (bytes,) or a list for many (n x bytes); byte 0 first."""
    packed = np.asarray(packed, dtype=np.uint8)
    if packed.ndim == 1:
        return packed.tobytes().hex()
    return [row.tobytes().hex() for row in _as_packed(packed)]


def from_hex(text: str, bits: int) -> np.ndarray:
    """Parse a hex code of ``bits`` bits into a packed uint8 array (bits/8,), with clear errors."""
    nbytes = code_bytes(bits)
    if not isinstance(text, str):
        raise TypeError(f"hex code must be a string, got {type(text).__name__}")
    cleaned = text.strip().lower()
    cleaned = cleaned.removeprefix("0x")
    if len(cleaned) != 2 * nbytes:
        raise ValueError(
            f"a {bits}-bit code is {2 * nbytes} hex digits, got {len(cleaned)} in {text[:80]!r}"
        )
    try:
        raw = bytes.fromhex(cleaned)
    except ValueError:
        raise ValueError(f"not a hex string: {text[:80]!r}") from None
    if bits % 8 and raw[-1] >> (bits % 8):
        raise ValueError(f"{text[:80]!r} sets padding bits beyond bit {bits - 1}")
    return np.frombuffer(raw, dtype=np.uint8).copy()


def _as_packed(packed: np.ndarray) -> np.ndarray:
    packed = np.asarray(packed)
    if packed.dtype != np.uint8:
        raise TypeError(f"packed codes must be uint8, got {packed.dtype}")
    if packed.ndim != 2:
        raise ValueError(f"packed codes must be 2-D (n x bytes), got shape {packed.shape}")
    return packed
