"""kubesim's HTTP face: the Kubernetes REST API paths, verbs and query parameters that
kubectl, kubernetes_asyncio and kubespawner use, served by tornado."""

from __future__ import annotations

import asyncio
import base64
import json
import random
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from tornado import web
from tornado.iostream import StreamClosedError

from . import logs, openapi, patch, tables
from .garbage import PROPAGATION_POLICIES
from .resources import BY_PATH, RESOURCE_TYPES, ResourceType, groups
from .selectors import SelectorError, parse_field_selector, parse_label_selector
from .store import ApiError, dumps, not_found

if TYPE_CHECKING:
    from .sim import KubeSim

KUBE_VERSION = {
    "major": "1",
    "minor": "32",
    "gitVersion": "v1.32.0-kubesim",
    "gitCommit": "kubesim",
    "gitTreeState": "clean",
    "buildDate": "2025-01-01T00:00:00Z",
    "goVersion": "go1.23.4",
    "compiler": "gc",
    "platform": "linux/amd64",
}

PATCH_TYPES = {
    "application/merge-patch+json": "merge",
    "application/strategic-merge-patch+json": "strategic",
    "application/json-patch+json": "json",
}


@dataclass
class Faults:
    """Injected trouble for reliability tests; all off by default."""

    latency_s: float = 0.0
    error_rate: float = 0.0  # fraction of requests answered with an error
    error_codes: tuple[int, ...] = (500, 429)
    seed: int | None = None
    # (method, path pattern, code): matching requests are answered with that error, e.g.
    # ("POST", r"/api/v1/namespaces/[^/]+/pods$", 500) refuses every pod create.
    refuse: list[tuple[str, str, int]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.random = random.Random(self.seed)


class BaseHandler(web.RequestHandler):
    @property
    def sim(self) -> KubeSim:
        return self.settings["sim"]

    def check_xsrf_cookie(self) -> None:  # an API server has no cookies
        pass

    async def prepare(self) -> None:
        faults: Faults = self.sim.faults
        if faults.latency_s:
            await asyncio.sleep(faults.latency_s)
        refused = next(
            (
                code
                for method, pattern, code in faults.refuse
                if method == self.request.method and re.search(pattern, self.request.path)
            ),
            None,
        )
        if refused is not None or (
            faults.error_rate and faults.random.random() < faults.error_rate
        ):
            code = refused or faults.random.choice(faults.error_codes)
            if code == 429:
                self.set_header("Retry-After", "1")
                err = ApiError(
                    429,
                    "TooManyRequests",
                    "the server has received too many requests and has asked us to try again later",
                )
            else:
                err = ApiError(code, "InternalError", "Internal error occurred: injected fault")
            self.send_status(err)
            self.sim.injected_errors += 1

    def send_json(self, body: Any, code: int = 200) -> None:
        self.set_status(code)
        self.set_header("Content-Type", "application/json")
        self.finish(body if isinstance(body, bytes) else dumps(body))

    def send_status(self, err: ApiError) -> None:
        if not self._finished:
            self.send_json(err.status(), err.code)

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        reason = {404: "NotFound", 405: "MethodNotAllowed"}.get(status_code, "InternalError")
        self.send_json(ApiError(status_code, reason, self._reason).status(), status_code)


class VersionHandler(BaseHandler):
    def get(self) -> None:
        self.send_json(KUBE_VERSION)


class CoreDiscoveryHandler(BaseHandler):
    def get(self) -> None:
        self.send_json(
            {
                "kind": "APIVersions",
                "versions": ["v1"],
                "serverAddressByClientCIDRs": [
                    {"clientCIDR": "0.0.0.0/0", "serverAddress": self.request.host}
                ],
            }
        )


def resource_list(group_version: str, types: list[ResourceType]) -> dict:
    return {
        "kind": "APIResourceList",
        "apiVersion": "v1",
        "groupVersion": group_version,
        "resources": [entry for rt in types for entry in rt.discovery_entries()],
    }


VISIBILITY_GROUP = "visibility.kueue.x-k8s.io"
VISIBILITY_VERSION = "v1beta2"


def visibility_resources() -> dict:
    """Discovery of Kueue's visibility API (an aggregated API serving pending workloads)."""
    resources = []
    for plural, kind, namespaced in (
        ("clusterqueues", "ClusterQueue", False),
        ("localqueues", "LocalQueue", True),
    ):
        resources += [
            {
                "name": plural,
                "singularName": plural[:-1],
                "namespaced": namespaced,
                "kind": kind,
                "verbs": [],
            },
            {
                "name": f"{plural}/pendingworkloads",
                "singularName": "",
                "namespaced": namespaced,
                "kind": "PendingWorkloadsSummary",
                "verbs": ["get"],
            },
        ]
    return {
        "kind": "APIResourceList",
        "apiVersion": "v1",
        "groupVersion": f"{VISIBILITY_GROUP}/{VISIBILITY_VERSION}",
        "resources": resources,
    }


def visibility_group() -> dict:
    version = {
        "groupVersion": f"{VISIBILITY_GROUP}/{VISIBILITY_VERSION}",
        "version": VISIBILITY_VERSION,
    }
    return {"name": VISIBILITY_GROUP, "versions": [version], "preferredVersion": version}


class CoreResourcesHandler(BaseHandler):
    def get(self) -> None:
        self.send_json(resource_list("v1", [rt for rt in RESOURCE_TYPES if not rt.group]))


def group_entry(name: str, types: list[ResourceType]) -> dict:
    version = {"groupVersion": f"{name}/{types[0].version}", "version": types[0].version}
    return {"name": name, "versions": [version], "preferredVersion": version}


class GroupsHandler(BaseHandler):
    def get(self) -> None:
        self.send_json(
            {
                "kind": "APIGroupList",
                "apiVersion": "v1",
                "groups": [
                    group_entry(name, types) for name, types in groups(self.sim.addons).items()
                ]
                + ([visibility_group()] if "kueue" in self.sim.addons else []),
            }
        )


class GroupHandler(BaseHandler):
    def get(self, group: str, version: str | None = None) -> None:
        if group == VISIBILITY_GROUP and "kueue" in self.sim.addons:
            if version and version != VISIBILITY_VERSION:
                raise web.HTTPError(404)
            if version:
                self.send_json(visibility_resources())
            else:
                self.send_json({"kind": "APIGroup", "apiVersion": "v1", **visibility_group()})
            return
        types = groups(self.sim.addons).get(group)
        if not types or (version and version != types[0].version):
            raise web.HTTPError(404)
        if version:
            self.send_json(resource_list(f"{group}/{version}", types))
        else:
            self.send_json({"kind": "APIGroup", "apiVersion": "v1", **group_entry(group, types)})


class OpenAPIV3Handler(BaseHandler):
    def get(self, group_version: str | None = None) -> None:
        if not group_version:
            self.send_json(openapi.root(self.sim.addons))
            return
        doc = openapi.document(group_version.strip("/"), self.sim.addons)
        if doc is None:
            raise web.HTTPError(404)
        self.send_json(doc)


class HealthHandler(BaseHandler):
    def get(self) -> None:
        self.set_header("Content-Type", "text/plain")
        self.finish("ok")


def truthy(value: str | None) -> bool:
    return (value or "").lower() in ("true", "1")


class ResourceHandler(BaseHandler):
    """Every object path: /api/v1/... and /apis/{group}/{version}/..."""

    def _route(self, group: str, version: str, rest: str) -> None:
        segments = [s for s in rest.split("/") if s]
        namespace = name = subresource = None
        if (
            len(segments) >= 3
            and segments[0] == "namespaces"
            and segments[2] not in ("status", "finalize")
        ):
            namespace, plural, *tail = segments[1:]
        else:
            plural, *tail = segments
        if tail:
            name, *tail = tail
        if tail:
            subresource = tail[0]
        rt = BY_PATH.get((group, version, plural))
        if rt is not None and rt.addon and rt.addon not in self.sim.addons:
            rt = None  # a custom resource this cluster has not installed
        if rt is None or len(tail) > 1:
            raise ApiError(404, "NotFound", "the server could not find the requested resource")
        if namespace is not None and not rt.namespaced:
            raise ApiError(404, "NotFound", "the server could not find the requested resource")
        if subresource is not None and subresource not in ("status", "binding", "log"):
            raise ApiError(404, "NotFound", "the server could not find the requested resource")
        self.rt, self.namespace, self.name, self.subresource = rt, namespace, name, subresource

    async def _dispatch(self, verb: str, group: str, version: str, rest: str) -> None:
        if self._finished:  # an injected fault answered already
            return
        try:
            self._route(group, version, rest)
            await getattr(self, f"do_{verb}")()
        except ApiError as err:
            self.send_status(err)
        except SelectorError as err:
            self.send_status(ApiError(400, "BadRequest", str(err)))

    async def get(self, *args: str) -> None:
        await self._dispatch("get", *self._gv(args))

    async def post(self, *args: str) -> None:
        await self._dispatch("post", *self._gv(args))

    async def put(self, *args: str) -> None:
        await self._dispatch("put", *self._gv(args))

    async def patch(self, *args: str) -> None:
        await self._dispatch("patch", *self._gv(args))

    async def delete(self, *args: str) -> None:
        await self._dispatch("delete", *self._gv(args))

    @staticmethod
    def _gv(args: tuple[str, ...]) -> tuple[str, str, str]:
        if len(args) == 1:  # /api/v1/<rest>
            return "", "v1", args[0]
        return args[0], args[1], args[2]

    # -- helpers ---------------------------------------------------------------

    def _body(self) -> Any:
        try:
            return json.loads(self.request.body or b"null")
        except ValueError as err:
            raise ApiError(
                400, "BadRequest", f"the body of the request was in an unknown format: {err}"
            ) from err

    def _object_body(self) -> dict:
        body = self._body()
        if not isinstance(body, dict):
            raise ApiError(400, "BadRequest", "the body of the request was in an unknown format")
        kind, api_version = body.get("kind"), body.get("apiVersion")
        if kind is not None and (
            kind != self.rt.kind or api_version not in (None, self.rt.api_version)
        ):
            raise ApiError(
                400,
                "BadRequest",
                f"the API version in the data ({api_version}) does not match the expected "
                f"API version ({self.rt.api_version})"
                if kind == self.rt.kind
                else f'{kind} in version "{self.rt.version}" cannot be handled as a {self.rt.kind}',
            )
        return body

    def _check_namespace(self, namespace: str | None) -> None:
        if namespace is None:
            return
        ns_type = BY_PATH[("", "v1", "namespaces")]
        if self.sim.store.find(ns_type, None, namespace) is None:
            raise ApiError(
                404,
                "NotFound",
                f'namespaces "{namespace}" not found',
                {"name": namespace, "kind": "namespaces"},
            )

    def _admit(self, obj: dict, new: bool = False) -> dict:
        if self.rt.kind == "Secret" and isinstance(obj.get("stringData"), dict):
            # The apiserver folds write-only stringData into data.
            obj = dict(obj)
            data = dict(obj.get("data") or {})
            for key, value in obj.pop("stringData").items():
                data[key] = base64.b64encode(str(value).encode()).decode()
            obj["data"] = data
        return self.sim.admit(self.rt, obj, new=new)

    def _dry_run(self) -> bool:
        return self.get_query_argument("dryRun", "") == "All"

    # -- verbs -----------------------------------------------------------------

    async def do_get(self) -> None:
        store = self.sim.store
        if self.name is not None:
            if self.subresource == "log":
                await self._pod_log()
                return
            if tables.wants_table(self.request.headers.get("Accept", "")):
                obj = store.get(self.rt, self.namespace, self.name)
                self.send_json(tables.table(self.rt, [obj], obj["metadata"]["resourceVersion"]))
                return
            self.send_json(store.raw(self.rt, self.namespace, self.name))
            return
        labels = parse_label_selector(self.get_query_argument("labelSelector", ""))
        fields = parse_field_selector(
            self.get_query_argument("fieldSelector", ""), self.rt.supported_fields
        )
        if truthy(self.get_query_argument("watch", None)):
            await self._watch(labels, fields)
            return
        rv = self.get_query_argument("resourceVersion", "")
        if rv not in ("", "0") and rv.isdigit() and int(rv) > store.resource_version:
            raise ApiError(
                504,
                "Timeout",
                f"Too large resource version: {rv}, current: {store.resource_version}",
            )
        limit_arg = self.get_query_argument("limit", "0")
        try:
            limit = max(0, int(limit_arg))
        except ValueError as err:
            raise ApiError(400, "BadRequest", f"invalid limit: {limit_arg}") from err
        continue_token = self.get_query_argument("continue", "")
        if rv == "0" and not continue_token and not self.sim.cached_lists_paginate:
            # Kubernetes 1.32 serves resourceVersion=0 from its watch cache, which cannot
            # paginate: the whole list comes back, whatever the limit.
            limit = 0
        items, list_rv, token, remaining = store.list(
            self.rt, self.namespace, labels, fields, limit, continue_token
        )
        if tables.wants_table(self.request.headers.get("Accept", "")):
            objects = [json.loads(item) for item in items]
            self.send_json(tables.table(self.rt, objects, str(list_rv), token))
            return
        meta: dict[str, Any] = {"resourceVersion": str(list_rv)}
        if token:
            meta["continue"] = token
            meta["remainingItemCount"] = remaining
        head = dumps(
            {"kind": f"{self.rt.kind}List", "apiVersion": self.rt.api_version, "metadata": meta}
        )
        self.send_json(head[:-1] + b',"items":[' + b",".join(items) + b"]}")

    async def _pod_log(self) -> None:
        """GET pods/{name}/log: the container's output, streamed while it runs with follow."""
        if self.rt.kind != "Pod":
            raise ApiError(404, "NotFound", "the server could not find the requested resource")
        pod = self.sim.store.get(self.rt, self.namespace, self.name)
        args = {key: self.get_query_argument(key) for key in self.request.query_arguments}
        try:
            options = logs.parse_options(args, self.name)
            container = logs.choose_container(pod, options.container)
            if not (pod.get("spec") or {}).get("nodeName"):
                # No node yet: the apiserver has no kubelet to ask and answers nothing.
                self.set_header("Content-Type", "text/plain")
                self.finish()
                return
            logs.check_container_state(pod, container, options.previous)
        except logs.LogRequestError as err:
            raise ApiError(err.code, err.reason, err.message) from None
        buffer = self.sim.kubelet.log_buffer(
            (self.namespace or "", self.name), container, options.previous
        )
        self.set_status(200)
        self.set_header("Content-Type", "text/plain")
        self._log_task = asyncio.ensure_future(self._send_log(buffer, options))
        try:
            await self._log_task
        except (asyncio.CancelledError, StreamClosedError):
            return  # the client went away
        self.finish()

    async def _send_log(self, buffer: logs.LogBuffer, options: logs.LogOptions) -> None:
        if options.follow:
            await self.flush()  # headers now: a follower may wait long for the first line
        async for chunk in logs.stream(buffer, options):
            self.write(chunk)
            if options.follow:
                await self.flush()

    def on_connection_close(self) -> None:
        task = getattr(self, "_log_task", None)
        if task is not None and not task.done():
            task.cancel()

    async def _watch(self, labels, fields) -> None:
        store = self.sim.store
        timeout = self.get_query_argument("timeoutSeconds", None)
        deadline_s = float(timeout) if timeout else self.sim.watch_max_seconds
        bookmarks = truthy(self.get_query_argument("allowWatchBookmarks", None))
        rv = self.get_query_argument("resourceVersion", "")
        self.set_status(200)
        self.set_header("Content-Type", "application/json")
        try:
            watcher = store.watch(self.rt, self.namespace, labels, fields, rv)
        except ApiError as err:
            # Watches report a too-old version as an ERROR event in a 200 stream.
            self.write(dumps({"type": "ERROR", "object": err.status()}) + b"\n")
            self.finish()
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + deadline_s
        try:
            await self.flush()  # headers now, as the apiserver does, before any event
            while True:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                try:
                    event = await asyncio.wait_for(
                        watcher.queue.get(), min(remaining, self.sim.bookmark_interval_s)
                    )
                except TimeoutError:
                    if bookmarks:
                        self.write(self._bookmark())
                        await self.flush()
                    continue
                if event is None:  # dropped by the server
                    break
                chunk = [event]
                while not watcher.queue.empty():
                    more = watcher.queue.get_nowait()
                    if more is None:
                        break
                    chunk.append(more)
                self.write(b"".join(chunk))
                await self.flush()
                if watcher.closed:
                    break
            if not watcher.closed and bookmarks:
                self.write(self._bookmark())
            self.finish()
        except StreamClosedError:
            pass
        finally:
            store.unwatch(watcher)

    def _bookmark(self) -> bytes:
        return (
            dumps(
                {
                    "type": "BOOKMARK",
                    "object": {
                        "kind": self.rt.kind,
                        "apiVersion": self.rt.api_version,
                        "metadata": {"resourceVersion": str(self.sim.store.resource_version)},
                    },
                }
            )
            + b"\n"
        )

    async def do_post(self) -> None:
        if self.subresource == "binding":
            binding = self._body() or {}
            node = (binding.get("target") or {}).get("name")
            pod = self.sim.store.get(self.rt, self.namespace, self.name)
            if not node:
                raise ApiError(400, "BadRequest", "binding target name is required")
            self.sim.scheduler.bind(pod, node)
            self.send_json(
                {"kind": "Status", "apiVersion": "v1", "status": "Success", "code": 201}, 201
            )
            return
        if self.name is not None:
            raise ApiError(
                405,
                "MethodNotAllowed",
                "the server does not allow this method on the requested resource",
            )
        obj = self._object_body()
        body_ns = obj.get("metadata", {}).get("namespace")
        if self.rt.namespaced:
            if self.namespace is None:
                raise ApiError(404, "NotFound", "the server could not find the requested resource")
            if body_ns and body_ns != self.namespace:
                raise ApiError(
                    400,
                    "BadRequest",
                    "the namespace of the provided object does not match the namespace sent on the request",
                )
            self._check_namespace(self.namespace)
        obj = self._admit(obj, new=True)
        if self._dry_run():
            self.send_json(obj, 201)
            return
        created = self.sim.store.create(self.rt, self.namespace, obj)
        self.send_json(
            self.sim.store.raw(self.rt, self.namespace, created["metadata"]["name"]), 201
        )

    async def do_put(self) -> None:
        if self.name is None:
            raise ApiError(
                405,
                "MethodNotAllowed",
                "the server does not allow this method on the requested resource",
            )
        obj = self._object_body()
        self._store_update(obj, check_version=True)

    async def do_patch(self) -> None:
        if self.name is None:
            raise ApiError(
                405,
                "MethodNotAllowed",
                "the server does not allow this method on the requested resource",
            )
        content_type = self.request.headers.get("Content-Type", "").split(";")[0].strip()
        kind = PATCH_TYPES.get(content_type)
        if kind is None:
            raise ApiError(
                415,
                "UnsupportedMediaType",
                f"the body of the request was in an unknown format - accepted media types include: {', '.join(PATCH_TYPES)}",
            )
        current = self.sim.store.get(self.rt, self.namespace, self.name)
        body = self._body()
        try:
            if kind == "merge":
                patched = patch.json_merge_patch(current, body)
            elif kind == "strategic":
                patched = patch.strategic_merge_patch(current, body, self.rt.kind)
            else:
                patched = patch.json_patch(current, body)
        except patch.UnsupportedPatchError as err:
            raise ApiError(415, "UnsupportedMediaType", str(err)) from err
        except (patch.PatchError, ValueError, TypeError) as err:
            raise ApiError(422, "Invalid", str(err)) from err
        if not isinstance(patched, dict):
            raise ApiError(422, "Invalid", "the patch did not produce an object")
        # A patch names a version only if the client asked for optimistic locking.
        wanted = (
            (body or {}).get("metadata", {}).get("resourceVersion")
            if isinstance(body, dict)
            else None
        )
        patched.setdefault("metadata", {})["resourceVersion"] = (
            wanted or current["metadata"]["resourceVersion"]
        )
        self._store_update(patched, check_version=True)

    def _store_update(self, obj: dict, check_version: bool) -> None:
        store = self.sim.store
        if self.subresource not in (None, "status"):
            raise ApiError(
                405,
                "MethodNotAllowed",
                "the server does not allow this method on the requested resource",
            )
        if self.subresource is None:
            obj = self._admit(obj)
        if self._dry_run():
            self.send_json(obj)
            return
        store.replace(self.rt, self.namespace, self.name, obj, self.subresource, check_version)
        self.send_json(store.raw(self.rt, self.namespace, self.name))

    async def do_delete(self) -> None:
        if self.name is None:
            raise ApiError(405, "MethodNotAllowed", "kubesim does not serve deletecollection")
        store = self.sim.store
        current = store.get(self.rt, self.namespace, self.name)
        options = self._body() or {}
        if not isinstance(options, dict):
            raise ApiError(400, "BadRequest", "DeleteOptions must be an object")
        preconditions = options.get("preconditions") or {}
        meta = current["metadata"]
        for key, field_name in (("uid", "uid"), ("resourceVersion", "resourceVersion")):
            if preconditions.get(key) and preconditions[key] != meta.get(field_name):
                raise ApiError(
                    409,
                    "Conflict",
                    f"Precondition failed: {key} in precondition: {preconditions[key]}, {key} in object meta: {meta.get(field_name)}",
                )
        grace = self.get_query_argument("gracePeriodSeconds", None)
        try:
            grace_s = int(grace) if grace is not None else options.get("gracePeriodSeconds")
        except ValueError as err:
            raise ApiError(400, "BadRequest", f"invalid gracePeriodSeconds: {grace}") from err
        policy = self._propagation_policy(options)
        if self._dry_run():
            self.send_json(current)
            return
        result = self.sim.delete_object(self.rt, current, grace_s, policy)
        self.send_json(result)

    def _propagation_policy(self, options: dict) -> str | None:
        policy = self.get_query_argument("propagationPolicy", None) or options.get(
            "propagationPolicy"
        )
        orphan = options.get("orphanDependents")
        if orphan is None and self.get_query_argument("orphanDependents", None) is not None:
            orphan = truthy(self.get_query_argument("orphanDependents"))
        if policy is not None and policy not in PROPAGATION_POLICIES:
            raise ApiError(
                422,
                "Invalid",
                f'DeleteOptions.meta.k8s.io "" is invalid: propagationPolicy: Unsupported '
                f'value: "{policy}": supported values: "Foreground", "Background", "Orphan", '
                '"nil"',
            )
        if policy is None and orphan is not None:
            policy = "Orphan" if orphan else "Background"
        if policy is None and self.rt.kind == "Job":
            # batch/v1 keeps a deleted Job's pods unless told otherwise, and says so.
            self.add_header("Warning", f'299 - "{JOB_ORPHAN_WARNING}"')
            policy = "Orphan"
        return policy


JOB_ORPHAN_WARNING = (
    "child pods are preserved by default when jobs are deleted; set propagationPolicy=Background "
    "to remove them or set propagationPolicy=Orphan to suppress this warning"
)


class PendingWorkloadsHandler(BaseHandler):
    """Kueue's visibility API: GET .../{localqueues|clusterqueues}/{name}/pendingworkloads."""

    def get(self, namespace: str | None, kind: str, name: str) -> None:
        if self._finished:
            return
        try:
            if "kueue" not in self.sim.addons:
                raise ApiError(404, "NotFound", "the server could not find the requested resource")
            if (kind == "localqueues") != (namespace is not None):
                raise ApiError(404, "NotFound", "the server could not find the requested resource")
            numbers = {}
            for key in ("offset", "limit"):
                raw = self.get_query_argument(key, "0")
                try:
                    numbers[key] = int(raw)
                except ValueError:
                    raise ApiError(
                        400, "BadRequest", f'{key} must be a whole number, not "{raw}"'
                    ) from None
            body = self.sim.kueue.pending_workloads(
                namespace, name, kind, numbers["offset"], numbers["limit"]
            )
        except ApiError as err:
            self.send_status(err)
            return
        self.send_json(body)


class NotFoundHandler(BaseHandler):
    def prepare(self) -> None:
        self.send_status(
            ApiError(404, "NotFound", "the server could not find the requested resource")
        )


def make_app(sim: KubeSim) -> web.Application:
    return web.Application(
        [
            (r"/version/?", VersionHandler),
            (r"/openapi/v3/?", OpenAPIV3Handler),
            (r"/openapi/v3/(.+)", OpenAPIV3Handler),
            (r"/(?:healthz|livez|readyz)", HealthHandler),
            (r"/api/?", CoreDiscoveryHandler),
            (r"/api/v1/?", CoreResourcesHandler),
            (r"/api/v1/(.+)", ResourceHandler),
            (r"/apis/?", GroupsHandler),
            (r"/apis/([^/]+)/?", GroupHandler),
            (r"/apis/([^/]+)/([^/]+)/?", GroupHandler),
            (
                rf"/apis/{re.escape(VISIBILITY_GROUP)}/{VISIBILITY_VERSION}/"
                r"(?:namespaces/([^/]+)/)?(localqueues|clusterqueues)/([^/]+)/pendingworkloads/?",
                PendingWorkloadsHandler,
            ),
            (r"/apis/([^/]+)/([^/]+)/(.+)", ResourceHandler),
        ],
        default_handler_class=NotFoundHandler,
        sim=sim,
    )


__all__ = ["Faults", "make_app", "not_found"]
