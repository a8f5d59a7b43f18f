"""The page to try a model, at ``/``: plain HTML, JavaScript and CSS shipped in the package
(``serve/page/``), no build step and nothing fetched from elsewhere.

The page holds no secret, so its files are public even when the server has a token: the user
types the token into the page, which sends it on each API call (and keeps it in the tab's
``sessionStorage`` at most); the server never writes it into what it serves. Only the files listed
in :data:`PAGE_FILES` are served, read once at start-up and looked up by exact name: nothing a
client sends becomes a path on disk. A strict Content-Security-Policy allows scripts and styles
from the server itself only (no inline script), and API calls to the same origin only.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from importlib import resources

from fastapi import FastAPI, Request
from fastapi.responses import Response

from edgecnn.errors import ArtifactError
from edgecnn.serve.errors import ServeError

__all__ = ["PAGE_FILES", "CONTENT_SECURITY_POLICY", "Asset", "load_page", "add_page_routes"]

# file in serve/page/ -> its content type; index.html is served at "/", the others at "/page/<file>"
PAGE_FILES = {"index.html": "text/html; charset=utf-8", "app.js": "text/javascript; charset=utf-8",
              "style.css": "text/css; charset=utf-8"}
INDEX = "index.html"

# blob: and data: images are the user's own upload and the mask the API returns, decoded in the page.
CONTENT_SECURITY_POLICY = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' blob: data:; "
                           "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")

_HEADERS = {"Content-Security-Policy": CONTENT_SECURITY_POLICY, "X-Content-Type-Options": "nosniff",
            "Referrer-Policy": "no-referrer",
            # Revalidated on every load (a 304 while unchanged): an upgraded server never runs an old app.js.
            "Cache-Control": "no-cache"}


@dataclass(frozen=True)
class Asset:
    """One file of the page: its bytes, content type and entity tag."""

    body: bytes
    media_type: str
    etag: str


def load_page() -> dict[str, Asset]:
    """The page's files by URL path (``/``, ``/page/app.js``, ...), read from the package.

    Raises:
        ArtifactError: when a file is missing from the installed package.
    """
    root = resources.files("edgecnn.serve") / "page"
    assets = {}
    for name, media_type in PAGE_FILES.items():
        try:
            body = (root / name).read_bytes()
        except OSError as err:
            raise ArtifactError(f"The page's {name} is missing from the edgecnn package ({err}); reinstall edgecnn, "
                                "or serve with --no-page.") from err
        etag = '"' + hashlib.sha256(body).hexdigest()[:20] + '"'
        assets["/" if name == INDEX else f"/page/{name}"] = Asset(body, media_type, etag)
    return assets


def add_page_routes(app: FastAPI, assets: dict[str, Asset]) -> None:
    """``GET /`` and ``GET /page/{name}`` answering from ``assets`` (from :func:`load_page`), with
    the page's security and cache headers; any other name is a JSON 404."""

    def respond(request: Request, path: str) -> Response:
        asset = assets.get(path)
        if asset is None:
            raise ServeError(404, "not_found", "Not Found")
        headers = {**_HEADERS, "ETag": asset.etag}
        if asset.etag in request.headers.get("if-none-match", ""):
            return Response(status_code=304, headers=headers)
        return Response(asset.body, media_type=asset.media_type, headers=headers)

    @app.get("/", include_in_schema=False)
    async def index(request: Request) -> Response:
        return respond(request, "/")

    @app.get("/page/{name}", include_in_schema=False)
    async def page_file(name: str, request: Request) -> Response:
        return respond(request, f"/page/{name}")
