"""Ray Serve app: an image encoder and sharded exact Hamming search over HTTP.

Deployments (``build_app`` wires them; nothing runs at import):
- ``Shard`` i of N holds rows ``[i*n/N, (i+1)*n/N)`` of a codes directory in a ``HammingIndex``
  and answers exact top-k by (distance, id) for a named codes version.
- ``Encoder`` turns uploaded image files into packed codes with the trained model, normalising
  them as training did (``normalize_image`` to the model's size and mode, its mean/std);
  concurrent uploads are run through the model together by ``@serve.batch``.
- ``Search`` is the FastAPI ingress: it fans a query out to every shard through
  DeploymentHandles and merges their top-k exactly (each shard's top-k holds every item of the
  global top-k that lives on that shard). Queries that arrive while others are out at the shards
  go together in the next call (``@serve.batch``): a handle call costs several milliseconds of
  Serve's own path, a query in a batched faiss scan much less.

Codes versions and hot swap. A version is named by the digest of the directory's
``_SUCCESS.json`` (which lists every part file's sha256), so its id changes with its content. A
request names the version it reads and every shard answers from exactly that version, so no
answer mixes two. ``Search.swap`` loads a new directory on every shard beside the live version,
checks its bit length and model version, then makes it live with one assignment; shards drop the
old version ``RETIRE_AFTER_S`` later, once requests that started on it are done. A shard replica
asked for a version it does not hold (a restarted or extra replica) loads it on demand from the
directory the request names, and refuses if that directory no longer holds that version. The
live version is the Search replica's state, so ``Search`` runs one replica (its work per request
is small); a restarted Search replica comes back on the codes it was deployed with.

A dead Shard replica. Serve replaces it and its router stops sending it requests; a request the
replica had not yet taken Serve sends to another replica itself, but one it had taken fails in the
caller (``ActorDiedError``). Shard queries only read, so ``Search`` sends such a call again
(``_ask``) and the router picks a live replica: with two or more replicas per shard a replica's
death fails no query (tests/cluster/test_serve_drill.py).

Safety: codes of another bit length or model version than the service's (the model's, or the
first codes' without a model) are refused, and so are queries that name another model version;
an optional bearer token (``HASHRAY_API_TOKEN`` where the app is built) guards every endpoint but
``/healthz`` (and the OpenAPI pages); uploads, image pixels and ``k`` are capped. Bad requests get
a 4xx with a JSON ``detail``.
"""

import asyncio
import hashlib
import heapq
import hmac
import io
import itertools
import json
import logging
import os
import posixpath
import signal
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import pyarrow.parquet as pq
import torch
from fastapi import Depends, FastAPI, File, Form, HTTPException, Request, UploadFile
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from PIL import Image
from pydantic import BaseModel, ConfigDict, Field, StrictInt, model_validator
from ray import serve
from ray.exceptions import RayActorError, RayTaskError
from ray.serve import Application
from ray.serve.handle import DeploymentHandle
from starlette.datastructures import Headers

from hashing.codes import from_hex, pack_codes, to_hex
from hashing.index import HammingIndex
from hashing.models import read_model_config
from hashing.training import images_to_tensor
from pipelines import storage
from pipelines.codes_io import MANIFEST, METADATA_PREFIX, read_codes, read_manifest
from pipelines.images import BadImage, decode_image, normalize_image
from pipelines.model_store import is_mlflow_uri, load_for_inference, resolve_model

__all__ = [
    "APP_NAME",
    "TOKEN_ENV",
    "Encoder",
    "IndexVersion",
    "Refused",
    "Search",
    "ServeArgs",
    "Shard",
    "build_app",
    "check_deployable",
    "run_service",
    "swap_codes",
    "version_id",
]

APP_NAME = "hashray"
TOKEN_ENV = "HASHRAY_API_TOKEN"
MAX_K = 1000
MAX_UPLOAD_BYTES = 10 * 1024 * 1024
MAX_IMAGE_PIXELS = 4096 * 4096  # checked from the file header, before anything is decoded
RETIRE_AFTER_S = 5.0  # an old version stays on the shards this long after a swap
_JSON_BODY_BYTES = 64 * 1024
_MULTIPART_OVERHEAD = 64 * 1024  # boundaries and the k / radius fields around an upload
_UPLOAD_PATHS = ("/encode", "/search/image")
_SHARD_VERSIONS = 2  # a shard replica holds at most the live version and one other
_SHARD_CALL_TRIES = 3  # sends of one shard query; each lost replica costs one
_QUIET = {"enable_access_log": False}
logger = logging.getLogger("ray.serve")


class Refused(ValueError):
    """A request the service declines; ``status`` is the HTTP status it answers with."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class VersionUnavailable(LookupError):
    """A shard cannot provide the codes version a request named (its directory was rewritten)."""


def version_id(manifest: dict[str, Any]) -> str:
    """Id of a codes version: digest of its ``_SUCCESS.json`` (rows, bits, every file's sha256)."""
    return hashlib.sha256(json.dumps(manifest, sort_keys=True).encode()).hexdigest()[:16]


@dataclass(frozen=True)
class IndexVersion:
    """A codes version loaded on every shard: id, directory, bits, model version, rows per shard."""

    id: str
    codes: str
    bits: int
    model_version: str | None
    counts: tuple[int, ...]


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
            while len(self._versions) > _SHARD_VERSIONS:
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


class Encoder:
    """Uploaded image files -> packed codes with the trained model; ``@serve.batch`` groups them."""

    def __init__(self, model: str, tracking_uri: str | None) -> None:
        self._model, config = load_for_inference(model, tracking_uri=tracking_uri)
        image = config.get("image")
        if not image:
            raise ValueError(f"model {model!r} has no image size in its model.json; re-train it")
        self._size = (int(image["width"]), int(image["height"]))
        self._mode = "L" if int(image["channels"]) == 1 else "RGB"
        self._mean, self._std = float(config.get("mean", 0.5)), float(config.get("std", 0.5))
        self._identity = {"bits": self._model.bits, "model_version": config.get("model_version")}

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


class SearchRequest(BaseModel):
    """Body of ``POST /search``: a hex code or an indexed id, ``k``, optional ``radius``."""

    model_config = ConfigDict(extra="forbid")
    code: str | None = Field(
        None, description="query code in hex, byte 0 first", examples=["3fa0c1d2"]
    )
    id: str | None = Field(
        None, max_length=4096, description="query by the code of this indexed id"
    )
    k: StrictInt = Field(10, ge=1, le=MAX_K, description="number of results")
    radius: StrictInt | None = Field(None, ge=0, description="only results within this distance")
    model_version: str | None = Field(
        None, description="refuse unless the service has this model version"
    )

    @model_validator(mode="after")
    def _one_query(self) -> "SearchRequest":
        if (self.code is None) == (self.id is None):
            raise ValueError("give exactly one of 'code' or 'id'")
        return self


class Hit(BaseModel):
    """One result: an indexed id and its Hamming distance to the query."""

    id: str
    distance: int


class SearchResponse(BaseModel):
    """Answer of the search endpoints."""

    results: list[Hit] = Field(description="ordered by (distance, id)")
    model_version: str | None
    index_version: str
    code: str | None = Field(None, description="the query code in hex (image queries)")


class EncodeResponse(BaseModel):
    """Answer of ``POST /encode``."""

    code: str
    bits: int
    model_version: str | None


class SwapRequest(BaseModel):
    """Body of ``POST /admin/swap``."""

    model_config = ConfigDict(extra="forbid")
    codes: str = Field(description="codes directory (absolute path or s3://) to make live")


class Info(BaseModel):
    """Answer of ``GET /info``."""

    model_version: str | None
    bits: int
    index_version: str
    codes: int
    codes_per_shard: list[int]
    encoder: bool
    limits: dict[str, int]


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
    ) -> None:
        self._shards, self._encoder = shards, encoder
        self._replicas, self._api_token = shard_replicas, api_token
        model = await encoder.describe.remote() if encoder is not None else None
        # (bits, model version) every codes version must have: the model's, else the first codes'
        self._identity = (model["bits"], model["model_version"]) if model else None
        self._swap_lock = asyncio.Lock()
        self._retiring: asyncio.Task | None = None  # kept referenced so the task is not collected
        self.live = await self._load(codes)
        self._identity = (self.live.bits, self.live.model_version)

    def __serve_build_asgi_app__(self) -> FastAPI:
        return _http_app(self, self._api_token)

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
            "limits": {"max_k": MAX_K, "max_upload_bytes": MAX_UPLOAD_BYTES,
                       "max_image_pixels": MAX_IMAGE_PIXELS},
        }  # fmt: skip

    async def search(self, request: SearchRequest) -> dict[str, Any]:
        """Answer a hex-code or id query from the live version."""
        live = self.live
        if request.model_version is not None and request.model_version != live.model_version:
            raise Refused(409, f"query is for model version {request.model_version!r}; "
                               f"this service has {live.model_version!r}")  # fmt: skip
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
            raise Refused(404, "this service has no model (start it with --model) so it cannot "
                               "encode images; query by code or id")  # fmt: skip
        try:
            code = await self._encoder.encode.remote(data)
        except BadImage as err:
            cause = _cause(err)
            raise Refused(413 if cause.reason == "too many pixels" else 400, f"{cause}") from None
        return np.frombuffer(code, dtype=np.uint8)

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
            _check_identity(codes, identity, self._identity)
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
            logger.warning("%s.%s lost its replica (%s); sending it again",
                           shard.deployment_name, method, type(err).__name__)  # fmt: skip


def _check_identity(
    codes: str, found: tuple[int, str | None], expected: tuple[int, str | None]
) -> None:
    """Refuse codes whose (bits, model version) differ from what the service serves."""
    if found != expected:
        raise Refused(409, f"{codes} holds {found[0]}-bit codes of model version {found[1]!r}; "
                           f"this service serves {expected[0]}-bit codes of model version "
                           f"{expected[1]!r}")  # fmt: skip


def _cause(err: BaseException) -> BaseException:
    """The exception a deployment raised, without Ray's wrapper around it."""
    return err.cause if isinstance(err, RayTaskError) else err


def _http_app(search: Search, api_token: str | None) -> FastAPI:
    """The routes of the Search ingress; all but /healthz need the token when there is one."""
    app = FastAPI(
        title="hashray search",
        description="Exact Hamming search over sharded binary codes, and image encoding.",
    )
    app.add_middleware(_BodyLimit)
    bearer = HTTPBearer(auto_error=False, description=f"the service's {TOKEN_ENV}, if it has one")

    def authorize(
        credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
    ) -> None:
        if api_token is None:
            return
        given = credentials.credentials.encode() if credentials else b""
        if not hmac.compare_digest(given, api_token.encode()):
            raise Refused(401, "missing or wrong bearer token")

    @app.exception_handler(Refused)
    async def refused(request: Request, err: Refused) -> JSONResponse:
        headers = {"WWW-Authenticate": "Bearer"} if err.status == 401 else None
        return JSONResponse({"detail": str(err)}, status_code=err.status, headers=headers)

    guarded = [Depends(authorize)]
    upload = {"dependencies": guarded, "form_limits": {"max_files": 1, "max_fields": 4}}
    image_file = Annotated[
        UploadFile, File(description=f"an image file, at most {MAX_UPLOAD_BYTES} bytes")
    ]

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok", "index_version": search.live.id}

    @app.get("/info", dependencies=guarded)
    async def info() -> Info:
        return Info(**search.info())

    @app.post("/search", dependencies=guarded)
    async def search_code(body: SearchRequest) -> SearchResponse:
        return SearchResponse(**await search.search(body))

    @app.post("/search/image", **upload)
    async def search_image(
        file: image_file,
        k: Annotated[int, Form(ge=1, le=MAX_K)] = 10,
        radius: Annotated[int | None, Form(ge=0)] = None,
    ) -> SearchResponse:
        return SearchResponse(**await search.search_image(await _read(file), k, radius))

    @app.post("/encode", **upload)
    async def encode(file: image_file) -> EncodeResponse:
        code = await search.encode(await _read(file))
        live = search.live
        return EncodeResponse(code=to_hex(code), bits=live.bits, model_version=live.model_version)

    @app.post("/admin/swap", dependencies=guarded)
    async def swap(body: SwapRequest) -> Info:
        if api_token is None:
            raise Refused(403, f"admin endpoints are off: the service has no {TOKEN_ENV}")
        if not (body.codes.startswith("s3://") or os.path.isabs(body.codes)):
            raise Refused(400, "codes must be an absolute path or an s3:// URI")
        return Info(**await search.swap(body.codes))

    return app


class _BodyLimit:
    """ASGI middleware: a JSON 413 for request bodies over their limit, declared or streamed.

    (FastAPI's own ``max_body_size`` answers in plain text.) Uploads may be ``MAX_UPLOAD_BYTES``
    plus the multipart framing around them; every other body is a small JSON document.
    """

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        uploads = scope["path"].endswith(_UPLOAD_PATHS)
        limit = MAX_UPLOAD_BYTES + _MULTIPART_OVERHEAD if uploads else _JSON_BODY_BYTES
        declared = Headers(scope=scope).get("content-length", "")
        if declared.isdigit() and int(declared) > limit:
            response = JSONResponse({"detail": f"request body over {limit} bytes"}, status_code=413)
            return await response(scope, receive, send)
        received = 0

        async def counted() -> dict:
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > limit:  # FastAPI passes HTTPExceptions from body parsing on as they are
                raise HTTPException(413, f"request body over {limit} bytes")
            return message

        await self.app(scope, counted, send)


async def _read(file: UploadFile) -> bytes:
    """An upload's bytes, refusing it past ``MAX_UPLOAD_BYTES`` without reading further."""
    data = await file.read(MAX_UPLOAD_BYTES + 1)
    if len(data) > MAX_UPLOAD_BYTES:
        raise Refused(413, f"upload is over {MAX_UPLOAD_BYTES} bytes")
    return data


class ServeArgs(BaseModel):
    """Arguments of ``build_app``; also the ``args:`` of a ``serve build`` config (infra/serve/)."""

    model_config = ConfigDict(extra="forbid")
    codes: str = Field(description="codes directory (local or s3://), from hashray encode")
    model: str | None = Field(
        None, description="model dir, runs:/ or models:/ URI; none: no images"
    )
    shards: int = Field(
        1, ge=1, description="Shard deployments, each a disjoint slice of the codes"
    )
    replicas: int = Field(1, ge=1, description="replicas of each Shard and of the Encoder")
    cpus: float = Field(0.25, gt=0, description="CPUs reserved per replica")
    tracking_uri: str | None = Field(None, description="MLflow store for runs:/ and models:/ URIs")
    api_token: str | None = Field(None, description=f"bearer token; default ${TOKEN_ENV} at build")


def build_app(args: ServeArgs) -> Application:
    """The app: ``args.shards`` Shards, an Encoder if ``args.model`` is set, the Search ingress."""
    # a failing constructor (missing codes, refused version, bad model URI) is rarely transient:
    # fail the deploy after a few tries instead of Serve's default twenty
    options = {"ray_actor_options": {"num_cpus": args.cpus}, "logging_config": _QUIET,
               "max_constructor_retry_count": 3}  # fmt: skip
    shards = [
        serve.deployment(Shard, name=f"Shard{i}")
        .options(num_replicas=args.replicas, max_ongoing_requests=256, **options)
        .bind(i, args.shards)
        for i in range(args.shards)
    ]
    encoder = None
    if args.model:
        encoder = (
            serve.deployment(Encoder)
            .options(num_replicas=args.replicas, max_ongoing_requests=64, **options)
            .bind(*_model_source(args))
        )
    token = args.api_token if args.api_token is not None else os.environ.get(TOKEN_ENV)
    search = serve.deployment(Search).options(num_replicas=1, max_ongoing_requests=256, **options)
    return search.bind(shards, encoder, _local(args.codes), args.replicas, token or None)


def _model_source(args: ServeArgs) -> tuple[str, str | None]:
    """The model URI as replicas can resolve it, and the MLflow store for MLflow URIs."""
    if not is_mlflow_uri(args.model):
        return _local(args.model), args.tracking_uri
    from pipelines.config import default_tracking_uri

    return args.model, args.tracking_uri or default_tracking_uri()


def check_deployable(args: ServeArgs) -> None:
    """Fail fast, before deploying: codes that are incomplete or do not match the model."""
    codes = _local(args.codes)
    manifest = read_manifest(codes)
    if not manifest["files"]:
        raise ValueError(f"{codes}: {MANIFEST} lists no files")
    fs, root = storage.filesystem(codes)
    first = posixpath.join(root, manifest["files"][0]["path"])
    metadata = pq.read_schema(first, filesystem=fs).metadata or {}
    model_version = metadata.get(f"{METADATA_PREFIX}model_version".encode())
    found = (int(manifest["bits"]), model_version.decode() if model_version else None)
    if args.model:
        model, tracking_uri = _model_source(args)
        config = read_model_config(resolve_model(model, tracking_uri=tracking_uri))
        _check_identity(codes, found, (int(config["bits"]), config.get("model_version")))


def swap_codes(codes: str, app_name: str = APP_NAME) -> dict[str, Any]:
    """Make ``codes`` the live version of a running app (loaded beside the old one); -> its info."""
    return serve.get_app_handle(app_name).swap.remote(_local(codes)).result()


def run_service(
    args: ServeArgs,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    on_ready: Callable[[str, dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Deploy on the current Ray (or a local one started here); serve until SIGINT/SIGTERM.

    Serve and the Ray this call started are shut down; on a cluster it joined, only the app goes.
    """
    import ray

    from pipelines.cluster import connect

    check_deployable(args)
    started = connect()
    try:
        serve.start(http_options={"host": host, "port": port}, logging_config=_QUIET)
        serve.run(build_app(args), name=APP_NAME, route_prefix="/", logging_config=_QUIET)
        url = f"http://{host}:{port}"
        info = serve.get_app_handle(APP_NAME).info.remote().result()
        if on_ready:
            on_ready(url, info)
        _wait_for_stop_signal()
    finally:
        if started:
            serve.shutdown()
            ray.shutdown()
        elif ray.is_initialized():
            serve.delete(APP_NAME)
    return {"url": url, "info": info, "stopped": True}


def _wait_for_stop_signal() -> None:
    """Block the main thread until SIGINT or SIGTERM."""
    stop = threading.Event()
    previous = {
        sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGINT, signal.SIGTERM)
    }
    try:
        while not stop.wait(0.5):
            pass
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _local(path: str) -> str:
    """Local paths made absolute (replicas do not run in the caller's cwd); URIs as they are."""
    return path if "://" in path or is_mlflow_uri(path) else str(Path(path).expanduser().resolve())
