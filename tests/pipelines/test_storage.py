"""pipelines.storage on local trees (S3 paths are exercised through moto in test_s3_corpora)."""

from __future__ import annotations

import os

import pyarrow.fs as pafs
import pytest

from pipelines import storage


def _pyarrow_listing(root: str) -> set[tuple[str, bool]]:
    """The reference: pyarrow's recursive listing, as (relative path, is a file)."""
    infos = pafs.LocalFileSystem().get_file_info(pafs.FileSelector(root, recursive=True))
    return {
        (os.path.relpath(info.path, root).replace(os.sep, "/"), info.type == pafs.FileType.File)
        for info in infos
    }


def test_walk_lists_what_pyarrow_lists(tmp_path):
    (tmp_path / "cats" / "old").mkdir(parents=True)
    (tmp_path / "dogs").mkdir()
    (tmp_path / "empty").mkdir()
    (tmp_path / ".git").mkdir()
    for name in (
        "cats/a.jpg",
        "cats/old/b.jpg",
        "dogs/c.png",
        "stray.png",
        ".git/HEAD",
        "dogs/.DS_Store",
    ):
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / "more").symlink_to(tmp_path / "dogs")  # a linked folder is walked like a folder

    walked = list(storage.walk(str(tmp_path)))
    assert len(walked) == len(set(walked))
    assert set(walked) == _pyarrow_listing(str(tmp_path))
    assert ("more/c.png", True) in walked and ("cats/old", False) in walked


def test_walk_survives_a_link_back_up_the_tree(tmp_path):
    (tmp_path / "cats").mkdir()
    (tmp_path / "cats" / "a.jpg").write_bytes(b"x")
    (tmp_path / "cats" / "up").symlink_to(tmp_path)  # would loop forever if followed each time
    (tmp_path / "cats" / "gone.jpg").symlink_to(tmp_path / "nowhere.jpg")

    walked = set(storage.walk(str(tmp_path)))
    # The loop is entered once (as a folder) and not again; the broken link is listed as a file,
    # so prepare reports it as a missing file instead of dropping it silently.
    assert walked == {
        ("cats", False),
        ("cats/a.jpg", True),
        ("cats/up", False),
        ("cats/gone.jpg", True),
    }


def test_walk_refuses_a_missing_root(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such folder"):
        list(storage.walk(str(tmp_path / "nowhere")))
    (tmp_path / "file.jpg").write_bytes(b"x")
    with pytest.raises(FileNotFoundError, match="no such folder"):
        list(storage.walk(str(tmp_path / "file.jpg")))


def test_walk_stops_at_an_unreadable_folder(tmp_path, monkeypatch):
    # os.walk skips folders it cannot read without a word; the listing must not lose them so.
    # Tests run as root here, which reads any folder, so the refusal comes from os.scandir.
    (tmp_path / "cats" / "locked").mkdir(parents=True)
    real_scandir = os.scandir

    def scandir(folder):
        if str(folder).endswith("locked"):
            raise PermissionError(13, "Permission denied", str(folder))
        return real_scandir(folder)

    monkeypatch.setattr(os, "scandir", scandir)
    with pytest.raises(PermissionError):
        list(storage.walk(str(tmp_path)))
