"""KubeSim: the emulator as one object — store, scheduler, kubelet and HTTP server —
with the lifecycle a test or the command line drives."""

from __future__ import annotations

import asyncio
import copy
import socket
import uuid
from pathlib import Path
from typing import Any

import yaml
from tornado.httpserver import HTTPServer

from . import admission
from .garbage import FOREGROUND, ORPHAN, GarbageCollector
from .jobs import JobController
from .kubelet import Kubelet
from .kueue import Kueue
from .resources import BY_KIND, BY_PATH, ResourceType
from .scheduler import DEFAULT_SCHEDULER_NAMES, Scheduler, event_name
from .server import Faults, make_app
from .store import ApiError, Store, now_rfc3339
from .volumes import VolumeController

PODS = BY_PATH[("", "v1", "pods")]
TERMINAL_PHASES = ("Succeeded", "Failed")
EVENTS = BY_PATH[("", "v1", "events")]
NAMESPACES = BY_PATH[("", "v1", "namespaces")]
DEFAULT_NAMESPACES = ("default", "kube-system", "kube-public", "kube-node-lease")


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def free_ports(count: int, host: str = "127.0.0.1") -> list[int]:
    """`count` different free ports: each probe's socket is closed before the next, so the
    system may hand the same port out twice."""
    ports: list[int] = []
    while len(ports) < count:
        port = free_port(host)
        if port not in ports:
            ports.append(port)
    return ports


class KubeSim:
    """A small Kubernetes cluster in one process.

    `history_window` is how many writes the watch cache keeps (older watches get 410);
    `process_runtime` runs pods' commands as real processes (see kubelet.py);
    `scheduler_names` are the `spec.schedulerName`s whose pods kubesim's scheduler places
    (others stay Pending, as with no such scheduler running);
    `cached_lists_paginate`: lists served from the watch cache (resourceVersion=0) honour
    `limit`, as from Kubernetes 1.33 on; by default they come whole, as in 1.32;
    `job_backoff_s` is the Job controller's first delay before it replaces a failed pod
    (kube-controller-manager: 10 s, doubled per failure) and `restart_backoff_s` the
    kubelet's before it restarts a crashed container the second time (10 s, doubled):
    shorter for quick tests; `volume_mounts` is how processes see their volumes
    ("namespace", "rewrite" or "auto", see sandbox.py); `kueue` installs Kueue: its custom
    resources, controllers and visibility API (see kueue.py).
    """

    def __init__(
        self,
        history_window: int = 10000,
        process_runtime: bool = False,
        scheduler_retry_s: float = 2.0,
        bookmark_interval_s: float = 1.0,
        watch_max_seconds: float = 1800.0,
        faults: Faults | None = None,
        scheduler_names: tuple[str, ...] = DEFAULT_SCHEDULER_NAMES,
        cached_lists_paginate: bool = False,
        job_backoff_s: float = 10.0,
        restart_backoff_s: float = 10.0,
        volume_mounts: str = "auto",
        kueue: bool = False,
    ):
        self.store = Store(history_window)
        self.cached_lists_paginate = cached_lists_paginate
        self.addons = frozenset({"kueue"} if kueue else ())
        self.faults = faults or Faults()
        self.injected_errors = 0
        self.bookmark_interval_s = bookmark_interval_s
        self.watch_max_seconds = watch_max_seconds
        self.scheduler = Scheduler(self, scheduler_retry_s, tuple(scheduler_names))
        self.volumes = VolumeController(self)
        self.garbage = GarbageCollector(self)
        self.jobs = JobController(self, job_backoff_s)
        self.kueue = Kueue(self) if kueue else None
        self.kubelet = Kubelet(
            self,
            process_runtime,
            restart_backoff_s=restart_backoff_s,
            volume_mounts=volume_mounts,
        )
        self.server: HTTPServer | None = None
        self.host = "127.0.0.1"
        self.port = 0
        for name in DEFAULT_NAMESPACES:
            self.store.create(
                NAMESPACES,
                None,
                {
                    "metadata": {"name": name},
                    "spec": {"finalizers": ["kubernetes"]},
                    "status": {"phase": "Active"},
                },
            )

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    # -- lifecycle ---------------------------------------------------------------

    async def start(self, port: int = 0, host: str = "127.0.0.1") -> KubeSim:
        self.host = host
        self.port = port or free_port(host)
        self._listen()
        self.scheduler.start()
        self.volumes.start()
        self.garbage.start()
        self.jobs.start()
        if self.kueue is not None:
            self.kueue.start()
        return self

    def _listen(self) -> None:
        self.server = HTTPServer(make_app(self), idle_connection_timeout=3600)
        self.server.listen(self.port, self.host)

    async def stop(self) -> None:
        self.store.drop_watches()
        if self.server is not None:
            self.server.stop()
            await self.server.close_all_connections()
            self.server = None
        await self.scheduler.stop()
        self.jobs.stop()
        if self.kueue is not None:
            self.kueue.stop()
        await self.kubelet.shutdown()

    async def go_down(self) -> None:
        """The apiserver becomes unreachable: connections refused, watches cut."""
        self.store.drop_watches()
        if self.server is not None:
            self.server.stop()
            await self.server.close_all_connections()
            self.server = None

    def come_back(self, forget_history: bool = True) -> None:
        """The apiserver returns with its state; with `forget_history` its watch cache is
        new, so clients watching from an old resourceVersion get 410 and must relist."""
        if forget_history:
            self.store.compact()
        self._listen()

    async def restart(self, downtime_s: float = 0.5) -> None:
        await self.go_down()
        await asyncio.sleep(downtime_s)
        self.come_back()

    def drop_watches(self) -> int:
        return self.store.drop_watches()

    def write_kubeconfig(self, path: str | Path) -> Path:
        path = Path(path)
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "kubesim", "cluster": {"server": self.url}}],
            "users": [{"name": "kubesim", "user": {"token": "kubesim-token"}}],
            "contexts": [
                {
                    "name": "kubesim",
                    "context": {"cluster": "kubesim", "user": "kubesim", "namespace": "default"},
                }
            ],
            "current-context": "kubesim",
        }
        path.write_text(yaml.safe_dump(config))
        return path

    # -- loading objects ---------------------------------------------------------

    def load(self, manifests: list[dict[str, Any]], admit: bool = True) -> list[dict]:
        """Create objects as given (a scenario); `admit` validates them like the API does."""
        created = []
        for manifest in manifests:
            rt = BY_KIND.get((manifest.get("apiVersion"), manifest.get("kind")))
            if rt is None:
                raise ValueError(
                    f"kubesim does not serve {manifest.get('apiVersion')} {manifest.get('kind')}"
                )
            if rt.addon and rt.addon not in self.addons:
                raise ValueError(
                    f"{rt.kind} is a {rt.addon} resource: start kubesim with {rt.addon}=True "
                    f"(--{rt.addon} on the command line)"
                )
            given_status = manifest.get("status")
            namespace = manifest.get("metadata", {}).get("namespace") or (
                "default" if rt.namespaced else None
            )
            if namespace and self.store.find(NAMESPACES, None, namespace) is None:
                self.store.create(
                    NAMESPACES,
                    None,
                    {"metadata": {"name": namespace}, "status": {"phase": "Active"}},
                )
            if admit:
                new = self.store.create(rt, namespace, self.admit(rt, manifest, keep_uid=True))
            else:
                new = self.store.create(rt, namespace, copy.deepcopy(manifest))
            if given_status is not None and rt.has_status:
                new = copy.deepcopy(new)
                new["status"] = copy.deepcopy(given_status)
                new = self.store.replace(
                    rt,
                    namespace,
                    new["metadata"]["name"],
                    new,
                    subresource="all",
                    check_version=False,
                )
            created.append(new)
        return created

    def admit(self, rt: ResourceType, obj: dict, new: bool = True, keep_uid: bool = False) -> dict:
        """What the API does to an object before it is stored: defaulting; for a new one a
        fresh uid (a scenario may keep its own) and the mutating admission plugins that read
        the cluster; validation (ApiError when refused); canonical quantities."""
        obj = copy.deepcopy(obj)
        meta = obj.setdefault("metadata", {})
        if new and not (keep_uid and meta.get("uid")):
            meta["uid"] = str(uuid.uuid4())
        obj = admission.default_object(obj, rt.kind)
        if new:
            obj = self.admit_new(rt.kind, obj)
        causes = admission.validate(obj, rt.kind, rt.api_version)
        if causes:
            name = obj["metadata"].get("name") or obj["metadata"].get("generateName", "")
            code, reason, message = admission.request_error(
                rt.kind, rt.api_version, name, causes, rt.group
            )
            raise ApiError(
                code,
                reason,
                message,
                {
                    "name": name,
                    "group": rt.group,
                    "kind": rt.kind,
                    "causes": [
                        {"reason": c.reason, "message": c.message, "field": c.field} for c in causes
                    ],
                },
            )
        return admission.canonicalize_quantities(obj, rt.kind, rt.api_version)

    def create_object(self, rt: ResourceType, namespace: str | None, obj: dict) -> dict:
        """Create through the API's path (admission included), as a controller does."""
        return self.store.create(rt, namespace, self.admit(rt, obj))

    def load_file(self, path: str | Path) -> list[dict]:
        documents = [doc for doc in yaml.safe_load_all(Path(path).read_text()) if doc]
        manifests: list[dict] = []
        for doc in documents:
            if isinstance(doc, list):
                manifests.extend(doc)
            elif doc.get("kind") == "List":
                manifests.extend(doc.get("items") or [])
            else:
                manifests.append(doc)
        return self.load(manifests)

    # -- what the API verbs need from the cluster ---------------------------------

    def admit_new(self, kind: str, obj: dict) -> dict:
        """The mutating admission plugins that look at the cluster, for a new object, and
        what the registry's create strategy adds after them."""
        obj = self.volumes.admit_new(kind, obj)
        if self.kueue is not None:
            obj = self.kueue.admit_new(kind, obj)
        if kind == "Pod":
            obj = scheduling_gated(obj)
        return obj

    def delete_object(
        self,
        rt: ResourceType,
        obj: dict,
        grace_s: int | None = None,
        policy: str | None = None,
    ) -> dict:
        """DELETE as the apiserver does it. ``policy`` is the propagation policy: Orphan and
        Foreground hand the object to the garbage collector with its finalizer; Background
        (the default) removes it now and its dependents after."""
        if rt is PODS:
            return self.delete_pod(obj, grace_s)
        meta = obj["metadata"]
        if policy in ("Orphan", "Foreground"):
            finalizer = ORPHAN if policy == "Orphan" else FOREGROUND
            new = copy.deepcopy(obj)
            finalizers = new["metadata"].setdefault("finalizers", [])
            if finalizer not in finalizers:
                finalizers.append(finalizer)
            current = self.store.replace(
                rt, meta.get("namespace"), meta["name"], new, "all", check_version=False
            )
            return self.store.mark_terminating(rt, current, 0)
        if meta.get("finalizers"):
            return self.store.mark_terminating(rt, obj, 0)
        if rt.kind == "Namespace":
            self.delete_namespace_contents(meta["name"])
        return self.store.remove(rt, meta.get("namespace"), meta["name"])

    def delete_pod(self, pod: dict, grace_s: int | None) -> dict:
        meta = pod["metadata"]
        key = (meta["namespace"], meta["name"])
        if grace_s is None:
            grace_s = pod["spec"].get("terminationGracePeriodSeconds", 30)
        phase = (pod.get("status") or {}).get("phase")
        # The apiserver removes at once a pod no kubelet runs (unbound or finished).
        if not pod["spec"].get("nodeName") or phase in TERMINAL_PHASES:
            grace_s = 0
        if grace_s == 0:
            self.kubelet.kill_now(key)
            if meta.get("finalizers"):
                return self.store.mark_terminating(PODS, pod, 0)
            return self.store.remove(PODS, *key)
        current_grace = meta.get("deletionGracePeriodSeconds")
        if meta.get("deletionTimestamp") and current_grace is not None and current_grace <= grace_s:
            return pod
        return self.store.mark_terminating(PODS, pod, grace_s)

    def pod_terminated(self, key: tuple[str, str], status: dict | None = None) -> None:
        """The kubelet is done with a deleted pod: the apiserver removes it, or, while a
        finalizer holds it, keeps it with its final status."""
        pod = self.store.find(PODS, *key)
        if pod is None:
            return
        if not pod["metadata"].get("finalizers"):
            self.store.remove(PODS, *key)
            return
        new = copy.deepcopy(pod)
        if status is not None:
            new["status"] = status
        current = self.store.replace(PODS, *key, new, "all", check_version=False)
        self.store.mark_terminating(PODS, current, 0)

    def delete_namespace_contents(self, namespace: str) -> None:
        for rt in BY_PATH.values():
            if not rt.namespaced:
                continue
            for obj in list(self.store.objects(rt)):
                if obj["metadata"].get("namespace") == namespace:
                    if rt is PODS:
                        self.delete_pod(obj, 0)
                    else:
                        self.store.remove(rt, namespace, obj["metadata"]["name"])

    def record_event(
        self,
        obj: dict,
        type_: str,
        reason: str,
        message: str,
        component: str,
        field_path: str | None = None,
    ) -> dict:
        meta = obj["metadata"]
        namespace = meta.get("namespace") or "default"
        now = now_rfc3339()
        involved = {
            "kind": obj.get("kind", "Pod"),
            "namespace": meta.get("namespace", ""),
            "name": meta["name"],
            "uid": meta.get("uid", ""),
            "apiVersion": obj.get("apiVersion", "v1"),
            "resourceVersion": meta.get("resourceVersion", ""),
        }
        if field_path:
            involved["fieldPath"] = field_path
        event = {
            "metadata": {"name": event_name(meta["name"]), "namespace": namespace},
            "involvedObject": involved,
            "reason": reason,
            "message": message,
            "source": {
                "component": component,
                **({"host": obj.get("spec", {}).get("nodeName")} if component == "kubelet" else {}),
            },
            "firstTimestamp": now,
            "lastTimestamp": now,
            "count": 1,
            "type": type_,
            "eventTime": None,
            "reportingComponent": component,
            "reportingInstance": "",
        }
        return self.store.create(EVENTS, namespace, event)

    def repeat_event(self, namespace: str, name: str) -> None:
        event = self.store.find(EVENTS, namespace, name)
        if event is None:
            return
        new = copy.deepcopy(event)
        new["count"] = new.get("count", 1) + 1
        new["lastTimestamp"] = now_rfc3339()
        self.store.replace(EVENTS, namespace, name, new, check_version=False)

    def events_for(self, namespace: str, name: str) -> list[dict]:
        return [
            e
            for e in self.store.objects(EVENTS)
            if e["involvedObject"].get("name") == name
            and e["involvedObject"].get("namespace") == namespace
        ]


def scheduling_gated(pod: dict) -> dict:
    """The pod registry's create strategy: a new pod with scheduling gates starts with the
    condition PodScheduled=False, reason SchedulingGated."""
    if not (pod.get("spec") or {}).get("schedulingGates"):
        return pod
    status = pod.setdefault("status", {})
    conditions = status.setdefault("conditions", [])
    if not any(c.get("type") == "PodScheduled" for c in conditions):
        conditions.append(
            {
                "type": "PodScheduled",
                "status": "False",
                "lastProbeTime": None,
                "lastTransitionTime": now_rfc3339(),
                "reason": "SchedulingGated",
                "message": "Scheduling is blocked due to non-empty scheduling gates",
            }
        )
    return pod
