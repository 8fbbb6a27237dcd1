"""HTTP handlers of the availability service. Thin: they authenticate, then answer from
the inventory's published bytes or the catalog.

Authentication is the hub's: an API token (``Authorization: token ...``) or the OAuth cookie
a browser gets by logging in through the hub (:class:`HubOAuth`). Tokens in the URL are
ignored (HubAuth's default), and no log line carries a query string or a header.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from jupyterhub.services.auth import HubOAuth, HubOAuthCallbackHandler, HubOAuthenticated
from jupyterhub.utils import url_path_join
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from tornado import web

from .availability import with_fields
from .catalog import CatalogError
from .cloud import FILTER_NAMES, FilterError, offer_filters

if TYPE_CHECKING:
    from .app import ThinkubeService

OPENAPI_PATH = Path(__file__).parent / "openapi.json"

# The list endpoint's body is a bare JSON list (compatible with the service it replaces), so
# its freshness travels in these headers; the other inventory answers carry it in the body.
FRESHNESS_HEADERS = {
    "generated_at": "X-Thinkube-Generated-At",
    "resource_version": "X-Thinkube-Resource-Version",
    "stale": "X-Thinkube-Stale",
    "age_seconds": "X-Thinkube-Age-Seconds",
}


# Bodies above this are written separately from the headers (see JSONHandler.send_json).
LARGE_BODY_BYTES = 64 * 1024


class ServiceAuth(HubOAuthenticated):
    """Every handler shares the service's one HubOAuth (its token cache and settings),
    instead of HubOAuthenticated's default ``HubOAuth.instance()``."""

    @property
    def service(self) -> ThinkubeService:
        return self.settings["service"]

    @property
    def hub_auth(self) -> HubOAuth:
        return self.service.hub_auth

    def log_exception(self, typ, value, tb) -> None:
        # tornado's default logs the full URI, query string included; the access log line
        # (ThinkubeService._log_request) already records every 4xx.
        if isinstance(value, web.HTTPError):
            return
        self.service.log.error(
            "Uncaught exception in %s %s",
            self.request.method,
            self.request.path,
            exc_info=(typ, value, tb),
        )


class JSONHandler(ServiceAuth, web.RequestHandler):
    """Hub tokens or hub OAuth cookies; plain JSON errors."""

    required_scopes: tuple[str, ...] = ()  # beyond access to the service
    public = False

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
                "authentication required: send a hub API token (Authorization: token ...) "
                "or log in through the hub",
            )
        if not self.hub_auth.check_scopes(self.hub_scopes, model):
            raise web.HTTPError(
                403,
                f"{model.get('kind', 'user')} {model.get('name')} may not use this service "
                f"(needs the scope access:services!service={self.service.service_name})",
            )
        missing = [s for s in self.required_scopes if not self.hub_auth.check_scopes({s}, model)]
        if missing:
            raise web.HTTPError(403, f"this needs the scope {', '.join(missing)}")
        self.current_user = model

    def compute_etag(self) -> str | None:
        # Not tornado's hash of every body (a 3 MB node list at 5,000 nodes): the routes
        # whose answers are versioned set their own ETag from the published digest.
        return None

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

    def send_json(self, body: Any, status: int = 200, cache_control: str = "no-store") -> None:
        self.set_status(status)
        self.set_header("Content-Type", "application/json")
        self.set_header("Cache-Control", cache_control)
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        if len(data) > LARGE_BODY_BYTES:
            # tornado sends the headers and the first body chunk as one new bytes object:
            # a large body goes out in a write of its own, so the published bytes are sent
            # as they are instead of being copied (3 MB at 5,000 nodes) for every request.
            self.set_header("Content-Length", len(data))
            self.flush()
        self.finish(data)

    def send_bad_request(self, field: str | None, message: str) -> None:
        self.send_json({"status": 400, "error": message, "field": field}, 400)

    def freshness(self) -> dict:
        """generated_at / resource_version / stale / age_seconds of the inventory data, also
        set as X-Thinkube-* headers."""
        source = self.service.source
        published = source.published
        since = source.stale_since()
        fields = {
            "generated_at": published.generated_at,
            "resource_version": published.resource_version,
            "stale": since is not None,
            "age_seconds": round(max(0.0, time.time() - since), 3) if since is not None else 0.0,
        }
        for name, header in FRESHNESS_HEADERS.items():
            value = fields[name]
            self.set_header(
                header, ("true" if value else "false") if name == "stale" else str(value)
            )
        return fields

    def send_document(self, cached: bytes) -> None:
        """A cached JSON object with the freshness fields spliced in (they change with time,
        the cached part only with the data)."""
        self.send_json(with_fields(self.freshness(), cached))


class RootHandler(JSONHandler):
    """The service's front door (the hub's start-up check and its Services menu land here):
    where the API and its description are. Public: it says nothing about the cluster."""

    public = True

    def get(self) -> None:
        prefix = self.service.service_prefix
        self.send_json(
            {
                "name": self.service.service_name,
                "api": url_path_join(prefix, "api/v1/"),
                "openapi": url_path_join(prefix, "api/v1/openapi.json"),
            }
        )


class HealthHandler(JSONHandler):
    public = True

    def get(self) -> None:
        self.send_json({"status": "ok"})


class ReadyHandler(JSONHandler):
    def get(self) -> None:
        inventory = self.service.source
        ready = inventory.ready
        body = {"ready": ready, "reason": inventory.not_ready_reason, **self.freshness()}
        self.send_json(body, 200 if ready else 503)


class ResourcesHandler(JSONHandler):
    def get(self) -> None:
        published = self.service.source.published
        self.freshness()  # headers: the body stays the plain list of node documents
        # The body is the published bytes as they are: its digest is a strong validator.
        self.set_header("ETag", f'"{published.resources_digest}"')
        if self.check_etag_header():
            self.set_status(304)
            self.finish()
            return
        self.send_json(published.resources)


class NodeHandler(JSONHandler):
    def get(self, name: str) -> None:
        cached = self.service.source.published.nodes.get(name)
        if cached is None:
            raise web.HTTPError(404, f"no node named {name!r}")
        self.send_document(cached)


class SummaryHandler(JSONHandler):
    def get(self) -> None:
        self.send_document(self.service.source.published.summary)


class AvailabilityHandler(JSONHandler):
    """What a spawn form needs in one request: the nodes, the summary, the Jupyter images
    and the cloud offers (null when the service has no cloud part), with the freshness of
    the (one) inventory snapshot they come from."""

    async def get(self) -> None:
        service = self.service
        images_json = await service.jupyter_images_json()
        published = service.source.published  # after the await: the newest
        fresh = self.freshness()
        # The version changes with the documents, the catalog and the cloud offers, not with
        # time (freshness is in the X-Thinkube-* headers too): a spawner that holds this
        # version gets a 304 and skips parsing a document of about 1 MB at 1,000 nodes. Both
        # are made once per change (availability.py), not per request.
        versioned = service.availability_answers.versioned(
            published, images_json, service.cloud_json()
        )
        self.set_header("ETag", versioned.etag)
        self.set_header("Cache-Control", "no-cache")  # kept, but revalidated before each use
        if self.check_etag_header():
            self.set_status(304)
            self.finish()
            return
        parts = service.availability_answers.body(versioned, fresh)
        # Sent as three writes with the length given, so the node list (3 MB at 5,000
        # nodes) goes out as the published bytes, never copied into a new body.
        self.set_header("Content-Type", "application/json")
        self.set_header("Content-Length", sum(len(part) for part in parts))
        for part in parts[:2]:
            self.write(part)
            self.flush()
        self.finish(parts[2])


class CloudOffersHandler(JSONHandler):
    """RunPod's offers from the service's cache (never a request to RunPod), filtered by the
    query arguments and cheapest first; 404 when cloud is not configured."""

    def get(self) -> None:
        arguments = {
            name: self.get_query_argument(name)
            for name in FILTER_NAMES
            if name in self.request.query_arguments
        }
        try:
            filters = offer_filters(arguments)
        except FilterError as err:
            self.send_bad_request(err.field, str(err))
            return
        offers = self.service.cloud.offers
        if not offers.configured:
            raise web.HTTPError(
                404, f"cloud GPUs are not configured on this hub: {offers.not_configured_reason}"
            )
        self.send_json(offers.state(**filters))


class ImagesHandler(JSONHandler):
    kind: str | None = None

    async def get(self) -> None:
        images = await self.service.run_db(self.service.catalog.list, self.kind)
        self.send_json(images)


class JupyterImagesHandler(ImagesHandler):
    """``images/jupyter`` is the Jupyter list, so no single image can be called ``jupyter``."""

    kind = "jupyter"

    @property
    def required_scopes(self) -> tuple[str, ...]:
        return () if self.request.method == "GET" else (self.service.images_write_scope,)

    def put(self) -> None:
        self.send_bad_request("name", "'jupyter' is reserved (images/jupyter lists Jupyter images)")

    def delete(self) -> None:
        raise web.HTTPError(404, "no image named 'jupyter'")


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
            self.send_bad_request(None, "the body is not valid JSON")
            return
        try:
            entry, created = await self.service.run_db(self.service.catalog.put, name, body)
        except CatalogError as err:
            self.send_bad_request(err.field, str(err))
            return
        self.service.catalog_changed()
        self.service.log.info(
            "image %s %s by %s %s",
            name,
            "registered" if created else "updated",
            self.current_user.get("kind", "user"),
            self.current_user["name"],
        )
        self.send_json(entry, 201 if created else 200)

    async def delete(self, name: str) -> None:
        deleted = await self.service.run_db(self.service.catalog.delete, name)
        self.service.catalog_changed()
        if not deleted:
            raise web.HTTPError(404, f"no image named {name!r}")
        self.service.log.info(
            "image %s deleted by %s %s",
            name,
            self.current_user.get("kind", "user"),
            self.current_user["name"],
        )
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


class NotFoundHandler(JSONHandler):
    """Any other path under the prefix: a JSON 404, not tornado's HTML page."""

    public = True

    def prepare(self) -> None:
        self.started = time.perf_counter()
        raise web.HTTPError(404, "no such route")


class OAuthCallbackHandler(ServiceAuth, HubOAuthCallbackHandler):
    pass


def routes(prefix: str) -> list[tuple]:
    api = url_path_join(prefix, "api/v1")
    return [
        (prefix if prefix.endswith("/") else prefix + "/", RootHandler),
        (url_path_join(api, "health"), HealthHandler),
        (url_path_join(api, "ready"), ReadyHandler),
        (url_path_join(api, "cluster/resources"), ResourcesHandler),
        (url_path_join(api, r"cluster/resources/([^/]+)"), NodeHandler),
        (url_path_join(api, "cluster/summary"), SummaryHandler),
        (url_path_join(api, "availability"), AvailabilityHandler),
        (url_path_join(api, "cloud/offers"), CloudOffersHandler),
        (url_path_join(api, "images"), ImagesHandler),
        (url_path_join(api, "images/jupyter"), JupyterImagesHandler),
        (url_path_join(api, r"images/([^/]+)"), ImageHandler),
        (url_path_join(api, "openapi.json"), OpenAPIHandler),
        (url_path_join(prefix, "metrics"), MetricsHandler),
        (url_path_join(prefix, "oauth_callback"), OAuthCallbackHandler),
    ]


__all__ = ["FRESHNESS_HEADERS", "NotFoundHandler", "routes"]
