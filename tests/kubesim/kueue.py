"""kubesim's Kueue (kubernetes-sigs/kueue, API kueue.x-k8s.io/v1beta2), opt-in with
``KubeSim(kueue=True)``: small, for a product that labels Jobs and pods, reads queue
positions and waits for admission.

- Webhooks: a Job labelled ``kueue.x-k8s.io/queue-name`` is created suspended; a plain pod
  with that label (not one of a Kueue-managed Job's pods) gets the label
  ``kueue.x-k8s.io/managed: "true"``, the finalizer ``kueue.x-k8s.io/managed`` and the
  scheduling gate ``kueue.x-k8s.io/admission``.
- A Workload per such Job (``job-<name>-<hash>``) or pod (``pod-<name>-<hash>``), owned by
  it: one pod set ``main`` (count: the Job's parallelism, 1 for a pod), the queue, the
  priority of the WorkloadPriorityClass named by ``kueue.x-k8s.io/priority-class``, and
  ``kueue.x-k8s.io/max-exec-time-seconds``.
- Admission, per ClusterQueue, in queue order (priority, then age): a Workload is admitted
  when its namespace matches the queue's ``namespaceSelector`` (none: no namespace) and, for
  each resource group, the first flavor whose nominal quota still holds all the resources
  the pods request (BestEffortFIFO lets later Workloads past one that does not fit;
  StrictFIFO does not). Admission writes ``status.admission`` and the conditions
  QuotaReserved and Admitted; the Job is then resumed, the pod un-gated, with the flavor's
  nodeLabels as nodeSelector, its tolerations and the queue labels. A Workload that waits
  says why in QuotaReserved=False (WaitingForQuota, ExceedsMaxQuota, Misconfigured, ...).
- A finished Job or pod finishes its Workload (Finished, Succeeded or Failed), which
  releases its quota; a Workload past its maximum execution time is deactivated and evicted
  (its Job suspended again, its pod deleted).
- ClusterQueue and LocalQueue status: the Active condition and the workload counts.
- The visibility API's pending workloads (``visibility.kueue.x-k8s.io/v1beta2``), computed by
  ``pending_workloads``.

Not modelled: cohorts and borrowing, preemption, fair sharing, admission checks, partial
admission, topology-aware scheduling, flavor matching against the pods' node selectors and
taints, pod groups, the default LocalQueue, other job kinds.
"""

from __future__ import annotations

import asyncio
import copy
import hashlib
import itertools
import logging
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from .garbage import controller_of
from .jobs import is_finished as job_is_finished
from .noderesources import MalformedPod, pod_requests
from .quantity import QuantityError, canonical, decode_quantity
from .resources import BY_PATH
from .selectors import SelectorError, label_selector_from_object
from .store import ApiError, Change, now_rfc3339

if TYPE_CHECKING:
    from .sim import KubeSim

log = logging.getLogger("kubesim.kueue")

GROUP = "kueue.x-k8s.io"
API_VERSION = f"{GROUP}/v1beta2"
VISIBILITY_GROUP = "visibility.kueue.x-k8s.io"
VISIBILITY_VERSION = "v1beta2"

QUEUE_LABEL = "kueue.x-k8s.io/queue-name"
PRIORITY_LABEL = "kueue.x-k8s.io/priority-class"
MAX_EXEC_LABEL = "kueue.x-k8s.io/max-exec-time-seconds"
MANAGED_LABEL = "kueue.x-k8s.io/managed"
JOB_UID_LABEL = "kueue.x-k8s.io/job-uid"
PODSET_LABEL = "kueue.x-k8s.io/podset"
LOCAL_QUEUE_LABEL = "kueue.x-k8s.io/local-queue-name"
CLUSTER_QUEUE_LABEL = "kueue.x-k8s.io/cluster-queue-name"
POD_FINALIZER = "kueue.x-k8s.io/managed"
ADMISSION_GATE = "kueue.x-k8s.io/admission"
MAIN_POD_SET = "main"
ADMISSION = "kueue-admission"
JOB_CONTROLLER = "kueue-job-controller"
DEFAULT_PENDING_LIMIT = 1000
MAX_PENDING_LIMIT = 100_000

JOBS = BY_PATH[("batch", "v1", "jobs")]
PODS = BY_PATH[("", "v1", "pods")]
NAMESPACES = BY_PATH[("", "v1", "namespaces")]
FLAVORS = BY_PATH[(GROUP, "v1beta2", "resourceflavors")]
CLUSTER_QUEUES = BY_PATH[(GROUP, "v1beta2", "clusterqueues")]
LOCAL_QUEUES = BY_PATH[(GROUP, "v1beta2", "localqueues")]
WORKLOADS = BY_PATH[(GROUP, "v1beta2", "workloads")]
PRIORITY_CLASSES = BY_PATH[(GROUP, "v1beta2", "workloadpriorityclasses")]
_KUEUE_PLURALS = frozenset(
    {"resourceflavors", "clusterqueues", "localqueues", "workloads", "workloadpriorityclasses"}
)

Obj = dict[str, Any]


# -- pure parts ----------------------------------------------------------------------------------


def workload_name(owner_kind: str, owner_group: str, name: str, uid: str) -> str:
    """``GetWorkloadNameForOwnerWithGVK``: kind-name, cut to fit, and five hex digits of a
    SHA-1 of the owner's kind, group, name and uid."""
    digest = hashlib.sha1(f"{owner_kind}\n{owner_group}\n{name}\n{uid}".encode()).hexdigest()
    prefix = f"{owner_kind.lower()}-{name}"[: 253 - 1 - 5]
    return f"{prefix}-{digest[:5]}"


def format_quantity(resource: str, value: Decimal) -> str:
    """How Kueue prints an amount: cpu in (milli)cores, memory-like in binary units."""
    if resource in ("memory", "ephemeral-storage") or resource.startswith("hugepages-"):
        if value == value.to_integral_value() and value >= 1024:
            amount, suffix = int(value), 0
            while amount % 1024 == 0 and suffix < 6:
                amount, suffix = amount // 1024, suffix + 1
            return f"{amount}{['', 'Ki', 'Mi', 'Gi', 'Ti', 'Pi', 'Ei'][suffix]}"
    return canonical(format(value.normalize(), "f"))


def condition_true(obj: Mapping, kind: str) -> bool:
    return any(
        c.get("type") == kind and c.get("status") == "True"
        for c in (obj.get("status") or {}).get("conditions") or []
    )


def set_condition(
    conditions: list[dict], kind: str, status: str, reason: str, message: str, generation: int
) -> bool:
    """``meta.SetStatusCondition``: the transition time moves only when the status does."""
    for condition in conditions:
        if condition.get("type") == kind:
            changed = (condition.get("status"), condition.get("reason"), condition.get("message"))
            if changed == (status, reason, message):
                return False
            if condition.get("status") != status:
                condition["lastTransitionTime"] = now_rfc3339()
            condition.update(
                status=status, reason=reason, message=message, observedGeneration=generation
            )
            return True
    conditions.append(
        {
            "type": kind,
            "status": status,
            "observedGeneration": generation,
            "lastTransitionTime": now_rfc3339(),
            "reason": reason,
            "message": message,
        }
    )
    return True


def workload_priority(workload: Mapping) -> int:
    return (workload.get("spec") or {}).get("priority") or 0


def is_pending(workload: Mapping) -> bool:
    """Waiting for quota: active, not finished, without a reservation."""
    spec, status = workload.get("spec") or {}, workload.get("status") or {}
    return (
        spec.get("active", True) is not False
        and not condition_true(workload, "Finished")
        and not status.get("admission")
        and not workload["metadata"].get("deletionTimestamp")
    )


def holds_quota(workload: Mapping) -> bool:
    return bool((workload.get("status") or {}).get("admission")) and not condition_true(
        workload, "Finished"
    )


def pod_set_requests(workload: Mapping, covered: set[str]) -> dict[str, Decimal]:
    """The Workload's requests in all: each pod's (``PodRequests``) times the count, plus
    ``pods`` when the ClusterQueue counts pods."""
    total: dict[str, Decimal] = {}
    for pod_set in (workload.get("spec") or {}).get("podSets") or []:
        count = pod_set.get("count", 1)
        template = {
            "spec": _limits_as_missing_requests((pod_set.get("template") or {}).get("spec"))
        }
        for name, amount in pod_requests(template).items():
            if amount:
                total[name] = total.get(name, Decimal(0)) + amount * count
        if "pods" in covered:
            total["pods"] = total.get("pods", Decimal(0)) + count
    return total


def _limits_as_missing_requests(spec: Mapping | None) -> dict:
    """``UseLimitsAsMissingRequestsInPod``: a limit without a request counts as requested."""
    spec = copy.deepcopy(dict(spec or {}))
    for key in ("initContainers", "containers"):
        for container in spec.get(key) or []:
            resources = container.setdefault("resources", {})
            requests = resources.setdefault("requests", {})
            for name, amount in (resources.get("limits") or {}).items():
                requests.setdefault(name, amount)
    return spec


@dataclass(frozen=True)
class Fit:
    flavors: dict[str, str] | None  # resource -> flavor, when it fits
    reason: str = ""
    message: str = ""


def nominal_quotas(cluster_queue: Mapping) -> dict[tuple[str, str], Decimal]:
    quotas = {}
    for group in (cluster_queue.get("spec") or {}).get("resourceGroups") or []:
        for flavor in group.get("flavors") or []:
            for resource in flavor.get("resources") or []:
                try:
                    amount = decode_quantity(resource.get("nominalQuota", "0"))
                except QuantityError:
                    amount = Decimal(0)
                quotas[(flavor["name"], resource["name"])] = amount
    return quotas


def assign_flavors(
    cluster_queue: Mapping,
    requests: Mapping[str, Decimal],
    usage: Mapping[tuple[str, str], Decimal],
) -> Fit:
    """The flavor assigner without borrowing or preemption: for each resource group the
    requests touch, the first flavor where every requested resource of the group fits."""
    groups = (cluster_queue.get("spec") or {}).get("resourceGroups") or []
    quotas = nominal_quotas(cluster_queue)
    assigned: dict[str, str] = {}
    for resource in sorted(requests):
        if not any(resource in (g.get("coveredResources") or []) for g in groups):
            return Fit(None, "Pending", f"resource {resource} unavailable in ClusterQueue")
    reasons = []
    exceeds_everywhere = True
    for group in groups:
        wanted = [r for r in group.get("coveredResources") or [] if r in requests]
        if not wanted:
            continue
        chosen = None
        for flavor in group.get("flavors") or []:
            name = flavor["name"]
            problem = None
            for resource in wanted:
                quota = quotas.get((name, resource), Decimal(0))
                used = usage.get((name, resource), Decimal(0))
                need = requests[resource]
                if need > quota:
                    problem = (
                        f"insufficient quota for {resource} in flavor {name}, previously "
                        f"considered podsets requests (0) + current podset request "
                        f"({format_quantity(resource, need)}) > maximum capacity "
                        f"({format_quantity(resource, quota)})"
                    )
                    break
                if used + need > quota:
                    exceeds_everywhere = False
                    problem = (
                        f"insufficient unused quota for {resource} in flavor {name}, "
                        f"{format_quantity(resource, used + need - quota)} more needed"
                    )
                    break
            if problem is None:
                chosen = name
                break
            reasons.append(problem)
        if chosen is None:
            reason = "ExceedsMaxQuota" if exceeds_everywhere else "WaitingForQuota"
            return Fit(None, reason, "; ".join(reasons))
        assigned.update(dict.fromkeys(wanted, chosen))
    return Fit(assigned)


def namespace_admitted(cluster_queue: Mapping, namespace: Mapping | None) -> bool:
    """``namespaceSelector``: none admits no namespace, ``{}`` every one."""
    raw = (cluster_queue.get("spec") or {}).get("namespaceSelector")
    if raw is None or namespace is None:
        return False
    try:
        selector = label_selector_from_object(raw)
    except SelectorError:
        return False
    return selector.matches((namespace.get("metadata") or {}).get("labels") or {})


def queue_order(workload: Mapping, sequence: int) -> tuple:
    """Higher priority first, then the older (kubesim keeps creation order within a second)."""
    meta = workload["metadata"]
    return (-workload_priority(workload), meta.get("creationTimestamp", ""), sequence)


def pending_items(
    ordered: list[Mapping], offset: int = 0, limit: int = DEFAULT_PENDING_LIMIT
) -> list[dict]:
    """``PendingWorkload`` items for a ClusterQueue's pending Workloads in queue order."""
    items, per_queue = [], {}
    for index, workload in enumerate(ordered):
        if index >= offset + limit:
            break
        meta = workload["metadata"]
        queue_key = (meta["namespace"], workload["spec"].get("queueName", ""))
        position = per_queue.get(queue_key, 0)
        per_queue[queue_key] = position + 1
        if index >= offset:
            items.append(pending_item(workload, index, position))
    return items


def pending_item(workload: Mapping, in_cluster_queue: int, in_local_queue: int) -> dict:
    meta = workload["metadata"]
    return {
        "metadata": {
            "name": meta["name"],
            "namespace": meta["namespace"],
            "creationTimestamp": meta.get("creationTimestamp"),
            "ownerReferences": [
                {k: ref[k] for k in ("apiVersion", "kind", "name", "uid") if k in ref}
                for ref in meta.get("ownerReferences") or []
            ],
        },
        "priority": workload_priority(workload),
        "localQueueName": workload["spec"].get("queueName", ""),
        "positionInClusterQueue": in_cluster_queue,
        "positionInLocalQueue": in_local_queue,
    }


def summary(items: list[dict]) -> dict:
    return {
        "kind": "PendingWorkloadsSummary",
        "apiVersion": f"{VISIBILITY_GROUP}/{VISIBILITY_VERSION}",
        "metadata": {"creationTimestamp": None},
        "items": items,
    }


# -- a scenario ---------------------------------------------------------------------------------


def queue_manifests(
    quotas: Mapping[str, str | int],
    local_queues: Mapping[str, str] | None = None,
    cluster_queue: str = "cluster-queue",
    flavor: str = "default-flavor",
    node_labels: Mapping[str, str] | None = None,
    tolerations: list[dict] | None = None,
    priority_classes: Mapping[str, int] | None = None,
    strategy: str = "BestEffortFIFO",
) -> list[dict]:
    """The objects of a one-flavor Kueue setup, for ``KubeSim(kueue=True).load(...)``:

        sim.load(queue_manifests({"cpu": 8, "memory": "32Gi", "nvidia.com/gpu": 2},
                                 local_queues={"default": "user-queue"},
                                 priority_classes={"high": 1000}))

    One ResourceFlavor (with ``node_labels`` and ``tolerations`` for the pods it admits), one
    ClusterQueue open to every namespace whose quota covers exactly ``quotas``, a LocalQueue
    per ``{namespace: name}`` (default: ``user-queue`` in ``default``), and
    WorkloadPriorityClasses ``{name: value}``. The names are those of Kueue's own examples.
    """
    flavor_spec: dict[str, Any] = {}
    if node_labels:
        flavor_spec["nodeLabels"] = dict(node_labels)
    if tolerations:
        flavor_spec["tolerations"] = list(tolerations)
    manifests: list[dict] = [
        {
            "apiVersion": API_VERSION,
            "kind": "ResourceFlavor",
            "metadata": {"name": flavor},
            "spec": flavor_spec,
        },
        {
            "apiVersion": API_VERSION,
            "kind": "ClusterQueue",
            "metadata": {"name": cluster_queue},
            "spec": {
                "namespaceSelector": {},
                "queueingStrategy": strategy,
                "resourceGroups": [
                    {
                        "coveredResources": list(quotas),
                        "flavors": [
                            {
                                "name": flavor,
                                "resources": [
                                    {"name": name, "nominalQuota": str(amount)}
                                    for name, amount in quotas.items()
                                ],
                            }
                        ],
                    }
                ],
            },
        },
    ]
    for namespace, name in (local_queues or {"default": "user-queue"}).items():
        manifests.append(
            {
                "apiVersion": API_VERSION,
                "kind": "LocalQueue",
                "metadata": {"name": name, "namespace": namespace},
                "spec": {"clusterQueue": cluster_queue},
            }
        )
    for name, value in (priority_classes or {}).items():
        manifests.append(
            {
                "apiVersion": API_VERSION,
                "kind": "WorkloadPriorityClass",
                "metadata": {"name": name},
                "value": value,
            }
        )
    return manifests


# -- webhooks -----------------------------------------------------------------------------------


def _labels(obj: Mapping) -> Mapping[str, str]:
    return (obj.get("metadata") or {}).get("labels") or {}


class Kueue:
    """The controllers; ``admit_new`` is the mutating webhook for new Jobs and pods."""

    def __init__(self, sim: KubeSim):
        self.sim = sim
        self.store = sim.store
        self._scheduled = False
        self._sequence = itertools.count()
        self._order: dict[str, int] = {}  # workload uid -> creation sequence
        self._admitted_at: dict[str, float] = {}  # workload uid -> monotonic admission time
        self._timers: dict[str, asyncio.TimerHandle] = {}
        self._events: dict[tuple[str, str, str], str] = {}  # last Pending message per workload
        # The Jobs and pods Kueue manages, so that a pass never walks every pod.
        self._jobs: set[tuple[str, str]] = set()
        self._pods: set[tuple[str, str]] = set()
        self.store.subscribe(self.on_change)

    def admit_new(self, kind: str, obj: Obj) -> Obj:
        if kind == "Job" and _labels(obj).get(QUEUE_LABEL):
            obj.setdefault("spec", {})["suspend"] = True
        elif kind == "Pod" and _labels(obj).get(QUEUE_LABEL) and not self._under_managed_job(obj):
            meta = obj["metadata"]
            meta.setdefault("labels", {})[MANAGED_LABEL] = "true"
            finalizers = meta.setdefault("finalizers", [])
            if POD_FINALIZER not in finalizers:
                finalizers.append(POD_FINALIZER)
            gates = obj.setdefault("spec", {}).setdefault("schedulingGates", [])
            if not any(g.get("name") == ADMISSION_GATE for g in gates):
                gates.append({"name": ADMISSION_GATE})
        return obj

    def _under_managed_job(self, pod: Obj) -> bool:
        ref = controller_of(pod.get("metadata") or {}, "Job")
        if ref is None:
            return False
        job = self.store.find(JOBS, pod["metadata"].get("namespace"), ref.get("name", ""))
        return job is not None and bool(_labels(job).get(QUEUE_LABEL))

    # -- triggers -------------------------------------------------------------------------

    def on_change(self, change: Change) -> None:
        if change.plural in _KUEUE_PLURALS:
            if change.plural == "workloads" and change.type == "ADDED":
                self._order.setdefault(change.obj["metadata"]["uid"], next(self._sequence))
            self._schedule()
        elif change.plural in ("jobs", "pods"):
            labels = _labels(change.obj)
            wanted = (
                labels.get(QUEUE_LABEL) if change.plural == "jobs" else labels.get(MANAGED_LABEL)
            )
            if not wanted:
                return
            meta = change.obj["metadata"]
            managed = self._jobs if change.plural == "jobs" else self._pods
            if change.type == "DELETED":
                managed.discard((meta["namespace"], meta["name"]))
            else:
                managed.add((meta["namespace"], meta["name"]))
            self._schedule()
        elif change.plural == "namespaces":
            self._schedule()

    def _schedule(self) -> None:
        if self._scheduled:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return  # objects loaded before the loop runs: start() catches up
        self._scheduled = True
        loop.call_soon(self._run)

    def start(self) -> None:
        self._schedule()

    def stop(self) -> None:
        for timer in self._timers.values():
            timer.cancel()
        self._timers.clear()

    def _run(self) -> None:
        self._scheduled = False
        try:
            self.reconcile()
        except Exception:  # keep the emulator alive; the test will see the log
            log.exception("kueue reconciliation failed")

    # -- one pass -------------------------------------------------------------------------

    def reconcile(self) -> None:
        workloads = {self._owner_key(w): w for w in self.store.objects(WORKLOADS)}
        for key in sorted(self._jobs):
            job = self.store.find(JOBS, *key)
            if job is not None and _labels(job).get(QUEUE_LABEL):
                self._sync_owner(job, "Job", "batch", workloads)
        for key in sorted(self._pods):
            pod = self.store.find(PODS, *key)
            if pod is not None and _labels(pod).get(MANAGED_LABEL) == "true":
                self._sync_owner(pod, "Pod", "", workloads)
        self._schedule_cluster_queues()
        self._update_queue_status()

    @staticmethod
    def _owner_key(workload: Obj) -> str:
        ref = controller_of(workload["metadata"], "Job") or controller_of(
            workload["metadata"], "Pod"
        )
        return (ref or {}).get("uid", "")

    def _sync_owner(self, owner: Obj, kind: str, group: str, workloads: dict[str, Obj]) -> None:
        meta = owner["metadata"]
        workload = workloads.get(meta["uid"])
        finished, succeeded, message = self._owner_finished(owner, kind)
        if kind == "Pod" and (finished or meta.get("deletionTimestamp")):
            self._release_pod(owner)
        if workload is None:
            if not finished and not meta.get("deletionTimestamp"):
                self._create_workload(owner, kind, group)
            return
        if finished and not condition_true(workload, "Finished"):
            self._finish(workload, succeeded, message, owner)
            return
        if holds_quota(workload) and condition_true(workload, "Admitted"):
            self._start_owner(owner, kind, workload)
            self._watch_exec_time(workload)

    @staticmethod
    def _owner_finished(owner: Obj, kind: str) -> tuple[bool, bool, str]:
        if kind == "Job":
            for cond in (owner.get("status") or {}).get("conditions") or []:
                if cond.get("type") in ("Complete", "Failed") and cond.get("status") == "True":
                    return True, cond["type"] == "Complete", cond.get("message", "")
            return job_is_finished(owner), True, ""
        phase = (owner.get("status") or {}).get("phase")
        if phase in ("Succeeded", "Failed"):
            return True, phase == "Succeeded", (owner.get("status") or {}).get("message", "")
        return False, False, ""

    def _release_pod(self, pod: Obj) -> None:
        meta = pod["metadata"]
        if POD_FINALIZER not in (meta.get("finalizers") or []):
            return
        new = copy.deepcopy(pod)
        new["metadata"]["finalizers"] = [f for f in meta["finalizers"] if f != POD_FINALIZER]
        self.store.replace(PODS, meta["namespace"], meta["name"], new, "all", check_version=False)

    def _create_workload(self, owner: Obj, kind: str, group: str) -> None:
        meta = owner["metadata"]
        labels = _labels(owner)
        spec = owner.get("spec") or {}
        if kind == "Job":
            count = spec.get("parallelism", 1)
            if spec.get("completions") is not None:
                count = min(count, spec["completions"])
            template = copy.deepcopy(spec.get("template") or {})
        else:
            count = 1
            pod_spec = copy.deepcopy(spec)
            pod_spec["schedulingGates"] = [
                g for g in pod_spec.get("schedulingGates") or [] if g.get("name") != ADMISSION_GATE
            ]
            if not pod_spec["schedulingGates"]:
                del pod_spec["schedulingGates"]
            for key in ("nodeName",):
                pod_spec.pop(key, None)
            template = {"metadata": {"labels": dict(labels)}, "spec": pod_spec}
        workload_spec: Obj = {
            "active": True,
            "queueName": labels[QUEUE_LABEL],
            "podSets": [{"name": MAIN_POD_SET, "count": count, "template": template}],
        }
        class_name = labels.get(PRIORITY_LABEL)
        if class_name:
            priority_class = self.store.find(PRIORITY_CLASSES, None, class_name)
            if priority_class is None:
                self._event_once(
                    owner,
                    "Warning",
                    "WorkloadPriorityClassNotFound",
                    f'WorkloadPriorityClass "{class_name}" not found',
                    JOB_CONTROLLER,
                )
                return
            workload_spec["priorityClassRef"] = {
                "group": GROUP,
                "kind": "WorkloadPriorityClass",
                "name": class_name,
            }
            workload_spec["priority"] = int(priority_class.get("value", 0))
        if labels.get(MAX_EXEC_LABEL, "").isdigit() and int(labels[MAX_EXEC_LABEL]) > 0:
            workload_spec["maximumExecutionTimeSeconds"] = int(labels[MAX_EXEC_LABEL])
        workload = {
            "apiVersion": API_VERSION,
            "kind": "Workload",
            "metadata": {
                "name": workload_name(kind, group, meta["name"], meta["uid"]),
                "namespace": meta["namespace"],
                "labels": {JOB_UID_LABEL: meta["uid"]},
                "ownerReferences": [
                    {
                        "apiVersion": f"{group}/v1" if group else "v1",
                        "kind": kind,
                        "name": meta["name"],
                        "uid": meta["uid"],
                        "controller": True,
                        "blockOwnerDeletion": True,
                    }
                ],
            },
            "spec": workload_spec,
        }
        try:
            created = self.sim.create_object(WORKLOADS, meta["namespace"], workload)
        except ApiError as err:
            if err.code != 409:
                log.warning("creating a workload for %s failed: %s", meta["name"], err.message)
            return
        self.sim.record_event(
            owner,
            "Normal",
            "CreatedWorkload",
            f"Created Workload: {meta['namespace']}/{created['metadata']['name']}",
            JOB_CONTROLLER,
        )

    # -- admission ------------------------------------------------------------------------

    def _local_queue_target(self, workload: Obj) -> tuple[Obj | None, str, str]:
        """(cluster queue, reason, message): where the Workload queues, or why it cannot."""
        meta = workload["metadata"]
        queue_name = workload["spec"].get("queueName", "")
        local = self.store.find(LOCAL_QUEUES, meta["namespace"], queue_name)
        if local is None:
            return None, "Misconfigured", f"LocalQueue {queue_name} doesn't exist"
        cq_name = (local.get("spec") or {}).get("clusterQueue", "")
        cluster_queue = self.store.find(CLUSTER_QUEUES, None, cq_name)
        if cluster_queue is None:
            return None, "Misconfigured", f"ClusterQueue {cq_name} doesn't exist"
        return cluster_queue, "", ""

    def pending_in(self, cq_name: str) -> list[Obj]:
        """The ClusterQueue's pending Workloads in queue order."""
        found = []
        for workload in self.store.objects(WORKLOADS):
            if not is_pending(workload):
                continue
            cluster_queue, _, _ = self._local_queue_target(workload)
            if cluster_queue is not None and cluster_queue["metadata"]["name"] == cq_name:
                found.append(workload)
        return sorted(found, key=lambda w: queue_order(w, self._order.get(w["metadata"]["uid"], 0)))

    def _usage(self, cq_name: str) -> dict[tuple[str, str], Decimal]:
        usage: dict[tuple[str, str], Decimal] = {}
        for workload in self.store.objects(WORKLOADS):
            admission = (workload.get("status") or {}).get("admission") or {}
            if admission.get("clusterQueue") != cq_name or not holds_quota(workload):
                continue
            for assignment in admission.get("podSetAssignments") or []:
                for resource, amount in (assignment.get("resourceUsage") or {}).items():
                    flavor = (assignment.get("flavors") or {}).get(resource, "")
                    key = (flavor, resource)
                    usage[key] = usage.get(key, Decimal(0)) + decode_quantity(amount)
        return usage

    def _missing_flavors(self, cluster_queue: Obj) -> list[str]:
        names = {
            flavor["name"]
            for group in (cluster_queue.get("spec") or {}).get("resourceGroups") or []
            for flavor in group.get("flavors") or []
        }
        return sorted(n for n in names if self.store.find(FLAVORS, None, n) is None)

    def _schedule_cluster_queues(self) -> None:
        # Workloads that cannot reach a ClusterQueue say why.
        for workload in list(self.store.objects(WORKLOADS)):
            if is_pending(workload):
                cluster_queue, reason, message = self._local_queue_target(workload)
                if cluster_queue is None:
                    self._not_admitted(workload, reason, message)
        for cluster_queue in list(self.store.objects(CLUSTER_QUEUES)):
            self._schedule_one(cluster_queue)

    def _schedule_one(self, cluster_queue: Obj) -> None:
        name = cluster_queue["metadata"]["name"]
        pending = self.pending_in(name)
        if not pending:
            return
        if self._missing_flavors(cluster_queue):
            for workload in pending:
                self._not_admitted(workload, "Suspended", f"ClusterQueue {name} is inactive")
            return
        usage = self._usage(name)
        covered = {
            r
            for g in (cluster_queue.get("spec") or {}).get("resourceGroups") or []
            for r in g.get("coveredResources") or []
        }
        strict = (cluster_queue.get("spec") or {}).get("queueingStrategy") == "StrictFIFO"
        for workload in pending:
            namespace = self.store.find(NAMESPACES, None, workload["metadata"]["namespace"])
            if not namespace_admitted(cluster_queue, namespace):
                self._not_admitted(
                    workload,
                    "Misconfigured",
                    "workload namespace doesn't match ClusterQueue selector",
                )
                continue
            try:
                requests = pod_set_requests(workload, covered)
            except MalformedPod as err:
                self._not_admitted(workload, "Pending", str(err))
                continue
            fit = assign_flavors(cluster_queue, requests, usage)
            if fit.flavors is None:
                message = f"couldn't assign flavors to pod set {MAIN_POD_SET}: {fit.message}"
                self._not_admitted(workload, fit.reason, message)
                if strict:
                    break
                continue
            self._admit(workload, name, fit.flavors, requests)
            for resource, amount in requests.items():
                key = (fit.flavors[resource], resource)
                usage[key] = usage.get(key, Decimal(0)) + amount

    def _write_workload_status(self, workload: Obj, status: Obj) -> Obj:
        meta = workload["metadata"]
        current = self.store.find(WORKLOADS, meta["namespace"], meta["name"])
        if current is None or current.get("status") == status:
            return current or workload
        new = copy.deepcopy(current)
        new["status"] = status
        return self.store.replace(
            WORKLOADS, meta["namespace"], meta["name"], new, "status", check_version=False
        )

    def _not_admitted(self, workload: Obj, reason: str, message: str) -> None:
        status = copy.deepcopy(workload.get("status") or {})
        conditions = status.setdefault("conditions", [])
        generation = workload["metadata"].get("generation", 1)
        if set_condition(conditions, "QuotaReserved", "False", reason, message, generation):
            self._write_workload_status(workload, status)
            self._event_once(workload, "Normal", "Pending", message, ADMISSION)

    def _admit(
        self, workload: Obj, cq_name: str, flavors: dict[str, str], requests: dict[str, Decimal]
    ) -> None:
        status = copy.deepcopy(workload.get("status") or {})
        pod_set = workload["spec"]["podSets"][0]
        status["admission"] = {
            "clusterQueue": cq_name,
            "podSetAssignments": [
                {
                    "name": pod_set["name"],
                    "flavors": {r: flavors[r] for r in sorted(requests)},
                    "resourceUsage": {r: format_quantity(r, requests[r]) for r in sorted(requests)},
                    "count": pod_set.get("count", 1),
                }
            ],
        }
        conditions = status.setdefault("conditions", [])
        generation = workload["metadata"].get("generation", 1)
        set_condition(
            conditions,
            "QuotaReserved",
            "True",
            "QuotaReserved",
            f"Quota reserved in ClusterQueue {cq_name}",
            generation,
        )
        set_condition(
            conditions, "Admitted", "True", "Admitted", "The workload is admitted", generation
        )
        for kind in ("Evicted", "Requeued"):
            status["conditions"] = [c for c in conditions if c.get("type") != kind]
            conditions = status["conditions"]
        admitted = self._write_workload_status(workload, status)
        self._admitted_at[workload["metadata"]["uid"]] = time.monotonic()
        self.sim.record_event(
            admitted,
            "Normal",
            "QuotaReserved",
            f"Quota reserved in ClusterQueue {cq_name}, wait time since queued was 0s",
            ADMISSION,
        )
        self.sim.record_event(
            admitted,
            "Normal",
            "Admitted",
            f"Admitted by ClusterQueue {cq_name}, wait time since reservation was 0s",
            ADMISSION,
        )
        owner = self._owner(admitted)
        if owner is not None:
            self._start_owner(owner[0], owner[1], admitted)
            self._watch_exec_time(admitted)

    def _owner(self, workload: Obj) -> tuple[Obj, str] | None:
        meta = workload["metadata"]
        for kind, rt in (("Job", JOBS), ("Pod", PODS)):
            ref = controller_of(meta, kind)
            if ref is not None:
                owner = self.store.find(rt, meta["namespace"], ref["name"])
                if owner is not None and owner["metadata"]["uid"] == ref["uid"]:
                    return owner, kind
        return None

    def _pod_set_info(self, workload: Obj) -> tuple[dict, list, dict]:
        """(nodeSelector, tolerations, labels) that admission gives the pods."""
        admission = workload["status"]["admission"]
        selector: dict[str, str] = {}
        tolerations: list[dict] = []
        for flavor_name in dict.fromkeys(admission["podSetAssignments"][0]["flavors"].values()):
            flavor = self.store.find(FLAVORS, None, flavor_name) or {}
            selector.update((flavor.get("spec") or {}).get("nodeLabels") or {})
            tolerations += (flavor.get("spec") or {}).get("tolerations") or []
        labels = {
            PODSET_LABEL: MAIN_POD_SET,
            LOCAL_QUEUE_LABEL: workload["spec"].get("queueName", ""),
            CLUSTER_QUEUE_LABEL: admission["clusterQueue"],
        }
        return selector, tolerations, labels

    def _start_owner(self, owner: Obj, kind: str, workload: Obj) -> None:
        meta = owner["metadata"]
        if kind == "Job":
            if not (owner.get("spec") or {}).get("suspend"):
                return
            selector, tolerations, labels = self._pod_set_info(workload)
            new = copy.deepcopy(owner)
            new["spec"]["suspend"] = False
            template = new["spec"].setdefault("template", {})
            template.setdefault("metadata", {}).setdefault("labels", {}).update(labels)
            pod_spec = template.setdefault("spec", {})
            if selector:
                pod_spec.setdefault("nodeSelector", {}).update(selector)
            if tolerations:
                pod_spec["tolerations"] = [*(pod_spec.get("tolerations") or []), *tolerations]
            self.store.replace(JOBS, meta["namespace"], meta["name"], new, check_version=False)
            self.sim.record_event(
                owner,
                "Normal",
                "Started",
                f"Admitted by clusterQueue {workload['status']['admission']['clusterQueue']}",
                JOB_CONTROLLER,
            )
            return
        gates = (owner.get("spec") or {}).get("schedulingGates") or []
        if not any(g.get("name") == ADMISSION_GATE for g in gates):
            return
        selector, tolerations, labels = self._pod_set_info(workload)
        new = copy.deepcopy(owner)
        remaining = [g for g in gates if g.get("name") != ADMISSION_GATE]
        if remaining:
            new["spec"]["schedulingGates"] = remaining
        else:
            new["spec"].pop("schedulingGates", None)
        new["metadata"].setdefault("labels", {}).update(labels)
        if selector:
            new["spec"].setdefault("nodeSelector", {}).update(selector)
        if tolerations:
            new["spec"]["tolerations"] = [*(new["spec"].get("tolerations") or []), *tolerations]
        self.store.replace(PODS, meta["namespace"], meta["name"], new, check_version=False)

    def _finish(self, workload: Obj, succeeded: bool, message: str, owner: Obj) -> None:
        status = copy.deepcopy(workload.get("status") or {})
        reason = "Succeeded" if succeeded else "Failed"
        set_condition(
            status.setdefault("conditions", []),
            "Finished",
            "True",
            reason,
            message,
            workload["metadata"].get("generation", 1),
        )
        self._write_workload_status(workload, status)
        self._cancel_timer(workload["metadata"]["uid"])
        meta = workload["metadata"]
        self.sim.record_event(
            owner,
            "Normal",
            "FinishedWorkload",
            f"Workload '{meta['namespace']}/{meta['name']}' is declared finished",
            JOB_CONTROLLER,
        )

    # -- maximum execution time -----------------------------------------------------------

    def _watch_exec_time(self, workload: Obj) -> None:
        limit = (workload.get("spec") or {}).get("maximumExecutionTimeSeconds")
        uid = workload["metadata"]["uid"]
        if limit is None or uid in self._timers:
            return
        started = self._admitted_at.setdefault(uid, time.monotonic())
        left = limit - (time.monotonic() - started)
        key = (workload["metadata"]["namespace"], workload["metadata"]["name"])
        self._timers[uid] = asyncio.get_running_loop().call_later(
            max(0.0, left), self._exec_time_over, key, uid
        )

    def _cancel_timer(self, uid: str) -> None:
        timer = self._timers.pop(uid, None)
        if timer is not None:
            timer.cancel()

    def _exec_time_over(self, key: tuple[str, str], uid: str) -> None:
        self._timers.pop(uid, None)
        workload = self.store.find(WORKLOADS, *key)
        if workload is None or workload["metadata"]["uid"] != uid or not holds_quota(workload):
            return
        limit = workload["spec"]["maximumExecutionTimeSeconds"]
        self.sim.record_event(
            workload,
            "Warning",
            "MaximumExecutionTimeExceeded",
            f"The maximum execution time ({limit}s) exceeded",
            "kueue-workload-controller",
        )
        self.deactivate(
            workload, "MaximumExecutionTimeExceeded", "exceeding the maximum execution time"
        )

    def deactivate(self, workload: Obj, cause: str, why: str) -> None:
        """Set ``spec.active`` false, evict, release the quota and stop the owner."""
        meta = workload["metadata"]
        new = copy.deepcopy(workload)
        new["spec"]["active"] = False
        workload = self.store.replace(
            WORKLOADS, meta["namespace"], meta["name"], new, check_version=False
        )
        status = copy.deepcopy(workload.get("status") or {})
        generation = workload["metadata"].get("generation", 1)
        message = f"The workload is deactivated due to {why}"
        reason = f"DeactivatedDueTo{cause}"
        conditions = status.setdefault("conditions", [])
        set_condition(conditions, "Evicted", "True", reason, message, generation)
        set_condition(conditions, "QuotaReserved", "False", "Pending", message, generation)
        set_condition(
            conditions,
            "Admitted",
            "False",
            "NoReservation",
            "The workload has no reservation",
            generation,
        )
        set_condition(conditions, "Requeued", "False", reason, message, generation)
        status.pop("admission", None)
        self._write_workload_status(workload, status)
        self._admitted_at.pop(meta["uid"], None)
        owner = self._owner(workload)
        if owner is None:
            return
        obj, kind = owner
        if kind == "Job":
            if not (obj.get("spec") or {}).get("suspend"):
                stopped = copy.deepcopy(obj)
                stopped["spec"]["suspend"] = True
                self.store.replace(
                    JOBS,
                    obj["metadata"]["namespace"],
                    obj["metadata"]["name"],
                    stopped,
                    check_version=False,
                )
                self.sim.record_event(obj, "Normal", "Stopped", message, JOB_CONTROLLER)
        else:
            self.sim.delete_pod(obj, None)

    # -- queue status ---------------------------------------------------------------------

    def _update_queue_status(self) -> None:
        workloads = list(self.store.objects(WORKLOADS))
        targets = {}
        for workload in workloads:
            cluster_queue, _, _ = self._local_queue_target(workload)
            if cluster_queue is not None:
                targets[workload["metadata"]["uid"]] = cluster_queue["metadata"]["name"]
        for cluster_queue in list(self.store.objects(CLUSTER_QUEUES)):
            name = cluster_queue["metadata"]["name"]
            mine = [w for w in workloads if targets.get(w["metadata"]["uid"]) == name]
            missing = self._missing_flavors(cluster_queue)
            active = ("True", "Ready", "Can admit new workloads")
            if missing:
                active = (
                    "False",
                    "FlavorNotFound",
                    "Can't admit new workloads: references missing ResourceFlavor(s): "
                    f"{','.join(missing)}.",
                )
            usage = self._usage(name)
            flavors = [
                {
                    "name": flavor["name"],
                    "resources": [
                        {
                            "name": r["name"],
                            "total": format_quantity(
                                r["name"], usage.get((flavor["name"], r["name"]), Decimal(0))
                            ),
                            "borrowed": "0",
                        }
                        for r in flavor.get("resources") or []
                    ],
                }
                for group in (cluster_queue.get("spec") or {}).get("resourceGroups") or []
                for flavor in group.get("flavors") or []
            ]
            self._queue_status(
                CLUSTER_QUEUES,
                cluster_queue,
                active,
                _counts(mine),
                {"flavorsReservation": flavors, "flavorsUsage": copy.deepcopy(flavors)},
            )
        for local in list(self.store.objects(LOCAL_QUEUES)):
            meta = local["metadata"]
            cq_name = (local.get("spec") or {}).get("clusterQueue", "")
            cluster_queue = self.store.find(CLUSTER_QUEUES, None, cq_name)
            mine = [
                w
                for w in workloads
                if w["metadata"]["namespace"] == meta["namespace"]
                and w["spec"].get("queueName") == meta["name"]
                and w["metadata"]["uid"] in targets
            ]
            if cluster_queue is None:
                active = (
                    "False",
                    "ClusterQueueDoesNotExist",
                    "Can't submit new workloads to clusterQueue",
                )
            elif self._missing_flavors(cluster_queue):
                active = (
                    "False",
                    "ClusterQueueIsInactive",
                    "Can't submit new workloads to clusterQueue",
                )
            else:
                active = ("True", "Ready", "Can submit new workloads to localQueue")
            self._queue_status(LOCAL_QUEUES, local, active, _counts(mine), {})

    def _queue_status(
        self, rt, queue: Obj, active: tuple[str, str, str], counts: dict, extra: dict
    ) -> None:
        status = copy.deepcopy(queue.get("status") or {})
        set_condition(
            status.setdefault("conditions", []),
            "Active",
            *active,
            queue["metadata"].get("generation", 1),
        )
        status.update(counts)
        status.update(extra)
        if status != (queue.get("status") or {}):
            meta = queue["metadata"]
            new = copy.deepcopy(queue)
            new["status"] = status
            self.store.replace(
                rt, meta.get("namespace"), meta["name"], new, "status", check_version=False
            )

    def _event_once(self, obj: Obj, type_: str, reason: str, message: str, component: str) -> None:
        meta = obj["metadata"]
        key = (meta.get("namespace", ""), meta["name"], reason)
        if self._events.get(key) == message:
            return
        self._events[key] = message
        self.sim.record_event(obj, type_, reason, message, component)

    # -- the visibility API ---------------------------------------------------------------

    def pending_workloads(
        self, namespace: str | None, queue: str, kind: str, offset: int = 0, limit: int = 0
    ) -> dict:
        """``PendingWorkloadsSummary`` of a LocalQueue (``kind`` "localqueues") or a
        ClusterQueue ("clusterqueues"); ApiError 404 when there is no such queue."""
        limit = min(limit or DEFAULT_PENDING_LIMIT, MAX_PENDING_LIMIT)
        offset = max(offset, 0)
        if kind == "clusterqueues":
            if self.store.find(CLUSTER_QUEUES, None, queue) is None:
                raise _not_found("clusterqueue", queue)
            return summary(pending_items(self.pending_in(queue), offset, limit))
        local = self.store.find(LOCAL_QUEUES, namespace, queue)
        if local is None:
            raise _not_found("localqueue", queue)
        ordered = self.pending_in((local.get("spec") or {}).get("clusterQueue", ""))
        items, skipped = [], 0
        for index, workload in enumerate(ordered):
            if len(items) >= limit:
                break
            meta = workload["metadata"]
            if meta["namespace"] == namespace and workload["spec"].get("queueName") == queue:
                if skipped < offset:
                    skipped += 1
                else:
                    items.append(pending_item(workload, index, len(items) + offset))
        return summary(items)


def _counts(workloads: Iterable[Obj]) -> dict:
    pending = reserving = admitted = 0
    for workload in workloads:
        if is_pending(workload):
            pending += 1
        elif holds_quota(workload):
            reserving += 1
            if condition_true(workload, "Admitted"):
                admitted += 1
    return {
        "pendingWorkloads": pending,
        "reservingWorkloads": reserving,
        "admittedWorkloads": admitted,
    }


def _not_found(resource: str, name: str) -> ApiError:
    return ApiError(
        404,
        "NotFound",
        f'{resource}.{VISIBILITY_GROUP} "{name}" not found',
        {"name": name, "group": VISIBILITY_GROUP, "kind": resource},
    )


__all__ = [
    "ADMISSION_GATE",
    "QUEUE_LABEL",
    "Fit",
    "Kueue",
    "assign_flavors",
    "format_quantity",
    "namespace_admitted",
    "pending_items",
    "pod_set_requests",
    "queue_manifests",
    "workload_name",
]
