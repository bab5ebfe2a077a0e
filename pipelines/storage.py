"""Paths that may be local or ``s3://``: one place that turns them into pyarrow filesystems.

Credentials come from the standard AWS chain (environment, config files, instance roles). A custom
endpoint (moto, MinIO, Ceph) comes from ``AWS_ENDPOINT_URL_S3`` or ``AWS_ENDPOINT_URL`` (or
``use_s3_endpoint``, behind ``--s3-endpoint``); pyarrow does not read those itself, so every S3
filesystem in hashray is built here, while boto3 (MLflow's S3 artifacts) reads the variable itself.
"""

from __future__ import annotations

import json
import os
import posixpath
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlparse

import pyarrow.fs as pafs

__all__ = [
    "filesystem",
    "inner_path",
    "is_s3",
    "join",
    "read_bytes",
    "read_json",
    "s3_endpoint",
    "use_s3_endpoint",
    "walk",
    "write_bytes",
    "write_json",
]


def is_s3(path: str) -> bool:
    """True for ``s3://bucket/key`` paths."""
    return str(path).startswith("s3://")


def s3_endpoint() -> str | None:
    """The custom S3 endpoint from the environment, if any."""
    return os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")


def use_s3_endpoint(url: str) -> None:
    """Send every S3 request of this process to ``url`` (e.g. ``http://127.0.0.1:9000``).

    Sets ``AWS_ENDPOINT_URL_S3``, which boto3 honours as well; call it before starting a local Ray
    cluster so its workers inherit it (filesystems built here carry the endpoint anyway).
    """
    parsed = urlparse(url)
    if parsed.scheme not in ("http", "https") or not parsed.netloc:
        raise ValueError(f"S3 endpoint must look like http(s)://host[:port], got {url!r}")
    os.environ["AWS_ENDPOINT_URL_S3"] = url


def inner_path(path: str) -> str:
    """The path inside its filesystem: absolute for local paths, ``bucket/key`` for ``s3://``."""
    path = str(path)
    if not is_s3(path):
        return os.path.abspath(path)
    parsed = urlparse(path)
    return f"{parsed.netloc}/{parsed.path.lstrip('/')}".rstrip("/")


def filesystem(path: str) -> tuple[pafs.FileSystem, str]:
    """``(filesystem, path inside it)`` for a local path or an ``s3://`` URI."""
    path = str(path)
    if not is_s3(path):
        return pafs.LocalFileSystem(), inner_path(path)
    endpoint = s3_endpoint()
    kwargs: dict[str, Any] = {
        "region": os.environ.get("AWS_REGION")
        or os.environ.get("AWS_DEFAULT_REGION")
        or "us-east-1"
    }
    if endpoint:
        url = urlparse(endpoint)
        kwargs.update(endpoint_override=url.netloc or url.path, scheme=url.scheme or "https")
    if os.environ.get("AWS_ACCESS_KEY_ID") and os.environ.get("AWS_SECRET_ACCESS_KEY"):
        # Static keys are set explicitly so they travel with the pickled filesystem: Ray workers
        # started before the variables were set (or on other nodes) would otherwise have none.
        kwargs.update(
            access_key=os.environ["AWS_ACCESS_KEY_ID"],
            secret_key=os.environ["AWS_SECRET_ACCESS_KEY"],
            session_token=os.environ.get("AWS_SESSION_TOKEN"),
        )
    return pafs.S3FileSystem(**kwargs), inner_path(path)


def walk(path: str) -> Iterator[tuple[str, bool]]:
    """(path relative to ``path`` with ``/`` separators, is a file) for everything below ``path``.

    Local trees are walked with ``os.walk``, following symlinked folders but not a link back to
    a folder above it (listed, not entered): much faster than pyarrow's listing, which builds a
    FileInfo object per file.
    """
    fs, root = filesystem(path)
    if is_s3(path):
        prefix = root.rstrip("/") + "/"
        for info in fs.get_file_info(pafs.FileSelector(root, recursive=True)):
            yield info.path.removeprefix(prefix), info.type == pafs.FileType.File
        return
    if not os.path.isdir(root):
        raise FileNotFoundError(f"{path}: no such folder")

    def refuse(error: OSError) -> None:  # os.walk would skip an unreadable folder without a word
        raise error

    # Real paths of the folders each walked folder was reached through: a link to one of them
    # would loop. A folder reached twice along different paths is listed twice, as pyarrow does.
    chains = {root: frozenset()}
    for folder, dirs, files in os.walk(root, onerror=refuse, followlinks=True):
        real, chain = os.path.realpath(folder), chains.pop(folder)
        if real in chain:
            dirs.clear()
            continue
        chain |= {real}
        relative = os.path.relpath(folder, root).replace(os.sep, "/")
        base = "" if relative == "." else relative + "/"
        for name in dirs:
            chains[os.path.join(folder, name)] = chain
            yield base + name, False
        for name in files:
            yield base + name, True


def join(base: str, *parts: str) -> str:
    """Join path parts with ``/`` for S3 URIs and the OS separator otherwise."""
    return posixpath.join(str(base), *parts) if is_s3(base) else os.path.join(str(base), *parts)


def read_bytes(path: str) -> bytes:
    """Whole file contents."""
    fs, inner = filesystem(path)
    with fs.open_input_stream(inner) as stream:
        return stream.read()


def write_bytes(path: str, data: bytes) -> None:
    """Write a whole file; local writes go through a temporary name so readers never see half."""
    fs, inner = filesystem(path)
    parent = posixpath.dirname(inner) if is_s3(path) else os.path.dirname(inner)
    fs.create_dir(parent, recursive=True)
    target = inner if is_s3(path) else inner + ".tmp"
    with fs.open_output_stream(target) as stream:
        stream.write(data)
    if not is_s3(path):
        os.replace(target, inner)


def read_json(path: str) -> Any:
    """Parse a JSON file."""
    return json.loads(read_bytes(path))


def write_json(path: str, value: Any) -> None:
    """Write ``value`` as indented JSON (atomically on local disks)."""
    write_bytes(path, (json.dumps(value, indent=2, sort_keys=True) + "\n").encode())
