"""What a pod requests and whether a node has room for it, as kube-scheduler counts.

``pod_requests`` is ``PodRequests`` of k8s.io/component-helpers (resource/helpers.go):

1. The app containers' requests are summed.
2. Init containers run in order. A restartable sidecar (``restartPolicy: Always``) keeps
   running: it adds to the sum and to a running sidecar total. A classic init container needs
   its own request plus the sidecars started before it. The pod needs, per resource, the
   larger of the sum and the largest of those init-time amounts.
3. Pod-level ``spec.resources.requests`` replaces the result for cpu, memory and
   hugepages-*; other resources (``nvidia.com/gpu``) still come from the containers.
4. ``spec.overhead`` is added.

The scheduler then holds each pod's total as integers (``framework.Resource``): cpu in
millicores and everything else in whole units, each rounded up; resources it does not track
(names outside the native, hugepages, extended and attachable-volume families) drop out.
``insufficient_resources`` is NodeResourcesFit's ``fitsRequest`` on those integers.
"""

from __future__ import annotations

from collections.abc import Mapping
from decimal import Decimal
from typing import Any

from .quantity import QuantityError, decode_quantity, milli_units, whole_units
from .selectors import validate_label_key

__all__ = [
    "MalformedPod",
    "insufficient_resources",
    "is_extended_resource",
    "is_hugepages",
    "is_native",
    "node_allocatable_units",
    "pod_request_units",
    "pod_requests",
    "scheduler_units",
]

Units = dict[str, int]

_POD_LEVEL_NAMES = ("cpu", "memory")  # and the hugepages- family
_COUNTED_NATIVE = ("cpu", "memory", "ephemeral-storage", "pods")


class MalformedPod(ValueError):
    """A pod whose resources cannot be read (only possible for objects that skipped admission)."""


def is_hugepages(name: str) -> bool:
    return name.startswith("hugepages-")


def is_native(name: str) -> bool:
    """Native resources: unprefixed names, or names in a kubernetes.io domain."""
    return "/" not in name or "kubernetes.io/" in name


def is_extended_resource(name: str) -> bool:
    """``IsExtendedResourceName``: ``vendor.example/thing``, outside the kubernetes.io domains,
    that still makes a qualified name as ``requests.<name>``."""
    if is_native(name) or name.startswith("requests."):
        return False
    return not validate_label_key(f"requests.{name}")


def _is_scalar(name: str) -> bool:
    """``IsScalarResourceName``: the resources the scheduler keeps besides cpu, memory,
    ephemeral-storage and pods."""
    return (
        is_extended_resource(name)
        or is_hugepages(name)
        or "kubernetes.io/" in name
        or name.startswith("attachable-volumes-")
    )


# -- reading ------------------------------------------------------------------------------------


def _mapping(value: object, where: str) -> Mapping[str, Any]:
    if type(value) is dict:  # the common case, checked first: this runs for every pod
        return value
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise MalformedPod(f"{where} is not an object")
    return value


def _resource_list(value: object, where: str) -> dict[str, Decimal]:
    amounts = {}
    for name, raw in _mapping(value, where).items():
        try:
            amounts[name] = decode_quantity(raw)
        except QuantityError as error:
            raise MalformedPod(f"{where}[{name}]: {error}") from error
    return amounts


def _containers(spec: Mapping[str, Any], key: str) -> list[Mapping[str, Any]]:
    containers = spec.get(key)
    if containers is None:
        return []
    if type(containers) is not list or not all(isinstance(c, dict) for c in containers):
        raise MalformedPod(f"spec.{key} is not a list of containers")
    return containers


def _container_requests(container: Mapping[str, Any], where: str) -> dict[str, Decimal]:
    resources = _mapping(container.get("resources"), f"{where}.resources")
    return _resource_list(resources.get("requests"), f"{where}.resources.requests")


def _add(total: dict[str, Decimal], extra: Mapping[str, Decimal]) -> None:
    for name, amount in extra.items():
        total[name] = total.get(name, Decimal(0)) + amount


def _raise_to(peak: dict[str, Decimal], other: Mapping[str, Decimal]) -> None:
    for name, amount in other.items():
        if amount > peak.get(name, Decimal(0)):
            peak[name] = amount


def pod_requests(pod: Mapping[str, Any]) -> dict[str, Decimal]:
    """The pod's effective requests, exact (see the module docstring for the rules)."""
    spec = _mapping(pod.get("spec") if isinstance(pod, Mapping) else None, "spec")
    total: dict[str, Decimal] = {}
    for index, container in enumerate(_containers(spec, "containers")):
        _add(total, _container_requests(container, f"spec.containers[{index}]"))
    sidecars: dict[str, Decimal] = {}
    init_peak: dict[str, Decimal] = {}
    for index, container in enumerate(_containers(spec, "initContainers")):
        requests = _container_requests(container, f"spec.initContainers[{index}]")
        if container.get("restartPolicy") == "Always":
            _add(total, requests)
            _add(sidecars, requests)
            _raise_to(init_peak, sidecars)
        else:
            needed = dict(requests)
            _add(needed, sidecars)
            _raise_to(init_peak, needed)
    _raise_to(total, init_peak)
    pod_level = _mapping(spec.get("resources"), "spec.resources")
    for name, amount in _resource_list(
        pod_level.get("requests"), "spec.resources.requests"
    ).items():
        if name in _POD_LEVEL_NAMES or is_hugepages(name):
            total[name] = amount
    _add(total, _resource_list(spec.get("overhead"), "spec.overhead"))
    return total


# -- the scheduler's integers --------------------------------------------------------------------


def scheduler_units(amounts: Mapping[str, Decimal]) -> Units:
    """``framework.Resource`` of a resource list: cpu in millicores, the rest in whole units
    (both rounded up), resources the scheduler does not track left out."""
    units: Units = {}
    for name, amount in amounts.items():
        if name == "cpu":
            units[name] = milli_units(amount)
        elif name in _COUNTED_NATIVE or _is_scalar(name):
            units[name] = whole_units(amount)
    return units


def pod_request_units(pod: Mapping[str, Any]) -> Units:
    return scheduler_units(pod_requests(pod))


def node_allocatable_units(node: Mapping[str, Any]) -> Units:
    """The node's allocatable as the scheduler holds it. The apiserver defaults an absent
    allocatable to the capacity; an entry that is not a quantity counts as absent."""
    status = node.get("status") if isinstance(node, Mapping) else None
    status = status if isinstance(status, Mapping) else {}
    listed = status.get("allocatable")
    if listed is None:
        listed = status.get("capacity")
    amounts = {}
    for name, raw in (listed if isinstance(listed, Mapping) else {}).items():
        try:
            amounts[name] = decode_quantity(raw)
        except QuantityError:
            continue
    return scheduler_units(amounts)


def insufficient_resources(
    request: Mapping[str, int],
    allocatable: Mapping[str, int],
    requested: Mapping[str, int],
    pods_on_node: int,
) -> list[str]:
    """NodeResourcesFit's reasons (``Too many pods``, ``Insufficient <name>``), [] if it fits.

    ``request`` is the pod's units, ``requested`` the sum of the units of the pods already
    on the node. A resource the pod asks none of is not checked, so a pod without requests
    fits even an overcommitted node (but not one with no pod slot left)."""
    reasons = []
    if pods_on_node + 1 > allocatable.get("pods", 0):
        reasons.append("Too many pods")
    for name, amount in request.items():
        if name == "pods" or amount <= 0:
            continue
        if amount > allocatable.get(name, 0) - requested.get(name, 0):
            reasons.append(f"Insufficient {name}")
    return reasons
