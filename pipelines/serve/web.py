"""The search page and the item endpoints it reads: ``GET /``, ``/items/{id}``, ``/dataset``.

``GET /`` answers one HTML document: ``static/index.html`` with ``style.css`` and ``app.js``
put inline, so the page works under any route prefix and needs no other request to load. It
holds no data and needs no token; the page asks for the token when ``/info`` answers 401 and
keeps it in a JavaScript variable only. The item endpoints need the token like the others and
answer 404 without ``--data``. Ids are looked up in the dataset's id map, never used as paths;
ids that look like paths escaping a folder (``..`` segments, a leading ``/``, backslashes,
control characters) are refused with 400 all the same.
"""

import re
from functools import cache
from importlib import resources
from typing import TYPE_CHECKING, Annotated, Any, Literal

from fastapi import FastAPI, Path, Query
from fastapi.params import Depends
from fastapi.responses import HTMLResponse, Response
from pydantic import BaseModel, Field

from pipelines.serve.http import Refused

if TYPE_CHECKING:
    from pipelines.serve.ingress import Search

__all__ = ["DatasetSummary", "Item", "Problem", "add_web_routes", "page_html"]

MAX_ID_LENGTH = 4096
_SUSPICIOUS_ID = re.compile(r"(^|/)\.\.(/|$)|^/|\\|[\x00-\x1f\x7f]")


class Problem(BaseModel):
    """A refusal: what went wrong, in words."""

    detail: str


class Item(BaseModel):
    """Answer of ``GET /items/{id}``: an item of the prepared dataset."""

    id: str
    split: str = Field(description="database, query or train (the first holding the id)")
    labels: list[int] = Field(description="class ids")
    label_names: list[str] = Field(description="the class names of labels")


class DatasetSummary(BaseModel):
    """Answer of ``GET /dataset``: the prepared dataset the service shows items from."""

    name: str
    classes: list[str]
    multi_label: bool
    image: dict[str, int] = Field(description="height and width of the stored images")
    splits: dict[str, int] = Field(description="rows per split")
    items: int = Field(description="distinct ids over all splits")


def _problems(*statuses: int) -> dict[int | str, dict[str, Any]]:
    words = {
        400: "an id that looks like a path",
        401: "missing or wrong bearer token",
        404: "no such id, or no prepared dataset",
    }
    return {status: {"model": Problem, "description": words[status]} for status in statuses}


@cache
def page_html() -> str:
    """The search page: index.html with its stylesheet and script inline."""
    static = resources.files("pipelines.serve") / "static"
    html = (static / "index.html").read_text(encoding="utf-8")
    style = (static / "style.css").read_text(encoding="utf-8")
    script = (static / "app.js").read_text(encoding="utf-8")
    html = html.replace('<link rel="stylesheet" href="style.css">', f"<style>\n{style}</style>")
    return html.replace('<script src="app.js"></script>', f"<script>\n{script}</script>")


def add_web_routes(app: FastAPI, search: "Search", guarded: list[Depends]) -> None:
    """Register ``/``, ``/dataset``, ``/sample`` and ``/items/...`` on the ingress's app."""
    item_id = Annotated[str, Path(max_length=MAX_ID_LENGTH, description="an id of the dataset")]

    @app.get("/", include_in_schema=False)
    async def page() -> HTMLResponse:
        return HTMLResponse(page_html(), headers={"Cache-Control": "no-cache"})

    @app.get("/dataset", dependencies=guarded, responses=_problems(401, 404))
    async def dataset() -> DatasetSummary:
        return DatasetSummary(**search.dataset())

    @app.get("/sample", dependencies=guarded, responses=_problems(401, 404))
    async def sample(
        split: Annotated[Literal["database", "query", "train"], Query()] = "database",
    ) -> Item:
        """A random item of ``split`` (the page's "random image")."""
        return Item(**await search.sample_item(split))

    # The image route first: ids may hold slashes, so ``{item_id:path}`` alone would take
    # ``x/image`` as the id.
    @app.get(
        "/items/{item_id:path}/image",
        dependencies=guarded,
        response_class=Response,
        responses={
            200: {"content": {"image/png": {}}, "description": "PNG bytes"},
            **_problems(400, 401, 404),
        },
    )
    async def item_image(item_id: item_id) -> Response:
        """The item's image as PNG (scaled down to fit 256 pixels if stored larger)."""
        data = await search.item_image(_checked(item_id))
        # an id's image changes only with another --data: browsers may keep it for the session
        return Response(data, media_type="image/png", headers={"Cache-Control": "private"})

    @app.get("/items/{item_id:path}", dependencies=guarded, responses=_problems(400, 401, 404))
    async def item(item_id: item_id) -> Item:
        """The item's labels and split."""
        return Item(**await search.item(_checked(item_id)))


def _checked(item_id: str) -> str:
    if _SUSPICIOUS_ID.search(item_id):
        raise Refused(400, "an id may not hold '..' segments, a leading '/', '\\' or controls")
    return item_id
