"""HTTP handlers of the availability service. Thin: they authenticate, then answer from
the inventory's published bytes or the catalog.

Authentication is the hub's: an API token (``Authorization: token ...``) or the OAuth cookie
a browser gets by logging in through the hub (:class:`HubOAuth`). Tokens in the URL are
ignored (HubAuth's default), and no log line carries a query string or a header. The hub's
answer about a token is reused for ``token_cache_seconds``; when the hub cannot be asked
(unreachable, too slow, failing) the request gets 503 with the reason, never a 500.

Every handler streams its request body (:class:`BoundedBody`), so nothing of a body is read
before the request is authenticated, its method allowed and its declared size within the
route's limit; the body of a refused request (401, 403, 405, 413, 415) is dropped as it
arrives, never kept, and a body that grows past the limit while it arrives is refused when
it does.
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from jupyterhub.services.auth import HubOAuth, HubOAuthCallbackHandler, HubOAuthenticated
from jupyterhub.utils import url_path_join
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from tornado import web
from tornado.ioloop import IOLoop

from .availability import with_fields
from .bodies import BodyError, check_json_media_type, parse_json_body
from .catalog import CatalogError, CatalogFull
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

HUB_UNREACHABLE = "The hub cannot be reached to check your token; try again in a moment."
HUB_RETRY_AFTER_SECONDS = 5


class HubUnreachable(web.HTTPError):
    """The hub could not be asked to check a token: 503, with a Retry-After."""

    def __init__(self) -> None:
        super().__init__(503, HUB_UNREACHABLE)


# The largest request body any route takes: a catalog entry (a few KB at the catalog's
# bounds) as JSON.
MAX_ENTRY_BODY_BYTES = 64 * 1024

# A refused request's body is read and dropped (see BoundedBody) up to this much, for this
# long at most, and while it keeps coming.
DRAIN_BYTES = 128 * 1024 * 1024
DRAIN_SECONDS = 30.0
DRAIN_IDLE_SECONDS = 5.0

# Methods a handler may implement; OPTIONS is implemented by none, and HEAD only where a
# route says so (a job's artifact files), so elsewhere they are answered 405 like any
# other method a route does not take.
_METHODS = ("GET", "HEAD", "PUT", "DELETE", "POST", "PATCH")


class ServiceAuth(HubOAuthenticated):
    """Every handler shares the service's one HubOAuth (its token cache and settings),
    instead of HubOAuthenticated's default ``HubOAuth.instance()``."""

    @property
    def service(self) -> ThinkubeService:
        return self.settings["service"]

    @property
    def hub_auth(self) -> HubOAuth:
        return self.service.hub_auth

    async def ask_hub(self, check: Any) -> Any:
        """Await `check`, a call of HubAuth that asks the hub (a token's owner, an OAuth
        code's token), within ``hub_auth_timeout_seconds``. The hub unreachable, too slow or
        failing (HubAuth raises a 5xx for each) is a 503 with the reason: the request may be
        fine, the hub is not."""
        timeout = self.service.hub_auth_timeout_seconds
        try:
            async with asyncio.timeout(timeout):
                return await check
        except TimeoutError:
            # HubAuth logs its own failures (unreachable, 5xx), not a wait cut short
            self.service.log.warning("the hub did not check a token within %gs", timeout)
        except web.HTTPError as err:
            if err.status_code < 500:
                raise
        raise HubUnreachable()

    def error_message(self, kwargs: dict) -> str:
        """An error's words for the body (what the raised HTTPError says, else the status's
        name); a Retry-After header when the hub could not be asked."""
        exc = kwargs.get("exc_info", (None, None))[1]
        if isinstance(exc, HubUnreachable):
            self.set_header("Retry-After", str(HUB_RETRY_AFTER_SECONDS))
        if isinstance(exc, web.HTTPError) and exc.log_message:
            return exc.log_message % exc.args if exc.args else exc.log_message
        return self._reason

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        """Errors as `{"status", "error"}` in words, never tornado's HTML page with a
        traceback (JSONHandler adds its own headers and fields)."""
        body = {"status": status_code, "error": self.error_message(kwargs)}
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps(body))

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


class BoundedBody(web.RequestHandler):
    """The request body as it arrives (the subclass is a ``stream_request_body`` handler;
    its prepare calls :meth:`begin_body` first): kept up to ``max_body_bytes``, refused with
    413 past it. ``allowed_methods`` are the methods the class implements; a 405 says them
    in ``Allow``.

    A request refused in prepare (:meth:`refuse`) is answered once tornado has read its
    body, dropping it as it comes, never keeping it: an answer finished before the body is
    read makes tornado close the connection, and whoever is still sending, or about to send
    the next request on it (the hub's proxy above all), may then see a reset connection (the
    proxy answers 503) instead of the answer. The dropping stops, and the answer goes out
    with the connection closed after it, past DRAIN_BYTES, DRAIN_SECONDS, or
    DRAIN_IDLE_SECONDS without data; at once for a body declared larger than DRAIN_BYTES,
    and for a client that waits for ``100 Continue`` before sending its body. An answer
    finished before the body is read (those, a redirect to the hub's login, tornado's own
    errors) says ``Connection: close``.
    """

    max_body_bytes = 0  # a route that takes a body raises it for the methods that do
    methods_note = ""  # said after the methods a route takes, in a 405
    _body: bytearray | None = None
    _admitted = False  # prepare is over and tornado reads the body
    _refusal: web.HTTPError | None = None  # answered once the body is read
    _dropped = 0
    _drain_started = 0.0
    _last_data = 0.0

    @classmethod
    def allowed_methods(cls) -> list[str]:
        return [
            method
            for method in _METHODS
            if getattr(cls, method.lower()) is not getattr(web.RequestHandler, method.lower())
        ]

    def set_status(self, status_code: int, reason: str | None = None) -> None:
        super().set_status(status_code, reason)
        if status_code == 405:  # here, so that every way of answering 405 says it
            self.set_header("Allow", ", ".join(self.allowed_methods()))

    def method_not_allowed(self) -> web.HTTPError:
        return web.HTTPError(
            405,
            f"{self.request.method[:20]} is not a method of this route "
            f"(it takes {', '.join(self.allowed_methods())}){self.methods_note}",
        )

    def begin_body(self) -> None:
        """First thing in prepare. tornado's own limit on a body would answer a bare 400
        (in place of this handler's JSON 413, or written after another answer), so it is
        lifted: this handler counts instead (data_received)."""
        self._body = bytearray()
        set_limit = getattr(self.request.connection, "set_max_body_size", None)
        if set_limit is not None:
            set_limit(max(self._declared_length(), 1 << 62))

    def limit_body(self) -> None:
        """Before the body is read: 413 for one declared larger than the route takes."""
        if self._declared_length() > self.max_body_bytes:
            raise web.HTTPError(413, self._too_large())

    def _declared_length(self) -> int:
        text = self.request.headers.get("Content-Length", "").strip()
        return int(text) if text.isascii() and text.isdigit() else 0

    def _body_on_its_way(self) -> bool:
        transfer = self.request.headers.get("Transfer-Encoding", "").lower()
        return self._declared_length() > 0 or "chunked" in transfer

    def _too_large(self) -> str:
        if self.max_body_bytes:
            return f"the body is larger than this route takes ({self.max_body_bytes} bytes)"
        return f"{self.request.method[:20]} here takes no body"

    def refuse(self, error: web.HTTPError) -> None:
        """In prepare: answer ``error`` (as write_error writes it) without keeping any of the
        body (see the class's description)."""
        self._refusal = error
        on_its_way = self._body_on_its_way()
        if on_its_way and (
            self.request.headers.get("Expect", "").lower() == "100-continue"
            or self._declared_length() > DRAIN_BYTES
        ):
            self._answer_refusal()
            return
        self._admitted = True
        # tornado calls the request's method once the body has arrived: now that answers.
        setattr(self, self.request.method.lower(), self._answer_refusal)
        if on_its_way:
            self._drain_started = self._last_data = time.monotonic()
            IOLoop.current().call_later(1.0, self._check_draining)

    def admitted(self) -> None:
        """At the end of prepare, for a request that goes on."""
        self._admitted = True

    def finish(self, chunk: Any = None) -> Any:
        if not self._admitted and not self._headers_written:
            # Finished before its body is read: tornado closes the connection after this.
            self.set_header("Connection", "close")
        return super().finish(chunk)

    def _answer_refusal(self, *args: Any, **kwargs: Any) -> None:
        error = self._refusal
        if error is not None and not self._finished:
            self.send_error(error.status_code, exc_info=(type(error), error, None))

    def _stop_draining(self) -> None:
        """The body is not read to its end: tornado closes the connection after this."""
        self._admitted = False
        self._answer_refusal()

    def _check_draining(self) -> None:
        if self._finished:
            return
        now = time.monotonic()
        if now - self._last_data > DRAIN_IDLE_SECONDS or now - self._drain_started > DRAIN_SECONDS:
            self._stop_draining()
        else:
            IOLoop.current().call_later(1.0, self._check_draining)

    def on_connection_close(self) -> None:
        super().on_connection_close()
        self._answer_refusal()  # gone before its answer: recorded all the same

    def data_received(self, chunk: bytes) -> None:
        if self._finished:
            return
        if self._refusal is not None:
            self._dropped += len(chunk)
            self._last_data = time.monotonic()
            if self._dropped > DRAIN_BYTES:
                self._stop_draining()
            return
        if self._body is None:
            self._body = bytearray()
        if len(self._body) + len(chunk) > self.max_body_bytes:
            self._body = None
            self.refuse(web.HTTPError(413, self._too_large()))
            return
        self._body += chunk

    @property
    def body(self) -> bytes:
        return bytes(self._body or b"")


def _quoted(name: str) -> str:
    """A name from the URL as an error quotes it: cut short."""
    return repr(name) if len(name) <= 80 else repr(name[:80]) + "..."


def _message(error: web.HTTPError) -> str:
    if not error.log_message:
        return error.reason or "error"
    return error.log_message % error.args if error.args else error.log_message


@web.stream_request_body
class JSONHandler(ServiceAuth, BoundedBody):
    """Hub tokens or hub OAuth cookies; plain JSON errors.

    Before any of the body is read (:meth:`admit`), in this order: who is asking (401, or
    the hub's login for a browser), access to the service (403), the method (405, with
    ``Allow``; a method the route does not take says nothing about the scopes the others
    need), the scopes of the method (403), the body's declared size (413) and what else a
    route checks before reading it (415).
    """

    public = False

    @property
    def required_scopes(self) -> tuple[str, ...]:
        """Scopes the request's method needs beyond access to the service."""
        return ()

    @property
    def hub_scopes(self) -> set[str]:
        return set(self.service.access_scopes)

    async def prepare(self) -> None:
        self.started = time.perf_counter()
        self.begin_body()
        try:
            await self.admit()
        except web.HTTPError as error:
            self.refuse(error)
            return
        self.admitted()

    async def admit(self) -> None:
        """Raise HTTPError for a request this route refuses before reading its body."""
        model = None
        if not self.public:
            model = await self.ask_hub(self.hub_auth.get_user(self, sync=False))
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
            self.check_access(model)
            self.current_user = model
        if self.request.method not in self.allowed_methods():
            raise self.method_not_allowed()
        if model is not None:
            missing = [
                s for s in self.required_scopes if not self.hub_auth.check_scopes({s}, model)
            ]
            if missing:
                raise web.HTTPError(403, f"this needs the scope {', '.join(missing)}")
        self.limit_body()

    def check_access(self, model: dict) -> None:
        """403 for a token or login without access to this service."""
        if not self.hub_auth.check_scopes(self.hub_scopes, model):
            raise web.HTTPError(
                403,
                f"{model.get('kind', 'user')} {model.get('name')} may not use this service "
                f"(needs the scope access:services!service={self.service.service_name})",
            )

    def compute_etag(self) -> str | None:
        # Not tornado's hash of every body (a 3 MB node list at 5,000 nodes): the routes
        # whose answers are versioned set their own ETag from the published digest.
        return None

    def on_finish(self) -> None:
        self.service.observe_request(
            self, time.perf_counter() - getattr(self, "started", time.perf_counter())
        )

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        exc = kwargs.get("exc_info", (None, None))[1]
        if status_code == 405 and not (isinstance(exc, web.HTTPError) and exc.log_message):
            # tornado's, for a method no handler can have (TRACE)
            message = _message(self.method_not_allowed())
        else:
            message = self.error_message(kwargs)
        document: dict[str, Any] = {"status": status_code, "error": message}
        if status_code in (413, 415):  # refusals of a body, like its 400s
            document["field"] = None
        self.send_json(document, status_code)

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

    def send_bad_request(self, field: str | None, message: str, status: int = 400) -> None:
        self.send_json({"status": status, "error": message, "field": field}, status)

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
    where the API, its description and its browsable docs are. Public: it says nothing about the cluster."""

    public = True

    def get(self) -> None:
        prefix = self.service.service_prefix
        self.send_json(
            {
                "name": self.service.service_name,
                "api": url_path_join(prefix, "api/v1/"),
                "openapi": url_path_join(prefix, "api/v1/openapi.json"),
                "docs": url_path_join(prefix, "api/v1/docs"),
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
            raise web.HTTPError(404, f"no node named {_quoted(name)}")
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
    """``images/jupyter`` is the Jupyter list (GET alone), so no single image can be called
    ``jupyter``: a PUT or DELETE there is a method the list does not take."""

    kind = "jupyter"
    methods_note = ": it is the list of Jupyter images, and no image can be called 'jupyter'"


class ImageHandler(JSONHandler):
    @property
    def required_scopes(self) -> tuple[str, ...]:
        if self.request.method in ("PUT", "DELETE"):
            return (self.service.images_write_scope,)
        return ()

    @property
    def max_body_bytes(self) -> int:  # type: ignore[override]
        return MAX_ENTRY_BODY_BYTES if self.request.method == "PUT" else 0

    async def admit(self) -> None:
        await super().admit()
        if self._finished or self.request.method != "PUT":
            return
        # A body that is not JSON is refused before it is read.
        try:
            check_json_media_type(self.request.headers.get("Content-Type"))
        except BodyError as err:
            raise web.HTTPError(err.status, str(err)) from None

    async def get(self, name: str) -> None:
        image = await self.service.run_db(self.service.catalog.get, name)
        if image is None:
            raise web.HTTPError(404, f"no image named {_quoted(name)}")
        self.send_json(image)

    async def put(self, name: str) -> None:
        try:
            body = parse_json_body(self.body, self.request.headers.get("Content-Type"))
            entry, created = await self.service.run_db(self.service.catalog.put, name, body)
        except BodyError as err:
            self.send_bad_request(err.field, str(err), err.status)
            return
        except CatalogFull as err:
            self.send_bad_request(err.field, str(err), 409)
            return
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
            raise web.HTTPError(404, f"no image named {_quoted(name)}")
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
    """Any other path under the prefix: a JSON 404, not tornado's HTML page (any method; the
    body is never read)."""

    public = True

    def prepare(self) -> None:
        self.started = time.perf_counter()
        self.begin_body()
        self.refuse(web.HTTPError(404, "no such route"))


@web.stream_request_body
class OAuthCallbackHandler(ServiceAuth, HubOAuthCallbackHandler, BoundedBody):
    """The end of a browser's login through the hub: GET, without a body; the hub is asked
    for the code's token and its owner (a 503 with the reason if it cannot be asked); plain
    JSON errors."""

    def prepare(self) -> None:
        self.begin_body()
        try:
            if self.request.method not in self.allowed_methods():
                raise self.method_not_allowed()
            self.limit_body()
        except web.HTTPError as error:
            self.refuse(error)
            return
        self.admitted()

    async def get(self) -> None:
        # HubOAuthCallbackHandler.get asks the hub twice (the code's token, its owner);
        # one bound for the whole exchange.
        await self.ask_hub(super().get())


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
