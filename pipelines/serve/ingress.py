"""The ``Search`` ingress: fan a query out to every shard, merge exactly, hot-swap codes versions.

A query goes to every ``Shard`` through DeploymentHandles and their top-k lists are merged
exactly: each shard's top-k holds every item of the global top-k that lives on that shard.
Queries that arrive while others are out at the shards go together in the next call
(``@serve.batch``): a handle call costs several milliseconds of Serve's own path, a query in a
batched faiss scan much less.

Versions and hot swap. A request reads the live version (``IndexVersion``) and names it to every
shard, so no answer mixes two. ``Search.swap`` loads a new directory on every shard beside the
live version, checks its bit length and model version, then makes it live with one assignment;
shards drop the old version ``RETIRE_AFTER_S`` later, once requests that started on it are done.
The live version is this replica's state, so ``Search`` runs one replica (its work per request is
small); a restarted Search replica comes back on the codes it was deployed with.

Codes of another bit length or model version than the service's (the model's, or the first
codes' without a model) are refused, and so are queries that name another model version.

A dead Shard replica. Serve replaces it and its router stops sending it requests; a request the
replica had not yet taken Serve sends to another replica itself, but one it had taken fails in the
caller (``ActorDiedError``). Shard queries only read, so ``Search`` sends such a call again
(``_ask``) and the router picks a live replica: with two or more replicas per shard a replica's
death fails no query (tests/cluster/test_serve_drill.py).
"""

import asyncio
import heapq
import itertools
import logging
from dataclasses import dataclass
from typing import Any

import numpy as np
from fastapi import FastAPI
from ray import serve
from ray.exceptions import RayActorError, RayTaskError
from ray.serve.handle import DeploymentHandle

from hashing.codes import from_hex, to_hex
from pipelines.images import BadImage
from pipelines.serve.encoder import MAX_IMAGE_PIXELS
from pipelines.serve.http import MAX_K, MAX_UPLOAD_BYTES, Refused, SearchRequest, http_app
from pipelines.serve.items import ItemStore
from pipelines.serve.shard import VersionUnavailable

__all__ = ["RETIRE_AFTER_S", "IndexVersion", "Search", "check_identity"]

RETIRE_AFTER_S = 5.0  # an old version stays on the shards this long after a swap
_SHARD_CALL_TRIES = 3  # sends of one shard query; each lost replica costs one
logger = logging.getLogger("ray.serve")


@dataclass(frozen=True)
class IndexVersion:
    """A codes version loaded on every shard: id, directory, bits, model version, rows per shard."""

    id: str
    codes: str
    bits: int
    model_version: str | None
    counts: tuple[int, ...]


@serve.ingress()
class Search:
    """FastAPI ingress: validates queries, fans them out to every shard, merges top-k exactly."""

    async def __init__(
        self,
        shards: list[DeploymentHandle],
        encoder: DeploymentHandle | None,
        codes: str,
        shard_replicas: int,
        api_token: str | None,
        data: str | None = None,
    ) -> None:
        self._shards, self._encoder = shards, encoder
        # the prepared dataset's ids and labels (images are read on demand): /items, the page
        self._items = await asyncio.to_thread(ItemStore, data) if data else None
        self._replicas, self._api_token = shard_replicas, api_token
        model = await encoder.describe.remote() if encoder is not None else None
        # (bits, model version) every codes version must have: the model's, else the first codes'
        self._identity = (model["bits"], model["model_version"]) if model else None
        self._swap_lock = asyncio.Lock()
        self._retiring: asyncio.Task | None = None  # kept referenced so the task is not collected
        self.live = await self._load(codes)
        self._identity = (self.live.bits, self.live.model_version)

    def __serve_build_asgi_app__(self) -> FastAPI:
        return http_app(self, self._api_token)

    def info(self) -> dict[str, Any]:
        """What this service serves: model version, bits, codes version, rows per shard, limits."""
        live = self.live
        return {
            "model_version": live.model_version,
            "bits": live.bits,
            "index_version": live.id,
            "codes": sum(live.counts),
            "codes_per_shard": list(live.counts),
            "encoder": self._encoder is not None,
            "limits": {
                "max_k": MAX_K,
                "max_upload_bytes": MAX_UPLOAD_BYTES,
                "max_image_pixels": MAX_IMAGE_PIXELS,
            },
        }

    async def search(self, request: SearchRequest) -> dict[str, Any]:
        """Answer a hex-code or id query from the live version."""
        live = self.live
        if request.model_version is not None and request.model_version != live.model_version:
            raise Refused(
                409,
                f"query is for model version {request.model_version!r}; "
                f"this service has {live.model_version!r}",
            )
        if request.code is not None:
            try:
                code = from_hex(request.code, live.bits)
            except ValueError as err:
                raise Refused(400, str(err)) from None
        else:
            found = await self._gather(live, "find", request.id)
            code = next((np.frombuffer(c, dtype=np.uint8) for c in found if c is not None), None)
            if code is None:
                raise Refused(404, f"id {request.id!r} is not in index version {live.id}")
        return await self._top_k(live, code, request.k, request.radius)

    async def search_image(self, data: bytes, k: int, radius: int | None) -> dict[str, Any]:
        """Encode an uploaded image, then answer its top-k from the live version."""
        code = await self.encode(data)
        answer = await self._top_k(self.live, code, k, radius)
        return {**answer, "code": to_hex(code)}

    async def encode(self, data: bytes) -> np.ndarray:
        """An uploaded image file -> its packed code (bits/8,) uint8, through the Encoder."""
        if self._encoder is None:
            raise Refused(
                404,
                "this service has no model (start it with --model) so it cannot "
                "encode images; query by code or id",
            )
        try:
            code = await self._encoder.encode.remote(data)
        except BadImage as err:
            cause = _cause(err)
            raise Refused(413 if cause.reason == "too many pixels" else 400, f"{cause}") from None
        return np.frombuffer(code, dtype=np.uint8)

    async def item(self, item_id: str) -> dict[str, Any]:
        """Labels and split of ``item_id`` in the prepared dataset (``--data``)."""
        return await self._from_items("item", item_id, f"id {item_id!r} is not in the dataset")

    async def item_image(self, item_id: str) -> bytes:
        """PNG thumbnail of ``item_id`` from the prepared dataset (``--data``)."""
        return await self._from_items("image", item_id, f"id {item_id!r} is not in the dataset")

    async def sample_item(self, split: str) -> dict[str, Any]:
        """A random item of ``split`` of the prepared dataset (``--data``)."""
        return await self._from_items("sample", split, f"split {split!r} has no items")

    def dataset(self) -> dict[str, Any]:
        """Name, classes, image shape and rows per split of the prepared dataset (``--data``)."""
        return self._item_store().summary()

    def _item_store(self) -> ItemStore:
        if self._items is None:
            raise Refused(
                404,
                "this service has no prepared dataset (start it with --data PREPARED_DIR), "
                "so it has no images or labels; results are ids only",
            )
        return self._items

    async def _from_items(self, method: str, key: str, missing: str) -> Any:
        store = self._item_store()  # parquet reads block: off the event loop
        try:
            return await asyncio.to_thread(getattr(store, method), key)
        except KeyError:
            raise Refused(404, missing) from None

    async def swap(self, codes: str) -> dict[str, Any]:
        """Load ``codes`` on every shard beside the live version, check it, make it live."""
        async with self._swap_lock:
            try:
                new = await self._load(codes)
            except Refused:
                await self._keep_live_only()  # what the refused version left on the shards goes
                raise
            old, self.live = self.live, new
        logger.info("index version %s (%s) is live, was %s", new.id, codes, old.id)
        if old.id != new.id:
            self._retiring = asyncio.create_task(self._retire(after=RETIRE_AFTER_S))
        return self.info()

    async def _load(self, codes: str) -> IndexVersion:
        """Every shard loads ``codes`` (each replica, as far as routing reaches them); check it."""
        calls = [shard.load.remote(codes) for shard in self._shards for _ in range(self._replicas)]
        try:
            loaded = await asyncio.gather(*calls)
        except FileNotFoundError as err:
            raise Refused(404, f"{_cause(err)}") from None
        except (ValueError, LookupError) as err:
            raise Refused(409, f"cannot load {codes}: {_cause(err)}") from None
        if len({entry["version"] for entry in loaded}) > 1:
            raise Refused(409, f"{codes} changed while it was loading; try again")
        first = loaded[0]
        identity = (first["bits"], first["model_version"])
        if self._identity is not None:
            check_identity(codes, identity, self._identity)
        counts = tuple(entry["count"] for entry in loaded[:: self._replicas])
        return IndexVersion(first["version"], codes, *identity, counts)

    async def _retire(self, after: float) -> None:
        """``after`` seconds on (old requests are done), shards keep only the live version."""
        await asyncio.sleep(after)
        async with self._swap_lock:
            await self._keep_live_only()

    async def _keep_live_only(self) -> None:
        keep = [self.live.id]
        await asyncio.gather(
            *(shard.retain.remote(keep) for shard in self._shards for _ in range(self._replicas))
        )

    async def _top_k(
        self, live: IndexVersion, code: np.ndarray, k: int, radius: int | None
    ) -> dict[str, Any]:
        hits = await self._nearest((live, code, k))
        if radius is not None:  # items within the radius come first in (distance, id) order
            hits = itertools.takewhile(lambda hit: hit[0] <= radius, hits)
        return {
            "results": [{"id": item, "distance": distance} for distance, item in hits],
            "model_version": live.model_version,
            "index_version": live.id,
        }

    # Queries that arrive while a batch is out at the shards form the next batch: one call per
    # shard for all of them instead of one each, with no added wait when the service is idle.
    @serve.batch(max_batch_size=64, batch_wait_timeout_s=0.0, max_concurrent_batches=2)
    async def _nearest(
        self, queries: list[tuple[IndexVersion, np.ndarray, int]]
    ) -> list[list[tuple[int, str]]]:
        """(version, code, k) queries -> each one's top-k (distance, id) pairs, merged exactly."""
        answers: list[list[tuple[int, str]]] = [[] for _ in queries]
        for live in {version for version, _, _ in queries}:  # more than one only around a swap
            rows = [i for i, (version, _, _) in enumerate(queries) if version == live]
            k = max(queries[i][2] for i in rows)  # a longer top-k starts with every shorter one
            parts = await self._gather(live, "top_k", np.stack([queries[i][1] for i in rows]), k)
            for row, i in enumerate(rows):
                merged = heapq.merge(*(zip(d[row].tolist(), ids[row].tolist()) for d, ids in parts))
                answers[i] = list(itertools.islice(merged, queries[i][2]))
        return answers

    async def _gather(self, live: IndexVersion, method: str, *args: Any) -> list[Any]:
        """Call ``method(version, codes, *args)`` on every shard; all answer from ``live``."""
        calls = [_ask(shard, method, live.id, live.codes, *args) for shard in self._shards]
        try:
            return await asyncio.gather(*calls)
        except VersionUnavailable as err:
            raise Refused(503, f"{_cause(err)}; try again") from None


async def _ask(shard: DeploymentHandle, method: str, *args: Any) -> Any:
    """``shard.method(*args)``, sent again when the replica that took it dies before answering.

    Only for calls that read: the replica may have done the work before it died.
    """
    for attempt in range(1, _SHARD_CALL_TRIES + 1):
        try:
            return await getattr(shard, method).remote(*args)
        except RayActorError as err:  # ActorDiedError, or ActorUnavailableError while unreachable
            if attempt == _SHARD_CALL_TRIES:
                raise
            logger.warning(
                "%s.%s lost its replica (%s); sending it again",
                shard.deployment_name,
                method,
                type(err).__name__,
            )


def check_identity(
    codes: str, found: tuple[int, str | None], expected: tuple[int, str | None]
) -> None:
    """Refuse codes whose (bits, model version) differ from what the service serves."""
    if found != expected:
        raise Refused(
            409,
            f"{codes} holds {found[0]}-bit codes of model version {found[1]!r}; "
            f"this service serves {expected[0]}-bit codes of model version "
            f"{expected[1]!r}",
        )


def _cause(err: BaseException) -> BaseException:
    """The exception a deployment raised, without Ray's wrapper around it."""
    return err.cause if isinstance(err, RayTaskError) else err
