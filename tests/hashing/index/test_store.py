"""Saved indexes: round trip, header, checksums, memory-mapped arrays, the version 1 layout."""

from __future__ import annotations

import hashlib
import io
import json

import numpy as np
import pytest
from index_reference import (
    BACKENDS,
    assert_radius_matches,
    assert_top_k_matches,
    build,
    clustered_codes,
    fill,
    random_codes,
    shuffled_ids,
    tied_codes,
)

from hashing.index import HammingIndex


@pytest.mark.parametrize("backend", BACKENDS)
def test_save_load_round_trip_gives_identical_results(tmp_path, backend):
    rng = np.random.default_rng(11)
    codes = tied_codes(rng, 200, 64, distinct=8)
    ids = shuffled_ids(rng, len(codes))
    queries = tied_codes(rng, 5, 64, distinct=5)
    index = build(codes, ids, 64, backend)
    index.save(tmp_path / "idx")
    loaded = HammingIndex.load(tmp_path / "idx", backend=backend)
    assert (len(loaded), loaded.bits, loaded.backend) == (200, 64, backend)
    assert sorted(loaded.ids.tolist()) == sorted(ids)
    for k in (1, 13, 200):
        for before, after in zip(index.search(queries, k), loaded.search(queries, k)):
            np.testing.assert_array_equal(before, after)
    for (d1, i1), (d2, i2) in zip(
        index.radius_search(queries, 9), loaded.radius_search(queries, 9)
    ):
        np.testing.assert_array_equal(d1, d2)
        np.testing.assert_array_equal(i1, i2)
    # a loaded index keeps rejecting duplicates and accepts new ids
    with pytest.raises(ValueError, match="duplicate"):
        loaded.add(codes[:1], [ids[0]])
    loaded.add(codes[:1], ["new"])
    assert len(loaded) == 201


def test_header_records_bits_count_version_model_and_checksums(tmp_path):
    index = HammingIndex(32, backend="numpy", model_version="adsh-64@3")
    index.add(np.ones((3, 4), dtype=np.uint8), ["a", "b", "c"])
    index.save(tmp_path)
    header = json.loads((tmp_path / "index.json").read_text())
    assert (header["bits"], header["count"], header["version"]) == (32, 3, 2)
    assert header["model_version"] == "adsh-64@3"
    assert set(header["arrays"]) == {"codes", "ids", "members", "offsets"}
    assert all(len(entry["sha256"]) == 64 for entry in header["arrays"].values())
    assert HammingIndex.load(tmp_path).model_version == "adsh-64@3"


@pytest.mark.parametrize("name", ["codes.npy", "ids.npy"])
def test_tampered_file_fails_checksum(tmp_path, name):
    index = HammingIndex(32, backend="numpy")
    index.add(np.arange(12, dtype=np.uint8).reshape(3, 4), ["a", "b", "c"])
    index.save(tmp_path)
    data = bytearray((tmp_path / name).read_bytes())
    data[-1] ^= 1
    (tmp_path / name).write_bytes(bytes(data))
    with pytest.raises(ValueError, match="checksum mismatch"):
        HammingIndex.load(tmp_path)


def test_load_refuses_directory_without_header(tmp_path):
    with pytest.raises(FileNotFoundError, match="index.json"):
        HammingIndex.load(tmp_path)


@pytest.mark.parametrize("strategy", ["flat", "mih"])
def test_saved_index_maps_arrays_and_drops_removed_items(tmp_path, strategy):
    rng = np.random.default_rng(8)
    codes = clustered_codes(rng, 300, 64, centres=6)
    ids = shuffled_ids(rng, 300)
    index = fill(codes, ids, 64, "faiss", strategy)
    index.remove(ids[:10])
    index.save(tmp_path)
    loaded = HammingIndex.load(tmp_path, strategy=strategy)
    assert isinstance(loaded._codes, np.memmap)
    assert len(loaded) == 290
    queries = codes[:5]
    for k in (1, 40, 290):
        for before, after in zip(index.search(queries, k), loaded.search(queries, k)):
            np.testing.assert_array_equal(before, after)
    assert_radius_matches(loaded, queries, codes[10:], ids[10:], [0, 2])


def test_version_1_directory_still_loads(tmp_path):
    # the layout before memory-mapped arrays: codes.npy and ids.npy, checksums in a sha256 map
    rng = np.random.default_rng(2)
    codes = random_codes(rng, 20, 32)
    ids = np.array(sorted(f"id-{i}" for i in range(20)))
    digests = {}
    for name, array in (("codes.npy", codes), ("ids.npy", ids)):
        buffer = io.BytesIO()
        np.save(buffer, array, allow_pickle=False)
        (tmp_path / name).write_bytes(buffer.getvalue())
        digests[name] = hashlib.sha256(buffer.getvalue()).hexdigest()
    header = {"format": "hashray.hamming_index", "version": 1, "bits": 32, "count": 20}
    (tmp_path / "index.json").write_text(json.dumps({**header, "sha256": digests}))
    loaded = HammingIndex.load(tmp_path)
    assert_top_k_matches(loaded, codes[:3], codes, ids.tolist(), [1, 20])
