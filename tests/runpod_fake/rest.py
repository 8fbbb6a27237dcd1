"""RunPod's REST API v2 on the stand-in's server, path for path (RunPod serves it at
`https://api.runpod.io/v2/...`; here `http://127.0.0.1:PORT/v2/...`):

- `GET /v2/pods`: `{"pods": [Pod, ...]}` (the caller's pods)
- `GET /v2/pods/{id}`: a Pod (v2 shape: `status` PROVISIONING STARTING RUNNING EXITED ERROR
  TERMINATED, no exit code)
- `DELETE /v2/pods/{id}`: terminate, 204 without a body
- `GET /v2/pods/{id}/logs`: the pod's log as Server-Sent Events (see `PodLogsHandler`)

Auth is `Authorization: Bearer <key>` only. Errors are `application/problem+json`
`{"title", "status", "detail"}` (plus `errors` for invalid parameters): 401 for a missing or
wrong key, 403 for a read-only key that writes, 404 for a pod that is not the caller's or is
gone. Injected faults hit these requests by their OpenAPI operationId (listPods, getPod,
deletePod, getPodLogs)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from datetime import UTC, datetime
from http import HTTPStatus
from typing import TYPE_CHECKING, Any

from tornado import web
from tornado.iostream import StreamClosedError
from tornado.log import access_log

from . import logs, runtime

if TYPE_CHECKING:
    from .fake import FakePod, Fault, RunPodFake

PROBLEM_JSON = "application/problem+json"
TERMINAL = ("EXITED", "ERROR", "TERMINATED")
ACTIONS = {
    "PROVISIONING": ["stop", "terminate"],
    "STARTING": ["stop", "terminate"],
    "RUNNING": ["stop", "restart", "terminate"],
    "EXITED": ["start", "terminate"],
    "ERROR": ["start", "terminate"],
    "TERMINATED": [],
}
DATA_CENTERS = {"SECURE": "US-KS-2", "COMMUNITY": "US-TX-3"}
SSH_PROXY_HOST = "ssh.runpod.io"


def edge_error_page(status: int) -> str:
    """What the edge in front of RunPod answers for 502/503/504: HTML, not JSON."""
    return f"<html><head><title>{status}</title></head><body>error code: {status}</body></html>"


def problem(status: int, detail: str, errors: list[str] | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {"title": HTTPStatus(status).phrase, "status": status, "detail": detail}
    if errors:
        body["errors"] = errors
    return body


def v2_status(pod: FakePod) -> str:
    if pod.desired_status == "TERMINATED":
        return "TERMINATED"
    if pod.desired_status == "RUNNING":
        return "RUNNING" if pod.started_at is not None else pod.phase
    return "ERROR" if pod.start_failed else "EXITED"


def _iso(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def pod_v2(pod: FakePod) -> dict[str, Any]:
    """A pod as `GET /v2/pods/{id}` shows it."""
    status = v2_status(pod)
    ports = runtime.parse_ports(pod.input.get("ports"))
    pod_runtime = None
    direct_ssh = None
    if status == "RUNNING" and pod.container is not None:
        runtime_ports = []
        for number, kind in ports:
            if kind == "tcp":
                public = pod.container.public_ports.get(number)
                if public is None:
                    continue
                runtime_ports.append(
                    {"private": number, "public": public, "type": "tcp", "ip": runtime.PUBLIC_IP}
                )
                if number == 22:
                    direct_ssh = {
                        "host": runtime.PUBLIC_IP,
                        "port": public,
                        "username": "root",
                        "command": f"ssh root@{runtime.PUBLIC_IP} -p {public}",
                    }
            else:
                # Reached through the proxy; here the pod's own address and port.
                runtime_ports.append(
                    {"private": number, "public": number, "type": kind, "ip": pod.address}
                )
        pod_runtime = {
            "uptime": int(time.time() - (pod.started_at or time.time())),
            "gpus": [{"util": 0, "memoryUtil": 0} for _ in pod.gpu_ids],
            "cpu": {"util": 0},
            "memory": {"util": 1},
            "ports": runtime_ports,
        }
    username = f"{pod.id}-{pod.machine_id[:8]}"
    volume = int(float(pod.input.get("volumeInGb") or 0))
    mounts = (
        {"persistent": {"size": volume, "path": pod.input.get("volumeMountPath") or "/workspace"}}
        if volume
        else {}
    )
    return {
        "id": pod.id,
        "name": pod.name,
        "image": pod.image_name,
        "args": pod.input.get("dockerArgs") or "",
        "disk": pod.input.get("containerDiskInGb") or 20,
        "ports": [f"{number}/{kind}" for number, kind in ports],
        "env": dict(pod.env),
        "registry": None,
        "status": status,
        "actions": list(ACTIONS[status]),
        "mounts": mounts,
        "gpu": {"id": pod.gpu_type.id, "count": pod.gpu_count},
        "cloud": pod.cloud_type,
        "dataCenterId": DATA_CENTERS.get(pod.cloud_type),
        "cudaVersion": "12.8",
        "ssh": {
            "proxy": {
                "host": SSH_PROXY_HOST,
                "port": 22,
                "username": username,
                "command": f"ssh {username}@{SSH_PROXY_HOST}",
            },
            "direct": direct_ssh,
        },
        "template": None,
        "cost": pod.cost_per_hr if status not in ("EXITED", "TERMINATED") else 0.0,
        "locked": False,
        "globalNetworking": {"enabled": False},
        "runtime": pod_runtime,
        "createdAt": pod.created_at,
        "startedAt": _iso(pod.started_at) if pod.started_at is not None else None,
    }


class LogRequest:
    """The parameters of `GET /v2/pods/{id}/logs`, checked; `errors` lists what is wrong."""

    def __init__(self, args: dict[str, str], last_event_id: str | None) -> None:
        self.errors: list[str] = []
        self.source: str | None = None
        self.tail = logs.TAIL_DEFAULT
        self.since: int | None = None
        self.cursor: logs.Cursor | None = None
        source = args.get("source")
        if source is not None:
            if source in logs.SOURCES:
                self.source = source
            else:
                self.errors.append("source: value must be one of 'container', 'system'")
        tail = args.get("tail")
        if tail is not None:
            try:
                self.tail = int(tail)
            except ValueError:
                self.errors.append("tail: value must be an integer")
            else:
                if not 0 <= self.tail <= logs.TAIL_MAX:
                    self.errors.append(f"tail: value must be between 0 and {logs.TAIL_MAX}")
        since = args.get("since")
        if since is not None:
            try:
                self.since = logs.parse_rfc3339(since)
            except ValueError:
                self.errors.append("since: value must be an RFC 3339 date-time")
        if last_event_id:
            try:
                self.cursor = logs.parse_last_event_id(last_event_id)
            except ValueError:
                self.errors.append("Last-Event-ID: value must be an event id or a date-time")


class RestHandler(web.RequestHandler):
    """The shared part: the record of the request, injected faults, the key, the errors."""

    operation = "unknown"

    def initialize(self, fake: RunPodFake) -> None:
        self.fake = fake
        self.record = None

    def check_xsrf_cookie(self) -> None:
        pass

    def answer(self, status: int, body: Any = None, headers: dict[str, str] | None = None) -> None:
        self.set_status(status)
        for name, value in (headers or {}).items():
            self.set_header(name, value)
        if self.record is not None:
            self.record.status = status
        if body is None:
            self.finish()
        elif isinstance(body, str):
            self.set_header("Content-Type", "text/html; charset=UTF-8")
            self.finish(body)
        else:
            content_type = PROBLEM_JSON if status >= 400 else "application/json"
            self.set_header("Content-Type", content_type)
            self.finish(json.dumps(body))
            if status >= 400 and self.record is not None:
                self.record.error_messages.append(body.get("detail", ""))

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        detail = {
            404: "resource not found",
            405: "The requested method is not allowed for this path.",
        }.get(status_code, HTTPStatus(status_code).phrase.lower())
        if status_code == 405:
            allowed = [m for m in ("GET", "POST", "PATCH", "DELETE") if self._implements(m)]
            self.set_header("Allow", ", ".join(allowed))
        self.set_header("Content-Type", PROBLEM_JSON)
        self.finish(json.dumps(problem(status_code, detail)))

    def _implements(self, method: str) -> bool:
        return getattr(type(self), method.lower()) is not getattr(
            web.RequestHandler, method.lower()
        )

    async def begin(self, operation: str, writes: bool = False) -> tuple[str, Fault | None] | None:
        """Record the request, apply a fault, check the key: (user, fault), or None when the
        request has been answered already."""
        from .fake import RecordedRequest

        arguments = {name: self.get_query_argument(name) for name in self.request.query_arguments}
        if self.request.headers.get("Last-Event-ID"):
            arguments["Last-Event-ID"] = self.request.headers["Last-Event-ID"]
        user, read_only = self.fake.authenticate_rest(self.request.headers.get("Authorization"))
        self.record = RecordedRequest(
            operation,
            [operation],
            f"{self.request.method} {self.request.path}",
            arguments,
            user is not None,
        )
        self.fake.requests.append(self.record)
        fault = self.fake.take_fault([operation], rest=True)
        if fault is not None and not fault.after:
            if await self.apply_fault(fault):
                return None
        if user is None:
            header = self.request.headers.get("Authorization") or ""
            detail = (
                "missing bearer token"
                if not header.lower().startswith("bearer ") or not header[7:].strip()
                else "invalid api key"
            )
            self.answer(401, problem(401, detail))
            return None
        if writes and read_only:
            self.answer(403, problem(403, "access denied"))
            return None
        return user, fault

    async def apply_fault(self, fault: Fault) -> bool:
        """Delay, or answer in the fault's place; True when answered."""
        if fault.delay_s:
            await asyncio.sleep(fault.delay_s)
        if not fault.status:
            return False
        status = fault.status
        if status == 429:
            retry = str(fault.retry_after if fault.retry_after is not None else 1)
            body = problem(429, "rate limit exceeded for the minute window")
            self.answer(429, body, {"Retry-After": retry})
        elif status in (502, 503, 504):
            self.answer(status, edge_error_page(status))
        else:
            self.answer(status, problem(status, HTTPStatus(status).phrase.lower()))
        return True

    def find_pod(self, user: str, pod_id: str) -> FakePod | None:
        pod = self.fake.pods.get(pod_id)
        if pod is None or pod.owner != user:
            self.answer(404, problem(404, "pod not found"))
            return None
        return pod


class PodsHandler(RestHandler):
    async def get(self) -> None:
        begun = await self.begin("listPods")
        if begun is None:
            return
        user, fault = begun
        pods = [pod_v2(p) for p in self.fake.pods.values() if p.owner == user]
        if fault is not None and fault.after and await self.apply_fault(fault):
            return
        self.answer(200, {"pods": pods})


class PodHandler(RestHandler):
    async def get(self, pod_id: str) -> None:
        begun = await self.begin("getPod")
        if begun is None:
            return
        user, fault = begun
        pod = self.find_pod(user, pod_id)
        if pod is None:
            return
        body = pod_v2(pod)
        if fault is not None and fault.after and await self.apply_fault(fault):
            return
        self.answer(200, body)

    async def delete(self, pod_id: str) -> None:
        begun = await self.begin("deletePod", writes=True)
        if begun is None:
            return
        user, fault = begun
        pod = self.find_pod(user, pod_id)
        if pod is None:
            return
        await self.fake.terminate(pod.id)
        if fault is not None and fault.after and await self.apply_fault(fault):
            return
        self.answer(204)


class PodLogsHandler(RestHandler):
    """`GET /v2/pods/{id}/logs`: Server-Sent Events, one per line:

        id: 2026-06-01T12:02:03.123456Z/000000000007
        data: {"ts":"2026-06-01T12:02:03.123456Z","source":"container","line":"step 3"}

    First the backfill (the last `tail` lines, default 100; or the lines from `since`; or,
    with `Last-Event-ID`, the lines after that event), then lines as they come. The stream
    stays open while the pod is provisioning, starting or running and ends (the response
    completes) once its process has exited and every line is sent, or when the pod is
    stopped or terminated. A comment line (`: keep-alive`) comes every `log_heartbeat_s`
    of silence."""

    closed: asyncio.Event

    async def get(self, pod_id: str) -> None:
        self.closed = asyncio.Event()
        begun = await self.begin("getPodLogs")
        if begun is None:
            return
        user, fault = begun
        args = {name: self.get_query_argument(name) for name in self.request.query_arguments}
        params = LogRequest(args, self.request.headers.get("Last-Event-ID"))
        if params.errors:
            self.answer(400, problem(400, "request could not be processed", params.errors))
            return
        pod = self.find_pod(user, pod_id)
        if pod is None:
            return
        drop_after = fault.drop_after_events if fault is not None else None
        self.set_status(200)
        self.record.status = 200
        self.set_header("Content-Type", "text/event-stream")
        self.set_header("Cache-Control", "no-cache")
        self.set_header("Connection", "keep-alive")
        self.set_header("X-Accel-Buffering", "no")
        book = pod.logs
        pending = logs.backfill(book.lines, params.source, params.tail, params.since, params.cursor)
        seq = book.last_seq
        sent = 0
        self.fake.log_streams += 1
        try:
            await self.flush()
            if drop_after == 0:
                self.drop()
                return
            while True:
                changed = book.changed()
                finished = self.fake.pods.get(pod.id) is not pod or v2_status(pod) in TERMINAL
                pending += book.after(seq, params.source)
                seq = book.last_seq
                for line in pending:
                    self.write(f"id: {line.id}\ndata: {json.dumps(line.payload())}\n\n")
                    sent += 1
                    if drop_after is not None and sent >= drop_after:
                        await self.flush()
                        self.drop()
                        return
                pending = []
                await self.flush()
                if finished:
                    break
                if not await self.wait(changed, self.fake.log_heartbeat_s):
                    self.write(": keep-alive\n\n")
                if self.closed.is_set():
                    return
        except StreamClosedError:
            return
        finally:
            self.fake.log_streams -= 1
        with contextlib.suppress(StreamClosedError):
            await self.finish()

    async def wait(self, changed: asyncio.Event, within_s: float) -> bool:
        """Until the pod's log or state changes (True), the client leaves, or the timeout."""
        waits = [asyncio.ensure_future(changed.wait()), asyncio.ensure_future(self.closed.wait())]
        try:
            done, _ = await asyncio.wait(
                waits, timeout=within_s, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            for waiter in waits:
                waiter.cancel()
        return bool(done)

    def drop(self) -> None:
        """The connection cut mid-stream, as a proxy or network failure would: no end of the
        chunked body, just a closed socket."""
        self._auto_finish = False
        self.request.connection.stream.close()

    def on_connection_close(self) -> None:
        if hasattr(self, "closed"):
            self.closed.set()


class NotFoundHandler(RestHandler):
    def prepare(self) -> None:
        self.set_status(404)
        self.set_header("Content-Type", PROBLEM_JSON)
        self.finish(json.dumps(problem(404, "resource not found")))


def log_request(handler: web.RequestHandler) -> None:
    """The access log without the query string (an old client may put its key there)."""
    status = handler.get_status()
    level = logging.INFO if status < 400 else logging.WARNING if status < 500 else logging.ERROR
    access_log.log(
        level,
        "%d %s %s %.2fms",
        status,
        handler.request.method,
        handler.request.path,
        1000.0 * handler.request.request_time(),
    )


def routes(fake: RunPodFake) -> list:
    kwargs = {"fake": fake}
    return [
        (r"/v2/pods/?", PodsHandler, kwargs),
        (r"/v2/pods/([^/]+)/?", PodHandler, kwargs),
        (r"/v2/pods/([^/]+)/logs/?", PodLogsHandler, kwargs),
        (r"/v2/.*", NotFoundHandler, kwargs),
    ]
