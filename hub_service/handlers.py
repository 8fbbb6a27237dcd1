"""HTTP handlers of the availability service. Thin: they authenticate, then answer from
the inventory's published bytes or the catalog."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from jupyterhub.services.auth import HubOAuth, HubOAuthCallbackHandler, HubOAuthenticated
from jupyterhub.utils import url_path_join
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from tornado import web

from .catalog import CatalogError

if TYPE_CHECKING:
    from .app import ThinkubeService

OPENAPI_PATH = Path(__file__).parent / "openapi.json"


class JSONHandler(HubOAuthenticated, web.RequestHandler):
    """Hub tokens or hub OAuth cookies; plain JSON errors."""

    required_scopes: tuple[str, ...] = ()  # beyond access to the service
    public = False

    @property
    def service(self) -> ThinkubeService:
        return self.settings["service"]

    @property
    def hub_scopes(self) -> set[str]:
        return set(self.service.access_scopes)

    async def prepare(self) -> None:
        self.started = time.perf_counter()
        if self.public:
            return
        model = await self.hub_auth.get_user(self, sync=False)
        if not model:
            if self.request.method == "GET" and "text/html" in self.request.headers.get(
                "Accept", ""
            ):
                # A person in a browser: send them through the hub's OAuth login.
                self.redirect(self.get_login_url())
                return
            raise web.HTTPError(
                401,
                "authentication required: send a hub API token (Authorization: token ...) or log in through the hub",
            )
        if not self.hub_auth.check_scopes(self.hub_scopes, model):
            raise web.HTTPError(
                403, f"{model.get('kind', 'user')} {model.get('name')} may not use this service"
            )
        missing = [s for s in self.required_scopes if not self.hub_auth.check_scopes({s}, model)]
        if missing:
            raise web.HTTPError(403, f"this needs the scope {', '.join(missing)}")
        self.current_user = model

    def check_xsrf_cookie(self) -> None:
        # Writes come from scripts with tokens; cookie-authenticated writes must carry the
        # hub's XSRF token as usual.
        if self.request.headers.get("Authorization"):
            return
        super().check_xsrf_cookie()

    def on_finish(self) -> None:
        self.service.observe_request(
            self, time.perf_counter() - getattr(self, "started", time.perf_counter())
        )

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        message = self._reason
        exc = kwargs.get("exc_info", (None, None))[1]
        if isinstance(exc, web.HTTPError) and exc.log_message:
            message = exc.log_message % exc.args if exc.args else exc.log_message
        self.send_json({"status": status_code, "error": message}, status_code)

    def send_json(self, body: Any, status: int = 200) -> None:
        self.set_status(status)
        self.set_header("Content-Type", "application/json")
        self.set_header("Cache-Control", "no-store")
        self.finish(body if isinstance(body, bytes) else json.dumps(body).encode())

    def freshness(self) -> dict:
        """generated_at / resource_version / stale / age_seconds for the inventory data."""
        published = self.service.source.published
        since = self.service.source.stale_since()
        fields = {
            "generated_at": published.generated_at,
            "resource_version": published.resource_version,
            "stale": since is not None,
            "age_seconds": round(time.time() - since, 3) if since is not None else 0.0,
        }
        self.set_header("X-Thinkube-Generated-At", fields["generated_at"])
        self.set_header("X-Thinkube-Resource-Version", fields["resource_version"])
        self.set_header("X-Thinkube-Stale", "true" if fields["stale"] else "false")
        self.set_header("X-Thinkube-Age-Seconds", str(fields["age_seconds"]))
        return fields

    def send_document(self, cached: bytes) -> None:
        """A cached JSON object with the freshness fields spliced in (they change with time,
        the cached part only with the data)."""
        extra = json.dumps(self.freshness()).encode()
        body = b"{" + extra[1:-1] + (b"," + cached[1:] if cached != b"{}" else b"}")
        self.send_json(body)


class HealthHandler(JSONHandler):
    public = True

    def get(self) -> None:
        self.send_json({"status": "ok"})


class ReadyHandler(JSONHandler):
    def get(self) -> None:
        inventory = self.service.source
        ready = inventory.ready
        self.send_json({"ready": ready, **self.freshness()}, 200 if ready else 503)


class ResourcesHandler(JSONHandler):
    def get(self) -> None:
        self.freshness()  # headers: the body stays the §2-compatible list
        self.send_json(self.service.source.published.resources)


class NodeHandler(JSONHandler):
    def get(self, name: str) -> None:
        cached = self.service.source.published.nodes.get(name)
        if cached is None:
            raise web.HTTPError(404, f"no node named {name!r}")
        self.send_document(cached)


class SummaryHandler(JSONHandler):
    def get(self) -> None:
        self.send_document(self.service.source.published.summary)


class ImagesHandler(JSONHandler):
    kind: str | None = None

    async def get(self) -> None:
        images = await self.service.run_db(self.service.catalog.list, self.kind)
        self.send_json(images)


class JupyterImagesHandler(ImagesHandler):
    kind = "jupyter"


class ImageHandler(JSONHandler):
    @property
    def required_scopes(self) -> tuple[str, ...]:
        return () if self.request.method == "GET" else (self.service.images_write_scope,)

    async def get(self, name: str) -> None:
        image = await self.service.run_db(self.service.catalog.get, name)
        if image is None:
            raise web.HTTPError(404, f"no image named {name!r}")
        self.send_json(image)

    async def put(self, name: str) -> None:
        try:
            body = json.loads(self.request.body or b"")
        except ValueError:
            self.send_json(
                {"status": 400, "error": "the body is not valid JSON", "field": None}, 400
            )
            return
        try:
            entry, created = await self.service.run_db(self.service.catalog.put, name, body)
        except CatalogError as err:
            self.send_json({"status": 400, "error": str(err), "field": err.field}, 400)
            return
        self.service.log.info(
            "image %s %s by %s",
            name,
            "registered" if created else "updated",
            self.current_user["name"],
        )
        self.send_json(entry, 201 if created else 200)

    async def delete(self, name: str) -> None:
        if not await self.service.run_db(self.service.catalog.delete, name):
            raise web.HTTPError(404, f"no image named {name!r}")
        self.service.log.info("image %s deleted by %s", name, self.current_user["name"])
        self.set_status(204)
        self.finish()


class MetricsHandler(JSONHandler):
    def get(self) -> None:
        self.service.update_gauges()
        self.set_header("Content-Type", CONTENT_TYPE_LATEST)
        self.finish(generate_latest(self.service.registry))


class OpenAPIHandler(JSONHandler):
    def get(self) -> None:
        self.send_json(self.service.openapi_bytes)


class OAuthCallbackHandler(HubOAuthCallbackHandler):
    pass


def routes(prefix: str) -> list[tuple]:
    api = url_path_join(prefix, "api/v1")
    return [
        (url_path_join(api, "health"), HealthHandler),
        (url_path_join(api, "ready"), ReadyHandler),
        (url_path_join(api, "cluster/resources"), ResourcesHandler),
        (url_path_join(api, r"cluster/resources/([^/]+)"), NodeHandler),
        (url_path_join(api, "cluster/summary"), SummaryHandler),
        (url_path_join(api, "images"), ImagesHandler),
        (url_path_join(api, "images/jupyter"), JupyterImagesHandler),
        (url_path_join(api, r"images/([^/]+)"), ImageHandler),
        (url_path_join(api, "openapi.json"), OpenAPIHandler),
        (url_path_join(prefix, "metrics"), MetricsHandler),
        (url_path_join(prefix, "oauth_callback"), OAuthCallbackHandler),
    ]


__all__ = ["HubOAuth", "routes"]
