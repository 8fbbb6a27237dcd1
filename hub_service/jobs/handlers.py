"""The jobs API: submit, list, follow, collect and cancel GPU jobs; the queue and the nodes.

Two sets of routes over the same jobs: this service's own (`api/v1/jobs...`, `api/v1/queue`,
`api/v1/nodes`) and those of the job server people already script against (`api/submit`,
`api/status/{id}`, `api/results/{id}`, `api/cancel/{id}`, `api/nodes`, `api/jobs`).

Who may do what: anyone with access to the service submits and sees the queue's order; a
person sees, follows and cancels their own jobs; a token with the service's jobs admin scope
(`jobs_admin_scope`) sees and cancels everyone's. Someone else's job is answered like a job
that does not exist, so ids cannot be probed.

Handlers are thin: the checks live in `spec.check_submission`, the shapes in `views`, the
queue in `manager.JobQueue`.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import deque
from collections.abc import AsyncIterator, Mapping
from typing import Any

import yaml
from jupyterhub.utils import url_path_join
from tornado import httputil, iostream, web

from thinkube_core.runpod.offers import price_cap_for

from ..bodies import BodyError, parse_json_body
from ..handlers import JSONHandler
from .manager import JobQueue
from .placement import CloudChoices
from .setup import cloud_jobs_unavailable
from .spec import JobError, JobRequest, check_submission
from .store import ACTIVE, FINISHED, QUEUED, RUNNING
from .views import (
    COMPAT_STATUS,
    ESTIMATE_BASIS,
    compat_node,
    compat_result,
    compat_status,
    job_view,
    node_statistics,
    queue_view,
    result_view,
)
from .waiting import gpu_cap_problem

__all__ = ["job_routes"]

# Room for a submission's fields beside its script (multipart headers, options, metadata).
FIELDS_ROOM_BYTES = 64 * 1024
# How long a submission waits for the plan that gives it a position before answering
# without one.
PLAN_WAIT_SECONDS = 2.0
# A followed log with nothing to say sends a comment this often, so proxies keep it open.
HEARTBEAT_SECONDS = 15.0
# How often a followed job that has not started yet is looked at again.
WAIT_POLL_SECONDS = 0.25
MAX_PAGE = 500
STATUSES = (*ACTIVE, *FINISHED)
# The old job server's states, asked for in a filter, as this service's.
COMPAT_FILTER = {
    "pending": ["queued"],
    "running": ["running"],
    "completed": ["completed"],
    "failed": ["failed", "lost"],
    "cancelled": ["cancelled"],
}


def _quoted(text: str) -> str:
    return repr(text) if len(text) <= 80 else repr(text[:80]) + "..."


class JobsAPIHandler(JSONHandler):
    """What every jobs route shares: the queue, who asks, what they may see."""

    @property
    def queue(self) -> JobQueue:
        queue = self.service.jobs
        if queue is None:
            raise web.HTTPError(
                404, "jobs are not enabled on this hub (ThinkubeService.jobs_enabled)"
            )
        return queue

    async def admit(self) -> None:
        await super().admit()
        if not self._finished and self.current_user is not None:
            self.queue  # noqa: B018 (404 before any body is read when jobs are off)

    @property
    def user_name(self) -> str:
        return self.current_user["name"]

    @property
    def is_jobs_admin(self) -> bool:
        return bool(self.hub_auth.check_scopes({self.service.jobs_admin_scope}, self.current_user))

    def may_see(self, entry: Mapping[str, Any]) -> bool:
        return entry["user"] == self.user_name or self.is_jobs_admin

    async def visible_entry(self, job_id: str) -> dict[str, Any]:
        """The job, when the asker may see it; else 404, as for a job that does not exist."""
        queue = self.queue
        entry = await queue.db(queue.store.get, job_id) if len(job_id) <= 64 else None
        if entry is None or entry.get("kind") == "server" or not self.may_see(entry):
            raise web.HTTPError(404, f"no job {_quoted(job_id)} of yours")
        return entry

    def view(self, entry: Mapping[str, Any]) -> dict[str, Any]:
        return job_view(entry, self.queue.where(entry), time.time())

    def checked_submission(self, fields: Mapping[str, Any], script: str | bytes | None):
        """The request, checked against the catalog and the nodes now (JobError if not)."""
        published = self.service.source.published
        return check_submission(
            fields,
            script,
            images=self._images,
            nodes=published.documents,
            gpu_models=published.summary_document.get("gpu_models") or [],
            limits=self.service.job_limits,
            cloud=self.cloud_choices(),
        )

    def cloud_choices(self) -> CloudChoices:
        """What the asker may rent on RunPod for a job now: the cached offers, their cap."""
        service = self.service
        groups = [g for g in self.current_user.get("groups") or [] if isinstance(g, str)]
        return CloudChoices(
            offers=service.cloud.offers.offers if service.cloud is not None else (),
            cap=price_cap_for(
                self.user_name,
                groups,
                service.cloud_price_cap,
                service.cloud_user_price_caps,
                service.cloud_group_price_caps,
            ),
            unavailable=cloud_jobs_unavailable(service),
            default_image=service.jobs_runpod_image,
        )

    def gpu_cap_problem(self, request: JobRequest) -> str | None:
        """Why this job would take the asker over their cap on GPUs held at once (the
        admin's gpus_max_per_user / gpus_max_per_group, as when a server waits); None if
        it would not. A job rented on RunPod takes none of this hub's GPUs."""
        if request.placement:
            return None
        queue = self.queue
        groups = [g for g in self.current_user.get("groups") or [] if isinstance(g, str)]
        return gpu_cap_problem(
            self.service.waiting_limits,
            groups,
            queue.gpus_held(self.user_name),
            queue.gpus_waiting(self.user_name),
            request.gpus,
            asking="this job",
        )

    async def load_images(self) -> None:
        self._images = await self.service.run_db(self.service.catalog.list, None)

    async def queued(
        self, fields: Mapping[str, Any], script: bytes | str | None
    ) -> dict[str, Any] | None:
        """Check and queue a submission; the entry, or None after answering 400 for what
        was wrong. While plans are quick it answers once the next plan has placed it
        (started, or where it will run and when); else at once, from the last plan."""
        await self.load_images()
        try:
            request = self.checked_submission(fields, script)
        except JobError as err:
            self.send_bad_request(err.field, str(err))
            return None
        problem = self.gpu_cap_problem(request)
        if problem:
            self.send_json({"status": 409, "error": problem, "field": "gpus"}, 409)
            return None
        entry = await self.queue.submit(self.user_name, request)
        self.service.log.info("job %s submitted by %s", entry["id"], self.user_name)
        if not self.queue.plans_are_quick:  # its place in the last plan's order answers
            return entry
        await self.queue.next_plan(PLAN_WAIT_SECONDS)
        return await self.queue.db(self.queue.store.get, entry["id"]) or entry

    async def output(self, entry: Mapping[str, Any]) -> tuple[dict[str, Any], str]:
        """The job's output so far, capped at jobs_result_max_bytes, and whether its
        streams are `separate` or `combined`."""
        backend = self.queue.backend
        streams_for = getattr(backend, "streams_for", None)
        streams = streams_for(entry) if streams_for else getattr(backend, "streams", "separate")
        limit = self.service.jobs_result_max_bytes
        if entry["status"] == QUEUED:
            return {"stdout": "", "stderr": "", "truncated": False}, streams
        kept: dict[str, deque[str]] = {"stdout": deque(), "stderr": deque()}
        sizes = {"stdout": 0, "stderr": 0}
        truncated = False
        async for _, stream, line in backend.logs(entry, None, False):
            target = "stdout" if stream in ("stdout", "combined") else "stderr"
            kept[target].append(line)
            sizes[target] += len(line) + 1
            while sizes[target] > limit and kept[target]:
                # the end of the output says most about how it ended: keep the last part
                sizes[target] -= len(kept[target].popleft()) + 1
                truncated = True
        output = {name: "\n".join(lines) for name, lines in kept.items()}
        output["truncated"] = truncated
        return output, streams


def _parse_form(
    content_type: str, body: bytes
) -> tuple[dict[str, list[bytes]], dict[str, list[httputil.HTTPFile]]]:
    """A multipart/form-data body's fields and files; BodyError (400) for one tornado
    cannot read (a part without a name, a bad boundary)."""
    arguments: dict[str, list[bytes]] = {}
    files: dict[str, list[httputil.HTTPFile]] = {}
    try:
        httputil.parse_body_arguments(content_type, body, arguments, files)
    except httputil.HTTPInputError:
        raise BodyError(
            400, None, "the multipart body could not be read (each part needs a name)"
        ) from None
    return arguments, files


def form_text_fields(
    content_type: str, body: bytes
) -> tuple[dict[str, Any], dict[str, list[httputil.HTTPFile]]]:
    """A multipart/form-data body's fields as text (the last of each name; `metadata`, sent
    as JSON text, parsed) and its files; BodyError (400) for a body that cannot be read, a
    field that is not UTF-8 or metadata that is not JSON."""
    arguments, files = _parse_form(content_type, body)
    if not arguments and not files and body:
        raise BodyError(400, None, "the multipart body could not be read")
    fields: dict[str, Any] = {}
    for name, values in arguments.items():
        try:
            fields[name] = values[-1].decode("utf-8")
        except UnicodeDecodeError:
            raise BodyError(400, name[:60], "fields must be UTF-8 text") from None
    if "metadata" in fields:
        try:
            fields["metadata"] = json.loads(fields["metadata"])
        except ValueError:
            raise BodyError(
                400, "metadata", "metadata must be a JSON object of text values"
            ) from None
    return fields, files


class SubmissionParser:
    """The fields and the script of a submission: JSON (the script as text in `script`) or
    multipart/form-data (the script as a file part, the options as fields)."""

    @staticmethod
    def parse(content_type: str, body: bytes) -> tuple[dict[str, Any], bytes | str | None]:
        media_type = content_type.split(";")[0].strip().lower()
        if media_type == "application/json":
            document = parse_json_body(body, content_type)
            if not isinstance(document, dict):
                raise BodyError(400, None, "the body must be a JSON object")
            script = document.pop("script", None)
            if script is not None and not isinstance(script, str):
                raise BodyError(400, "script", "script must be the script's text")
            return document, script
        if media_type == "multipart/form-data":
            fields, files = form_text_fields(content_type, body)
            script: bytes | str | None = fields.pop("script", None)
            for name in ("script", "file", "code"):
                if files.get(name):
                    part = files[name][0]
                    script = part.body
                    fields.setdefault("script_name", part.filename or "script.py")
                    break
            return fields, script
        raise BodyError(
            415,
            None,
            "send the job as JSON (Content-Type: application/json) or as a form "
            "(multipart/form-data)",
        )


class JobsHandler(JobsAPIHandler):
    """`POST api/v1/jobs` submits; `GET` lists (filters: user, status, project,
    metadata=key=value; offset, limit)."""

    @property
    def max_body_bytes(self) -> int:  # type: ignore[override]
        if self.request.method != "POST":
            return 0
        return self.service.jobs_max_script_bytes + FIELDS_ROOM_BYTES

    async def post(self) -> None:
        try:
            fields, script = SubmissionParser.parse(
                self.request.headers.get("Content-Type", ""), self.body
            )
        except BodyError as err:
            self.send_bad_request(err.field, str(err), err.status)
            return
        await self.submit(fields, script)

    async def submit(self, fields: Mapping[str, Any], script: bytes | str | None) -> None:
        entry = await self.queued(fields, script)
        if entry is None:
            return
        self.set_header("Location", url_path_join(self.request.path, entry["id"]))
        self.send_json(self.view(entry), 201)

    async def get(self) -> None:
        try:
            filters = self.list_filters()
        except ValueError as err:
            self.send_bad_request(err.args[1], err.args[0])
            return
        queue = self.queue
        entries, total = await queue.db(queue.store.search, **filters)
        self.send_json(
            {
                "jobs": [self.view(e) for e in entries],
                "total": total,
                "offset": filters["offset"],
                "limit": filters["limit"],
            }
        )

    def list_filters(self) -> dict[str, Any]:
        user = self.get_query_argument("user", None)
        if user is not None and user != self.user_name and not self.is_jobs_admin:
            raise web.HTTPError(403, "you may list only your own jobs")
        if user is None and not self.is_jobs_admin:
            user = self.user_name
        statuses = None
        status = self.get_query_argument("status", None)
        if status is not None:
            statuses = [s.strip() for s in status.split(",")]
            unknown = [s for s in statuses if s not in STATUSES]
            if unknown:
                raise ValueError(
                    f"unknown status {_quoted(unknown[0])} (one of {', '.join(STATUSES)})",
                    "status",
                )
        metadata = {}
        for pair in self.get_query_arguments("metadata"):
            key, equals, value = pair.partition("=")
            if not equals or not key:
                raise ValueError("metadata filters are key=value", "metadata")
            metadata[key] = value
        return {
            "users": None if user is None else [user],
            "statuses": statuses,
            "project": self.get_query_argument("project", None),
            "metadata": metadata or None,
            "kinds": ["job"],  # waiting notebook servers are api/v1/waiting's
            "offset": self._integer("offset", 0, 0, 10**9),
            "limit": self._integer("limit", 100, 1, MAX_PAGE),
        }

    def _integer(self, name: str, default: int, low: int, high: int) -> int:
        return _integer_argument(self, name, default, low, high)


def _integer_argument(handler: web.RequestHandler, name: str, default: int, low: int, high: int):
    """A whole-number query argument within [low, high]; ValueError(message, name) if not."""
    text = handler.get_query_argument(name, None)
    if text is None:
        return default
    if not (text.isascii() and text.isdigit()) or not low <= int(text) <= high:
        raise ValueError(f"{name} must be a whole number from {low} to {high}", name)
    return int(text)


class JobHandler(JobsAPIHandler):
    """`GET api/v1/jobs/{id}`."""

    async def get(self, job_id: str) -> None:
        entry = await self.visible_entry(job_id)
        self.send_json(self.view(entry))


class JobCancelHandler(JobsAPIHandler):
    """`POST api/v1/jobs/{id}/cancel`: a queued job leaves the queue, a running one ends
    now; a job already ended is answered as it is (idempotent)."""

    async def post(self, job_id: str) -> None:
        entry = await self.visible_entry(job_id)
        if entry["status"] in ACTIVE:
            entry = await self.queue.cancel(entry)
            self.service.log.info("job %s cancelled by %s", job_id, self.user_name)
        self.send_json(self.view(entry))


class JobResultHandler(JobsAPIHandler):
    """`GET api/v1/jobs/{id}/result`."""

    async def get(self, job_id: str) -> None:
        entry = await self.visible_entry(job_id)
        output, streams = await self.output(entry)
        self.send_json(result_view(entry, output, streams, time.time()))


class JobLogsHandler(JobsAPIHandler):
    """`GET api/v1/jobs/{id}/logs`: Server-Sent Events while the job runs (each line an
    event whose id resumes the stream after it: `Last-Event-ID`, or `?after=`), ending with
    an `end` event; `?follow=false`: the output so far as plain text."""

    async def get(self, job_id: str) -> None:
        entry = await self.visible_entry(job_id)
        follow = self.get_query_argument("follow", "true").lower() not in ("false", "0", "no")
        if not follow:
            output, _ = await self.output(entry)
            text = output["stdout"]
            if output.get("stderr"):
                text = f"{text}\n{output['stderr']}" if text else output["stderr"]
            self.set_header("Content-Type", "text/plain; charset=utf-8")
            self.set_header("Cache-Control", "no-store")
            self.finish(text + ("\n" if text else ""))
            return
        after = self.request.headers.get("Last-Event-ID") or self.get_query_argument("after", None)
        self.set_header("Content-Type", "text/event-stream; charset=utf-8")
        self.set_header("Cache-Control", "no-store")
        self.set_header("X-Accel-Buffering", "no")  # proxies pass each event on at once
        try:
            await self.stream(entry, after)
        except iostream.StreamClosedError:
            return  # the client left
        self.finish()

    async def stream(self, entry: dict[str, Any], after: str | None) -> None:
        queue = self.queue
        # A queued job: say where it stands until it starts (or ends without starting).
        while entry["status"] == QUEUED:
            await self.event("status", {"status": QUEUED, **_position(queue.where(entry))})
            for _ in range(int(HEARTBEAT_SECONDS / WAIT_POLL_SECONDS)):
                await asyncio.sleep(WAIT_POLL_SECONDS)
                current = queue.active.get(entry["id"])
                if current is None or current["status"] != QUEUED:
                    break
            entry = await queue.db(queue.store.get, entry["id"]) or entry
        if entry.get("started_at") is not None:
            await self.lines(entry, after)
        # The job's ending is recorded a moment after its last line.
        for _ in range(int(5 / WAIT_POLL_SECONDS)):
            entry = await queue.db(queue.store.get, entry["id"]) or entry
            if entry["status"] not in ACTIVE:
                break
            await asyncio.sleep(WAIT_POLL_SECONDS)
        await self.event(
            "end",
            {
                "status": entry["status"],
                "reason": entry.get("reason"),
                "exit_code": entry.get("exit_code"),
            },
        )

    async def lines(self, entry: dict[str, Any], after: str | None) -> None:
        """The job's lines as they come, until its output ends, or until it has been
        recorded as ended for a moment (a killed process may never close its output)."""
        queue = self.queue
        following = entry["status"] == RUNNING
        lines = queue.backend.logs(entry, after, following)
        quiet_since = time.monotonic()
        ended_at = None
        async for event_id, stream, text in _with_ticks(lines, WAIT_POLL_SECONDS * 4):
            now = time.monotonic()
            if event_id is not None:
                await self.event(stream, text, event_id)
                quiet_since = now
                continue
            if entry["id"] not in queue.active:
                ended_at = ended_at or now
                if now - ended_at > 2.0:
                    return
            if now - quiet_since >= HEARTBEAT_SECONDS:
                self.write(": the job is still running\n\n")
                await self.flush()
                quiet_since = now

    async def event(self, name: str, data: Any, event_id: str | None = None) -> None:
        text = data if isinstance(data, str) else json.dumps(data)
        lines = [f"id: {event_id}"] if event_id is not None else []
        lines.append(f"event: {name}")
        lines.extend(f"data: {part}" for part in text.split("\n"))
        self.write("\n".join(lines) + "\n\n")
        await self.flush()


def _position(where: Mapping[str, Any]) -> dict[str, Any]:
    return {"position": where.get("position"), "expected_node": where.get("expected_node")}


async def _with_ticks(
    lines: AsyncIterator[tuple[str, str, str]], every: float
) -> AsyncIterator[tuple[str | None, str, str]]:
    """The lines, with (None, '', '') whenever none came for `every` seconds."""
    iterator = aiter(lines)
    pending: asyncio.Task | None = None
    try:
        while True:
            if pending is None:
                pending = asyncio.ensure_future(anext(iterator))
            done, _ = await asyncio.wait({pending}, timeout=every)
            if not done:
                yield None, "", ""
                continue
            try:
                item = pending.result()
            except StopAsyncIteration:
                return
            finally:
                pending = None
            yield item
    finally:
        if pending is not None:
            pending.cancel()
        closing = getattr(iterator, "aclose", None)
        if closing is not None:
            await closing()


class QueueHandler(JobsAPIHandler):
    """`GET api/v1/queue`: the waiting jobs in the order they will start, with positions
    and estimated starts; ids and names only of the asker's own jobs (all for an admin)."""

    async def get(self) -> None:
        try:
            offset = _integer_argument(self, "offset", 0, 0, 10**9)
            limit = _integer_argument(self, "limit", 100, 1, MAX_PAGE)
        except ValueError as err:
            self.send_bad_request(err.args[1], err.args[0])
            return
        queue = self.queue
        now = time.time()
        ids = queue.waiting_order()
        page = [queue.active[i] for i in ids[offset : offset + limit]]
        admin = self.is_jobs_admin
        visible = [e["id"] for e in page if admin or e["user"] == self.user_name]
        running = sum(1 for e in queue.active.values() if e["status"] == RUNNING)
        wheres = {e["id"]: queue.where(e) for e in page}
        self.send_json(
            {
                "queued": len(ids),
                "running": running,
                "offset": offset,
                "limit": limit,
                "estimate_basis": ESTIMATE_BASIS,
                "jobs": queue_view(page, wheres, visible, now),
            }
        )


def _statistics(queue: JobQueue, documents) -> list[dict[str, Any]]:
    running = [e for e in queue.active.values() if e["status"] == RUNNING]
    queued = [e for e in queue.active.values() if e["status"] == QUEUED]
    return node_statistics(documents, running, queued, queue.plan.expected_node, time.time())


class JobNodesHandler(JobsAPIHandler):
    """`GET api/v1/nodes`: per node, GPUs free and busy, running and queued jobs, the work
    ahead of it."""

    async def get(self) -> None:
        self.send_json({"nodes": _statistics(self.queue, self.service.source.published.documents)})


# --- the old job server's routes -------------------------------------------------------------


class CompatSubmitHandler(JobsHandler):
    """`POST api/submit`: multipart `code` (the script) and `config_file` (YAML:
    competition_id, project_id, user_id, expected_time, and the token when no
    Authorization header carries one)."""

    _token_in_body = False
    # POST alone: not the list that JobsHandler answers a GET with.
    get = web.RequestHandler.get

    async def admit(self) -> None:
        try:
            await super().admit()
        except web.HTTPError as err:
            if err.status_code != 401 or self.request.headers.get("Authorization"):
                raise
            # The old clients may put their token in the config file: authenticated once
            # the body, bounded like any other, has been read.
            if self.request.method not in self.allowed_methods():
                raise self.method_not_allowed() from None
            self.limit_body()
            self._token_in_body = True

    async def post(self) -> None:
        try:
            config, script = self.parse_compat()
        except BodyError as err:
            self.send_bad_request(err.field, str(err), err.status)
            return
        if self._token_in_body:
            await self.authenticate(config.get("token"))
        user_id = config.get("user_id")
        if user_id not in (None, "") and str(user_id) != self.user_name:
            raise web.HTTPError(
                403, f"user_id {_quoted(str(user_id))} is not the token's user ({self.user_name})"
            )
        fields: dict[str, Any] = {"expected_time": config.get("expected_time")}
        for name in ("gpus", "gpu_model", "image", "name"):
            if config.get(name) is not None:
                fields[name] = config[name]
        if config.get("project_id") is not None:
            fields["project"] = str(config["project_id"])
        if config.get("competition_id") is not None:
            fields["metadata"] = {"competition_id": str(config["competition_id"])}
        entry = await self.queued(fields, script)
        if entry is None:
            return
        status = compat_status(entry, self.queue.where(entry))
        status["message"] = "Job submitted"
        self.send_json(status, 201)

    def parse_compat(self) -> tuple[dict[str, Any], bytes | None]:
        content_type = self.request.headers.get("Content-Type", "")
        if content_type.split(";")[0].strip().lower() != "multipart/form-data":
            raise BodyError(
                415, None, "send a form (multipart/form-data) with `code` and `config_file`"
            )
        arguments, files = _parse_form(content_type, self.body)

        def part(name: str) -> bytes | None:
            if files.get(name):
                return files[name][0].body
            if arguments.get(name):
                return arguments[name][-1]
            return None

        script, config_bytes = part("code"), part("config_file")
        if script is None:
            raise BodyError(400, "code", "the script is missing (the `code` part)")
        if config_bytes is None:
            raise BodyError(400, "config_file", "the config is missing (the `config_file` part)")
        try:
            config = yaml.safe_load(config_bytes.decode("utf-8"))
        except (UnicodeDecodeError, yaml.YAMLError) as err:
            where = getattr(err, "problem_mark", None)
            at = f" (line {where.line + 1})" if where is not None else ""
            raise BodyError(400, "config_file", f"config_file is not valid YAML{at}") from None
        if not isinstance(config, dict):
            raise BodyError(400, "config_file", "config_file must be a YAML mapping")
        return config, script

    async def authenticate(self, token: Any) -> None:
        if not isinstance(token, str) or not token:
            raise web.HTTPError(
                401,
                "authentication required: send a hub API token (Authorization: token ...) "
                "or put it in the config file's `token`",
            )
        model = await self.ask_hub(self.hub_auth.user_for_token(token, sync=False))
        if not model:
            raise web.HTTPError(401, "the config file's token is not valid")
        self.check_access(model)
        self.current_user = model


class CompatStatusHandler(JobsAPIHandler):
    async def get(self, job_id: str) -> None:
        entry = await self.visible_entry(job_id)
        entry = entry
        self.send_json(compat_status(entry, self.queue.where(entry)))


class CompatResultsHandler(JobsAPIHandler):
    async def get(self, job_id: str) -> None:
        entry = await self.visible_entry(job_id)
        output, _ = await self.output(entry)
        self.send_json(compat_result(entry, output))


class CompatCancelHandler(JobsAPIHandler):
    async def post(self, job_id: str) -> None:
        entry = await self.visible_entry(job_id)
        if entry["status"] in ACTIVE:
            entry = await self.queue.cancel(entry)
        status = compat_status(entry, self.queue.where(entry))
        status["message"] = f"Job {status['status']}"
        self.send_json(status)


class CompatNodesHandler(JobsAPIHandler):
    async def get(self) -> None:
        documents = self.service.source.published.documents
        self.send_json([compat_node(n) for n in _statistics(self.queue, documents)])


class CompatJobsHandler(JobsAPIHandler):
    """`GET api/jobs?user_id=&status=`: the old server's list (newest first)."""

    async def get(self) -> None:
        user_id = self.get_query_argument("user_id", None) or self.user_name
        if user_id != self.user_name and not self.is_jobs_admin:
            raise web.HTTPError(403, "you may list only your own jobs")
        status = self.get_query_argument("status", None)
        statuses = None
        if status is not None:
            if status not in COMPAT_FILTER:
                self.send_bad_request(
                    "status", f"status must be one of {', '.join(COMPAT_STATUS.values())}"
                )
                return
            statuses = COMPAT_FILTER[status]
        queue = self.queue
        entries, _ = await queue.db(
            queue.store.search,
            users=[user_id],
            statuses=statuses,
            kinds=["job"],
            limit=MAX_PAGE,
        )
        self.send_json([compat_status(e, queue.where(e)) for e in entries])


def job_routes(prefix: str) -> list[tuple]:
    from .artifacts import ArtifactFileHandler, ArtifactsHandler  # it builds on this module
    from .training import training_routes  # it builds on this module's handlers

    api = url_path_join(prefix, "api/v1")
    compat = url_path_join(prefix, "api")
    return [
        *training_routes(prefix),
        (url_path_join(api, "jobs"), JobsHandler),
        (url_path_join(api, r"jobs/([^/]+)"), JobHandler),
        (url_path_join(api, r"jobs/([^/]+)/logs"), JobLogsHandler),
        (url_path_join(api, r"jobs/([^/]+)/result"), JobResultHandler),
        (url_path_join(api, r"jobs/([^/]+)/cancel"), JobCancelHandler),
        (url_path_join(api, r"jobs/([^/]+)/artifacts"), ArtifactsHandler),
        (url_path_join(api, r"jobs/([^/]+)/artifacts/(.+)"), ArtifactFileHandler),
        (url_path_join(api, "queue"), QueueHandler),
        (url_path_join(api, "nodes"), JobNodesHandler),
        (url_path_join(compat, "submit"), CompatSubmitHandler),
        (url_path_join(compat, r"status/([^/]+)"), CompatStatusHandler),
        (url_path_join(compat, r"results/([^/]+)"), CompatResultsHandler),
        (url_path_join(compat, r"cancel/([^/]+)"), CompatCancelHandler),
        (url_path_join(compat, "nodes"), CompatNodesHandler),
        (url_path_join(compat, "jobs"), CompatJobsHandler),
    ]
