"""Waiting for a GPU: the routes of notebook server requests in the GPU queue.

- `POST api/v1/waiting`: a spawner registers a request, as the person (their server's
  token, or any token or login of theirs): the server's name, the choice as user_options,
  the pod as the filter reads it. One per person and server name; the admin's caps apply.
- `GET api/v1/waiting`: the person's requests (`?user=` for jobs admins).
- `GET`/`DELETE api/v1/waiting/{id}`: one request; DELETE leaves the queue.
- `GET api/v1/waiting/{id}/events`: its changes as Server-Sent Events, until it starts or
  ends.
- `GET api/v1/waiting/estimates`: per GPU model and node, how many wait and when a request
  joining now could expect a GPU (what the spawn form shows).
- `waiting/{id}`: the person's page (position, estimate, Leave the queue), complete without
  JavaScript; its script follows the request and moves on to the server when it starts.
  `waiting/{id}/cancel` is the page's form; `waiting/{id}/cloud` its Start-there-instead
  form (when a cloud offer within the person's cap runs the same choice now).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Mapping
from typing import Any
from urllib.parse import quote

from jupyterhub.utils import url_path_join
from tornado import iostream, web

from ..bodies import BodyError, parse_json_body
from ..handlers import MAX_ENTRY_BODY_BYTES, ServiceAuth
from .handlers import JobsAPIHandler, _quoted
from .manager import JobQueue
from .spec import JobError
from .store import CANCELLED, QUEUED, RUNNING
from .waiting import (
    ENDED,
    SERVER,
    check_waiting_request,
    limit_problem,
    waiting_event,
    waiting_view,
)
from .waiting_page import (
    cloud_offer_for,
    cloud_offer_of,
    cloud_start_url,
    render_waiting_page,
    waiting_page_view,
)

__all__ = ["waiting_routes"]

# How long a registration waits for the plan that places it before answering without.
PLAN_WAIT_SECONDS = 2.0
# How often a followed request is looked at (in memory) for changes to push, and how long a
# stream stays quiet before a comment line keeps proxies from closing it.
EVENTS_POLL_SECONDS = 0.25
EVENTS_HEARTBEAT_SECONDS = 15.0
MY_REQUESTS = 50


class WaitingLinks:
    """Where a request's page, and the hub's pages for its server, are."""

    service: Any
    hub_auth: Any

    def links(self, entry: Mapping[str, Any]) -> dict[str, str]:
        hub_prefix = self.hub_auth.hub_prefix  # "/hub/" (or under the hub's base_url)
        base = hub_prefix.rstrip("/").removesuffix("/hub") + "/"
        user = quote(entry["user"], safe="")
        server = quote(entry.get("name") or "", safe="")
        return {
            "page": url_path_join(self.service.service_prefix, "waiting", entry["id"]),
            "server": url_path_join(base, "user", user, server).rstrip("/") + "/",
            "spawn_pending": url_path_join(hub_prefix, "spawn-pending", user, server),
            "spawn": url_path_join(hub_prefix, "spawn", user, server),
            "home": url_path_join(hub_prefix, "home"),
        }

    def waiting_view(self, queue: JobQueue, entry: Mapping[str, Any]) -> dict[str, Any]:
        queued = sum(1 for e in queue.active.values() if e["status"] == QUEUED)
        return waiting_view(entry, queue.where(entry), queued, time.time(), self.links(entry))


class WaitingAPIHandler(WaitingLinks, JobsAPIHandler):
    async def visible_request(self, entry_id: str) -> dict[str, Any]:
        """The request, when the asker may see it; else 404, as for one that does not
        exist."""
        queue = self.queue
        entry = await queue.db(queue.store.get, entry_id) if len(entry_id) <= 64 else None
        if entry is None or entry.get("kind") != SERVER or not self.may_see(entry):
            raise web.HTTPError(404, f"no waiting request {_quoted(entry_id)} of yours")
        return entry


class WaitingListHandler(WaitingAPIHandler):
    """`POST api/v1/waiting` registers; `GET` lists the person's requests."""

    @property
    def max_body_bytes(self) -> int:  # type: ignore[override]
        return MAX_ENTRY_BODY_BYTES if self.request.method == "POST" else 0

    async def post(self) -> None:
        try:
            body = parse_json_body(self.body, self.request.headers.get("Content-Type"))
        except BodyError as err:
            self.send_bad_request(err.field, str(err), err.status)
            return
        queue = self.queue
        user = self.user_name
        try:
            request = check_waiting_request(body, self.service.source.published.documents)
        except JobError as err:
            self.send_bad_request(err.field, str(err))
            return
        existing = queue.waiting_server(user, request.server_name)
        if existing is not None:
            view = self.waiting_view(queue, existing)
            self.send_json(
                {
                    "status": 409,
                    "error": "You already wait for this server: one request per server. "
                    f"See where you stand at {view['page']}.",
                    "field": "server_name",
                    "waiting": view,
                },
                409,
            )
            return
        mine = [e for e in queue.active.values() if e["user"] == user]
        problem = limit_problem(
            self.service.waiting_limits,
            self.current_user.get("groups") or (),
            sum(1 for e in mine if e["kind"] == SERVER and e["status"] == QUEUED),
            queue.gpus_held(user),
            queue.gpus_waiting(user),
            request.gpus,
        )
        if problem:
            self.send_json({"status": 403, "error": problem, "field": None}, 403)
            return
        entry = await queue.submit_waiting(user, request)
        self.service.log.info("server %s of %s waits for %s", entry["id"], user, request.label)
        if queue.plans_are_quick:
            await queue.next_plan(PLAN_WAIT_SECONDS)
            entry = await queue.db(queue.store.get, entry["id"]) or entry
        view = self.waiting_view(queue, entry)
        self.set_header("Location", view["page"])
        self.send_json(view, 201)

    async def get(self) -> None:
        user = self.get_query_argument("user", None)
        if user is not None and user != self.user_name and not self.is_jobs_admin:
            raise web.HTTPError(403, "you may list only your own waiting requests")
        queue = self.queue
        entries, total = await queue.db(
            queue.store.search,
            users=[user or self.user_name],
            kinds=[SERVER],
            limit=MY_REQUESTS,
        )
        # what still waits first, then the newest
        entries.sort(key=lambda e: e["status"] not in (QUEUED, RUNNING))
        self.send_json({"waiting": [self.waiting_view(queue, e) for e in entries], "total": total})


class WaitingEntryHandler(WaitingAPIHandler):
    """`GET api/v1/waiting/{id}`; `DELETE` leaves the queue (idempotent)."""

    async def get(self, entry_id: str) -> None:
        entry = await self.visible_request(entry_id)
        self.send_json(self.waiting_view(self.queue, entry))

    async def delete(self, entry_id: str) -> None:
        entry = await self.visible_request(entry_id)
        queue = self.queue
        if entry["status"] == RUNNING:
            raise web.HTTPError(
                409,
                "It is starting now, so it has left the queue; stop the server from the hub's "
                "home page if you no longer want it.",
            )
        ended = await queue.cancel(entry)
        self.service.log.info("server %s of %s left the queue", entry["id"], entry["user"])
        self.send_json(self.waiting_view(queue, ended))


class WaitingEventsHandler(WaitingAPIHandler):
    """`GET api/v1/waiting/{id}/events`: Server-Sent Events (`waiting.waiting_event`): where
    it stands now, then each change (`position`, `starting`), ending with `started` (and
    the server's URL) or `ended` (and why)."""

    async def get(self, entry_id: str) -> None:
        entry = await self.visible_request(entry_id)
        self.set_header("Content-Type", "text/event-stream; charset=utf-8")
        self.set_header("Cache-Control", "no-store")
        self.set_header("X-Accel-Buffering", "no")  # proxies pass each event on at once
        try:
            await self.stream(entry)
        except iostream.StreamClosedError:
            return  # the client left
        self.finish()

    async def stream(self, entry: Mapping[str, Any]) -> None:
        queue, links = self.queue, self.links(entry)
        previous: Mapping[str, Any] | None = None
        quiet_since = time.monotonic()
        while True:
            current = queue.active.get(entry["id"])
            if current is None:  # ended: as the store has it
                current = await queue.db(queue.store.get, entry["id"])
                if current is None:
                    await self.event(ENDED, {"status": "cancelled", "message": "it is gone"})
                    return
            view = self.waiting_view(queue, current)
            change = waiting_event(previous, view, links)
            if change is not None:
                name, data, final = change
                await self.event(name, data)
                if final:
                    return
                quiet_since = time.monotonic()
            elif time.monotonic() - quiet_since >= EVENTS_HEARTBEAT_SECONDS:
                self.write(": still waiting\n\n")
                await self.flush()
                quiet_since = time.monotonic()
            previous = view
            await asyncio.sleep(EVENTS_POLL_SECONDS)

    async def event(self, name: str, data: Mapping[str, Any]) -> None:
        self.write(f"event: {name}\ndata: {json.dumps(data)}\n\n")
        await self.flush()


class WaitingEstimatesHandler(WaitingAPIHandler):
    """`GET api/v1/waiting/estimates`: what the spawn form shows beside a full GPU model."""

    def get(self) -> None:
        self.send_json(self.queue.join_estimates())


class _WaitingPageBase(WaitingLinks, ServiceAuth, web.RequestHandler):
    """The person's own request, behind their hub login. Not a streaming handler: a form's
    `_xsrf` field is read before the login cookie is accepted for a POST."""

    @property
    def queue(self) -> JobQueue:
        queue = self.service.jobs
        if queue is None:
            raise web.HTTPError(404, "waiting for a GPU needs the GPU queue (jobs_enabled)")
        return queue

    def cloud_offers(self) -> list:
        """RunPod's offers as the service holds them (none without cloud)."""
        cloud = self.service.cloud
        return list(cloud.offers.offers) if cloud is not None and cloud.offers.configured else []

    @property
    def wants_html(self) -> bool:
        return "text/html" in self.request.headers.get("Accept", "")

    async def prepare(self) -> None:
        self.started = time.perf_counter()
        model = await self.ask_hub(self.hub_auth.get_user(self, sync=False))
        if not model:
            if self.request.method == "GET":
                self.redirect(self.get_login_url())
                return
            raise web.HTTPError(401, "log in through the hub first")
        if not self.hub_auth.check_scopes(self.service.access_scopes, model):
            raise web.HTTPError(403, f"{model.get('name')} may not use this service")
        self.current_user = model

    async def entry(self, entry_id: str) -> dict[str, Any]:
        queue = self.queue
        entry = await queue.db(queue.store.get, entry_id) if len(entry_id) <= 64 else None
        mine = entry is not None and entry.get("kind") == SERVER
        if not mine or entry["user"] != self.current_user.get("name"):
            raise web.HTTPError(404, f"no waiting request {_quoted(entry_id)} of yours")
        return entry


class WaitingPageHandler(_WaitingPageBase):
    """`waiting/{id}`: the page (HTML for a browser, the JSON view otherwise); a request
    that is starting or started moves on to the hub's pages for its server."""

    async def get(self, entry_id: str) -> None:
        entry = await self.entry(entry_id)
        queue = self.queue
        view = self.waiting_view(queue, entry)
        links = self.links(entry)
        if not self.wants_html:
            self.set_header("Content-Type", "application/json")
            self.set_header("Cache-Control", "no-store")
            self.finish(view)
            return
        if view["status"] == "starting":
            self.redirect(links["spawn_pending"])
            return
        if view["status"] == "started":
            self.redirect(links["server"])
            return
        token = self.xsrf_token
        xsrf = token.decode() if isinstance(token, bytes) else str(token)
        page = waiting_page_view(
            view,
            links,
            xsrf=xsrf,
            api=url_path_join(self.service.service_prefix, "api/v1/waiting", entry["id"]),
            cloud_offer=cloud_offer_for(entry, self.cloud_offers(), links["page"] + "/cloud", xsrf),
        )
        html, policy = render_waiting_page(page)
        self.set_header("Content-Type", "text/html; charset=utf-8")
        self.set_header("Content-Security-Policy", policy)
        self.set_header("X-Content-Type-Options", "nosniff")
        self.set_header("Referrer-Policy", "same-origin")
        self.set_header("Cache-Control", "no-store")
        self.finish(html)


class WaitingCancelHandler(_WaitingPageBase):
    """`waiting/{id}/cancel`: the page's Leave-the-queue form; back to the page."""

    async def post(self, entry_id: str) -> None:
        entry = await self.entry(entry_id)
        if entry["status"] == QUEUED:
            await self.queue.cancel(entry)
            self.service.log.info("server %s of %s left the queue", entry["id"], entry["user"])
        self.redirect(self.links(entry)["page"], status=303)


class WaitingCloudHandler(_WaitingPageBase):
    """`waiting/{id}/cloud`: the page's Start-there-instead form. The request leaves the
    queue and the browser goes on to the hub's one-click cloud start (the spawn form's
    refusal's link), which checks the choice as any start. When the offer shown is no
    longer the one to make (taken, repriced) or the request no longer waits, nothing
    changes: back to the page, which shows where things stand."""

    async def post(self, entry_id: str) -> None:
        entry = await self.entry(entry_id)
        page = self.links(entry)["page"]
        offer = cloud_offer_of(entry, self.cloud_offers())
        if offer is None or offer.key != self.get_body_argument("offer", ""):
            self.redirect(page, status=303)
            return
        left = await self.queue.cancel(entry)
        if left.get("status") != CANCELLED:  # its lab start began meanwhile: that is the one
            self.redirect(page, status=303)
            return
        self.service.log.info(
            "server %s of %s left the queue for RunPod (%s)", entry["id"], entry["user"], offer.key
        )
        self.redirect(cloud_start_url(entry, offer, self.hub_auth.hub_prefix), status=303)


def waiting_routes(prefix: str) -> list[tuple]:
    api = url_path_join(prefix, "api/v1")
    return [
        (url_path_join(api, "waiting"), WaitingListHandler),
        (url_path_join(api, "waiting/estimates"), WaitingEstimatesHandler),
        (url_path_join(api, r"waiting/(s-[^/]+)"), WaitingEntryHandler),
        (url_path_join(api, r"waiting/(s-[^/]+)/events"), WaitingEventsHandler),
        (url_path_join(prefix, r"waiting/(s-[^/]+)"), WaitingPageHandler),
        (url_path_join(prefix, r"waiting/(s-[^/]+)/cancel"), WaitingCancelHandler),
        (url_path_join(prefix, r"waiting/(s-[^/]+)/cloud"), WaitingCloudHandler),
    ]
