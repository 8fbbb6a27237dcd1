"""kubesim's scheduler: binds pending pods to nodes the way kube-scheduler's default profile
does, and reports failures with kube-scheduler's own message form.

The filters and the message are in filters.py, the resource accounting in noderesources.py;
this module keeps the cluster's books (each node's allocatable and the requests of the pods
bound there), runs scheduling passes, and writes the results back through the store. It also
plays the node lifecycle controller's part of tainting nodes that are not Ready, since the
scheduler only sees taints.
"""

from __future__ import annotations

import asyncio
import copy
import logging
import uuid
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, NamedTuple

from .filters import (
    AFFINITY_TERMS_CONFLICT,
    NOT_READY_TAINT,
    UNREACHABLE_TAINT,
    Rejection,
    claim_names,
    failure_message,
    filter_node,
    node_name_candidates,
    required_node_affinity,
)
from .noderesources import MalformedPod, Units, node_allocatable_units, pod_request_units
from .resources import BY_PATH
from .store import Change, now_rfc3339
from .volumes import CLAIMS, CLASSES, VOLUMES, volume_binding_filter, volume_binding_prefilter

if TYPE_CHECKING:
    from .sim import KubeSim

log = logging.getLogger("kubesim.scheduler")

PODS = BY_PATH[("", "v1", "pods")]
NODES = BY_PATH[("", "v1", "nodes")]
EVENTS = BY_PATH[("", "v1", "events")]

_TERMINAL_PHASES = ("Succeeded", "Failed")
# kube-scheduler's own name, and the names z2jh's user-scheduler (a kube-scheduler) runs as:
# "user-scheduler" with the chart's default fullnameOverride "", "<release>-user-scheduler"
# without it (release "jupyterhub").
DEFAULT_SCHEDULER_NAMES = ("default-scheduler", "user-scheduler", "jupyterhub-user-scheduler")

PodKey = tuple[str, str]


class _PodVolumes(NamedTuple):
    rejection: Rejection | None  # the pod cannot be placed at all
    bound: list[dict]  # claims bound already
    delayed: list[dict]  # WaitForFirstConsumer claims, bound once the pod has a node
    volumes: dict[str, dict]  # every volume by name
    classes: dict[str, dict]  # every storage class by name


def node_ready_status(node: Mapping) -> str:
    for condition in (node.get("status") or {}).get("conditions") or []:
        if condition.get("type") == "Ready":
            return condition.get("status", "Unknown")
    return "Unknown"


def feasible_nodes_to_find(total: int) -> int:
    """kube-scheduler's ``numFeasibleNodesToFind`` with the adaptive percentageOfNodesToScore:
    every node in clusters under 100 nodes, else 50% less 1% per 125 nodes (at least 5%), and
    never fewer than 100. The scheduler stops filtering once it has found that many."""
    if total < 100:
        return total
    percentage = max(50 - total // 125, 5)
    return max(total * percentage // 100, 100)


def _scheduler_name(spec: Mapping[str, Any]) -> str:
    return spec.get("schedulerName") or "default-scheduler"


def _queue_order(pod: Mapping[str, Any]) -> tuple:
    """PrioritySort: higher priority first, then the pod that has waited longer."""
    meta = pod.get("metadata") or {}
    priority = (pod.get("spec") or {}).get("priority") or 0
    return (-priority, meta.get("creationTimestamp") or "", meta.get("namespace"), meta["name"])


class Scheduler:
    """Schedules the pods whose ``spec.schedulerName`` is one of ``names``, as that scheduler
    (its events say so); other pods stay Pending for whoever schedules them."""

    def __init__(
        self,
        sim: KubeSim,
        retry_interval_s: float = 2.0,
        names: tuple[str, ...] = DEFAULT_SCHEDULER_NAMES,
    ):
        self.sim = sim
        self.store = sim.store
        self.retry_interval_s = retry_interval_s
        self.names = frozenset(names)
        # node name -> {pod key -> the pod's request units}, for the pods that hold room there
        self.bound: dict[str, dict[PodKey, Units]] = {}
        # node name -> the sum of those units, kept as pods come and go
        self.requested: dict[str, Units] = {}
        self.allocatable: dict[str, Units] = {}
        self.pending: dict[PodKey, Units] = {}
        self.last_failure: dict[PodKey, tuple[str, str]] = {}  # key -> (message, event name)
        # Where the next pod's search starts, so that pods spread over a large cluster.
        self.next_start_index = 0
        self._wakeup: asyncio.Event | None = None
        self._task: asyncio.Task | None = None
        self._stopping = False
        self.malformed = 0
        self.store.subscribe(self.on_change)

    # -- bookkeeping -------------------------------------------------------------

    def on_change(self, change: Change) -> None:
        if change.plural == "pods":
            self._track_pod(change)
        elif change.plural == "nodes":
            name = change.obj["metadata"]["name"]
            if change.type == "DELETED":
                self.allocatable.pop(name, None)
            else:
                self.allocatable[name] = node_allocatable_units(change.obj)
                self._taint_if_not_ready(change.obj)
            self.wake()
        elif change.plural in ("persistentvolumeclaims", "persistentvolumes", "storageclasses"):
            if self.pending:
                self.wake()  # a claim that appears or binds may let a pod through

    def _unbook(self, node_name: str, key: PodKey) -> None:
        units = self.bound.get(node_name, {}).pop(key, None)
        if units:
            totals = self.requested[node_name]
            for name, amount in units.items():
                totals[name] -= amount

    def _book(self, node_name: str, key: PodKey, units: Units) -> None:
        self.bound.setdefault(node_name, {})[key] = units
        totals = self.requested.setdefault(node_name, {})
        for name, amount in units.items():
            totals[name] = totals.get(name, 0) + amount

    def _track_pod(self, change: Change) -> None:
        meta = change.obj["metadata"]
        key = (meta.get("namespace", ""), meta["name"])
        if change.old is not None:
            old_node = (change.old.get("spec") or {}).get("nodeName")
            if old_node:
                self._unbook(old_node, key)
        self.pending.pop(key, None)
        if change.type == "DELETED":
            self.last_failure.pop(key, None)
            self.wake()
            return
        pod = change.obj
        spec = pod.get("spec") or {}
        if (pod.get("status") or {}).get("phase") in _TERMINAL_PHASES:
            self.wake()  # a finished pod frees its room
            return
        try:
            units = pod_request_units(pod)
        except MalformedPod:
            self.malformed += 1
            return
        if spec.get("nodeName"):
            self._book(spec["nodeName"], key, units)
        elif not meta.get("deletionTimestamp") and self._responsible_for(spec):
            self.pending[key] = units
        self.wake()

    def _responsible_for(self, spec: Mapping[str, Any]) -> bool:
        if spec.get("schedulingGates"):  # held back until its gates are removed
            return False
        return _scheduler_name(spec) in self.names

    def _taint_if_not_ready(self, node: dict) -> None:
        status = node_ready_status(node)
        wanted = {"False": NOT_READY_TAINT, "Unknown": UNREACHABLE_TAINT}.get(status)
        taints = (node.get("spec") or {}).get("taints") or []
        ours = {NOT_READY_TAINT, UNREACHABLE_TAINT}
        current = {t.get("key") for t in taints if t.get("key") in ours}
        if current == ({wanted} if wanted else set()):
            return
        new = copy.deepcopy(node)
        kept = [t for t in taints if t.get("key") not in ours]
        if wanted:
            kept.append({"key": wanted, "effect": "NoSchedule", "timeAdded": now_rfc3339()})
        new.setdefault("spec", {})["taints"] = kept
        # Deferred: a listener must not write while the store is notifying.
        asyncio.get_running_loop().call_soon(self._replace_node, new)

    def _replace_node(self, node: dict) -> None:
        current = self.store.find(NODES, None, node["metadata"]["name"])
        if current is None:
            return
        updated = copy.deepcopy(current)
        updated["spec"] = node["spec"]
        self.store.replace(NODES, None, node["metadata"]["name"], updated, check_version=False)

    # -- the loop ----------------------------------------------------------------

    def wake(self) -> None:
        if self._wakeup is not None:
            self._wakeup.set()

    def start(self) -> None:
        self._wakeup = asyncio.Event()
        self._task = asyncio.ensure_future(self._run())
        # Nodes loaded before start still need their readiness taints.
        for node in self.store.objects(NODES):
            self._taint_if_not_ready(node)

    async def stop(self) -> None:
        # A flag, not Task.cancel(): Python 3.11's wait_for can swallow a cancellation
        # that lands as the event fires, and the loop would then run on.
        self._stopping = True
        self.wake()
        if self._task:
            await self._task

    async def _run(self) -> None:
        assert self._wakeup is not None
        while not self._stopping:
            try:
                await asyncio.wait_for(self._wakeup.wait(), self.retry_interval_s)
            except TimeoutError:
                pass
            self._wakeup.clear()
            if self._stopping:
                break
            # Let a burst of writes land before one scheduling pass.
            await asyncio.sleep(0.005)
            try:
                self.schedule_pending()
            except Exception:  # keep the emulator alive; the test will see the log
                log.exception("scheduling pass failed")

    def schedule_pending(self) -> None:
        if not self.pending:
            return
        nodes = sorted(self.store.objects(NODES), key=lambda n: n["metadata"]["name"])
        pods = [self.store.find(PODS, key[0], key[1]) for key in self.pending]
        for pod in sorted(filter(None, pods), key=_queue_order):
            if (pod.get("spec") or {}).get("nodeName"):
                continue
            meta = pod["metadata"]
            units = self.pending.get((meta["namespace"], meta["name"]))
            if units is not None:
                self.schedule_one(pod, units, nodes)

    def schedule_one(self, pod: dict, request: Units, nodes: list[dict]) -> None:
        spec = pod.get("spec") or {}
        if not nodes:
            self._report_failure(pod, failure_message(0, {}))
            return
        allowed = node_name_candidates(spec)
        if allowed is not None and not allowed:
            prefilter = Rejection((AFFINITY_TERMS_CONFLICT,))
            self._report_failure(pod, failure_message(len(nodes), {}, prefilter))
            return
        volumes = self._pod_volumes(pod) if claim_names(spec) else None
        if volumes is not None and volumes.rejection is not None:
            self._report_failure(pod, failure_message(len(nodes), {}, volumes.rejection))
            return
        affinity = required_node_affinity(spec)
        candidates = (
            nodes if allowed is None else [n for n in nodes if n["metadata"]["name"] in allowed]
        )
        rejections: dict[str, Rejection] = {}
        feasible: list[dict] = []
        wanted = feasible_nodes_to_find(len(candidates))
        start = self.next_start_index % len(candidates) if candidates else 0
        for offset in range(len(candidates)):
            node = candidates[(start + offset) % len(candidates)]
            name = node["metadata"]["name"]
            rejection = filter_node(
                spec,
                affinity,
                request,
                node,
                self.allocatable.get(name, {}),
                self.requested.get(name, {}),
                len(self.bound.get(name, {})),
            )
            if rejection is None and volumes is not None:
                rejection = volume_binding_filter(
                    node, volumes.bound, volumes.delayed, volumes.volumes, volumes.classes
                )
            if rejection is not None:
                rejections[name] = rejection
            else:
                feasible.append(node)
                if len(feasible) == wanted:
                    break
        if candidates:
            processed = len(feasible) + len(rejections)
            self.next_start_index = (start + processed) % len(candidates)
        if not feasible:
            message = failure_message(
                len(nodes), rejections, preemption_policy=spec.get("preemptionPolicy")
            )
            self._report_failure(pod, message)
            return
        best = max(feasible, key=lambda n: self._score(request, n["metadata"]["name"]))
        for claim in volumes.delayed if volumes is not None else ():
            self.sim.volumes.bind_for_node(claim, best)
        self.bind(pod, best["metadata"]["name"])

    def _pod_volumes(self, pod: dict) -> _PodVolumes:
        """VolumeBinding's PreFilter for a pod that uses claims."""
        namespace = pod["metadata"]["namespace"]
        spec = pod.get("spec") or {}
        claims = {name: self.store.find(CLAIMS, namespace, name) for name in claim_names(spec)}
        classes = {c["metadata"]["name"]: c for c in self.store.objects(CLASSES)}
        rejection, bound, delayed = volume_binding_prefilter(spec, claims, classes)
        volumes = {v["metadata"]["name"]: v for v in self.store.objects(VOLUMES)}
        return _PodVolumes(rejection, bound, delayed, volumes, classes)

    def _score(self, request: Units, node_name: str) -> float:
        """LeastAllocated: prefer the node with the larger free share of cpu and memory."""
        allocatable = self.allocatable.get(node_name, {})
        requested = self.requested.get(node_name, {})
        score = 0.0
        for resource in ("cpu", "memory"):
            capacity = allocatable.get(resource, 0)
            if capacity > 0:
                used = requested.get(resource, 0) + request.get(resource, 0)
                score += (capacity - used) / capacity
        return score

    def bind(self, pod: dict, node_name: str) -> None:
        meta = pod["metadata"]
        new = copy.deepcopy(pod)
        new["spec"]["nodeName"] = node_name
        conditions = [
            c
            for c in (new.get("status") or {}).get("conditions") or []
            if c.get("type") != "PodScheduled"
        ]
        conditions.append(
            {
                "type": "PodScheduled",
                "status": "True",
                "lastProbeTime": None,
                "lastTransitionTime": now_rfc3339(),
            }
        )
        new.setdefault("status", {})["conditions"] = conditions
        self.store.replace(
            PODS, meta["namespace"], meta["name"], new, subresource="all", check_version=False
        )
        self.last_failure.pop((meta["namespace"], meta["name"]), None)
        self.sim.record_event(
            pod,
            "Normal",
            "Scheduled",
            f"Successfully assigned {meta['namespace']}/{meta['name']} to {node_name}",
            _scheduler_name(pod.get("spec") or {}),
        )

    def _report_failure(self, pod: dict, message: str) -> None:
        meta = pod["metadata"]
        key = (meta["namespace"], meta["name"])
        previous = self.last_failure.get(key)
        if previous and previous[0] == message:
            self.sim.repeat_event(meta["namespace"], previous[1])
            return
        status = pod.get("status") or {}
        scheduled = [c for c in status.get("conditions") or [] if c.get("type") == "PodScheduled"]
        if not scheduled or scheduled[0].get("message") != message:
            new = copy.deepcopy(pod)
            conditions = [
                c for c in status.get("conditions") or [] if c.get("type") != "PodScheduled"
            ]
            conditions.append(
                {
                    "type": "PodScheduled",
                    "status": "False",
                    "reason": "Unschedulable",
                    "message": message,
                    "lastProbeTime": None,
                    "lastTransitionTime": now_rfc3339(),
                }
            )
            new.setdefault("status", {})["conditions"] = conditions
            self.store.replace(
                PODS,
                meta["namespace"],
                meta["name"],
                new,
                subresource="status",
                check_version=False,
            )
        event = self.sim.record_event(
            pod, "Warning", "FailedScheduling", message, _scheduler_name(pod.get("spec") or {})
        )
        self.last_failure[key] = (message, event["metadata"]["name"])


def event_name(pod_name: str) -> str:
    return f"{pod_name}.{uuid.uuid4().hex[:16]}"


__all__ = [
    "DEFAULT_SCHEDULER_NAMES",
    "Scheduler",
    "event_name",
    "feasible_nodes_to_find",
    "node_ready_status",
]
