"""Kueue (kubernetes-sigs/kueue), as the hub's Kubernetes sides meet it: the label that puts
a Job or a plain pod in a LocalQueue, the scheduling gate Kueue holds a plain pod back with
until it admits it, and queue positions read from Kueue's visibility API. Pure.

A plain pod labelled `kueue.x-k8s.io/queue-name: <LocalQueue>` gets the scheduling gate
`kueue.x-k8s.io/admission` from Kueue's webhook; the API server then reports the pod's
condition PodScheduled=False with reason SchedulingGated. Kueue makes a Workload for it
(owned by the pod) and removes the gate once the ClusterQueue's quota admits it. While the
Workload waits, the visibility API lists it among the LocalQueue's pending workloads with its
0-based `positionInLocalQueue` and its owner in `metadata.ownerReferences`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .job_labels import KUEUE_QUEUE_LABEL as QUEUE_LABEL

__all__ = [
    "ADMISSION_GATE",
    "QUEUE_LABEL",
    "VISIBILITY_VERSIONS",
    "is_admission_gated",
    "pending_workloads_path",
    "positions_by_owner",
]

ADMISSION_GATE = "kueue.x-k8s.io/admission"
VISIBILITY_GROUP = "visibility.kueue.x-k8s.io"
# The visibility API's versions, newest first: v1beta2 from the Kueue releases with the
# v1beta2 API, v1beta1 before them.
VISIBILITY_VERSIONS = ("v1beta2", "v1beta1")


def pending_workloads_path(namespace: str, local_queue: str, version: str = "v1beta2") -> str:
    """The visibility API's pending workloads of one LocalQueue."""
    return (
        f"/apis/{VISIBILITY_GROUP}/{version}/namespaces/{namespace}"
        f"/localqueues/{local_queue}/pendingworkloads"
    )


def is_admission_gated(pod: Mapping[str, Any] | None) -> bool:
    """Whether Kueue still holds the pod back: its admission gate is on it, or the API server
    says it is SchedulingGated while no node was given (a gate of someone else's counts
    too: the pod waits either way, and no scheduler has refused it)."""
    if not pod:
        return False
    spec = pod.get("spec") or {}
    if spec.get("nodeName"):
        return False
    if any((g or {}).get("name") == ADMISSION_GATE for g in spec.get("schedulingGates") or []):
        return True
    return any(
        c.get("type") == "PodScheduled"
        and c.get("status") == "False"
        and c.get("reason") == "SchedulingGated"
        for c in (pod.get("status") or {}).get("conditions") or []
    )


def positions_by_owner(summary: Mapping[str, Any], owner_kind: str) -> dict[str, int]:
    """1-based positions in the LocalQueue from a PendingWorkloadsSummary, by the name of
    the object of `owner_kind` ("Pod", "Job") that owns each pending Workload."""
    positions: dict[str, int] = {}
    for item in summary.get("items") or []:
        if not isinstance(item, Mapping):
            continue
        owners = (item.get("metadata") or {}).get("ownerReferences") or []
        owner = next(
            (
                o.get("name")
                for o in owners
                if isinstance(o, Mapping) and o.get("kind") == owner_kind
            ),
            None,
        )
        position = item.get("positionInLocalQueue")
        if owner and isinstance(position, int) and not isinstance(position, bool):
            positions[owner] = position + 1
    return positions
