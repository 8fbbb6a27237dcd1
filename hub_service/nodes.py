"""Node and cluster documents for the availability service. Pure functions, no I/O.

Input: raw Kubernetes Node JSON and the :class:`~thinkube_core.accounting.PodSummary` of the
pods bound to that node. Output: JSON-ready dicts.

Units in every document: cpu in cores as a float, memory in bytes and every other resource
in whole units as ints (rounded up, as ``Quantity.Value()``), GPU memory in MiB.

Free means scheduler truth: ``status.allocatable`` minus the requests of the pods that count
on the node (:mod:`thinkube_core.accounting`), never a utilisation heuristic. Live GPU metrics
only fill the informational ``memory_used`` / ``utilization`` fields.

Robustness: :func:`node_document` raises only :class:`MalformedObject`, for what it cannot
count without (no ``metadata.name``, ``status`` or a resource list that is not an object, a
bad quantity). Informational fields are read leniently: labels, conditions, taints and
``spec`` of the wrong type read as absent, so such a node is reported (NotReady when its
conditions are unreadable) instead of failing. A GPU label that is not a plain non-negative
integer (``nvidia.com/gpu.count: "four"``) is ignored and its fallback used.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Iterable, Mapping
from decimal import Decimal
from typing import Any

from thinkube_core.accounting import (
    MalformedObject,
    PodSummary,
    node_allocatable,
    percent,
    sum_resources,
)
from thinkube_core.quantity import EXACT_CONTEXT, int_value
from thinkube_core.scheduling import PODS, scheduler_units

__all__ = ["gpu_details", "gpu_inventory", "node_document", "summary_document"]

GPU_RESOURCE = "nvidia.com/gpu"
_GPU_LABEL = "nvidia.com/gpu."  # GFD names whole-GPU labels after the resource, renamed or not
_MIG_PREFIX = "nvidia.com/mig-"
_SHARED_SUFFIX = "-SHARED"  # GFD appends it to the product when shared and not renamed
_UNKNOWN_MODEL = "NVIDIA GPU"
_MAX_GPUS_PER_NODE = 256  # a larger count label is treated as bad rather than listed
_INSTANCE_TYPE_LABELS = ("node.kubernetes.io/instance-type", "beta.kubernetes.io/instance-type")
_ZERO = Decimal(0)


# --- lenient readers for informational fields ----------------------------------------------


def _as_mapping(value: object) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _node_labels(node: object) -> dict[str, str]:
    labels = _as_mapping(_as_mapping(_as_mapping(node).get("metadata")).get("labels"))
    return {k: v for k, v in labels.items() if isinstance(k, str) and isinstance(v, str)}


def _label_int(labels: Mapping[str, str], key: str) -> int | None:
    """A plain non-negative integer label; None when absent or unreadable ("four", "-1")."""
    value = labels.get(key, "")
    if value.isascii() and value.isdigit() and len(value) <= 9:
        return int(value)
    return None


def _metric(sample: Mapping[str, Any], key: str) -> int | float | None:
    value = sample.get(key)
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return value if math.isfinite(value) else None


def _readable(product: str) -> str:
    """``NVIDIA-A100-SXM4-80GB-SHARED`` -> ``NVIDIA A100 SXM4 80GB`` (GFD turned spaces into
    dashes; NVML's own dashes become spaces too, which reads as well)."""
    return product.removesuffix(_SHARED_SUFFIX).replace("-", " ")


def _is_gpu_resource(name: str) -> bool:
    """``nvidia.com/gpu``, a time-slicing rename (``nvidia.com/gpu.shared``), MIG mixed."""
    return name == GPU_RESOURCE or name.startswith((_GPU_LABEL, _MIG_PREFIX))


# --- GPUs -----------------------------------------------------------------------------------


def _gpu_resource(
    name: str,
    labels: Mapping[str, str],
    whole_gpu: dict[str, Any],
    allocatable: Mapping[str, Decimal],
    allocated_requests: Mapping[str, Decimal],
) -> dict[str, Any]:
    if name.startswith(_MIG_PREFIX):  # MIG mixed: labels nvidia.com/mig-<profile>.<field>
        product = labels.get(f"{name}.product")
        replicas = _label_int(labels, f"{name}.replicas") or 1
        profile = name.removeprefix(_MIG_PREFIX)
        described = {
            "kind": "mig",
            "product": product,
            "model": _readable(product) if product else f"{whole_gpu['model']} MIG {profile}",
            "memory_mib": _label_int(labels, f"{name}.memory") or None,
            "replicas": replicas,
            "shared": replicas > 1 or (product or "").endswith(_SHARED_SUFFIX),
        }
    else:
        described = {"kind": "gpu", **whole_gpu}
    slots = max(0, int_value(allocatable.get(name, _ZERO)))
    used = max(0, int_value(allocated_requests.get(name, _ZERO)))
    return {
        "name": name,
        **described,
        "allocatable": slots,
        "allocated": used,
        "free": max(0, slots - used),
    }


def gpu_inventory(
    node: dict,
    allocatable: Mapping[str, Decimal],
    allocated_requests: Mapping[str, Decimal],
) -> dict | None:
    """The node's NVIDIA GPUs from GPU Feature Discovery labels and GPU resources.

    None when the node has neither a GPU resource nor a ``nvidia.com/gpu.product`` label (a
    labelled node whose device plugin is down is still listed, with nothing schedulable).
    Label fallbacks: replicas absent, unreadable or 0 (GFD writes 0 for MIG-enabled GPUs)
    -> 1; memory absent, unreadable or 0 (GB10; GFD's MIG-INVALID marker) -> None; count
    absent or unreadable -> whole-GPU slots / replicas, rounded up; sharing strategy absent
    -> ``time-slicing`` when replicas > 1 (GFD before MPS support), else ``none``.
    With MIG ``single`` GFD labels the MIG devices as ``nvidia.com/gpu`` (count, memory,
    product ``...-MIG-<profile>``), so each MIG device reads as one GPU here.
    """
    labels = _node_labels(node)
    names = sorted(n for n in {*allocatable, *allocated_requests} if _is_gpu_resource(n))
    product = labels.get(_GPU_LABEL + "product") or None
    if not names and product is None:
        return None

    replicas = _label_int(labels, _GPU_LABEL + "replicas") or 1
    whole_gpu = {
        "product": product,
        "model": _readable(product) if product else _UNKNOWN_MODEL,
        "memory_mib": _label_int(labels, _GPU_LABEL + "memory") or None,
        "replicas": replicas,
        "shared": replicas > 1 or (product or "").endswith(_SHARED_SUFFIX),
    }
    resources = [
        _gpu_resource(name, labels, whole_gpu, allocatable, allocated_requests) for name in names
    ]
    physical = _label_int(labels, _GPU_LABEL + "count")
    if physical is None or physical > _MAX_GPUS_PER_NODE:
        whole_slots = sum(r["allocatable"] for r in resources if r["kind"] == "gpu")
        physical = min(-(-whole_slots // replicas), _MAX_GPUS_PER_NODE)
    return {
        "model": whole_gpu["model"],
        "product": product,
        "family": labels.get(_GPU_LABEL + "family"),
        "memory_mib": whole_gpu["memory_mib"],
        "physical_count": physical,
        "replicas": replicas,
        "shared": whole_gpu["shared"],
        "sharing_strategy": labels.get(_GPU_LABEL + "sharing-strategy")
        or ("time-slicing" if replicas > 1 else "none"),
        "mig_strategy": labels.get("nvidia.com/mig.strategy") or "none",
        "resources": resources,
        "schedulable_count": sum(r["allocatable"] for r in resources),
        "allocated_count": sum(r["allocated"] for r in resources),
        "free_count": sum(r["free"] for r in resources),
    }


def _fill_in_order(capacities: list[int], used: int) -> list[int]:
    taken = []
    for capacity in capacities:
        taken.append(min(capacity, used))
        used -= taken[-1]
    return taken


def _slots_per_gpu(gpu: Mapping[str, Any]) -> list[tuple[int, int]]:
    """(slots, used slots) for each physical GPU, by index.

    The scheduler does not say which physical GPU a pod got, so this is a model: whole-GPU
    slots go ``replicas`` at a time to GPUs 0, 1, ...; the GPUs left over share the MIG
    instances evenly; allocated slots of each kind fill their GPUs in index order.
    """
    count, replicas = gpu["physical_count"], gpu["replicas"]
    whole = [r for r in gpu["resources"] if r["kind"] == "gpu"]
    mig = [r for r in gpu["resources"] if r["kind"] == "mig"]

    whole_caps: list[int] = []
    unassigned = sum(r["allocatable"] for r in whole)
    while unassigned > 0 and len(whole_caps) < count:
        whole_caps.append(min(replicas, unassigned))
        unassigned -= whole_caps[-1]
    other_gpus = count - len(whole_caps)
    share, extra = divmod(sum(r["allocatable"] for r in mig), other_gpus) if other_gpus else (0, 0)
    mig_caps = [share + (index < extra) for index in range(other_gpus)]

    capacities = whole_caps + mig_caps
    used = _fill_in_order(whole_caps, sum(r["allocated"] for r in whole)) + _fill_in_order(
        mig_caps, sum(r["allocated"] for r in mig)
    )
    return list(zip(capacities, used, strict=True))


def gpu_details(gpu: dict | None, metrics: Mapping[int, dict] | None = None) -> list[dict]:
    """One entry per physical GPU (memory in MiB), as `gpu_details` of the node documents.

    ``available``: the GPU still has a free schedulable slot (see :func:`_slots_per_gpu` for
    how allocated slots are assigned to GPUs). ``metrics`` maps a GPU index to live values as
    :mod:`hub_service.dcgm` gives them: ``utilization`` (%), ``memory_used_mib``,
    ``memory_free_mib``, ``memory_total_mib``; non-numbers are ignored. Unknown values are
    None. Without a memory label (GB10) the total comes from the metrics.
    """
    if not gpu:
        return []
    metrics = metrics or {}
    details = []
    for index, (slots, used_slots) in enumerate(_slots_per_gpu(gpu)):
        sample = _as_mapping(metrics.get(index))
        used, free = _metric(sample, "memory_used_mib"), _metric(sample, "memory_free_mib")
        total = gpu["memory_mib"] or _metric(sample, "memory_total_mib")
        if total is None and used is not None and free is not None:
            total = used + free
        if free is None and total is not None and used is not None:
            free = total - used
        details.append(
            {
                "index": index,
                "model": gpu["model"],
                "memory_total": total,
                "memory_used": used,
                "memory_free": free,
                "utilization": _metric(sample, "utilization"),
                "available": used_slots < slots,
                "slots": slots,
                "slots_used": used_slots,
            }
        )
    return details


# --- nodes ----------------------------------------------------------------------------------


def _number(name: str, amount: Decimal) -> float | int:
    return float(amount) if name == "cpu" else int_value(amount)


def _numbers(resources: Mapping[str, Decimal]) -> dict[str, float | int]:
    return {name: _number(name, amount) for name, amount in sorted(resources.items())}


def _headline(resources: Mapping[str, Decimal], gpus: int) -> dict[str, float | int]:
    """The ``{cpu, memory, gpu}`` headline figures of a node document."""
    return {
        "cpu": _number("cpu", resources.get("cpu", _ZERO)),
        "memory": _number("memory", resources.get("memory", _ZERO)),
        "gpu": gpus,
    }


def _percent(used: Mapping[str, Decimal], allocatable: Mapping[str, Decimal], name: str) -> int:
    return percent(used.get(name, _ZERO), allocatable.get(name, _ZERO), milli=name == "cpu")


def _is_ready(status: Mapping[str, Any]) -> bool:
    conditions = status.get("conditions")
    return isinstance(conditions, list) and any(
        isinstance(c, Mapping) and c.get("type") == "Ready" and c.get("status") == "True"
        for c in conditions
    )


def _taints(spec: Mapping[str, Any]) -> list[dict[str, str | None]]:
    taints = spec.get("taints")
    if not isinstance(taints, list):
        return []

    def text(taint: Mapping[str, Any], key: str) -> str | None:
        return taint.get(key) if isinstance(taint.get(key), str) else None

    return [
        {"key": taint["key"], "value": text(taint, "value"), "effect": text(taint, "effect")}
        for taint in taints
        if isinstance(taint, Mapping) and isinstance(taint.get("key"), str)
    ]


def free_units(
    allocatable: Mapping[str, Decimal], requests: Mapping[str, Decimal], pod_count: int
) -> dict[str, int]:
    """Room left per resource in the scheduler's units (cpu millicores, else whole units),
    as the feasibility filter reads it; negative when requests exceed allocatable. The
    scheduler rounds each pod's requests before adding them; this rounds their exact sum,
    which differs only for pods asking for fractions of a millicore or of a byte."""
    free = {
        name: scheduler_units(name, allocatable.get(name, _ZERO))
        - scheduler_units(name, requests.get(name, _ZERO))
        for name in sorted({*allocatable, *requests} - {PODS})
    }
    free[PODS] = int_value(allocatable.get(PODS, _ZERO)) - pod_count
    return free


def scheduling_key(
    labels: Mapping[str, str], taints: list[dict], ready: bool, cordoned: bool
) -> str:
    """A digest of what the feasibility filter reads of a node besides its free room: equal
    keys, equal verdicts for the same pod rules (so a spawner can keep them while pods come
    and go)."""
    facts = json.dumps([labels, taints, ready, cordoned], sort_keys=True)
    return hashlib.blake2b(facts.encode(), digest_size=8).hexdigest()


def node_document(
    node: dict,
    pods: Iterable[PodSummary],
    metrics: Mapping[int, dict] | None = None,
) -> dict:
    """The availability entry of one node; ``pods`` are the pods bound to it.

    ``capacity`` / ``allocated`` / ``available`` are the headline figures, filled from
    allocatable (not ``status.capacity``) and requests (not limits). A node that is NotReady or
    cordoned is still reported, with ``available`` all zeros and ``reason`` saying why; taints
    are reported as they are: whether a pod tolerates them is the feasibility filter's business
    (:mod:`thinkube_core.scheduling`), for the pod in question.
    """
    if not isinstance(node, Mapping):
        raise MalformedObject(f"node must be an object, not {type(node).__name__}")
    name = _as_mapping(node.get("metadata")).get("name")
    if not isinstance(name, str) or not name:
        raise MalformedObject("node has no metadata.name")
    allocatable = node_allocatable(node)  # MalformedObject for a bad status or quantity

    counted = [pod for pod in pods if pod.counts_on_node]
    requests, limits = sum_resources(counted)
    gpu = gpu_inventory(node, allocatable, requests)
    status, spec = _as_mapping(node.get("status")), _as_mapping(node.get("spec"))
    labels = _node_labels(node)

    ready, cordoned = _is_ready(status), spec.get("unschedulable") is True
    taints = _taints(spec)
    reasons = [
        reason for reason, applies in (("NotReady", not ready), ("cordoned", cordoned)) if applies
    ]
    schedulable = not reasons
    details = gpu_details(gpu, metrics)
    if not schedulable:
        for entry in details:
            entry["available"] = False

    available = _headline({}, 0)
    if schedulable:
        left = {
            name: max(
                EXACT_CONTEXT.subtract(allocatable.get(name, _ZERO), requests.get(name, _ZERO)),
                _ZERO,
            )
            for name in ("cpu", "memory")
        }  # never negative, though requests can exceed allocatable (static pods, shrunk node)
        available = _headline(left, gpu["free_count"] if gpu else 0)
    return {
        "name": name,
        "instance_type": next((labels[k] for k in _INSTANCE_TYPE_LABELS if k in labels), None),
        "ready": ready,
        "unschedulable": cordoned,
        "schedulable": schedulable,
        "reason": ", ".join(reasons) or None,
        "taints": taints,
        "capacity": _headline(allocatable, gpu["schedulable_count"] if gpu else 0),
        "allocated": _headline(requests, gpu["allocated_count"] if gpu else 0),
        "available": available,
        "allocatable": _numbers(allocatable),
        "requests": _numbers(requests),
        "limits": _numbers(limits),
        "percent": {
            "cpu_requests": _percent(requests, allocatable, "cpu"),
            "cpu_limits": _percent(limits, allocatable, "cpu"),
            "memory_requests": _percent(requests, allocatable, "memory"),
            "memory_limits": _percent(limits, allocatable, "memory"),
        },
        "pod_count": len(counted),
        "pods_allocatable": int_value(allocatable.get("pods", _ZERO)),
        # What the feasibility filter reads (thinkube_core.scheduling), besides taints.
        "labels": labels,
        "free": free_units(allocatable, requests, len(counted)),
        "scheduling_key": scheduling_key(labels, taints, ready, cordoned),
        "gpu": gpu,
        "gpu_details": details,
    }


# --- cluster summary ------------------------------------------------------------------------


def _gpu_model_entry(members: list[tuple[dict, dict]]) -> dict:
    """One GPU model (one resource name + product + memory) over the schedulable nodes."""
    _, resource0 = members[0]
    with_free = [(node, resource) for node, resource in members if resource["free"] > 0]

    def roomiest(member: tuple[dict, dict]) -> tuple:
        node, resource = member  # most free GPUs, then cpu, then memory; name breaks ties
        free_there = node["available"]
        return (-resource["free"], -free_there["cpu"], -free_there["memory"], node["name"])

    largest = None
    if with_free:
        node, resource = min(with_free, key=roomiest)
        largest = {
            "node": node["name"],
            "gpus": resource["free"],
            "cpu": node["available"]["cpu"],
            "memory": node["available"]["memory"],
        }
    return {
        "model": resource0["model"],
        "product": resource0["product"],
        "resource": resource0["name"],
        "memory_mib": resource0["memory_mib"],
        "shared": any(resource["shared"] for _, resource in members),
        "schedulable": sum(resource["allocatable"] for _, resource in members),
        "free": sum(resource["free"] for _, resource in members),
        "nodes": len(members),
        "nodes_with_free": len(with_free),
        "largest_free_slot": largest,
        "max_cpu_with_free_gpu": max((n["available"]["cpu"] for n, _ in with_free), default=None),
        "max_memory_with_free_gpu": max(
            (n["available"]["memory"] for n, _ in with_free), default=None
        ),
    }


def summary_document(nodes: Iterable[dict]) -> dict:
    """Cluster totals over node documents; capacity counts only on schedulable nodes.

    ``gpu_models`` has one entry per GPU resource name, product and memory (so a MIG profile,
    or a time-sliced card, is its own entry, carrying the resource name to request), sorted by
    model name; resources with nothing allocatable are left out.
    """
    nodes = list(nodes)
    usable = [node for node in nodes if node["schedulable"]]
    groups: dict[tuple, list[tuple[dict, dict]]] = {}
    for node in usable:
        for resource in (node["gpu"] or {}).get("resources", []):
            if resource["allocatable"] > 0:
                key = (
                    resource["model"],
                    resource["name"],
                    resource["product"] or "",
                    resource["memory_mib"] or 0,
                )
                groups.setdefault(key, []).append((node, resource))

    def total(field: str, kind: str) -> float | int:
        amount = sum(node[field][kind] for node in usable)
        return round(amount, 3) if kind == "cpu" else amount  # millicores; hides float noise

    def totals(kind: str) -> dict[str, float | int]:
        return {
            "allocatable": total("capacity", kind),
            "requested": total("allocated", kind),
            "available": total("available", kind),
        }

    return {
        "nodes": {
            "total": len(nodes),
            "ready": sum(1 for node in nodes if node["ready"]),
            "schedulable": len(usable),
        },
        "cpu": totals("cpu"),
        "memory": totals("memory"),
        "gpus": {
            "physical": sum(node["gpu"]["physical_count"] for node in usable if node["gpu"]),
            "schedulable": total("capacity", "gpu"),
            "free": total("available", "gpu"),
        },
        "gpu_models": [_gpu_model_entry(groups[key]) for key in sorted(groups)],
    }
