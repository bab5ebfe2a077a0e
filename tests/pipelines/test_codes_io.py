"""Codes directories: round trip, manifest, refusal of half-written output, checksum
verification."""

from __future__ import annotations

import hashlib
import itertools
import json

import numpy as np
import pyarrow.parquet as pq
import pytest

from pipelines.codes_io import (
    IncompleteCodesError,
    codes_table,
    read_codes,
    read_metadata,
    write_codes,
)
from pipelines.contracts import MANIFEST, CodesManifest

BITS = 24


def _random_codes(n: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    ids = np.array([f"img/{i:04d}.png" for i in rng.permutation(n)], dtype=object)
    codes = rng.integers(0, 256, size=(n, BITS // 8), dtype=np.uint8)
    labels = [
        sorted(rng.choice(5, size=rng.integers(0, 3), replace=False).tolist()) for _ in range(n)
    ]
    embeddings = rng.normal(size=(n, BITS)).astype(np.float32)
    return ids, codes, labels, embeddings


def _write(directory, n=50, sizes=(20, 20, 10), **kwargs):
    ids, codes, labels, emb = _random_codes(n)
    bounds = np.cumsum((0, *sizes))
    parts = [
        codes_table(ids[a:b], codes[a:b], labels=labels[a:b], embeddings=emb[a:b])
        for a, b in itertools.pairwise(bounds)
    ]
    meta = {
        "method": "adsh",
        "model_uri": "runs:/abc/model",
        "model_version": "7",
        "created_at": "2024-01-01T00:00:00+00:00",
        "mlflow_run_id": None,
    }
    manifest = write_codes(str(directory), parts, bits=BITS, metadata=meta, **kwargs)
    return manifest, (ids, codes, labels, emb)


def test_round_trip_keeps_every_column_metadata_and_manifest(tmp_path):
    manifest, (ids, codes, labels, emb) = _write(tmp_path / "codes")
    got = read_codes(str(tmp_path / "codes"), verify=True)

    assert list(got.ids) == list(ids)
    np.testing.assert_array_equal(got.codes, codes)
    assert [row.tolist() for row in got.labels] == labels
    np.testing.assert_array_equal(got.embeddings, emb)
    assert got.bits == BITS and len(got) == 50
    assert got.metadata == {
        "method": "adsh",
        "model_uri": "runs:/abc/model",
        "model_version": "7",
        "created_at": "2024-01-01T00:00:00+00:00",
        "bits": "24",
    }

    on_disk = json.loads((tmp_path / "codes" / MANIFEST).read_text())
    assert on_disk == manifest.to_dict() and on_disk["rows"] == 50 and on_disk["bits"] == BITS
    assert CodesManifest.from_dict(on_disk, MANIFEST) == manifest == got.manifest
    assert read_metadata(str(tmp_path / "codes")) == (manifest, got.metadata)  # reads no rows
    assert [f["path"] for f in on_disk["files"]] == [f"part-0000{i}.parquet" for i in range(3)]
    for entry, rows in zip(on_disk["files"], (20, 20, 10)):
        data = (tmp_path / "codes" / entry["path"]).read_bytes()
        assert entry["sha256"] == hashlib.sha256(data).hexdigest()
        assert entry["rows"] == rows
        schema = pq.read_schema(tmp_path / "codes" / entry["path"])
        assert str(schema.field("code").type) == "fixed_size_binary[3]"
        assert schema.metadata[b"hashray.bits"] == b"24"


def test_code_bytes_follow_hashing_bit_order(tmp_path):
    # Bit i of the code is bit i % 8 of byte i // 8: set bits 0 and 9 -> bytes 0x01 0x02 0x00.
    codes = np.zeros((1, 3), dtype=np.uint8)
    codes[0, 0], codes[0, 1] = 1, 2
    write_codes(str(tmp_path), [codes_table(["a"], codes)], bits=24, metadata={})
    raw = pq.read_table(tmp_path / "part-00000.parquet").column("code")[0].as_py()
    assert raw == bytes([1, 2, 0])
    assert read_codes(str(tmp_path)).labels is None


def test_refuses_a_directory_without_manifest(tmp_path):
    _write(tmp_path)
    (tmp_path / MANIFEST).unlink()
    with pytest.raises(
        IncompleteCodesError, match="incomplete codes directory.*re-run hashray encode"
    ):
        read_codes(str(tmp_path))


def test_verify_catches_a_tampered_part(tmp_path):
    _write(tmp_path)
    path = tmp_path / "part-00001.parquet"
    table = pq.read_table(path)
    flipped = np.frombuffer(table.column("code").combine_chunks().buffers()[1], np.uint8) ^ 1
    tampered = table.set_column(
        1, "code", codes_table(table.column("id"), flipped.reshape(-1, 3))["code"]
    )
    pq.write_table(tampered.replace_schema_metadata(table.schema.metadata), path)

    read_codes(str(tmp_path))  # same row count: only the checksum can tell
    with pytest.raises(ValueError, match="sha256"):
        read_codes(str(tmp_path), verify=True)


def test_rewrite_removes_stale_parts(tmp_path):
    _write(tmp_path, sizes=(20, 20, 10))
    (tmp_path / "part-00042.parquet.tmp").write_bytes(b"junk")
    _write(tmp_path, sizes=(50,))
    assert sorted(p.name for p in tmp_path.iterdir()) == [MANIFEST, "part-00000.parquet"]


def test_write_refuses_bad_code_width_and_mixed_part_schemas(tmp_path):
    table = codes_table(["a"], np.zeros((1, 4), dtype=np.uint8))
    with pytest.raises(ValueError, match="fixed_size_binary"):
        write_codes(str(tmp_path), [table], bits=24, metadata={})
    plain = codes_table(["a"], np.zeros((1, 3), dtype=np.uint8))
    labelled = codes_table(["b"], np.zeros((1, 3), dtype=np.uint8), labels=[[1]])
    with pytest.raises(ValueError, match="same columns"):
        write_codes(str(tmp_path), [plain, labelled], bits=24, metadata={})


def test_codes_multi_hot_uses_declared_num_classes(tmp_path):
    write_codes(
        str(tmp_path),
        [codes_table(["a", "b"], np.zeros((2, 3), np.uint8), labels=[[0, 2], []])],
        bits=24,
        metadata={"num_classes": 6},
    )
    got = read_codes(str(tmp_path)).multi_hot()
    np.testing.assert_array_equal(got, [[1, 0, 1, 0, 0, 0], [0, 0, 0, 0, 0, 0]])


def test_round_trip_on_s3(s3_bucket):
    manifest, (ids, codes, _, _) = _write("s3://corpus/run/query")
    got = read_codes("s3://corpus/run/query", verify=True)
    assert list(got.ids) == list(ids) and got.manifest == manifest
    np.testing.assert_array_equal(got.codes, codes)
    with pytest.raises(IncompleteCodesError):
        read_codes("s3://corpus/elsewhere")


def test_write_refuses_metadata_outside_the_contract(tmp_path):
    table = codes_table(["a"], np.zeros((1, 3), dtype=np.uint8))
    with pytest.raises(ValueError, match=r"unknown codes metadata \['modle_version'\]"):
        write_codes(str(tmp_path), [table], bits=24, metadata={"modle_version": "7"})


def test_a_manifest_that_breaks_the_contract_is_refused_by_name(tmp_path):
    _write(tmp_path)
    on_disk = json.loads((tmp_path / MANIFEST).read_text())
    on_disk["bits"] = str(on_disk["bits"])
    (tmp_path / MANIFEST).write_text(json.dumps(on_disk))
    with pytest.raises(ValueError, match=f"{MANIFEST}: bits: Input should be a valid integer"):
        read_codes(str(tmp_path))
