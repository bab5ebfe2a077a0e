"""Every user error of docs/failures.md, through ``hashray``'s main(): message, exit status 2,
no Ray started (the conftest guard fails a test that starts one), quick, nothing written.

The expectations are the table's rows; each case here only builds the input it names.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from failures_table import rows
from shared_helpers import save_model_dir
from test_contracts import CARD, DATASET

from hashing.models import build
from pipelines import cluster
from pipelines.cli import main
from pipelines.codes_io import codes_table, write_codes

ROWS = rows("Your input")
SECONDS = 15  # far below a Ray start plus a stage; importing torch and Ray alone takes a few


def dataset(root: Path, *, parts: bool = True) -> Path:
    """A prepared dataset's dataset.json (the contract's example) with or without its parts."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "dataset.json").write_text(json.dumps(DATASET))
    if parts:
        for split in ("train", "query"):
            (root / split).mkdir()
            (root / split / "part-00000.parquet").write_bytes(b"PAR1")
    return root


def codes(root: Path, bits: int = 16) -> Path:
    table = codes_table(["a", "b"], np.zeros((2, bits // 8), dtype=np.uint8), labels=[[0], [1]])
    write_codes(str(root), [table], bits=bits, metadata={"model_version": "test"})
    return root


def model(root: Path, bits: int = 16) -> Path:
    torch.manual_seed(0)
    return save_model_dir(build("smallcnn", bits=bits, in_channels=1), root, side=28)


def interrupted_codes(root: Path) -> Path:
    codes(root)
    (root / "_SUCCESS.json").unlink()
    return root


# id -> builds the input under tmp_path: (argv, the path that stands for <path>)
Case = Callable[[Path], tuple[list[str], str]]


def _cases() -> dict[str, Case]:
    def data_case(command: str, make: Callable[[Path], Path | None]) -> Case:
        def case(tmp: Path) -> tuple[list[str], str]:
            path = tmp / "data"
            make(path)
            extra = ["--model", str(model(tmp / "m")), "--out", str(tmp / "o")]
            return [command, "--data", str(path), *(extra if command == "encode" else [])], str(
                path
            )

        return case

    def encode_case(make_model: Callable[[Path], object], out: Callable[[Path], Path]) -> Case:
        def case(tmp: Path) -> tuple[list[str], str]:
            make_model(tmp / "m")
            argv = ["encode", "--data", str(dataset(tmp / "data")), "--model", str(tmp / "m")]
            target = out(tmp)
            return [*argv, "--out", str(target)], str(tmp / "m" if target == tmp / "o" else target)

        return case

    def serve_case(make: Callable[[Path], object]) -> Case:
        def case(tmp: Path) -> tuple[list[str], str]:
            make(tmp / "codes")
            return ["serve", "--codes", str(tmp / "codes")], str(tmp / "codes")

        return case

    def evaluate_case(make: Callable[[Path], object]) -> Case:
        def case(tmp: Path) -> tuple[list[str], str]:
            make(tmp / "codes")
            return ["evaluate", "--codes", str(tmp / "codes")], str(tmp / "codes")

        return case

    def bad_card(path: Path) -> None:
        model(path)
        (path / "model.json").write_text(json.dumps({**CARD, "bits": "many"}))

    def file_at(path: Path) -> Path:
        path.write_text("not a folder")
        return path

    def prepare(*flags: str) -> Case:
        return lambda tmp: (["prepare", *flags, "--out", str(tmp / "out")], "")

    def encode_output(root: Path, broken: bool) -> None:
        codes(root / "query")
        (interrupted_codes if broken else codes)(root / "database")

    def serve_with_model(tmp: Path) -> tuple[list[str], str]:
        argv = ["serve", "--codes", str(codes(tmp / "codes")), "--model", str(model(tmp / "m", 24))]
        return argv, str(tmp / "m")

    return {
        "prepare-unknown-source": prepare("--source", "nosuch"),
        "prepare-needs-path": prepare("--source", "mnist"),
        "prepare-path-missing": lambda tmp: (
            ["prepare", "--source", "mnist", "--path", str(tmp / "none"), "--out", str(tmp / "o")],
            str(tmp / "none"),
        ),
        "prepare-out-is-file": lambda tmp: (
            ["prepare", "--source", "mnist5k", "--out", str(file_at(tmp / "f"))],
            str(tmp / "f"),
        ),
        "prepare-bad-option": prepare("--source", "parquet", "--path", ".", "--option", "image"),
        "train-no-data": lambda tmp: (["train"], ""),
        "train-data-missing": data_case("train", lambda path: None),
        "train-data-not-dataset": data_case("train", lambda path: path.mkdir()),
        "train-data-interrupted": data_case(
            "train", lambda path: (path / "train").mkdir(parents=True)
        ),
        "train-data-part-missing": data_case("train", lambda path: dataset(path, parts=False)),
        "train-data-bad-json": data_case(
            "train",
            lambda path: (path.mkdir(), (path / "dataset.json").write_text('{"name": 3}')),
        ),
        "encode-data-missing": data_case("encode", lambda path: None),
        "encode-model-missing": encode_case(lambda path: None, lambda tmp: tmp / "o"),
        "encode-model-not-model": encode_case(lambda path: path.mkdir(), lambda tmp: tmp / "o"),
        "encode-model-bad-card": encode_case(bad_card, lambda tmp: tmp / "o"),
        "encode-out-is-file": encode_case(model, lambda tmp: file_at(tmp / "f")),
        "encode-bad-split": lambda tmp: (
            ["encode", "--data", "d", "--model", "m", "--out", "o", "--splits", "query,tset"],
            "",
        ),
        "evaluate-no-codes": lambda tmp: (["evaluate"], ""),
        "evaluate-codes-missing": evaluate_case(lambda path: None),
        "evaluate-codes-one-split": evaluate_case(codes),
        "evaluate-codes-interrupted": evaluate_case(lambda path: encode_output(path, True)),
        "serve-codes-missing": serve_case(lambda path: None),
        "serve-codes-not-codes": serve_case(lambda path: encode_output(path, False)),
        "serve-codes-interrupted": serve_case(interrupted_codes),
        "serve-codes-part-missing": serve_case(
            lambda path: (codes(path), (path / "part-00000.parquet").unlink())
        ),
        "serve-model-missing": lambda tmp: (
            ["serve", "--codes", str(codes(tmp / "codes")), "--model", str(tmp / "none")],
            str(tmp / "none"),
        ),
        "serve-model-mismatch": serve_with_model,
    }


CASES = _cases()


def test_every_row_has_a_case_and_every_case_a_row() -> None:
    assert sorted(ROWS) == sorted(CASES)


def _tree(root: Path) -> set[Path]:
    return {path for path in root.rglob("*")}


def _refuse_to_connect(*args: object, **kwargs: object) -> bool:
    raise AssertionError("the command reached for a Ray cluster before refusing its input")


@pytest.mark.parametrize("case", sorted(CASES))
def test_user_error_fails_fast_before_ray(
    case: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setenv("HASHRAY_LOG_DIR", str(tmp_path / "logs"))
    monkeypatch.chdir(tmp_path)
    (tmp_path / "in").mkdir()
    argv, path = CASES[case](tmp_path / "in")
    before = _tree(tmp_path)
    # "No Ray started" whatever this session already runs: the command never asks for a cluster.
    monkeypatch.setattr(cluster, "connect", _refuse_to_connect)
    start = time.monotonic()
    status = main(argv)
    seconds = time.monotonic() - start
    err = capsys.readouterr().err
    row = ROWS[case]
    assert status == row.exit == 2, err
    for message in row.messages(path):
        assert message in err, f"{message!r} not in {err!r}"
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert seconds < SECONDS
    assert _tree(tmp_path) == before and row.left == "nothing"  # no output, no log file
