"""Server-side printing: the meta.k8s.io/v1 Table kubectl asks for (`Accept: ...;as=Table`),
with the columns the real apiserver's printers give the types kubectl users look at."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from .resources import ResourceType


def age(timestamp: str | None) -> str:
    """kubectl's short durations: 45s, 12m, 5h, 3d."""
    if not timestamp:
        return "<unknown>"
    then = datetime.strptime(timestamp, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
    seconds = max(0, int((datetime.now(UTC) - then).total_seconds()))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size * (2 if unit != "d" else 1):
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def human_duration(seconds: float) -> str:
    """k8s.io/apimachinery's ``duration.HumanDuration``, finer than ``age``: 95s, 5m30s, 3h20m."""
    seconds = int(seconds)
    if seconds < -1:
        return "<invalid>"
    if seconds < 0:
        return "0s"
    if seconds < 120:
        return f"{seconds}s"
    minutes = seconds // 60
    if minutes < 10:
        rest = seconds % 60
        return f"{minutes}m{rest}s" if rest else f"{minutes}m"
    if minutes < 180:
        return f"{minutes}m"
    hours = minutes // 60
    if hours < 8:
        rest = minutes % 60
        return f"{hours}h{rest}m" if rest else f"{hours}h"
    if hours < 48:
        return f"{hours}h"
    if hours < 24 * 8:
        rest = hours % 24
        return f"{hours // 24}d{rest}h" if rest else f"{hours // 24}d"
    if hours < 24 * 365 * 2:
        return f"{hours // 24}d"
    years, days = divmod(hours // 24, 365)
    return f"{years}y{days}d" if days and years < 8 else f"{years}y"


def _timestamp(value: str) -> datetime:
    return datetime.strptime(value, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)


def _has_condition(obj: dict, kind: str) -> bool:
    return any(
        c.get("type") == kind and c.get("status") == "True"
        for c in (obj.get("status") or {}).get("conditions") or []
    )


def _job_status(job: dict) -> str:
    """printJob's Status column."""
    if _has_condition(job, "Complete"):
        return "Complete"
    if _has_condition(job, "Failed"):
        return "Failed"
    if job["metadata"].get("deletionTimestamp"):
        return "Terminating"
    for kind in ("Suspended", "FailureTarget", "SuccessCriteriaMet"):
        if _has_condition(job, kind):
            return kind
    return "Running"


def _job_completions(job: dict) -> str:
    spec, succeeded = job.get("spec") or {}, (job.get("status") or {}).get("succeeded", 0)
    if spec.get("completions") is not None:
        return f"{succeeded}/{spec['completions']}"
    if (spec.get("parallelism") or 0) > 1:
        return f"{succeeded}/1 of {spec['parallelism']}"
    return f"{succeeded}/1"


def _job_duration(job: dict) -> str:
    status = job.get("status") or {}
    if not status.get("startTime"):
        return ""
    started = _timestamp(status["startTime"])
    ended = _timestamp(status["completionTime"]) if status.get("completionTime") else None
    return human_duration(((ended or datetime.now(UTC)) - started).total_seconds())


def _node_status(node: dict) -> str:
    ready = next(
        (c for c in node.get("status", {}).get("conditions") or [] if c.get("type") == "Ready"),
        None,
    )
    status = (
        "Ready" if ready and ready.get("status") == "True" else "NotReady" if ready else "Unknown"
    )
    if node.get("spec", {}).get("unschedulable"):
        status += ",SchedulingDisabled"
    return status


def _node_roles(node: dict) -> str:
    prefix = "node-role.kubernetes.io/"
    roles = sorted(
        k[len(prefix) :] for k in (node["metadata"].get("labels") or {}) if k.startswith(prefix)
    )
    return ",".join(roles) or "<none>"


def _pod_status(pod: dict) -> str:
    status = pod.get("status") or {}
    if pod["metadata"].get("deletionTimestamp"):
        return "Terminating"
    if any(
        c.get("type") == "PodScheduled" and c.get("reason") == "SchedulingGated"
        for c in status.get("conditions") or []
    ):
        return "SchedulingGated"
    for container in status.get("containerStatuses") or []:
        state = container.get("state") or {}
        if "waiting" in state and state["waiting"].get("reason"):
            return state["waiting"]["reason"]
        if "terminated" in state and status.get("phase") not in ("Succeeded",):
            return state["terminated"].get("reason", "Error")
    if status.get("phase") == "Succeeded":
        return "Completed"
    return status.get("phase", "Pending")


def _pod_ready(pod: dict) -> str:
    statuses = (pod.get("status") or {}).get("containerStatuses") or []
    total = len(pod.get("spec", {}).get("containers") or [])
    return f"{sum(1 for s in statuses if s.get('ready'))}/{total}"


_ACCESS_MODE_SHORT = {
    "ReadWriteOnce": "RWO",
    "ReadOnlyMany": "ROX",
    "ReadWriteMany": "RWX",
    "ReadWriteOncePod": "RWOP",
}


def _access_modes(modes: list | None) -> str:
    return ",".join(_ACCESS_MODE_SHORT.get(mode, mode) for mode in modes or [])


def _claim_column(claim: dict, key: str) -> str:
    status = claim.get("status") or {}
    if key == "capacity":
        return (status.get("capacity") or {}).get("storage", "")
    if key == "accessModes":
        return _access_modes(status.get("accessModes"))
    return (claim.get("spec") or {}).get(key) or ""


def _volume_claim(volume: dict) -> str:
    ref = (volume.get("spec") or {}).get("claimRef") or {}
    return f"{ref.get('namespace')}/{ref.get('name')}" if ref else ""


def _class_name(storage_class: dict) -> str:
    name = storage_class["metadata"]["name"]
    annotations = storage_class["metadata"].get("annotations") or {}
    default = annotations.get("storageclass.kubernetes.io/is-default-class") == "true"
    return f"{name} (default)" if default else name


Column = tuple[str, str, Callable[[dict], Any]]  # name, type, cell
_AGE: Column = ("Age", "string", lambda o: age(o["metadata"].get("creationTimestamp")))

COLUMNS: dict[str, list[Column]] = {
    "nodes": [
        ("Name", "string", lambda o: o["metadata"]["name"]),
        ("Status", "string", _node_status),
        ("Roles", "string", _node_roles),
        ("Age", "string", lambda o: age(o["metadata"].get("creationTimestamp"))),
        (
            "Version",
            "string",
            lambda o: o.get("status", {}).get("nodeInfo", {}).get("kubeletVersion", ""),
        ),
    ],
    "pods": [
        ("Name", "string", lambda o: o["metadata"]["name"]),
        ("Ready", "string", _pod_ready),
        ("Status", "string", _pod_status),
        (
            "Restarts",
            "string",
            lambda o: str(
                sum(
                    s.get("restartCount", 0)
                    for s in (o.get("status") or {}).get("containerStatuses") or []
                )
            ),
        ),
        ("Age", "string", lambda o: age(o["metadata"].get("creationTimestamp"))),
    ],
    "events": [
        (
            "Last Seen",
            "string",
            lambda o: age(o.get("lastTimestamp") or o["metadata"].get("creationTimestamp")),
        ),
        ("Type", "string", lambda o: o.get("type", "")),
        ("Reason", "string", lambda o: o.get("reason", "")),
        (
            "Object",
            "string",
            lambda o: (
                f"{o['involvedObject'].get('kind', '').lower()}/{o['involvedObject'].get('name', '')}"
            ),
        ),
        ("Message", "string", lambda o: o.get("message", "")),
    ],
}
COLUMNS["persistentvolumeclaims"] = [
    ("Name", "string", lambda o: o["metadata"]["name"]),
    ("Status", "string", lambda o: (o.get("status") or {}).get("phase", "")),
    ("Volume", "string", lambda o: _claim_column(o, "volumeName")),
    ("Capacity", "string", lambda o: _claim_column(o, "capacity")),
    ("Access Modes", "string", lambda o: _claim_column(o, "accessModes")),
    ("StorageClass", "string", lambda o: _claim_column(o, "storageClassName")),
    ("VolumeAttributesClass", "string", lambda o: "<unset>"),
    _AGE,
]
COLUMNS["persistentvolumes"] = [
    ("Name", "string", lambda o: o["metadata"]["name"]),
    ("Capacity", "string", lambda o: (o["spec"].get("capacity") or {}).get("storage", "")),
    ("Access Modes", "string", lambda o: _access_modes(o["spec"].get("accessModes"))),
    ("Reclaim Policy", "string", lambda o: o["spec"].get("persistentVolumeReclaimPolicy", "")),
    ("Status", "string", lambda o: (o.get("status") or {}).get("phase", "")),
    ("Claim", "string", _volume_claim),
    ("StorageClass", "string", lambda o: o["spec"].get("storageClassName", "")),
    ("VolumeAttributesClass", "string", lambda o: "<unset>"),
    ("Reason", "string", lambda o: (o.get("status") or {}).get("reason", "")),
    _AGE,
]
COLUMNS["jobs"] = [
    ("Name", "string", lambda o: o["metadata"]["name"]),
    ("Status", "string", _job_status),
    ("Completions", "string", _job_completions),
    ("Duration", "string", _job_duration),
    _AGE,
]
COLUMNS["storageclasses"] = [
    ("Name", "string", _class_name),
    ("Provisioner", "string", lambda o: o.get("provisioner", "")),
    ("ReclaimPolicy", "string", lambda o: o.get("reclaimPolicy", "")),
    ("VolumeBindingMode", "string", lambda o: o.get("volumeBindingMode", "")),
    ("AllowVolumeExpansion", "string", lambda o: str(bool(o.get("allowVolumeExpansion"))).lower()),
    _AGE,
]


def _condition_status(obj: dict, kind: str) -> str:
    for condition in (obj.get("status") or {}).get("conditions") or []:
        if condition.get("type") == kind:
            return condition.get("status", "")
    return ""


# Kueue's CRDs: their additionalPrinterColumns (those of priority 0).
COLUMNS["clusterqueues"] = [
    ("Name", "string", lambda o: o["metadata"]["name"]),
    ("Cohort", "string", lambda o: (o.get("spec") or {}).get("cohortName", "")),
    ("Pending Workloads", "integer", lambda o: (o.get("status") or {}).get("pendingWorkloads", 0)),
]
COLUMNS["localqueues"] = [
    ("Name", "string", lambda o: o["metadata"]["name"]),
    ("ClusterQueue", "string", lambda o: (o.get("spec") or {}).get("clusterQueue", "")),
    ("Pending Workloads", "integer", lambda o: (o.get("status") or {}).get("pendingWorkloads", 0)),
    (
        "Admitted Workloads",
        "integer",
        lambda o: (o.get("status") or {}).get("admittedWorkloads", 0),
    ),
]
COLUMNS["workloads"] = [
    ("Name", "string", lambda o: o["metadata"]["name"]),
    ("Queue", "string", lambda o: (o.get("spec") or {}).get("queueName", "")),
    (
        "Reserved in",
        "string",
        lambda o: ((o.get("status") or {}).get("admission") or {}).get("clusterQueue", ""),
    ),
    ("Admitted", "string", lambda o: _condition_status(o, "Admitted")),
    ("Finished", "string", lambda o: _condition_status(o, "Finished")),
    _AGE,
]
COLUMNS["workloadpriorityclasses"] = [
    ("Name", "string", lambda o: o["metadata"]["name"]),
    ("Value", "integer", lambda o: o.get("value", 0)),
]
DEFAULT_COLUMNS: list[Column] = [
    ("Name", "string", lambda o: o["metadata"]["name"]),
    ("Created At", "date", lambda o: o["metadata"].get("creationTimestamp", "")),
]


def wants_table(accept: str) -> bool:
    return "as=Table" in accept


def table(
    rt: ResourceType, objects: list[dict], resource_version: str, continue_token: str = ""
) -> dict:
    columns = COLUMNS.get(rt.plural, DEFAULT_COLUMNS)
    metadata: dict[str, Any] = {"resourceVersion": resource_version}
    if continue_token:
        metadata["continue"] = continue_token
    return {
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": metadata,
        "columnDefinitions": [
            {
                "name": name,
                "type": kind,
                "format": "name" if name == "Name" else "",
                "description": name,
                "priority": 0,
            }
            for name, kind, _ in columns
        ],
        "rows": [
            {
                "cells": [cell(obj) for _, _, cell in columns],
                "object": {
                    "kind": "PartialObjectMetadata",
                    "apiVersion": "meta.k8s.io/v1",
                    "metadata": obj["metadata"],
                },
            }
            for obj in objects
        ],
    }
