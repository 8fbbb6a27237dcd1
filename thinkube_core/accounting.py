"""Node resource accounting, computed the way ``kubectl describe node`` does it.

Works on raw JSON dicts as returned by the Kubernetes API. The rules follow:

* k8s.io/kubectl pkg/describe/describe.go ``getPodsTotalRequestsAndLimits`` and
  ``describeNodeResource``: sum each counted pod's requests and limits; percentages are
  ``int64(float64(used) / float64(allocatable) * 100)`` with cpu in millicores.
* k8s.io/component-helpers resource/helpers.go ``PodRequests`` / ``PodLimits`` (spec only,
  no status resources, as the describe totals use them):

  1. Sum the app containers.
  2. Walk init containers in order. A sidecar (init container with ``restartPolicy: Always``)
     keeps running, so it is added to the sum and to a running sidecar total; a normal init
     container needs its own amount plus the sidecars started before it. The pod needs, per
     resource, the larger of the sum and the peak of those init-time amounts.
  3. Pod-level ``spec.resources`` replaces the result for cpu, memory and hugepages-* only;
     other resources (``nvidia.com/gpu``) still come from the containers.
  4. ``spec.overhead`` is added to every request, and to a limit only when that limit is
     present and non-zero (a missing limit means unlimited).

Only what is in the object is counted. The API server defaults a container's missing requests
to its limits when the pod is created, so real pods already carry those requests; a dict
written by hand with limits only has no requests here.

Anything malformed raises :class:`MalformedObject`, never ``KeyError`` or ``TypeError``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from types import MappingProxyType
from typing import Any

from thinkube_core.job_labels import JOB_ID_LABEL
from thinkube_core.quantity import (
    EXACT_CONTEXT,
    QuantityError,
    int_value,
    milli_value,
    parse_quantity,
)

__all__ = [
    "MalformedObject",
    "PodSummary",
    "node_allocatable",
    "node_capacity",
    "percent",
    "pod_limits",
    "pod_requests",
    "sum_resources",
    "summarize_pod",
]

ResourceList = dict[str, Decimal]

_POD_LEVEL_RESOURCES = ("cpu", "memory")  # plus the hugepages- prefix
_TERMINAL_PHASES = ("Succeeded", "Failed")
_ZERO = Decimal(0)


class MalformedObject(ValueError):
    """A Kubernetes object that does not have the shape the API guarantees."""


@dataclass(frozen=True, slots=True)
class PodSummary:
    """What accounting needs from one pod; requests and limits are read-only."""

    namespace: str
    name: str
    uid: str
    node_name: str | None
    phase: str
    terminating: bool
    requests: Mapping[str, Decimal]
    limits: Mapping[str, Decimal]
    job_id: str | None = None  # a GPU job's pod: the queue's id of the job
    # A notebook server's pod (kubespawner's `component: singleuser-server`): whose, and
    # when it was created (epoch seconds), for the queue's estimates of when GPUs free.
    server_user: str | None = None
    created_at: float | None = None
    server_name: str | None = None  # the server's name ("" for the default server)

    @property
    def counts_on_node(self) -> bool:
        """Pending-but-bound and terminating pods still hold their resources."""
        return self.phase not in _TERMINAL_PHASES


# --- reading raw objects -------------------------------------------------------------------


def _mapping(parent: Mapping[str, Any], key: str, where: str) -> Mapping[str, Any]:
    """``parent[key]`` as a mapping; absent or null reads as empty."""
    value = parent.get(key)
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise MalformedObject(f"{where}.{key} must be an object, not {type(value).__name__}")
    return value


def _list(parent: Mapping[str, Any], key: str, where: str, *, required: bool = False) -> list:
    value = parent.get(key)
    if value is None and not required:
        return []
    if not isinstance(value, list):
        raise MalformedObject(f"{where}.{key} must be a list, not {type(value).__name__}")
    return value


def _string(parent: Mapping[str, Any], key: str, where: str) -> str | None:
    value = parent.get(key)
    if value is None:
        return None
    if not isinstance(value, str):
        raise MalformedObject(f"{where}.{key} must be a string, not {type(value).__name__}")
    return value


def _resource_list(parent: Mapping[str, Any], key: str, where: str) -> ResourceList:
    resources: ResourceList = {}
    for name, quantity in _mapping(parent, key, where).items():
        if not isinstance(name, str) or not name:
            raise MalformedObject(f"{where}.{key} has an invalid resource name {name!r}")
        try:
            resources[name] = parse_quantity(quantity)
        except QuantityError as error:
            raise MalformedObject(f"{where}.{key}[{name!r}]: {error}") from error
    return resources


def _pod_spec(pod: object) -> Mapping[str, Any]:
    if not isinstance(pod, Mapping):
        raise MalformedObject(f"pod must be an object, not {type(pod).__name__}")
    if not isinstance(pod.get("spec"), Mapping):
        raise MalformedObject("pod has no spec object")
    return pod["spec"]


# --- resource list arithmetic (component-helpers addResourceList / maxResourceList) ---------


def _add_into(total: ResourceList, extra: Mapping[str, Decimal]) -> None:
    for name, amount in extra.items():
        total[name] = EXACT_CONTEXT.add(total[name], amount) if name in total else amount


def _max_into(peak: ResourceList, other: Mapping[str, Decimal]) -> None:
    for name, amount in other.items():
        if name not in peak or amount > peak[name]:
            peak[name] = amount


def _is_pod_level_resource(name: str) -> bool:
    return name in _POD_LEVEL_RESOURCES or name.startswith("hugepages-")


def _aggregate_containers(spec: Mapping[str, Any], field: str) -> ResourceList:
    """Container ``resources.<field>`` combined with the sidecar-aware init container rule."""
    total: ResourceList = {}
    for index, container in enumerate(_list(spec, "containers", "spec", required=True)):
        _add_into(total, _container_resources(container, field, f"spec.containers[{index}]"))

    sidecars: ResourceList = {}  # restartable init containers started so far
    init_peak: ResourceList = {}
    for index, container in enumerate(_list(spec, "initContainers", "spec")):
        where = f"spec.initContainers[{index}]"
        own = _container_resources(container, field, where)
        if _string(container, "restartPolicy", where) == "Always":
            _add_into(total, own)  # a sidecar keeps running next to the app containers
            _add_into(sidecars, own)
            in_use = sidecars
        else:
            in_use = dict(own)
            _add_into(in_use, sidecars)
        _max_into(init_peak, in_use)
    _max_into(total, init_peak)
    return total


def _container_resources(container: object, field: str, where: str) -> ResourceList:
    if not isinstance(container, Mapping):
        raise MalformedObject(f"{where} must be an object, not {type(container).__name__}")
    return _resource_list(_mapping(container, "resources", where), field, f"{where}.resources")


def _pod_totals(pod: dict, field: str) -> ResourceList:
    spec = _pod_spec(pod)
    totals = _aggregate_containers(spec, field)
    pod_level = _resource_list(_mapping(spec, "resources", "spec"), field, "spec.resources")
    totals.update((n, q) for n, q in pod_level.items() if _is_pod_level_resource(n))
    for name, amount in _resource_list(spec, "overhead", "spec").items():
        if field == "requests":
            _add_into(totals, {name: amount})
        elif totals.get(name, 0) != 0:  # absent means unlimited; upstream leaves 0 alone too
            totals[name] = EXACT_CONTEXT.add(totals[name], amount)
    return totals


# --- public API -----------------------------------------------------------------------------


def pod_requests(pod: dict) -> dict[str, Decimal]:
    """Effective requests of a pod (component-helpers ``PodRequests``)."""
    return _pod_totals(pod, "requests")


def pod_limits(pod: dict) -> dict[str, Decimal]:
    """Effective limits of a pod (component-helpers ``PodLimits``)."""
    return _pod_totals(pod, "limits")


def summarize_pod(pod: dict) -> PodSummary:
    spec = _pod_spec(pod)
    metadata = _mapping(pod, "metadata", "pod")
    status = _mapping(pod, "status", "pod")
    return PodSummary(
        namespace=_string(metadata, "namespace", "metadata") or "",
        name=_string(metadata, "name", "metadata") or "",
        uid=_string(metadata, "uid", "metadata") or "",
        node_name=_string(spec, "nodeName", "spec") or None,
        phase=_string(status, "phase", "status") or "",
        terminating=metadata.get("deletionTimestamp") is not None,
        requests=MappingProxyType(pod_requests(pod)),
        limits=MappingProxyType(pod_limits(pod)),
        job_id=_job_id(metadata),
        **_server_of(metadata),
    )


SERVER_COMPONENT = "singleuser-server"
USERNAME_KEY = "hub.jupyter.org/username"
SERVERNAME_KEY = "hub.jupyter.org/servername"


def _server_of(metadata: Mapping[str, Any]) -> dict[str, Any]:
    """A server pod's owner (kubespawner's username annotation, else its label) and creation
    time; nothing for other pods."""
    labels = metadata.get("labels")
    if not isinstance(labels, Mapping) or labels.get("component") != SERVER_COMPONENT:
        return {}
    annotations = metadata.get("annotations")
    user = (annotations.get(USERNAME_KEY) if isinstance(annotations, Mapping) else None) or (
        labels.get(USERNAME_KEY)
    )
    created = metadata.get("creationTimestamp")
    try:
        created_at = (
            datetime.fromisoformat(created.replace("Z", "+00:00")).timestamp()
            if isinstance(created, str)
            else None
        )
    except ValueError:
        created_at = None
    # kubespawner's annotation holds the name as it is; its label, escaped, is the fallback
    server_name = (
        annotations.get(SERVERNAME_KEY) if isinstance(annotations, Mapping) else None
    ) or labels.get(SERVERNAME_KEY, "")
    return {
        "server_user": user if isinstance(user, str) else None,
        "created_at": created_at,
        "server_name": server_name if isinstance(server_name, str) else "",
    }


def _job_id(metadata: Mapping[str, Any]) -> str | None:
    labels = metadata.get("labels")
    value = labels.get(JOB_ID_LABEL) if isinstance(labels, Mapping) else None
    return value if isinstance(value, str) and value else None


def node_capacity(node: dict) -> dict[str, Decimal]:
    """``status.capacity``; a node the kubelet has not reported yet has none."""
    if not isinstance(node, Mapping):
        raise MalformedObject(f"node must be an object, not {type(node).__name__}")
    return _resource_list(_mapping(node, "status", "node"), "capacity", "status")


def node_allocatable(node: dict) -> dict[str, Decimal]:
    """``status.allocatable``, taking any resource it lacks from ``status.capacity``.

    kubectl falls back for the whole map only when allocatable is empty; the kubelet reports
    the same names in both, so the per-resource fallback gives the same numbers.
    """
    allocatable = node_capacity(node)
    allocatable.update(_resource_list(_mapping(node, "status", "node"), "allocatable", "status"))
    return allocatable


def sum_resources(
    summaries: Iterable[PodSummary],
) -> tuple[dict[str, Decimal], dict[str, Decimal]]:
    """Total (requests, limits) of the pods that count on their node."""
    requests: ResourceList = {}
    limits: ResourceList = {}
    for summary in summaries:
        if summary.counts_on_node:
            _add_into(requests, summary.requests)
            _add_into(limits, summary.limits)
    return requests, limits


def percent(part: Decimal, whole: Decimal, *, milli: bool | None = None) -> int:
    """Integer percentage exactly as kubectl prints it; 0 when ``whole`` is 0.

    kubectl computes ``int64(float64(a) / float64(b) * 100)`` on integers: millicores for cpu
    (``MilliValue``) and whole units otherwise (``Value``), both rounded up. By default
    millicores are used when either value has a fraction (cpu) and whole units otherwise;
    for integers both give the same double. Pass ``milli`` to force one.
    """
    if milli is None:
        milli = part != part.to_integral_value() or whole != whole.to_integral_value()
    to_units = milli_value if milli else int_value
    numerator, denominator = to_units(part), to_units(whole)
    if denominator == 0:
        return 0
    # float on purpose: it reproduces kubectl's float64 rounding (0.29 * 100 -> 28).
    return int(float(numerator) / float(denominator) * 100)
