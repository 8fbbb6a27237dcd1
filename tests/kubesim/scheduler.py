"""kubesim's scheduler: binds pods to nodes the way kube-scheduler's default filters do,
and reports failures with kube-scheduler's own message form.

Filters, in kube-scheduler's order, each node stopping at its first failure:
NodeUnschedulable, NodeName, TaintToleration, NodeAffinity (nodeSelector and required
node affinity), NodeResourcesFit (allocatable minus requests of the pods on the node,
accounted as `kubectl describe node` does). It also plays the node lifecycle controller's
part of tainting nodes that are not Ready, since the scheduler only sees taints.
"""

from __future__ import annotations

import asyncio
import copy
import logging
import uuid
from collections import Counter
from collections.abc import Mapping
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from hub_service.accounting import (
    MalformedObject,
    PodSummary,
    fits,
    node_allocatable,
    summarize_pod,
)

from .resources import BY_PATH
from .store import Change, now_rfc3339

if TYPE_CHECKING:
    from .sim import KubeSim

log = logging.getLogger("kubesim.scheduler")

PODS = BY_PATH[("", "v1", "pods")]
NODES = BY_PATH[("", "v1", "nodes")]
EVENTS = BY_PATH[("", "v1", "events")]

NOT_READY_TAINT = "node.kubernetes.io/not-ready"
UNREACHABLE_TAINT = "node.kubernetes.io/unreachable"
UNSCHEDULABLE_TAINT = "node.kubernetes.io/unschedulable"

# Reasons the scheduler cannot fix by preempting other pods.
UNRESOLVABLE_PREFIXES = (
    "node(s) had untolerated taint",
    "node(s) didn't match",
    "node(s) were unschedulable",
    "node(s) didn't satisfy plugin",
)


def node_ready_status(node: Mapping) -> str:
    for condition in (node.get("status") or {}).get("conditions") or []:
        if condition.get("type") == "Ready":
            return condition.get("status", "Unknown")
    return "Unknown"


def tolerates(tolerations: list[dict], taint: Mapping) -> bool:
    for toleration in tolerations:
        effect = toleration.get("effect")
        if effect and effect != taint.get("effect"):
            continue
        key = toleration.get("key")
        operator = toleration.get("operator", "Equal")
        if not key:
            if operator == "Exists":
                return True
            continue
        if key != taint.get("key"):
            continue
        if operator == "Exists" or toleration.get("value", "") == taint.get("value", ""):
            return True
    return False


def match_expression(labels: Mapping[str, str], expression: Mapping) -> bool:
    key, operator = expression.get("key"), expression.get("operator")
    values = expression.get("values") or []
    if operator == "In":
        return key in labels and labels[key] in values
    if operator == "NotIn":
        return labels.get(key) not in values
    if operator == "Exists":
        return key in labels
    if operator == "DoesNotExist":
        return key not in labels
    if operator in ("Gt", "Lt"):
        try:
            have, want = int(labels[key]), int(values[0])
        except (KeyError, ValueError, IndexError):
            return False
        return have > want if operator == "Gt" else have < want
    return False


def matches_node_affinity(pod_spec: Mapping, node: Mapping) -> bool:
    labels = (node.get("metadata") or {}).get("labels") or {}
    for key, value in (pod_spec.get("nodeSelector") or {}).items():
        if labels.get(key) != value:
            return False
    required = ((pod_spec.get("affinity") or {}).get("nodeAffinity") or {}).get(
        "requiredDuringSchedulingIgnoredDuringExecution"
    ) or {}
    terms = required.get("nodeSelectorTerms")
    if not terms:
        return True
    name = (node.get("metadata") or {}).get("name")
    for term in terms:  # terms are ORed, expressions within a term ANDed
        expressions = term.get("matchExpressions") or []
        field_expressions = term.get("matchFields") or []
        if not expressions and not field_expressions:
            continue
        if all(match_expression(labels, e) for e in expressions) and all(
            match_expression({"metadata.name": name}, e) for e in field_expressions
        ):
            return True
    return False


def filter_node(
    pod: Mapping,
    summary: PodSummary,
    node: Mapping,
    allocated: Mapping[str, Decimal],
    pod_count: int,
) -> list[str]:
    """Why the pod cannot go on this node: [] when it fits."""
    spec = pod.get("spec") or {}
    node_spec = node.get("spec") or {}
    tolerations = spec.get("tolerations") or []
    if node_spec.get("unschedulable") and not tolerates(
        tolerations, {"key": UNSCHEDULABLE_TAINT, "effect": "NoSchedule"}
    ):
        return ["node(s) were unschedulable"]
    if spec.get("nodeName") and spec["nodeName"] != node["metadata"]["name"]:
        return ["node(s) didn't match the requested node name"]
    for taint in node_spec.get("taints") or []:
        if taint.get("effect") in ("NoSchedule", "NoExecute") and not tolerates(tolerations, taint):
            return [
                f"node(s) had untolerated taint {{{taint.get('key')}: {taint.get('value', '')}}}"
            ]
    if not matches_node_affinity(spec, node):
        return ["node(s) didn't match Pod's node affinity/selector"]
    allocatable = node_allocatable(node)
    reasons = []
    if "pods" in allocatable and pod_count + 1 > allocatable["pods"]:
        reasons.append("Too many pods")
    reasons += [f"Insufficient {name}" for name in fits(summary.requests, allocatable, allocated)]
    return reasons


def failure_message(node_reasons: dict[str, list[str]]) -> str:
    """kube-scheduler's FitError text, with its preemption postscript."""
    total = len(node_reasons)
    histogram = Counter(reason for reasons in node_reasons.values() for reason in reasons)
    parts = sorted(f"{count} {reason}" for reason, count in histogram.items())
    message = f"0/{total} nodes are available: {', '.join(parts)}."
    preemption = Counter()
    for reasons in node_reasons.values():
        if any(r.startswith(UNRESOLVABLE_PREFIXES) for r in reasons):
            preemption["Preemption is not helpful for scheduling"] += 1
        else:
            preemption["No preemption victims found for incoming pod"] += 1
    post = sorted(f"{count} {reason}" for reason, count in preemption.items())
    if total == 0:
        return "no nodes available to schedule pods"
    return f"{message} preemption: 0/{total} nodes are available: {', '.join(post)}."


class Scheduler:
    def __init__(self, sim: KubeSim, retry_interval_s: float = 2.0):
        self.sim = sim
        self.store = sim.store
        self.retry_interval_s = retry_interval_s
        # node name -> {pod key -> summary} of the pods bound there that count.
        self.bound: dict[str, dict[tuple[str, str], PodSummary]] = {}
        self.pending: dict[tuple[str, str], PodSummary] = {}
        self.last_failure: dict[
            tuple[str, str], tuple[str, str]
        ] = {}  # key -> (message, event name)
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
            if change.type != "DELETED":
                self._taint_if_not_ready(change.obj)
            self.wake()

    def _track_pod(self, change: Change) -> None:
        meta = change.obj["metadata"]
        key = (meta.get("namespace", ""), meta["name"])
        if change.old is not None:
            old_node = (change.old.get("spec") or {}).get("nodeName")
            if old_node:
                self.bound.get(old_node, {}).pop(key, None)
        self.pending.pop(key, None)
        if change.type == "DELETED":
            self.last_failure.pop(key, None)
            self.wake()
            return
        try:
            summary = summarize_pod(change.obj)
        except MalformedObject:
            self.malformed += 1
            return
        if summary.node_name:
            if summary.counts_on_node:
                self.bound.setdefault(summary.node_name, {})[key] = summary
        elif not summary.terminating and summary.counts_on_node:
            scheduler_name = (change.obj.get("spec") or {}).get(
                "schedulerName", "default-scheduler"
            )
            if scheduler_name == "default-scheduler":
                self.pending[key] = summary
        self.wake()

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

    def allocated(self, node_name: str) -> dict[str, Decimal]:
        totals: dict[str, Decimal] = {}
        for summary in self.bound.get(node_name, {}).values():
            for name, amount in summary.requests.items():
                totals[name] = totals.get(name, Decimal(0)) + amount
        return totals

    def schedule_pending(self) -> None:
        nodes = sorted(self.store.objects(NODES), key=lambda n: n["metadata"]["name"])
        for key, summary in sorted(self.pending.items()):
            pod = self.store.find(PODS, key[0], key[1])
            if pod is None or (pod.get("spec") or {}).get("nodeName"):
                continue
            reasons: dict[str, list[str]] = {}
            best = None
            best_score = None
            for node in nodes:
                name = node["metadata"]["name"]
                why = filter_node(
                    pod, summary, node, self.allocated(name), len(self.bound.get(name, {}))
                )
                if why:
                    reasons[name] = why
                    continue
                score = self._score(summary, node)
                if best_score is None or score > best_score:
                    best, best_score = name, score
            if best is not None:
                self.bind(pod, best)
            else:
                self._report_failure(pod, reasons)

    def _score(self, summary: PodSummary, node: Mapping) -> Decimal:
        # LeastAllocated: prefer the node with the most free cpu and memory share.
        allocatable = node_allocatable(node)
        allocated = self.allocated(node["metadata"]["name"])
        score = Decimal(0)
        for resource in ("cpu", "memory"):
            capacity = allocatable.get(resource) or Decimal(0)
            if capacity > 0:
                used = allocated.get(resource, Decimal(0)) + summary.requests.get(
                    resource, Decimal(0)
                )
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
            "default-scheduler",
        )

    def _report_failure(self, pod: dict, reasons: dict[str, list[str]]) -> None:
        meta = pod["metadata"]
        key = (meta["namespace"], meta["name"])
        message = failure_message(reasons)
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
            pod, "Warning", "FailedScheduling", message, "default-scheduler"
        )
        self.last_failure[key] = (message, event["metadata"]["name"])


def event_name(pod_name: str) -> str:
    return f"{pod_name}.{uuid.uuid4().hex[:16]}"


__all__: list[Any] = ["Scheduler", "failure_message", "filter_node", "event_name"]
