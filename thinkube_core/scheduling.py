"""The feasibility filter: may this pod run on this node now, and if not, why (in words).

One filter for every "does it fit, and where" question: the spawn form, the check at submit,
fail-fast and the GPU queue all ask it, about the pod that will actually be submitted. Pure:
no I/O. It follows kube-scheduler's filter plugins, in their order, stopping at the first
that refuses a node:

- NodeUnschedulable: a cordoned node takes only pods that tolerate
  ``node.kubernetes.io/unschedulable:NoSchedule``; a node that is not Ready takes none.
- NodeName: a pod bound by ``spec.nodeName`` fits only that node.
- TaintToleration: every NoSchedule and NoExecute taint must be tolerated (PreferNoSchedule
  never blocks). A toleration with an empty key and ``Exists`` tolerates every taint; an
  empty effect matches every effect; ``Equal`` (the default operator) compares values.
- NodeAffinity: every ``nodeSelector`` pair must match the node's labels, and at least one
  of the required ``nodeSelectorTerms`` (ORed) must match: all of its ``matchExpressions``
  (In, NotIn, Exists, DoesNotExist, Gt, Lt) and ``matchFields`` (``metadata.name``). A term
  with no requirements matches nothing, as in Kubernetes.
- NodeResourcesFit: each resource the pod requests (cpu in millicores, everything else in
  whole units, rounded up as the scheduler does) must be free on the node, and one more pod
  must fit under the node's ``pods`` allocatable.

Preferred affinity, inter-pod (anti-)affinity and topology spread constraints are not
evaluated: they either never refuse a node, or depend on other pods' placement, which the
scheduler decides; a pod they refuse still fails fast with the scheduler's own reason.

A node is read from its availability document (:func:`hub_service.nodes.node_document`):
``labels``, ``taints``, ``ready``, ``unschedulable`` and ``free`` (scheduler units).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from thinkube_core.accounting import MalformedObject, pod_requests
from thinkube_core.quantity import int_value, milli_value

__all__ = [
    "NO_EXECUTE",
    "NO_SCHEDULE",
    "PodRules",
    "Requirement",
    "Term",
    "Toleration",
    "capacity_reason",
    "demand_reason",
    "describe_amount",
    "node_reason",
    "pod_demand",
    "rules_reason",
    "scheduler_units",
]

NO_SCHEDULE, NO_EXECUTE, PREFER_NO_SCHEDULE = "NoSchedule", "NoExecute", "PreferNoSchedule"
_BLOCKING_EFFECTS = (NO_SCHEDULE, NO_EXECUTE)
UNSCHEDULABLE_TAINT = {"key": "node.kubernetes.io/unschedulable", "effect": NO_SCHEDULE}
PODS = "pods"
GIB = 1 << 30


def scheduler_units(name: str, amount: Decimal) -> int:
    """How the scheduler counts an amount: cpu in millicores, everything else in whole units,
    both rounded up."""
    return milli_value(amount) if name == "cpu" else int_value(amount)


# -- the pod's rules ------------------------------------------------------------------------


def _text(value: Any) -> str:
    return value if isinstance(value, str) else ""


@dataclass(frozen=True, slots=True)
class Toleration:
    key: str = ""
    operator: str = "Equal"
    value: str = ""
    effect: str = ""

    @classmethod
    def of(cls, raw: Any) -> Toleration:
        if not isinstance(raw, Mapping):
            raise MalformedObject("a toleration must be an object")
        return cls(
            _text(raw.get("key")),
            _text(raw.get("operator")) or "Equal",
            _text(raw.get("value")),
            _text(raw.get("effect")),
        )

    def tolerates(self, taint: Mapping[str, Any]) -> bool:
        if self.effect and self.effect != taint.get("effect"):
            return False
        if not self.key:
            return self.operator == "Exists"
        if self.key != taint.get("key"):
            return False
        return self.operator == "Exists" or (
            self.operator == "Equal" and self.value == (taint.get("value") or "")
        )


@dataclass(frozen=True, slots=True)
class Requirement:
    """One ``matchExpressions`` (or ``matchFields``) entry."""

    key: str
    operator: str
    values: tuple[str, ...] = ()

    @classmethod
    def of(cls, raw: Any) -> Requirement:
        if not isinstance(raw, Mapping) or not isinstance(raw.get("key"), str):
            raise MalformedObject("a node selector requirement must have a key")
        values = raw.get("values") or ()
        if not isinstance(values, list | tuple) or not all(isinstance(v, str) for v in values):
            raise MalformedObject(f"the values of {raw['key']!r} must be a list of strings")
        return cls(raw["key"], _text(raw.get("operator")), tuple(values))

    def matches(self, labels: Mapping[str, str]) -> bool:
        present = self.key in labels
        if self.operator == "In":
            return present and labels[self.key] in self.values
        if self.operator == "NotIn":
            return not present or labels[self.key] not in self.values
        if self.operator == "Exists":
            return present
        if self.operator == "DoesNotExist":
            return not present
        if self.operator in ("Gt", "Lt"):
            if not present or len(self.values) != 1:
                return False
            try:
                have, bound = int(labels[self.key]), int(self.values[0])
            except ValueError:
                return False
            return have > bound if self.operator == "Gt" else have < bound
        return False  # an unknown operator matches nothing (the API server refuses it)

    def describe(self) -> str:
        if self.operator in ("Exists", "DoesNotExist"):
            return f"{self.key} {self.operator}"
        if self.operator in ("Gt", "Lt"):
            return f"{self.key} {'>' if self.operator == 'Gt' else '<'} {', '.join(self.values)}"
        return f"{self.key} {self.operator} [{', '.join(self.values)}]"


@dataclass(frozen=True, slots=True)
class Term:
    """One ``nodeSelectorTerm``: all of its requirements must hold."""

    expressions: tuple[Requirement, ...] = ()
    fields: tuple[Requirement, ...] = ()  # matchFields: metadata.name is the only field

    @classmethod
    def of(cls, raw: Any) -> Term:
        if not isinstance(raw, Mapping):
            raise MalformedObject("a node selector term must be an object")
        return cls(
            tuple(Requirement.of(r) for r in raw.get("matchExpressions") or ()),
            tuple(Requirement.of(r) for r in raw.get("matchFields") or ()),
        )

    def first_unmet(self, node_name: str, labels: Mapping[str, str]) -> Requirement | None:
        """The first requirement the node does not meet; None when the term matches."""
        for requirement in self.expressions:
            if not requirement.matches(labels):
                return requirement
        for requirement in self.fields:
            if requirement.key != "metadata.name" or not requirement.matches(
                {"metadata.name": node_name}
            ):
                return requirement
        return None

    @property
    def empty(self) -> bool:
        return not self.expressions and not self.fields


@dataclass(frozen=True, slots=True)
class PodRules:
    """Where a pod may go, apart from resources: what its spec says, and nothing else."""

    tolerations: tuple[Toleration, ...] = ()
    node_selector: tuple[tuple[str, str], ...] = ()
    required_terms: tuple[Term, ...] | None = None  # None: no required node affinity
    node_name: str | None = None

    @classmethod
    def of_pod_spec(cls, spec: Mapping[str, Any]) -> PodRules:
        """The rules of a pod spec as the API takes it (raw JSON, camelCase)."""
        if not isinstance(spec, Mapping):
            raise MalformedObject("a pod spec must be an object")
        selector = spec.get("nodeSelector") or {}
        if not isinstance(selector, Mapping) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in selector.items()
        ):
            raise MalformedObject("nodeSelector must map strings to strings")
        tolerations = spec.get("tolerations") or ()
        if not isinstance(tolerations, list | tuple):
            raise MalformedObject("tolerations must be a list")
        affinity = spec.get("affinity") or {}
        node_affinity = affinity.get("nodeAffinity") if isinstance(affinity, Mapping) else None
        required = (
            node_affinity.get("requiredDuringSchedulingIgnoredDuringExecution")
            if isinstance(node_affinity, Mapping)
            else None
        )
        terms = None
        if isinstance(required, Mapping):
            terms = tuple(Term.of(t) for t in required.get("nodeSelectorTerms") or ())
        return cls(
            tuple(Toleration.of(t) for t in tolerations),
            tuple(sorted(selector.items())),
            terms,
            _text(spec.get("nodeName")) or None,
        )

    def untolerated(self, taints: Iterable[Mapping[str, Any]]) -> Mapping[str, Any] | None:
        for taint in taints:
            if taint.get("effect") in _BLOCKING_EFFECTS and not any(
                t.tolerates(taint) for t in self.tolerations
            ):
                return taint
        return None

    def label_keys(self) -> frozenset[str]:
        """The node labels these rules read."""
        keys = {key for key, _ in self.node_selector}
        for term in self.required_terms or ():
            keys.update(r.key for r in term.expressions)
        return frozenset(keys)


def taint_text(taint: Mapping[str, Any]) -> str:
    value = taint.get("value")
    return f"{taint.get('key')}{'=' + value if value else ''}:{taint.get('effect')}"


def rules_reason(rules: PodRules, node: Mapping[str, Any]) -> str | None:
    """Why the node does not take a pod with these rules (before resources); None if it may."""
    name = node["name"]
    if not node.get("ready", True):
        return "not ready"
    if node.get("unschedulable") and not any(
        t.tolerates(UNSCHEDULABLE_TAINT) for t in rules.tolerations
    ):
        return "cordoned"
    if rules.node_name and rules.node_name != name:
        return f"the pod is bound to {rules.node_name}"
    taint = rules.untolerated(node.get("taints") or ())
    if taint is not None:
        return f"tainted {taint_text(taint)}, not tolerated"
    labels = node.get("labels") or {}
    for key, value in rules.node_selector:
        if labels.get(key) != value:
            return f"nodeSelector {key}={value} not matched"
    if rules.required_terms is not None:
        unmet = []
        for term in rules.required_terms:
            requirement = None if term.empty else term.first_unmet(name, labels)
            if not term.empty and requirement is None:
                break  # terms are ORed: one that matches is enough
            if requirement is not None:
                unmet.append(requirement)
        else:
            what = f" ({unmet[0].describe()})" if unmet else ""
            return f"required node affinity not matched{what}"
    return None


# -- the pod's demand -------------------------------------------------------------------------


def _defaulted_container(container: Any) -> Any:
    """The API server's defaulting: a container's missing request is its limit."""
    if not isinstance(container, Mapping):
        return container
    resources = container.get("resources")
    if not isinstance(resources, Mapping) or not isinstance(resources.get("limits"), Mapping):
        return container
    requests = dict(resources.get("requests") or {})
    for name, amount in resources["limits"].items():
        requests.setdefault(name, amount)
    return {**container, "resources": {**resources, "requests": requests}}


def pod_demand(spec: Mapping[str, Any]) -> dict[str, int]:
    """What the scheduler will count for this pod, by resource, in scheduler units (requests
    as the API server defaults them, accounted as ``kubectl describe node`` does)."""
    defaulted = dict(spec)
    for kind in ("containers", "initContainers"):
        if isinstance(spec.get(kind), list):
            defaulted[kind] = [_defaulted_container(c) for c in spec[kind]]
    return {
        name: scheduler_units(name, amount)
        for name, amount in pod_requests({"spec": defaulted}).items()
    }


def describe_amount(name: str, units: int) -> str:
    """An amount in scheduler units, for people: ``2.5 CPU``, ``16 GiB memory``, ``2 GPUs``."""
    if name == "cpu":
        return f"{units / 1000:g} CPU"
    if name in ("memory", "ephemeral-storage") or name.startswith("hugepages-"):
        label = "memory" if name == "memory" else name
        return f"{units / GIB:.1f}".removesuffix(".0") + f" GiB {label}"
    if name == "nvidia.com/gpu":
        return f"{units} GPU{'s' if units != 1 else ''}"
    if name.startswith("nvidia.com/"):
        return f"{units} × {name.removeprefix('nvidia.com/')}"
    return f"{units} {name}"


def demand_reason(demand: Mapping[str, int], node: Mapping[str, Any]) -> str | None:
    """Why the node has no room for this demand now; None if it has."""
    free = node.get("free") or {}
    if free.get(PODS, 0) < 1:
        allocatable = node.get("pods_allocatable", 0)
        return f"{allocatable}/{allocatable} pods"
    short = []
    for name, units in demand.items():
        if units > 0 and units > free.get(name, 0):
            have = max(free.get(name, 0), 0)
            free_text = describe_amount(name, have).split(" ", 1)[0]
            short.append(f"needs {describe_amount(name, units)}, {free_text} free")
    return "; ".join(short) or None


def node_reason(rules: PodRules, demand: Mapping[str, int], node: Mapping[str, Any]) -> str | None:
    """The filter: None when the pod fits the node now, else why not, in words."""
    return rules_reason(rules, node) or demand_reason(demand, node)


def capacity_reason(
    rules: PodRules, demand: Mapping[str, int], node: Mapping[str, Any]
) -> str | None:
    """Whether the node could ever hold the pod, were everything on it gone: None when its
    rules take the pod and its allocatable room covers the demand; else why not, in words.
    What a request to wait for a place is checked with (the filter asks about room now)."""
    reason = rules_reason(rules, node)
    if reason:
        return reason
    allocatable = node.get("allocatable") or {}
    short = []
    for name, units in demand.items():
        if units <= 0 or name == PODS:
            continue
        amount = allocatable.get(name, 0)
        have = round(float(amount) * 1000) if name == "cpu" else int(amount)
        if units > have:
            short.append(f"needs {describe_amount(name, units)}, has {describe_amount(name, have)}")
    return "; ".join(short) or None
