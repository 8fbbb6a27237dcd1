"""kube-scheduler's filter plugins as pure functions, and its FitError message.

Per node, in the default profile's order, stopping at the first plugin that rejects:
NodeUnschedulable, NodeName, TaintToleration, NodeAffinity, NodeResourcesFit (see
noderesources.py), VolumeBinding. Before them, PreFilter plugins may reject the pod
outright (NodeAffinity when its ``metadata.name`` terms conflict, VolumeBinding when a
claim is missing, being deleted or unbound with immediate binding) or narrow the nodes to
look at (NodeAffinity's ``metadata.name`` terms). Every rejection but NodeResourcesFit's is
UnschedulableAndUnresolvable: preemption cannot help there, which the message says.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from .noderesources import insufficient_resources
from .selectors import LabelSelector, SelectorError, new_requirement

__all__ = [
    "NOT_READY_TAINT",
    "UNREACHABLE_TAINT",
    "UNSCHEDULABLE_TAINT",
    "NodeAffinity",
    "Rejection",
    "claim_names",
    "failure_message",
    "filter_node",
    "first_untolerated_taint",
    "node_name_candidates",
    "required_node_affinity",
    "taint_toleration",
    "tolerates",
]

NOT_READY_TAINT = "node.kubernetes.io/not-ready"
UNREACHABLE_TAINT = "node.kubernetes.io/unreachable"
UNSCHEDULABLE_TAINT = "node.kubernetes.io/unschedulable"
_BLOCKING_EFFECTS = ("NoSchedule", "NoExecute")  # PreferNoSchedule only lowers a score

AFFINITY_MISMATCH = "node(s) didn't match Pod's node affinity/selector"
AFFINITY_TERMS_CONFLICT = "pod affinity terms conflict"
NODE_NAME_MISMATCH = "node(s) didn't match the requested node name"
UNSCHEDULABLE_NODE = "node(s) were unschedulable"
NOT_IN_PREFILTER_RESULT = "node(s) didn't satisfy plugin(s) [NodeAffinity]"
UNBOUND_IMMEDIATE_CLAIMS = "pod has unbound immediate PersistentVolumeClaims"
VOLUME_BIND_CONFLICT = "node(s) didn't find available persistent volumes to bind"
VOLUME_NODE_CONFLICT = "node(s) had volume node affinity conflict"
VOLUME_MISSING = "node(s) unavailable due to one or more pvc(s) bound to non-existent pv(s)"
NO_VICTIMS = "No preemption victims found for incoming pod"
NOT_HELPFUL = "Preemption is not helpful for scheduling"


@dataclass(frozen=True)
class Rejection:
    """A plugin's verdict on one node: its reasons, and whether preemption could help."""

    reasons: tuple[str, ...]
    unresolvable: bool = True


# -- TaintToleration and NodeUnschedulable ---------------------------------------------------


def tolerates(toleration: Mapping[str, Any], taint: Mapping[str, Any]) -> bool:
    """``Toleration.ToleratesTaint``: an empty effect matches every effect, an empty key (with
    Exists) every key; Equal (the default operator) compares values, Exists does not."""
    effect = toleration.get("effect") or ""
    if effect and effect != (taint.get("effect") or ""):
        return False
    key = toleration.get("key") or ""
    if key and key != (taint.get("key") or ""):
        return False
    operator = toleration.get("operator") or "Equal"
    if operator == "Equal":
        return (toleration.get("value") or "") == (taint.get("value") or "")
    return operator == "Exists"


def first_untolerated_taint(
    taints: list[Mapping[str, Any]], tolerations: list[Mapping[str, Any]]
) -> Mapping[str, Any] | None:
    """The first NoSchedule/NoExecute taint no toleration covers, in the node's order."""
    for taint in taints:
        if taint.get("effect") in _BLOCKING_EFFECTS and not any(
            tolerates(toleration, taint) for toleration in tolerations
        ):
            return taint
    return None


def taint_toleration(node_spec: Mapping[str, Any], tolerations: list) -> Rejection | None:
    taint = first_untolerated_taint(node_spec.get("taints") or [], tolerations)
    if taint is None:
        return None
    return Rejection(
        (f"node(s) had untolerated taint {{{taint.get('key', '')}: {taint.get('value', '')}}}",)
    )


def node_unschedulable(node_spec: Mapping[str, Any], tolerations: list) -> Rejection | None:
    """A cordoned node takes only pods that tolerate its unschedulable taint."""
    if not node_spec.get("unschedulable"):
        return None
    taint = {"key": UNSCHEDULABLE_TAINT, "effect": "NoSchedule"}
    if any(tolerates(toleration, taint) for toleration in tolerations):
        return None
    return Rejection((UNSCHEDULABLE_NODE,))


# -- NodeAffinity ----------------------------------------------------------------------------

_NODE_OPERATORS = {
    "In": "in",
    "NotIn": "notin",
    "Exists": "exists",
    "DoesNotExist": "!",
    "Gt": "gt",
    "Lt": "lt",
}


def _label_selector(expressions: list[Mapping[str, Any]]) -> LabelSelector | None:
    """``nodeSelectorRequirementsAsSelector``; None when a requirement is invalid."""
    requirements = []
    for expression in expressions:
        operator = _NODE_OPERATORS.get(expression.get("operator") or "")
        if operator is None:
            return None
        try:
            requirements.append(
                new_requirement(
                    expression.get("key") or "",
                    operator,
                    list(expression.get("values") or []),
                    check_key=True,
                )
            )
        except SelectorError:
            return None
    return LabelSelector(tuple(requirements))


def _field_terms(expressions: list[Mapping[str, Any]]) -> tuple[tuple[str, str, bool], ...] | None:
    """``nodeSelectorRequirementsAsFieldSelector``: (field, value, negated) for In / NotIn
    with exactly one value; None when a requirement is invalid."""
    terms = []
    for expression in expressions:
        values = expression.get("values") or []
        operator = expression.get("operator")
        if operator not in ("In", "NotIn") or len(values) != 1:
            return None
        terms.append((expression.get("key") or "", values[0], operator == "NotIn"))
    return tuple(terms)


@dataclass(frozen=True)
class _Term:
    labels: LabelSelector | None  # None: no matchExpressions
    fields: tuple[tuple[str, str, bool], ...] | None  # None: no matchFields
    valid: bool = True

    def matches(self, node_labels: Mapping[str, str], node_name: str) -> bool:
        if not self.valid:
            return False
        if self.labels is not None and not self.labels.matches(node_labels):
            return False
        if self.fields is not None:
            node_fields = {"metadata.name": node_name}
            for key, value, negated in self.fields:
                if (node_fields.get(key, "") == value) == negated:
                    return False
        return True


@dataclass(frozen=True)
class NodeAffinity:
    """``RequiredNodeAffinity`` of a pod: its nodeSelector and its required node affinity
    terms (ORed; within a term, expressions and fields are ANDed)."""

    node_selector: Mapping[str, str] = field(default_factory=dict)
    terms: tuple[_Term, ...] | None = None  # None: no required node affinity

    def matches(self, node: Mapping[str, Any]) -> bool:
        meta = node.get("metadata") or {}
        labels = meta.get("labels") or {}
        for key, value in self.node_selector.items():
            if labels.get(key) != value:
                return False
        if self.terms is None:
            return True
        name = meta.get("name") or ""
        return any(term.matches(labels, name) for term in self.terms)

    @property
    def trivial(self) -> bool:
        return not self.node_selector and self.terms is None


def _required_terms(spec: Mapping[str, Any]) -> list[Mapping[str, Any]] | None:
    affinity = (spec.get("affinity") or {}).get("nodeAffinity") or {}
    required = affinity.get("requiredDuringSchedulingIgnoredDuringExecution")
    if required is None:
        return None
    return list(required.get("nodeSelectorTerms") or [])


def required_node_affinity(spec: Mapping[str, Any]) -> NodeAffinity:
    raw_terms = _required_terms(spec)
    terms = None
    if raw_terms is not None:
        parsed = []
        for term in raw_terms:
            expressions = term.get("matchExpressions") or []
            fields = term.get("matchFields") or []
            if not expressions and not fields:
                continue  # an empty term selects no node
            labels = _label_selector(expressions) if expressions else None
            field_terms = _field_terms(fields) if fields else None
            valid = (labels is not None or not expressions) and (
                field_terms is not None or not fields
            )
            parsed.append(_Term(labels, field_terms, valid))
        terms = tuple(parsed)
    return NodeAffinity(dict(spec.get("nodeSelector") or {}), terms)


def node_name_candidates(spec: Mapping[str, Any]) -> set[str] | None:
    """NodeAffinity's PreFilter: the only node names the pod can go to, from terms that pin
    ``metadata.name`` with In, or None when any node may do. An empty set means the terms
    contradict each other."""
    raw_terms = _required_terms(spec)
    if not raw_terms:
        return None
    names: set[str] = set()
    for term in raw_terms:
        pinned: set[str] | None = None
        for requirement in term.get("matchFields") or []:
            if requirement.get("key") == "metadata.name" and requirement.get("operator") == "In":
                values = set(requirement.get("values") or [])
                pinned = values if pinned is None else pinned & values
        if pinned is None:
            return None  # this term allows any node, and terms are ORed
        names |= pinned
    return names


# -- one node ----------------------------------------------------------------------------------


def filter_node(
    spec: Mapping[str, Any],
    affinity: NodeAffinity,
    request: Mapping[str, int],
    node: Mapping[str, Any],
    allocatable: Mapping[str, int],
    requested: Mapping[str, int],
    pods_on_node: int,
) -> Rejection | None:
    """The first filter plugin that rejects the node for the pod, or None when it fits.

    ``request`` is the pod's scheduler units; ``allocatable``, ``requested`` and
    ``pods_on_node`` describe the node (see noderesources.py)."""
    node_spec = node.get("spec") or {}
    tolerations = spec.get("tolerations") or []
    rejection = node_unschedulable(node_spec, tolerations)
    if rejection is not None:
        return rejection
    if spec.get("nodeName") and spec["nodeName"] != (node.get("metadata") or {}).get("name"):
        return Rejection((NODE_NAME_MISMATCH,))
    rejection = taint_toleration(node_spec, tolerations)
    if rejection is not None:
        return rejection
    if not affinity.trivial and not affinity.matches(node):
        return Rejection((AFFINITY_MISMATCH,))
    reasons = insufficient_resources(request, allocatable, requested, pods_on_node)
    if reasons:
        return Rejection(tuple(reasons), unresolvable=False)
    return None


# -- VolumeBinding ----------------------------------------------------------------------------


def claim_names(spec: Mapping[str, Any]) -> list[str]:
    """The claims a pod's volumes name (``persistentVolumeClaim.claimName``)."""
    names = []
    for volume in spec.get("volumes") or []:
        claim = volume.get("persistentVolumeClaim") if isinstance(volume, Mapping) else None
        if isinstance(claim, Mapping) and claim.get("claimName"):
            names.append(claim["claimName"])
    return names


# -- the message --------------------------------------------------------------------------------


def failure_message(
    total_nodes: int,
    rejections: Mapping[str, Rejection],
    prefilter: Rejection | None = None,
    preemption_policy: str | None = None,
) -> str:
    """kube-scheduler's FitError text with the DefaultPreemption postscript.

    ``rejections`` holds each node's verdict; nodes missing from it were left out by a
    PreFilter result. ``prefilter`` is a PreFilter plugin's rejection of the whole pod.
    """
    if total_nodes == 0:
        return "no nodes available to schedule pods"
    message = f"0/{total_nodes} nodes are available:"
    statuses: list[Rejection] = list(rejections.values())
    if prefilter is not None:
        message += f" {', '.join(prefilter.reasons)}."
        statuses = [prefilter] * total_nodes
    else:
        absent = total_nodes - len(rejections)
        statuses += [Rejection((NOT_IN_PREFILTER_RESULT,))] * absent
        histogram = Counter(reason for status in statuses for reason in status.reasons)
        message += f" {', '.join(sorted(f'{n} {reason}' for reason, n in histogram.items()))}."
    if preemption_policy == "Never":
        return message + " preemption: not eligible due to preemptionPolicy=Never."
    verdicts = Counter(NOT_HELPFUL if status.unresolvable else NO_VICTIMS for status in statuses)
    postscript = ", ".join(sorted(f"{n} {verdict}" for verdict, n in verdicts.items()))
    return f"{message} preemption: 0/{total_nodes} nodes are available: {postscript}."
