"""Client of the search service (``hashray search``): one query by hex code, indexed id or image."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import requests

__all__ = ["DEFAULT_URL", "SearchError", "search"]

DEFAULT_URL = "http://127.0.0.1:8000"


class SearchError(ValueError):
    """The service refused the query (its message and status) or could not be reached."""


def search(
    url: str = DEFAULT_URL,
    *,
    code: str | None = None,
    item_id: str | None = None,
    image: str | Path | None = None,
    k: int = 10,
    radius: int | None = None,
    token: str | None = None,
    timeout: float = 60.0,
) -> dict[str, Any]:
    """Top-k answer for exactly one of ``code`` (hex), ``item_id`` or ``image`` (a file path).

    ``token`` defaults to ``$HASHRAY_API_TOKEN``. Returns the service's JSON:
    ``{"results": [{"id", "distance"}], "model_version", "index_version"}``.
    """
    if sum(x is not None for x in (code, item_id, image)) != 1:
        raise SearchError("give exactly one of a code, an id or an image")
    token = token if token is not None else os.environ.get("HASHRAY_API_TOKEN")
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    base = url.rstrip("/")
    try:
        if image is not None:
            form = {"k": str(k)} | ({"radius": str(radius)} if radius is not None else {})
            with open(image, "rb") as f:
                files = {"file": (Path(image).name, f)}
                response = requests.post(
                    f"{base}/search/image", files=files, data=form, headers=headers, timeout=timeout
                )
        else:
            body = {"k": k, "radius": radius} | (
                {"code": code} if code is not None else {"id": item_id}
            )
            response = requests.post(f"{base}/search", json=body, headers=headers, timeout=timeout)
    except requests.RequestException as err:
        raise SearchError(f"cannot reach the search service at {base}: {err}") from None
    if not response.ok:
        raise SearchError(f"{response.status_code} from {base}: {_detail(response)}")
    return response.json()


def _detail(response: requests.Response) -> str:
    """The service's error message (``detail``), else the raw text."""
    try:
        return str(response.json().get("detail"))
    except ValueError:
        return response.text[:500]
