"""Bit packing, hex and Hamming distance against plain-Python references."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from hashing import codes
from hashing.index import HammingIndex


@pytest.mark.parametrize("bits", [8, 12, 16, 24, 32, 48, 64, 100, 128, 256])
def test_pack_unpack_hex_round_trip(bits: int) -> None:
    rng = np.random.default_rng(bits)
    bit_array = rng.random((7, bits)) < 0.5
    packed = codes.pack_bits(bit_array)
    assert packed.shape == (7, -(-bits // 8)) and packed.dtype == np.uint8
    assert np.array_equal(codes.unpack_bits(packed, bits), bit_array)
    for row, text in zip(packed, codes.to_hex(packed)):
        assert len(text) == 2 * -(-bits // 8)
        assert np.array_equal(codes.from_hex(text, bits), row)
        assert np.array_equal(codes.from_hex("0x" + text.upper(), bits), row)


def test_bit_order_is_documented_little_endian() -> None:
    bit_array = np.zeros((1, 16), dtype=bool)
    bit_array[0, [0, 9]] = True  # bit 0 -> byte 0 LSB; bit 9 -> byte 1, bit 1
    assert codes.pack_bits(bit_array).tolist() == [[0b00000001, 0b00000010]]
    # the uint64 word view is the same little-endian integer
    assert int(codes.to_words(codes.pack_bits(bit_array))[0, 0]) == (1 << 0) | (1 << 9)


def test_sign_of_zero_is_one_and_tensors_accepted() -> None:
    outputs = torch.tensor([[0.0, -1e-9, 2.0, -3.0, 0.0, 1.0, -1.0, 5.0]])
    assert codes.binarize(outputs).tolist() == [[True, False, True, False, True, True, False, True]]
    assert codes.pack_codes(outputs).tolist() == [[0b10110101]]


def test_hamming_distance_matches_bit_count() -> None:
    rng = np.random.default_rng(0)
    a, b = rng.random((9, 72)) < 0.5, rng.random((5, 72)) < 0.5
    expected = np.array([[int(np.sum(x != y)) for y in b] for x in a])
    assert np.array_equal(codes.hamming_distance(codes.pack_bits(a), codes.pack_bits(b)), expected)


@pytest.mark.parametrize(
    ("text", "bits", "message"),
    [
        ("abc", 16, "4 hex digits"),
        ("zz", 8, "not a hex"),
        ("", 8, "2 hex digits"),
        ("fff0", 12, "padding bits"),
        ("00", 0, "positive"),
    ],
)
def test_from_hex_errors(text: str, bits: int, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        codes.from_hex(text, bits)


def test_bad_shapes_and_types() -> None:
    with pytest.raises(ValueError, match="positive"):
        codes.pack_bits(np.zeros((2, 0), dtype=bool))
    with pytest.raises(TypeError, match="uint8"):
        codes.unpack_bits(np.zeros((2, 2), dtype=np.int64))
    with pytest.raises(ValueError, match="need 4 bytes"):
        codes.unpack_bits(np.zeros((2, 2), dtype=np.uint8), 32)
    with pytest.raises(ValueError, match="differ"):
        codes.hamming_distance(np.zeros((1, 2), np.uint8), np.zeros((1, 4), np.uint8))


def test_short_codes_pad_with_zero_bits_and_keep_distances() -> None:
    rng = np.random.default_rng(1)
    a, b = rng.random((4, 12)) < 0.5, rng.random((3, 12)) < 0.5
    pa, pb = codes.pack_bits(a), codes.pack_bits(b)
    assert pa.shape == (4, 2) and np.all(pa[:, 1] >> 4 == 0)
    expected = np.array([[int(np.sum(x != y)) for y in b] for x in a])
    assert np.array_equal(codes.hamming_distance(pa, pb), expected)
    index = HammingIndex(12)  # 12-bit codes work end to end in the index too
    index.add(pa, [f"a{i}" for i in range(4)])
    distances, _ = index.search(pb, 4)
    assert np.array_equal(distances, np.sort(expected.T, axis=1))
