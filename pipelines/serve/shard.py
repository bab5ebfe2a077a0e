"""The ``Shard`` deployment: one slice of a codes directory, per codes version.

Shard i of N holds rows ``[i*n/N, (i+1)*n/N)`` of a codes directory in a ``HammingIndex`` and
answers exact top-k by (distance, id). A codes version is named by the digest of the directory's
``_SUCCESS.json`` (``version_id``: it lists every part file's sha256), so its id changes with its
content. Every call names the version it reads; a replica holds at most ``SHARD_VERSIONS`` of them
(the live one and the one being swapped in or out) and loads a version it lacks on demand from
the directory the call names (a restarted or extra replica), refusing with
``VersionUnavailable`` if that directory no longer holds that version.
"""

import asyncio
import hashlib
import json
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import numpy as np

from hashing.index import HammingIndex
from pipelines.codes_io import read_codes, read_manifest
from pipelines.contracts import CodesManifest

__all__ = ["SHARD_VERSIONS", "Shard", "VersionUnavailable", "version_id"]

SHARD_VERSIONS = 2  # a shard replica holds at most the live version and one other


class VersionUnavailable(LookupError):
    """A shard cannot provide the codes version a request named (its directory was rewritten)."""


def version_id(manifest: CodesManifest) -> str:
    """Id of a codes version: digest of its ``_SUCCESS.json`` (rows, bits, every file's sha256)."""
    document = json.dumps(manifest.to_dict(), sort_keys=True)
    return hashlib.sha256(document.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class _Slice:
    """One shard's rows of one codes version: index, codes (n x bytes), id order for lookups."""

    index: HammingIndex
    codes: np.ndarray
    by_id: np.ndarray  # argsort of index.ids
    description: dict[str, Any]

    def code_of(self, item_id: str) -> bytes | None:
        """Packed code of ``item_id`` if this slice holds it."""
        ids = self.index.ids
        at = int(np.searchsorted(ids, item_id, sorter=self.by_id))
        if at < len(ids) and ids[self.by_id[at]] == item_id:
            return self.codes[self.by_id[at]].tobytes()
        return None


class Shard:
    """Rows ``[i*n/N, (i+1)*n/N)`` of a codes directory in a ``HammingIndex``, per codes version."""

    def __init__(self, shard: int, num_shards: int) -> None:
        self._shard, self._num_shards = shard, num_shards
        # version id -> its slice, loading or loaded; least recently used first
        self._versions: OrderedDict[str, asyncio.Future] = OrderedDict()

    async def load(self, codes: str) -> dict[str, Any]:
        """Load this shard's rows of ``codes`` beside the versions held; returns what it holds.

        The description: ``version`` (id), ``count`` (rows), ``bits``, ``model_version``.
        """
        version = version_id(await asyncio.to_thread(read_manifest, codes))
        return (await self._slice(version, codes)).description

    async def top_k(
        self, version: str, codes: str, queries: np.ndarray, k: int
    ) -> tuple[np.ndarray, np.ndarray]:
        """Exact top-k of packed queries (q x bytes) here: (distances, ids), each (q x <=k)."""
        return (await self._slice(version, codes)).index.search(queries, k)

    async def find(self, version: str, codes: str, item_id: str) -> bytes | None:
        """Packed code of ``item_id`` if this shard holds it in ``version``."""
        return (await self._slice(version, codes)).code_of(item_id)

    async def retain(self, versions: list[str]) -> list[str]:
        """Drop every version not in ``versions``; returns the versions still held."""
        for version in [v for v in self._versions if v not in versions]:
            del self._versions[version]
        return list(self._versions)

    async def _slice(self, version: str, codes: str) -> _Slice:
        future = self._versions.get(version)
        if future is None:
            # loads run in a thread so this replica keeps answering for the versions it holds
            future = asyncio.ensure_future(asyncio.to_thread(self._read_slice, codes, version))
            self._versions[version] = future
            while len(self._versions) > SHARD_VERSIONS:
                self._versions.popitem(last=False)
        self._versions.move_to_end(version)
        try:
            return await asyncio.shield(future)  # a cancelled request must not cancel a shared load
        except Exception:
            if self._versions.get(version) is future:
                del self._versions[version]
            raise

    def _read_slice(self, codes: str, version: str) -> _Slice:
        data = read_codes(codes)
        if version_id(data.manifest) != version:
            raise VersionUnavailable(f"{codes} no longer holds codes version {version}")
        start = len(data) * self._shard // self._num_shards
        stop = len(data) * (self._shard + 1) // self._num_shards
        index = HammingIndex(data.bits)
        index.add(data.codes[start:stop], data.ids[start:stop])
        if len(index):  # the first query builds the code groups: do it now, not in a request
            index.search(data.codes[start : start + 1], 1)
        description = {
            "version": version,
            "count": len(index),
            "bits": data.bits,
            "model_version": data.metadata.get("model_version"),
        }
        return _Slice(index, data.codes[start:stop].copy(), np.argsort(index.ids), description)
