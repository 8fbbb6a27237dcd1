"""The API's docs to browse and try: Swagger UI at ``api/v1/docs``.

Swagger UI's files come from the ``swagger-ui-py`` package (its ``static`` folder, Swagger UI
5, which reads OpenAPI 3.1) and are served by this service, so the page needs nothing from
outside the hub. The page loads ``openapi.json`` beside it with a relative URL and points the
document's server at the prefix it was itself served under, so the same page works under any
hub base URL. "Try it out" sends its requests from the same origin with the browser's hub
login (the OAuth cookie) and the page's XSRF token, as the service's own page does; a token
entered under "Authorize" is sent as the Authorization header instead.

The page and its files need a hub login like every other route: a browser without one is
sent through the hub's OAuth login (JSONHandler.admit).
"""

from __future__ import annotations

import hashlib
import html
from dataclasses import dataclass
from functools import cache
from importlib.util import find_spec
from pathlib import Path

from jupyterhub.utils import url_path_join

from .handlers import JSONHandler

__all__ = ["ASSETS", "DocsAssetHandler", "DocsHandler", "docs_routes", "render_docs_page"]

TEMPLATES = Path(__file__).parent / "templates"


def swagger_ui_folder() -> Path | None:
    """The swagger-ui-py package's static files (found without importing the package)."""
    spec = find_spec("swagger_ui")
    if spec is None or not spec.submodule_search_locations:
        return None
    folder = Path(next(iter(spec.submodule_search_locations))) / "static"
    return folder if folder.is_dir() else None


# The files the page uses, by the name they are served under: Swagger UI's, then this page's.
ASSETS = {
    "swagger-ui.css": ("swagger-ui", "text/css; charset=utf-8"),
    "swagger-ui-bundle.js": ("swagger-ui", "text/javascript; charset=utf-8"),
    "favicon-32x32.png": ("swagger-ui", "image/png"),
    "favicon-16x16.png": ("swagger-ui", "image/png"),
    "docs.js": ("own", "text/javascript; charset=utf-8"),
    "docs.css": ("own", "text/css; charset=utf-8"),
}

# Scripts and styles from this service only; requests to this service only.
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; font-src 'self'; form-action 'self'; base-uri 'none'; "
    "frame-ancestors 'self'"
)


@dataclass(frozen=True)
class Asset:
    body: bytes
    content_type: str
    etag: str


def asset(name: str) -> Asset | None:
    """One of ASSETS, read once; None for any other name or where the package is missing."""
    # Checked before the cache, which then holds at most one entry per file of ASSETS.
    return _read_asset(name) if name in ASSETS else None


@cache
def _read_asset(name: str) -> Asset | None:
    origin, content_type = ASSETS[name]
    folder = TEMPLATES if origin == "own" else swagger_ui_folder()
    if folder is None or not (folder / name).is_file():
        return None
    body = (folder / name).read_bytes()
    etag = '"' + hashlib.blake2b(body, digest_size=12).hexdigest() + '"'
    return Asset(body, content_type, etag)


def render_docs_page(title: str, xsrf: str) -> bytes:
    """The page: Swagger UI's files and this page's script, all relative to
    ``api/v1/docs`` (the document is ``openapi.json`` beside it)."""
    page = (TEMPLATES / "docs.html").read_text()
    return (
        page.replace("{{ title }}", html.escape(title)).replace("{{ xsrf }}", html.escape(xsrf))
    ).encode()


class DocsHandler(JSONHandler):
    """`GET api/v1/docs`: the Swagger UI page."""

    def get(self) -> None:
        if swagger_ui_folder() is None:
            self.send_json(
                {
                    "status": 404,
                    "error": "the API docs need the swagger-ui-py package; the document "
                    "itself is api/v1/openapi.json",
                },
                404,
            )
            return
        xsrf = self.xsrf_token
        body = render_docs_page(
            f"{self.service.service_name} API",
            xsrf.decode() if isinstance(xsrf, bytes) else "",
        )
        self.set_header("Content-Type", "text/html; charset=utf-8")
        self.set_header("Cache-Control", "no-store")
        self.set_header("Content-Security-Policy", CONTENT_SECURITY_POLICY)
        self.set_header("X-Content-Type-Options", "nosniff")
        self.set_header("Referrer-Policy", "same-origin")
        self.finish(body)


class DocsAssetHandler(JSONHandler):
    """`GET api/v1/docs/{file}`: Swagger UI's files and the page's script (ETag, 304)."""

    def get(self, name: str) -> None:
        found = asset(name)
        if found is None:
            self.send_json({"status": 404, "error": "no such file of the API docs"}, 404)
            return
        self.set_header("ETag", found.etag)
        self.set_header("Cache-Control", "private, no-cache")
        self.set_header("X-Content-Type-Options", "nosniff")
        if self.check_etag_header():
            self.set_status(304)
            self.finish()
            return
        self.set_header("Content-Type", found.content_type)
        self.finish(found.body)


def docs_routes(prefix: str) -> list[tuple]:
    api = url_path_join(prefix, "api/v1")
    return [
        (url_path_join(api, "docs"), DocsHandler),
        (url_path_join(api, r"docs/([^/]+)"), DocsAssetHandler),
    ]
