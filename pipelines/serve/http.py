"""The HTTP face of the ``Search`` ingress: FastAPI routes, request/response schemas, auth, limits.

Every endpoint but ``/healthz`` (and the OpenAPI pages) needs the bearer token when the service
has one (``HASHRAY_API_TOKEN`` where the app is built); ``/admin/swap`` is off without one.
Request bodies are capped (uploads at ``MAX_UPLOAD_BYTES`` plus their multipart framing, JSON
bodies far lower) and so are ``k``, ``radius`` and string lengths. Every refusal is a ``Refused``,
answered as a 4xx/5xx with a JSON ``detail``; the OpenAPI schema declares each route's statuses
and bodies (tests/pipelines/test_api_fuzz.py holds the service to it).
"""

import hmac
import os
from typing import TYPE_CHECKING, Annotated, Any

from fastapi import Depends, FastAPI, File, Form, HTTPException, Request, UploadFile
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, ConfigDict, Field, StrictInt, model_validator
from starlette.datastructures import Headers

from hashing.codes import to_hex

if TYPE_CHECKING:
    from pipelines.serve.ingress import Search

__all__ = [
    "MAX_K",
    "MAX_UPLOAD_BYTES",
    "TOKEN_ENV",
    "EncodeResponse",
    "ErrorBody",
    "Hit",
    "Info",
    "Refused",
    "SearchRequest",
    "SearchResponse",
    "SwapRequest",
    "http_app",
]

TOKEN_ENV = "HASHRAY_API_TOKEN"
MAX_K = 1000
MAX_RADIUS = 1024  # the longest code (pipelines.config's bits limit)
MAX_TEXT = 4096  # ids, codes paths, model versions
MAX_UPLOAD_BYTES = 10 * 1024 * 1024
_JSON_BODY_BYTES = 64 * 1024
_MULTIPART_OVERHEAD = 64 * 1024  # boundaries and the k / radius fields around an upload
_UPLOAD_PATHS = ("/encode", "/search/image")


class Refused(ValueError):
    """A request the service declines; ``status`` is the HTTP status it answers with."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class ErrorBody(BaseModel):
    """A refusal: what was wrong (FastAPI's own 422 carries a list of field errors instead)."""

    detail: str


_MEANING = {
    400: "malformed input: hex code, image file, multipart body or codes path",
    401: "missing or wrong bearer token (a service started with HASHRAY_API_TOKEN)",
    403: "admin endpoints are off (a service without HASHRAY_API_TOKEN)",
    404: "unknown id, codes directory not found, or no model to encode images with",
    409: "another model version or code length than the service's",
    413: "request body, upload or image over its limit",
}


def _errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` for the refusals a route answers with, each an ``ErrorBody``."""
    return {status: {"model": ErrorBody, "description": _MEANING[status]} for status in statuses}


class SearchRequest(BaseModel):
    """Body of ``POST /search``: a hex code or an indexed id, ``k``, optional ``radius``."""

    model_config = ConfigDict(extra="forbid")
    code: str | None = Field(
        None,
        max_length=2 * MAX_RADIUS,
        description="query code in hex, byte 0 first",
        examples=["3fa0c1d2"],
    )
    id: str | None = Field(
        None, max_length=MAX_TEXT, description="query by the code of this indexed id"
    )
    k: StrictInt = Field(10, ge=1, le=MAX_K, description="number of results")
    radius: StrictInt | None = Field(
        None, ge=0, le=MAX_RADIUS, description="only results within this distance"
    )
    model_version: str | None = Field(
        None, max_length=MAX_TEXT, description="refuse unless the service has this model version"
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
    codes: str = Field(
        max_length=MAX_TEXT, description="codes directory (absolute path or s3://) to make live"
    )


class Info(BaseModel):
    """Answer of ``GET /info``."""

    model_version: str | None
    bits: int
    index_version: str
    codes: int
    codes_per_shard: list[int]
    encoder: bool
    limits: dict[str, int]


def http_app(search: "Search", api_token: str | None) -> FastAPI:
    """The routes of the Search ingress; all but /healthz need the token when there is one."""
    app = FastAPI(
        title="hashray search",
        description="Exact Hamming search over sharded binary codes, and image encoding.",
    )
    app.add_middleware(_BodyLimit)
    bearer = HTTPBearer(auto_error=False, description=f"the service's {TOKEN_ENV}")

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

    # Without a token the schema declares no security and no 401: it describes this service.
    guarded = [Depends(authorize)] if api_token is not None else []
    auth = (401,) if api_token is not None else ()
    upload = {
        "dependencies": guarded,
        "form_limits": {"max_files": 1, "max_fields": 4},
        "responses": _errors(400, *auth, 404, 413),
    }
    image_file = Annotated[
        UploadFile, File(description=f"an image file, at most {MAX_UPLOAD_BYTES} bytes")
    ]

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok", "index_version": search.live.id}

    @app.get("/info", dependencies=guarded, responses=_errors(*auth))
    async def info() -> Info:
        return Info(**search.info())

    @app.post("/search", dependencies=guarded, responses=_errors(400, *auth, 404, 409, 413))
    async def search_code(body: SearchRequest) -> SearchResponse:
        return SearchResponse(**await search.search(body))

    @app.post("/search/image", **upload)
    async def search_image(
        file: image_file,
        k: Annotated[int, Form(ge=1, le=MAX_K)] = 10,
        radius: Annotated[int | None, Form(ge=0, le=MAX_RADIUS)] = None,
    ) -> SearchResponse:
        return SearchResponse(**await search.search_image(await _read(file), k, radius))

    @app.post("/encode", **upload)
    async def encode(file: image_file) -> EncodeResponse:
        code = await search.encode(await _read(file))
        live = search.live
        return EncodeResponse(code=to_hex(code), bits=live.bits, model_version=live.model_version)

    swap_refusals = (400, 401, 404, 409, 413) if api_token is not None else (403, 413)

    @app.post("/admin/swap", dependencies=guarded, responses=_errors(*swap_refusals))
    async def swap(body: SwapRequest) -> Info:
        if api_token is None:
            raise Refused(403, f"admin endpoints are off: the service has no {TOKEN_ENV}")
        if not (body.codes.startswith("s3://") or os.path.isabs(body.codes)):
            raise Refused(400, "codes must be an absolute path or an s3:// URI")
        return Info(**await search.swap(body.codes))

    from pipelines.serve.web import add_web_routes  # here: web.py imports Refused from this module

    add_web_routes(app, search, guarded)
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
