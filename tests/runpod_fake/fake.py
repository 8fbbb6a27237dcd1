"""The RunPod stand-in: RunPod's GraphQL API, schema-first, over HTTP; beside it on the same
server, the part of RunPod's REST API v2 the project reads (pods and their log streams, see
rest.py and logs.py).

Every request is parsed and validated against RunPod's schema, the part of it this project
uses (runpod.graphql beside this module, RunPod's own declarations), so a query the real API
would reject is rejected here, in RunPod's shapes:

- syntax error: HTTP 400, `extensions.code` GRAPHQL_PARSE_FAILED
- unknown field or argument, wrong types: HTTP 400, GRAPHQL_VALIDATION_FAILED
- variables that do not fit their types (an unknown input field): HTTP 400, BAD_USER_INPUT
- wrong or missing key: HTTP 401 (`{"errors":[{"message":"Unauthorized"}]}`)
- a resolver's refusal (capacity, pod not found, a read-only key writing): HTTP 200 with an
  `errors` list and `data` holding null for that field, as RunPod answers.

Pods are stateful: created with desiredStatus RUNNING and `runtime` null; after
`start_delay_s` the container "runs" (runtime with uptime, GPUs and ports); `podStop` gives
EXITED, `podTerminate` removes the pod (a second terminate answers "pod not found to
terminate"). A pod's `dockerArgs` runs as a real local process on a loopback address of
its own (see runtime.py); with `startJupyter` and no dockerArgs a real jupyter-lab runs with
the JUPYTER_PASSWORD env value as its token. If the process exits by itself the pod is
EXITED. `terminateAfter` and `stopAfter` are honoured (a dead-man switch). Before the
container runs, REST v2 shows the pod PROVISIONING (the image "pulled") for the first half of
`start_delay_s` and STARTING for the second; the pod's log gets the host's lifecycle lines
(`system`) and every line its process writes to stdout or stderr (`container`).

RunPod's proxy URL for a pod port is `https://{podId}-{port}.proxy.runpod.net`; here
`proxy_url_template` (`http://{ip}:{port}`, filled from the pod's runtime port mapping)
points at the pod's address, so clients configured with it reach the real server.
"""

from __future__ import annotations

import asyncio
import codecs
import contextlib
import inspect
import json
import logging
import os
import random
import secrets
import string
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import graphql
from graphql import GraphQLError
from tornado import web
from tornado.httpserver import HTTPServer
from tornado.iostream import StreamClosedError
from tornado.netutil import bind_sockets

from . import logs as podlogs
from . import rest, runtime
from .catalog import DEFAULT_GPU_TYPES, GpuTypeSpec

log = logging.getLogger("runpod_fake")

SCHEMA_PATH = Path(__file__).resolve().with_name("runpod.graphql")
PROXY_URL_TEMPLATE = "http://{ip}:{port}"
CAPACITY_MESSAGE = (
    "There are no longer any instances available with the requested specifications. "
    "Please refresh and try again."
)
GENERIC_MESSAGE = "Something went wrong. Please try again later or contact support."
CLOUDS = ("SECURE", "COMMUNITY")


def load_schema(path: str | os.PathLike | None = None) -> graphql.GraphQLSchema:
    """RunPod's schema as SDL: `path`, else $RUNPOD_SCHEMA_PATH, else the project's own
    runpod.graphql. Another file must declare at least what the stand-in resolves."""
    path = Path(path or os.environ.get("RUNPOD_SCHEMA_PATH") or SCHEMA_PATH)
    if not path.is_file():
        raise FileNotFoundError(f"no RunPod schema at {path}")
    return graphql.build_schema(path.read_text())


def _pod_id(rng: random.Random) -> str:
    return "".join(rng.choice(string.ascii_lowercase + string.digits) for _ in range(14))


def _now_iso() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def _parse_time(value: Any) -> float | None:
    """An ISO 8601 time (DateTime or String in RunPod's inputs) as a Unix timestamp."""
    if not value:
        return None
    text = str(value).strip().replace("Z", "+00:00")
    moment = datetime.fromisoformat(text)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


POD_CREATING = ("podFindAndDeployOnDemand", "podRentInterruptable")


@dataclass
class Fault:
    """Injected trouble. Hits the next `times` requests (-1: all) whose GraphQL root field
    or REST operationId (listPods, getPod, deletePod, getPodLogs) is `field` (when None:
    any request the fault can apply to).

    status: answer with this HTTP status (500, 502, 503, 504, 429).
    delay_s: answer only after this long (a slow RunPod).
    error: answer 200 with this GraphQL error for the field: "capacity"
      (SUPPLY_CONSTRAINT), "generic" ("Something went wrong..."), or any text. GraphQL only.
    after: do all that after executing the request (the work is done, the answer lost or
      late); otherwise instead of executing it.
    drop_after_events: a log stream (getPodLogs) is cut after this many events: the
      connection closes mid-body, as a failing network or proxy would.
    slow_start_s: the pod a create request makes (podFindAndDeployOnDemand,
      podRentInterruptable) stays PROVISIONING this much longer, with no log line at all.
    vanish_after_s: the pod a create request makes is terminated by RunPod this long after
      its container starts: GraphQL and REST then answer as for a pod that is gone.
    """

    status: int | None = None
    delay_s: float = 0.0
    error: str | None = None
    field: str | None = None
    after: bool = False
    times: int = 1
    retry_after: int | None = None
    drop_after_events: int | None = None
    slow_start_s: float = 0.0
    vanish_after_s: float | None = None
    hits: int = 0

    def matches(self, fields: list[str], rest: bool = False) -> bool:
        if self.times != -1 and self.hits >= self.times:
            return False
        if self.error is not None and rest:
            return False
        if self.drop_after_events is not None and "getPodLogs" not in fields:
            return False
        if (self.slow_start_s or self.vanish_after_s is not None) and not any(
            f in POD_CREATING for f in fields
        ):
            return False
        return self.field is None or self.field in fields

    @property
    def shapes_pod(self) -> bool:
        return bool(self.slow_start_s) or self.vanish_after_s is not None

    @property
    def spent(self) -> bool:
        return self.times != -1 and self.hits >= self.times


@dataclass
class RecordedRequest:
    """One request as the stand-in saw it (for tests to assert on). No headers kept."""

    operation_name: str | None
    fields: list[str]
    query: str
    variables: dict[str, Any]
    authorized: bool
    status: int = 0
    error_codes: list[str] = field(default_factory=list)
    error_messages: list[str] = field(default_factory=list)


@dataclass
class FakePod:
    id: str
    name: str
    owner: str
    image_name: str
    gpu_type: GpuTypeSpec
    gpu_count: int
    cloud_type: str
    pod_type: str  # RESERVED (on demand) | INTERRUPTABLE (spot)
    cost_per_hr: float
    input: dict[str, Any] = field(repr=False)
    env: dict[str, str] = field(default_factory=dict, repr=False)
    machine_id: str = ""
    created_at: str = field(default_factory=_now_iso)
    desired_status: str = "RUNNING"
    last_status_change: str = ""
    started_at: float | None = None  # the container runs since (runtime is non-null)
    container: runtime.Container | None = field(default=None, repr=False)
    # The last container's process and address, kept after the pod stops (for tests).
    last_process: asyncio.subprocess.Process | None = field(default=None, repr=False)
    last_address: str | None = None
    exit_code: int | None = None
    terminate_at: float | None = None
    stop_at: float | None = None
    holds_gpus: bool = True
    gpu_ids: list[str] = field(default_factory=list)
    start_task: asyncio.Task | None = field(default=None, repr=False)
    history: list[str] = field(default_factory=list)
    # What REST v2 adds: the log, the phase before the container runs (PROVISIONING,
    # STARTING), a container that could not start (ERROR), and faults given at creation.
    logs: podlogs.LogBook = field(default_factory=podlogs.LogBook, repr=False)
    phase: str = "PROVISIONING"
    start_failed: bool = False
    slow_start_s: float = 0.0
    vanish_after_s: float | None = None

    def set_status(self, status: str, why: str) -> None:
        self.desired_status = status
        self.last_status_change = f"{why}: {time.strftime('%a %b %d %Y %H:%M:%S GMT+0000')}"
        self.history.append(status)
        self.logs.poke()

    def set_phase(self, phase: str) -> None:
        self.phase = phase
        self.logs.poke()

    def system_line(self, line: str) -> None:
        self.logs.append("system", line)

    @property
    def address(self) -> str | None:
        return self.container.address if self.container else None

    @property
    def process(self) -> asyncio.subprocess.Process | None:
        return self.container.process if self.container else None

    def runtime_ports(self) -> list[dict[str, Any]]:
        if self.container is None:
            return []
        ports = []
        for number, kind in runtime.parse_ports(self.input.get("ports")):
            if kind == "tcp":
                public = self.container.public_ports.get(number)
                if public is None:
                    continue
                ports.append(
                    {
                        "ip": runtime.PUBLIC_IP,
                        "isIpPublic": True,
                        "privatePort": number,
                        "publicPort": public,
                        "type": "tcp",
                    }
                )
            else:
                ports.append(
                    {
                        "ip": self.container.address,
                        "isIpPublic": False,
                        "privatePort": number,
                        "publicPort": number,
                        "type": "http",
                    }
                )
        return ports

    def to_graphql(self) -> dict[str, Any]:
        running = self.started_at is not None and self.desired_status == "RUNNING"
        pod_runtime = None
        if running:
            pod_runtime = {
                "uptimeInSeconds": int(time.time() - (self.started_at or time.time())),
                "ports": self.runtime_ports(),
                "gpus": [
                    {"id": gpu_id, "gpuUtilPercent": 0, "memoryUtilPercent": 0}
                    for gpu_id in self.gpu_ids
                ],
                "container": {"cpuPercent": 0, "memoryPercent": 1},
            }
        return {
            "id": self.id,
            "name": self.name,
            "desiredStatus": self.desired_status,
            "costPerHr": self.cost_per_hr,
            "adjustedCostPerHr": self.cost_per_hr,
            "costMultiplier": 1.0,
            "imageName": self.image_name,
            "gpuCount": self.gpu_count,
            "podType": self.pod_type,
            "machineId": self.machine_id,
            "env": [f"{k}={v}" for k, v in self.env.items()],
            "dockerArgs": self.input.get("dockerArgs") or "",
            "ports": self.input.get("ports"),
            "containerDiskInGb": self.input.get("containerDiskInGb", 20),
            "volumeInGb": float(self.input.get("volumeInGb", 0) or 0),
            "volumeMountPath": self.input.get("volumeMountPath", "/workspace"),
            "memoryInGb": 62.0 * self.gpu_count,
            "vcpuCount": 8.0 * self.gpu_count,
            "gpuPowerLimitPercent": 100,
            "volumeEncrypted": False,
            "locked": False,
            "gpus": [{"id": gpu_id, "podId": self.id} for gpu_id in self.gpu_ids],
            "createdAt": self.created_at,
            "lastStatusChange": self.last_status_change,
            "uptimeSeconds": pod_runtime["uptimeInSeconds"] if pod_runtime else 0,
            "lastStartedAt": self.created_at,
            "machineType": "GPU",
            "machine": {
                "id": self.machine_id,
                "gpuDisplayName": self.gpu_type.display_name,
                "gpuTypeId": self.gpu_type.id,
                "podHostId": f"{self.id}-{self.machine_id[:8]}",
                "secureCloud": self.cloud_type == "SECURE",
                "supportPublicIp": bool(self.input.get("supportPublicIp")),
                "location": "CA" if self.cloud_type == "SECURE" else "US",
            },
            "runtime": pod_runtime,
        }


class _RequestFailed(Exception):
    def __init__(self, status: int, body: Any, headers: dict[str, str] | None = None):
        super().__init__(status)
        self.status = status
        self.body = body
        self.headers = headers or {}


class RunPodFake:
    """The stand-in. `await fake.start()`, point a client at `fake.url` with `fake.api_key`
    (see `fake.env()`), `await fake.stop()` (or `async with RunPodFake() as fake`)."""

    def __init__(
        self,
        *,
        api_key: str | None = None,
        gpu_types: Iterable[GpuTypeSpec] = DEFAULT_GPU_TYPES,
        capacity: int = 4,
        start_delay_s: float = 0.2,
        run_processes: bool = True,
        command_hook: Callable[[list[str], dict[str, str], FakePod], list[str]] | None = None,
        schema_path: str | os.PathLike | None = None,
        seed: int | None = None,
    ) -> None:
        self.schema = load_schema(schema_path)
        self._wire(self.schema)
        self.api_key = api_key or "rpa_" + secrets.token_hex(20).upper()
        self.keys: dict[str, tuple[str, bool]] = {self.api_key: ("user_fake_1", False)}
        self.gpu_types = {spec.id: spec for spec in gpu_types}
        self.capacity: dict[tuple[str, str], int] = {}
        for spec in self.gpu_types.values():
            for cloud in CLOUDS:
                if spec.price(cloud) is not None:
                    self.capacity[(spec.id, cloud)] = capacity
        self.start_delay_s = start_delay_s
        self.run_processes = run_processes
        self.command_hook = command_hook
        self.proxy_url_template = PROXY_URL_TEMPLATE
        self.pods: dict[str, FakePod] = {}
        self.terminated: dict[str, FakePod] = {}
        self.requests: list[RecordedRequest] = []
        # Tests that send invalid requests on purpose set this; the pytest fixture fails a
        # test in which any other request was rejected as invalid (HTTP 400).
        self.allow_invalid = False
        self.faults: list[Fault] = []
        # Seconds of silence after which a log stream sends an SSE comment.
        self.log_heartbeat_s = 15.0
        self.log_streams = 0  # log streams open now
        self.rng = random.Random(seed)
        self.addresses = runtime.AddressPool(self.rng)
        self.host = "127.0.0.1"
        self.port = 0
        self.server: HTTPServer | None = None
        self._timer: asyncio.Task | None = None
        self._tasks: set[asyncio.Task] = set()

    # -- lifecycle ---------------------------------------------------------------

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/graphql"

    @property
    def rest_url(self) -> str:
        """REST v2's base URL, as `https://api.runpod.io/v2` is RunPod's."""
        return f"http://{self.host}:{self.port}/v2"

    def env(self) -> dict[str, str]:
        """The environment a client (or `thinkube cloud`) needs to use this stand-in."""
        return {
            "RUNPOD_API_URL": self.url,
            "RUNPOD_REST_URL": self.rest_url,
            "RUNPOD_API_KEY": self.api_key,
            "RUNPOD_PROXY_URL_TEMPLATE": self.proxy_url_template,
        }

    async def start(self, port: int = 0, host: str = "127.0.0.1") -> RunPodFake:
        self.host = host
        app = web.Application(
            [(r"/graphql", GraphQLHandler, {"fake": self}), *rest.routes(self)],
            log_function=rest.log_request,
        )
        self.server = HTTPServer(app, idle_connection_timeout=300)
        sockets = bind_sockets(port, host)
        self.port = sockets[0].getsockname()[1]
        self.server.add_sockets(sockets)
        self._timer = asyncio.ensure_future(self._dead_man_switches())
        return self

    async def stop(self) -> None:
        if self.server is not None:
            self.server.stop()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.server.close_all_connections(), 5)
            self.server = None
        if self._timer is not None:
            self._timer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._timer
        for pod in list(self.pods.values()):
            await self._halt(pod)
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    async def __aenter__(self) -> RunPodFake:
        return await self.start()

    async def __aexit__(self, *exc_info: Any) -> None:
        await self.stop()

    def _spawn(self, coro) -> asyncio.Task:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    # -- knobs for tests ---------------------------------------------------------

    def add_key(self, key: str, user: str = "user_fake_2", read_only: bool = False) -> None:
        """Another API key (another account, or a read-only key of one)."""
        self.keys[key] = (user, read_only)

    def set_capacity(self, gpu_type_id: str, count: int, cloud_type: str | None = None) -> None:
        """How many more GPUs of this type can be rented (per cloud; both when None)."""
        if gpu_type_id not in self.gpu_types:
            raise KeyError(gpu_type_id)
        for cloud in [cloud_type] if cloud_type else CLOUDS:
            if self.gpu_types[gpu_type_id].price(cloud) is not None:
                self.capacity[(gpu_type_id, cloud)] = count

    def inject(self, **kwargs: Any) -> Fault:
        fault = Fault(**kwargs)
        self.faults.append(fault)
        return fault

    def take_fault(self, fields: list[str], rest: bool = False) -> Fault | None:
        """The first fault that applies to this request, counted as hit."""
        fault = next((f for f in self.faults if f.matches(fields, rest)), None)
        if fault is not None:
            fault.hits += 1
        return fault

    async def vanish(self, pod_id: str) -> None:
        """RunPod ends the pod on its own (a host failure, a spot reclaim, the balance): it
        is terminated, and every API answers as for a pod that is gone."""
        pod = self.pods[pod_id]
        if pod.desired_status == "TERMINATED":
            return
        pod.set_status("TERMINATED", "Terminated by Runpod")
        await self._halt(pod)
        self.terminated[pod_id] = pod
        self.pods.pop(pod_id, None)
        log.info("pod %s vanished", pod_id)

    def log_lines(self, pod_id: str, source: str | None = None) -> list[str]:
        """The pod's log lines as REST v2 serves them (one source, or both)."""
        return [
            entry.line
            for entry in self.pod(pod_id).logs.lines
            if source is None or entry.source == source
        ]

    def pod(self, pod_id: str) -> FakePod:
        return self.pods.get(pod_id) or self.terminated[pod_id]

    def proxy_url(self, pod_id: str, port: int) -> str:
        pod = self.pod(pod_id)
        if pod.address is None:
            raise LookupError(f"pod {pod_id} is not running")
        return self.proxy_url_template.format(ip=pod.address, port=port, pod_id=pod_id)

    def output(self, pod_id: str) -> str:
        pod = self.pod(pod_id)
        return pod.container.text() if pod.container else ""

    def requests_for(self, field_name: str) -> list[RecordedRequest]:
        return [r for r in self.requests if field_name in r.fields]

    def invalid_requests(self) -> list[RecordedRequest]:
        """Requests rejected as invalid (HTTP 400): the real API would have refused them."""
        return [r for r in self.requests if r.status == 400]

    # -- HTTP --------------------------------------------------------------------

    async def handle(self, body: bytes, authorization: str | None, query_key: str | None):
        """One GraphQL request: (status, json body, headers)."""
        try:
            payload = json.loads(body or b"{}")
        except ValueError:
            return 400, _error("POST body sent invalid JSON.", "BAD_REQUEST"), {}
        if not isinstance(payload, dict) or not isinstance(payload.get("query"), str):
            return 400, _error("POST body must contain a query string.", "BAD_REQUEST"), {}
        query = payload["query"]
        variables = payload.get("variables") or {}
        operation_name = payload.get("operationName")
        user, read_only = self._authenticate(authorization, query_key)
        record = RecordedRequest(operation_name, [], query, variables, user is not None)
        self.requests.append(record)
        try:
            status, result, headers = await self._handle(
                record, query, variables, operation_name, user, read_only
            )
        except _RequestFailed as failed:
            status, result, headers = failed.status, failed.body, failed.headers
        record.status = status
        if isinstance(result, dict):
            for error in result.get("errors") or []:
                record.error_codes.append((error.get("extensions") or {}).get("code") or "")
                record.error_messages.append(error.get("message") or "")
        return status, result, headers

    def authenticate_rest(self, authorization: str | None):
        """REST v2 takes the key as a bearer token only."""
        return self._authenticate(authorization, None)

    def _authenticate(self, authorization: str | None, query_key: str | None):
        key = None
        if authorization and authorization.lower().startswith("bearer "):
            key = authorization[7:].strip()
        elif query_key:
            key = query_key
        if key and key in self.keys:
            return self.keys[key]
        return None, False

    async def _handle(self, record, query, variables, operation_name, user, read_only):
        try:
            document = graphql.parse(query)
        except GraphQLError as err:
            raise _RequestFailed(400, _error(err.message, "GRAPHQL_PARSE_FAILED", err)) from None
        record.fields = _root_fields(document, operation_name)
        fault = self.take_fault(record.fields)
        if fault is not None:
            if not fault.after:
                answer = await self._apply(fault, record)
                if answer is not None:
                    return answer
        if user is None:
            raise _RequestFailed(401, {"errors": [{"message": "Unauthorized"}]})
        errors = graphql.validate(self.schema, document)
        if errors:
            raise _RequestFailed(
                400,
                {"errors": [_format(e, "GRAPHQL_VALIDATION_FAILED") for e in errors]},
            )
        context = {
            "user": user,
            "read_only": read_only,
            "creation_fault": fault if fault is not None and fault.shapes_pod else None,
        }
        result = graphql.execute(
            self.schema,
            document,
            variable_values=variables,
            operation_name=operation_name,
            context_value=context,
        )
        if inspect.isawaitable(result):
            result = await result
        if result.errors and result.data is None and all(e.path is None for e in result.errors):
            # Variables that do not fit their types, or no such operation.
            raise _RequestFailed(
                400, {"errors": [_format(e, "BAD_USER_INPUT") for e in result.errors]}
            )
        body: dict[str, Any] = {}
        if result.errors:
            body["errors"] = [_format(e, None, keep_locations=False) for e in result.errors]
        body["data"] = result.data
        if fault is not None and fault.after:
            answer = await self._apply(fault, record)
            if answer is not None:
                return answer
        return 200, body, {}

    async def _apply(self, fault: Fault, record: RecordedRequest):
        """The fault's answer (or an exception) in place of the real one; None: no change."""
        if fault.delay_s:
            await asyncio.sleep(fault.delay_s)
        if fault.status:
            raise _failure(fault)
        if fault.error:
            field_name = fault.field or (record.fields[0] if record.fields else "unknown")
            return 200, _fault_error(fault.error, field_name), {}
        return None

    # -- resolvers ---------------------------------------------------------------

    def _wire(self, schema: graphql.GraphQLSchema) -> None:
        query = schema.query_type
        mutation = schema.mutation_type
        assert query is not None and mutation is not None
        query.fields["gpuTypes"].resolve = self._gpu_types
        query.fields["myself"].resolve = self._myself
        query.fields["pod"].resolve = self._get_pod
        gpu_type = schema.get_type("GpuType")
        gpu_type.fields["lowestPrice"].resolve = self._lowest_price  # type: ignore[union-attr]
        mutation.fields["podFindAndDeployOnDemand"].resolve = self._deploy_on_demand
        mutation.fields["podRentInterruptable"].resolve = self._rent_interruptable
        mutation.fields["podTerminate"].resolve = self._terminate
        mutation.fields["podStop"].resolve = self._stop
        mutation.fields["podResume"].resolve = self._resume
        # A fuller schema (--schema) declares more mutations: refuse them plainly.
        for mutation_field in mutation.fields.values():
            if mutation_field.resolve is None:
                mutation_field.resolve = self._not_supported

    def _not_supported(self, _root, info, **_args):
        raise GraphQLError(f"the RunPod stand-in does not implement {info.field_name}")

    def _gpu_type_dict(self, spec: GpuTypeSpec) -> dict[str, Any]:
        return {
            "_spec": spec,
            "id": spec.id,
            "displayName": spec.display_name,
            "manufacturer": spec.manufacturer,
            "memoryInGb": spec.memory_gb,
            "secureCloud": spec.secure_cloud,
            "communityCloud": spec.community_cloud,
            "securePrice": spec.secure_price,
            "communityPrice": spec.community_price,
            "secureSpotPrice": spec.secure_spot_price,
            "communitySpotPrice": spec.community_spot_price,
            "maxGpuCount": spec.max_gpu_count,
            "maxGpuCountSecureCloud": spec.max_gpu_count if spec.secure_cloud else 0,
            "maxGpuCountCommunityCloud": spec.max_gpu_count if spec.community_cloud else 0,
            "minPodGpuCount": 1,
        }

    def _gpu_types(self, _root, _info, input=None):
        specs = list(self.gpu_types.values())
        if input:
            wanted = set(input.get("ids") or []) | ({input["id"]} if input.get("id") else set())
            if wanted:
                specs = [s for s in specs if s.id in wanted]
        return [self._gpu_type_dict(s) for s in specs]

    def stock(self, gpu_type_id: str, cloud: str, gpu_count: int = 1) -> str | None:
        free = self.capacity.get((gpu_type_id, cloud), 0)
        if free < gpu_count:
            return None
        if free >= 4 * gpu_count:
            return "High"
        if free >= 2 * gpu_count:
            return "Medium"
        return "Low"

    def _lowest_price(self, gpu_type, _info, input=None):
        spec: GpuTypeSpec = gpu_type["_spec"]
        input = input or {}
        gpu_count = input.get("gpuCount") or 1
        secure = input.get("secureCloud")
        clouds = ["SECURE"] if secure is True else ["COMMUNITY"] if secure is False else CLOUDS
        best = None
        for cloud in clouds:
            price = spec.price(cloud)
            if price is None:
                continue
            candidate = {
                "gpuName": spec.display_name,
                "gpuTypeId": spec.id,
                "uninterruptablePrice": price,
                "minimumBidPrice": spec.spot_price(cloud),
                "stockStatus": self.stock(spec.id, cloud, gpu_count),
                "minMemory": 31,
                "minVcpu": 4,
                "totalCount": 20,
                "rentedCount": 20 - self.capacity.get((spec.id, cloud), 0),
                "supportPublicIp": True,
            }
            if best is None or price < best["uninterruptablePrice"]:
                best = candidate
        if best is None:
            return {
                "gpuName": spec.display_name,
                "gpuTypeId": spec.id,
                "uninterruptablePrice": None,
                "minimumBidPrice": None,
                "stockStatus": None,
            }
        return best

    def _myself(self, _root, info):
        user = info.context["user"]
        return {
            "id": user,
            "email": f"{user}@example.com",
            "pods": [p.to_graphql() for p in self.pods.values() if p.owner == user],
        }

    def _get_pod(self, _root, info, input=None):
        pod = self.pods.get((input or {}).get("podId", ""))
        if pod is None or pod.owner != info.context["user"]:
            return None
        return pod.to_graphql()

    def _writable(self, info) -> None:
        if info.context["read_only"]:
            raise GraphQLError("Unauthorized", extensions={"code": "UNAUTHORIZED"})

    def _deploy_on_demand(self, _root, info, input=None):
        self._writable(info)
        input = dict(input or {})
        ids = list(input.get("gpuTypeIdList") or []) or (
            [input["gpuTypeId"]] if input.get("gpuTypeId") else []
        )
        return self._deploy(info, input, ids, spot=False)

    def _rent_interruptable(self, _root, info, input):
        self._writable(info)
        input = dict(input or {})
        ids = [input["gpuTypeId"]] if input.get("gpuTypeId") else []
        return self._deploy(info, input, ids, spot=True)

    def _deploy(self, info, input: dict, ids: list[str], spot: bool):
        if not ids:
            raise GraphQLError("gpuTypeId or gpuTypeIdList is required")
        if not input.get("imageName") and not input.get("templateId"):
            raise GraphQLError("imageName is required")
        unknown = [i for i in ids if i not in self.gpu_types]
        if unknown:
            raise GraphQLError(f"Invalid gpuTypeId: {unknown[0]}")
        gpu_count = input.get("gpuCount") or 1
        cloud_type = input.get("cloudType") or "ALL"
        clouds = CLOUDS if cloud_type == "ALL" else (cloud_type,)
        chosen = None
        for gpu_id in ids:
            spec = self.gpu_types[gpu_id]
            # With cloudType ALL, the cheaper cloud that has the GPU.
            for cloud in sorted(clouds, key=lambda c: spec.price(c) or float("inf")):
                if spec.price(cloud) is None:
                    continue
                if spot and spec.spot_price(cloud) is None:
                    continue
                if self.capacity.get((gpu_id, cloud), 0) >= gpu_count:
                    chosen = (spec, cloud)
                    break
            if chosen:
                break
        if chosen is None:
            raise GraphQLError(CAPACITY_MESSAGE, extensions={"code": "SUPPLY_CONSTRAINT"})
        spec, cloud = chosen
        if spot:
            bid = input.get("bidPerGpu")
            minimum = spec.spot_price(cloud) or 0.0
            if bid is None or bid < minimum:
                raise GraphQLError(
                    f"Your bid price is lower than the minimum bid price of ${minimum:.3f}/hr "
                    "for this GPU. Please increase your bid and try again."
                )
            cost = round(bid * gpu_count, 4)
        else:
            cost = round((spec.price(cloud) or 0.0) * gpu_count, 4)
        self.capacity[(spec.id, cloud)] -= gpu_count
        env = {}
        for entry in input.get("env") or []:
            env[entry["key"]] = entry["value"]
        pod = FakePod(
            id=_pod_id(self.rng),
            name=input.get("name") or f"{spec.display_name.lower().replace(' ', '_')}_pod",
            owner=info.context["user"],
            image_name=input.get("imageName") or "",
            gpu_type=spec,
            gpu_count=gpu_count,
            cloud_type=cloud,
            pod_type="INTERRUPTABLE" if spot else "RESERVED",
            cost_per_hr=cost,
            input=input,
            env=env,
            machine_id=uuid.UUID(int=self.rng.getrandbits(128)).hex[:12],
            terminate_at=_parse_time(input.get("terminateAfter")),
            stop_at=_parse_time(input.get("stopAfter")),
            gpu_ids=[f"GPU-{uuid.UUID(int=self.rng.getrandbits(128))}" for _ in range(gpu_count)],
        )
        creation_fault = info.context.get("creation_fault")
        if creation_fault is not None:
            pod.slow_start_s = creation_fault.slow_start_s
            pod.vanish_after_s = creation_fault.vanish_after_s
        pod.set_status("RUNNING", "Rented by User")
        self.pods[pod.id] = pod
        pod.start_task = self._spawn(self._start_container(pod))
        log.info("pod %s (%s) created: %s x%d %s", pod.id, pod.name, spec.id, gpu_count, cloud)
        return pod.to_graphql()

    async def _terminate(self, _root, info, input):
        self._writable(info)
        pod = self.pods.get(input["podId"])
        if pod is None or pod.owner != info.context["user"]:
            raise GraphQLError("pod not found to terminate")
        await self.terminate(pod.id)
        return None

    async def _stop(self, _root, info, input):
        self._writable(info)
        pod = self.pods.get(input["podId"])
        if pod is None or pod.owner != info.context["user"]:
            raise GraphQLError("pod not found to stop")
        await self.stop_pod(pod.id)
        return pod.to_graphql()

    def _resume(self, _root, info, input):
        self._writable(info)
        pod = self.pods.get(input["podId"])
        if pod is None or pod.owner != info.context["user"]:
            raise GraphQLError("pod not found to resume")
        if pod.desired_status == "RUNNING":
            return pod.to_graphql()
        key = (pod.gpu_type.id, pod.cloud_type)
        if self.capacity.get(key, 0) < pod.gpu_count:
            raise GraphQLError(CAPACITY_MESSAGE, extensions={"code": "SUPPLY_CONSTRAINT"})
        self.capacity[key] -= pod.gpu_count
        pod.holds_gpus = True
        pod.exit_code = None
        pod.start_failed = False
        pod.phase = "PROVISIONING"
        pod.set_status("RUNNING", "Resumed by User")
        pod.start_task = self._spawn(self._start_container(pod))
        return pod.to_graphql()

    # -- pod lifecycle -----------------------------------------------------------

    async def _start_container(self, pod: FakePod) -> None:
        # PROVISIONING (the image is pulled) for the first half of the start delay, STARTING
        # (the container is made) for the second; a slow-start fault adds silence before.
        pod.set_phase("PROVISIONING")
        if pod.slow_start_s:
            await asyncio.sleep(pod.slow_start_s)
        if pod.desired_status != "RUNNING" or pod.id not in self.pods:
            return
        image = pod.image_name or "runpod/base:latest"
        repository, _, tag = image.rpartition(":")
        if not repository or "/" in tag:
            repository, tag = image, "latest"
        digest = uuid.UUID(int=self.rng.getrandbits(128)).hex * 2
        pod.system_line(f"{tag} Pulling from {repository}")
        pod.system_line(f"Digest: sha256:{digest}")
        pod.system_line(f"Status: Image is up to date for {image}")
        await asyncio.sleep(self.start_delay_s / 2)
        if pod.desired_status != "RUNNING" or pod.id not in self.pods:
            return
        pod.set_phase("STARTING")
        pod.system_line(f"create container {image}")
        await asyncio.sleep(self.start_delay_s / 2)
        if pod.desired_status != "RUNNING" or pod.id not in self.pods:
            return
        pod.system_line("start container")
        address = self.addresses.take()
        container = runtime.Container(address=address, workdir=runtime.new_workdir(pod.id))
        pod.container = container
        pod.last_address = address
        try:
            for number, kind in runtime.parse_ports(pod.input.get("ports")):
                if kind == "tcp":
                    server = await runtime.open_forwarder(address, number)
                    container.forwarders[number] = server
                    container.public_ports[number] = server.sockets[0].getsockname()[1]
            argv, env = self._command(pod, container)
            if argv and self.run_processes:
                if self.command_hook is not None:
                    argv = self.command_hook(argv, env, pod)
                process = await runtime.start_process(container, argv, env)
                pod.last_process = process
                container.follow_task = self._spawn(self._follow(pod, container, process))
        except (OSError, ValueError) as err:
            container.output.append(f"runpod-fake: container failed to start: {err}\n")
            pod.system_line(f"error starting container: {err}")
            log.warning("pod %s: container failed to start: %s", pod.id, err)
            pod.exit_code = 127
            pod.start_failed = True
            pod.set_status("EXITED", "Exited by Runpod")
            await self._release(pod)
            return
        pod.started_at = time.time()
        pod.set_phase("RUNNING")
        if pod.vanish_after_s is not None:
            self._spawn(self._vanish_later(pod, pod.vanish_after_s))
        log.info("pod %s running on %s", pod.id, address)

    async def _vanish_later(self, pod: FakePod, delay_s: float) -> None:
        await asyncio.sleep(delay_s)
        if self.pods.get(pod.id) is pod:
            await self.vanish(pod.id)

    def _command(self, pod: FakePod, container: runtime.Container):
        env = {k: os.environ[k] for k in runtime.HOST_ENV if k in os.environ}
        env["PATH"] = runtime.venv_path()
        home = container.workdir
        env.update(
            HOME=home,
            JUPYTER_CONFIG_DIR=os.path.join(home, ".jupyter"),
            JUPYTER_DATA_DIR=os.path.join(home, ".local/share/jupyter"),
            JUPYTER_RUNTIME_DIR=os.path.join(home, ".local/share/jupyter/runtime"),
            IPYTHONDIR=os.path.join(home, ".ipython"),
            RUNPOD_POD_ID=pod.id,
            RUNPOD_POD_HOSTNAME=f"{pod.id}-{pod.machine_id[:8]}",
            RUNPOD_GPU_COUNT=str(pod.gpu_count),
            RUNPOD_CPU_COUNT=str(8 * pod.gpu_count),
            RUNPOD_PUBLIC_IP=runtime.PUBLIC_IP,
            PYTHONUNBUFFERED="1",
        )
        for private, public in container.public_ports.items():
            env[f"RUNPOD_TCP_PORT_{private}"] = str(public)
        env.update({k: runtime.rewrite_binds(v, container.address) for k, v in pod.env.items()})
        docker_args = (pod.input.get("dockerArgs") or "").strip()
        if docker_args:
            return runtime.docker_args_argv(docker_args, container.address), env
        if pod.input.get("startJupyter"):
            env["JUPYTER_TOKEN"] = pod.env.get("JUPYTER_PASSWORD", "")
            return runtime.jupyter_command(container.address, 8888, container.workdir), env
        return [], env

    async def _follow(
        self, pod: FakePod, container: runtime.Container, process: asyncio.subprocess.Process
    ) -> None:
        assert process.stdout is not None
        # stderr is on the same pipe: the lines come interleaved as the process wrote them.
        lines = podlogs.LineSplitter()
        text = codecs.getincrementaldecoder("utf-8")(errors="replace")
        while data := await process.stdout.read(65536):
            container.output.append(text.decode(data))
            for line in lines.feed(data):
                pod.logs.append("container", line)
        container.output.append(text.decode(b"", final=True))
        for line in lines.finish():
            pod.logs.append("container", line)
        code = await process.wait()
        if pod.container is container and pod.desired_status == "RUNNING":
            log.info("pod %s: its process exited with %s", pod.id, code)
            pod.exit_code = code
            pod.set_status("EXITED", "Exited by Runpod")
            pod.started_at = None

    async def _halt(self, pod: FakePod) -> None:
        if pod.start_task is not None and not pod.start_task.done():
            pod.start_task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await pod.start_task
        container, pod.container = pod.container, None
        pod.started_at = None
        if container is not None:
            await runtime.close_container(container)
            self.addresses.give_back(container.address)
        await self._release(pod)

    async def _release(self, pod: FakePod) -> None:
        if pod.holds_gpus:
            pod.holds_gpus = False
            key = (pod.gpu_type.id, pod.cloud_type)
            self.capacity[key] = self.capacity.get(key, 0) + pod.gpu_count

    async def stop_pod(self, pod_id: str) -> None:
        pod = self.pods[pod_id]
        pod.system_line("stop container")
        pod.set_status("EXITED", "Stopped by User")
        await self._halt(pod)

    async def terminate(self, pod_id: str) -> None:
        # Listed as TERMINATED while its process ends, then gone; always in one of the two.
        pod = self.pods[pod_id]
        if pod.desired_status == "TERMINATED":
            return  # already on its way
        pod.set_status("TERMINATED", "Terminated by User")
        await self._halt(pod)
        self.terminated[pod_id] = pod
        self.pods.pop(pod_id, None)
        log.info("pod %s terminated", pod_id)

    async def _dead_man_switches(self) -> None:
        while True:
            await asyncio.sleep(0.1)
            now = time.time()
            for pod in list(self.pods.values()):
                if pod.id not in self.pods or pod.desired_status == "TERMINATED":
                    continue
                try:
                    if pod.terminate_at is not None and now >= pod.terminate_at:
                        log.info("pod %s reached terminateAfter", pod.id)
                        await self.terminate(pod.id)
                    elif (
                        pod.stop_at is not None
                        and now >= pod.stop_at
                        and pod.desired_status == "RUNNING"
                    ):
                        log.info("pod %s reached stopAfter", pod.id)
                        await self.stop_pod(pod.id)
                except Exception:
                    log.exception("pod %s: the dead-man switch failed", pod.id)


class GraphQLHandler(web.RequestHandler):
    def initialize(self, fake: RunPodFake) -> None:
        self.fake = fake

    def check_xsrf_cookie(self) -> None:
        pass

    async def post(self) -> None:
        status, body, headers = await self.fake.handle(
            self.request.body,
            self.request.headers.get("Authorization"),
            self.get_query_argument("api_key", None),
        )
        self.set_status(status)
        for name, value in headers.items():
            self.set_header(name, value)
        if isinstance(body, str):
            self.set_header("Content-Type", "text/html; charset=UTF-8")
            self.write(body)
        else:
            self.set_header("Content-Type", "application/json; charset=utf-8")
            self.write(json.dumps(body))
        with contextlib.suppress(StreamClosedError):
            await self.finish()

    def get(self) -> None:
        self.set_status(400)
        self.set_header("Content-Type", "application/json; charset=utf-8")
        self.write(json.dumps(_error("GET query missing.", "BAD_REQUEST")))


def _root_fields(document: graphql.DocumentNode, operation_name: str | None) -> list[str]:
    for definition in document.definitions:
        if isinstance(definition, graphql.OperationDefinitionNode) and (
            operation_name is None or (definition.name and definition.name.value == operation_name)
        ):
            return [
                s.name.value
                for s in definition.selection_set.selections
                if isinstance(s, graphql.FieldNode)
            ]
    return []


def _format(error: GraphQLError, code: str | None, keep_locations: bool = True) -> dict[str, Any]:
    formatted: dict[str, Any] = {"message": error.message}
    if keep_locations and error.locations:
        formatted["locations"] = [
            {"line": loc.line, "column": loc.column} for loc in error.locations
        ]
    if error.path:
        formatted["path"] = list(error.path)
    extensions = dict(error.extensions or {})
    if code:
        extensions.setdefault("code", code)
    if extensions:
        formatted["extensions"] = extensions
    return formatted


def _error(message: str, code: str, error: GraphQLError | None = None) -> dict[str, Any]:
    if error is not None:
        return {"errors": [_format(error, code)]}
    return {"errors": [{"message": message, "extensions": {"code": code}}]}


def _fault_error(kind: str, field_name: str) -> dict[str, Any]:
    if kind == "capacity":
        error = {
            "message": CAPACITY_MESSAGE,
            "path": [field_name],
            "extensions": {"code": "SUPPLY_CONSTRAINT"},
        }
    elif kind == "generic":
        error = {"message": GENERIC_MESSAGE, "path": [field_name]}
    else:
        error = {"message": kind, "path": [field_name]}
    return {"errors": [error], "data": {field_name: None}}


def _failure(fault: Fault) -> _RequestFailed:
    status = fault.status or 500
    if status == 429:
        return _RequestFailed(
            429,
            {"errors": [{"message": "Too many requests, please try again later."}]},
            {"Retry-After": str(fault.retry_after if fault.retry_after is not None else 1)},
        )
    if status == 500:
        return _RequestFailed(500, {"errors": [{"message": GENERIC_MESSAGE}]})
    return _RequestFailed(status, rest.edge_error_page(status))
