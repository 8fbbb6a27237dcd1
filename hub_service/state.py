"""The availability cache: the cluster as the service knows it, kept from list and watch
events. Pure: no I/O, so it is tested without any server.

It keeps raw Node objects (there are few, and the documents need their labels and
conditions) but only a compact summary per pod (its node, phase and requests/limits,
computed once when the pod arrives), never whole pod objects. A listed pod is summarised
as soon as it is parsed (:meth:`ClusterState.prepare_pod`), and a relist swaps the whole
set at once (:meth:`ClusterState.replace_prepared_pods`), so a half-read list is never
published.

Pods mostly ask for the same few amounts: requests and limits are computed once per
distinct *resource shape* (what accounting reads to total them: each container's
``resources``, each init container's ``resources`` and ``restartPolicy``, the pod-level
``resources`` and ``overhead``) and shared by every pod of that shape.

Malformed objects (a pod whose spec cannot be counted, a node with a bad quantity) are left
out of every document and counted in :attr:`ClusterState.skipped`, by kind. The count is of
objects currently malformed, not of events: a bad pod modified ten times counts once, and it
stops counting when it is fixed or deleted.
"""

from __future__ import annotations

import bisect
import dataclasses
import sys
from collections import Counter
from collections.abc import Iterable, Mapping
from typing import Any

from thinkube_core.accounting import PodSummary, summarize_pod

from .dcgm import DcgmMetrics, metrics_for_node
from .nodes import node_document

PodKey = tuple[str, str]
# What a listed pod contributes: its key (None: it has no usable name), its
# resourceVersion, and its summary (None: malformed, left out and counted).
PreparedPod = tuple[PodKey | None, str | None, PodSummary | None]

# The spec fields accounting totals requests and limits from; every other field of the pod
# is read from a copy without them, so the shape alone decides the amounts.
_SHAPE_FIELDS = ("containers", "initContainers", "resources", "overhead")
_MAX_SHAPES = 10_000  # distinct shapes remembered; more (all pods unique) starts afresh


def _version(obj: Mapping[str, Any]) -> str | None:
    meta = obj.get("metadata")
    version = meta.get("resourceVersion") if isinstance(meta, Mapping) else None
    return version if isinstance(version, str) and version else None


def _pod_key(pod: Any) -> PodKey | None:
    try:
        meta = pod["metadata"]
        key = (meta.get("namespace") or "", meta["name"])
    except (KeyError, TypeError, AttributeError):
        return None
    if not isinstance(key[0], str) or not isinstance(key[1], str) or not key[1]:
        return None
    return key


def _node_name(node: Any) -> str | None:
    try:
        name = node["metadata"]["name"]
    except (KeyError, TypeError, AttributeError):
        return None
    return name if isinstance(name, str) and name else None


def _frozen(value: Any) -> Any:
    """A JSON value as a hashable key. Types are kept apart as JSON keeps them: "1", 1, 1.0
    and true are four different keys (accounting reads them differently)."""
    kind = type(value)
    if kind is str:
        return value
    if kind is dict:
        return (dict, tuple([(k, _frozen(v)) for k, v in value.items()]))
    if kind is list:
        return (list, tuple([_frozen(v) for v in value]))
    return (kind, value)


def _resource_shape(spec: dict) -> tuple | None:
    """A key for everything the pod's requests and limits are computed from; None when the
    spec is too odd to key (accounting then reads the whole pod, and rejects it)."""
    parts: list[Any] = []
    for kind in ("containers", "initContainers"):
        containers = spec.get(kind)
        if type(containers) is not list:
            if containers is not None:
                return None
            parts.append(None)
            continue
        shape = []
        for container in containers:
            if type(container) is not dict:
                return None
            shape.append(
                (_frozen(container.get("resources")), _frozen(container.get("restartPolicy")))
            )
        parts.append(tuple(shape))
    parts.append(_frozen(spec.get("resources")))
    parts.append(_frozen(spec.get("overhead")))
    try:
        hash(parts_key := tuple(parts))
    except TypeError:  # not from JSON (an unhashable object written by hand)
        return None
    return parts_key


class ClusterState:
    def __init__(self) -> None:
        self.nodes: dict[str, dict] = {}
        self.pods: dict[PodKey, PodSummary] = {}
        self.pods_by_node: dict[str, dict[PodKey, PodSummary]] = {}
        self.job_pods: dict[PodKey, PodSummary] = {}  # the GPU queue's pods
        self.server_pods: dict[PodKey, PodSummary] = {}  # notebook servers' pods
        # The resourceVersion each summary was made from: a relist reuses unchanged ones.
        self._pod_versions: dict[PodKey, str] = {}
        # resource shape -> (requests, limits), shared by every pod of that shape
        self._shapes: dict[tuple, tuple[Mapping, Mapping]] = {}
        # Node names whose documents must be rebuilt; None means all of them.
        self.dirty: set[str] | None = None
        self._documents: dict[str, dict] = {}
        self._order: list[str] = []  # the names in self._documents, sorted
        self._bad_pods: set[PodKey] = set()
        self._bad_nodes: set[str] = set()
        self._unnamed: Counter[str] = Counter()  # objects without a name, per full list
        self.dcgm: DcgmMetrics = {}
        self.metrics_by_node: dict[str, dict[int, dict]] = {}

    @property
    def skipped(self) -> Counter[str]:
        """Malformed objects left out, by kind (``Node``, ``Pod``)."""
        counts: Counter[str] = Counter()
        counts["Node"] = len(self._bad_nodes) + self._unnamed["Node"]
        counts["Pod"] = len(self._bad_pods) + self._unnamed["Pod"]
        return counts

    # -- pods ----------------------------------------------------------------------

    def summarize(self, pod: Any) -> PodSummary | None:
        """The pod's summary, as :func:`~thinkube_core.accounting.summarize_pod` makes it, with
        requests and limits computed once per resource shape; None when it is malformed."""
        try:
            spec = pod.get("spec")
            shape = _resource_shape(spec) if isinstance(spec, dict) else None
            amounts = self._shapes.get(shape) if shape is not None else None
            if amounts is None:
                summary = summarize_pod(pod)
                amounts = (summary.requests, summary.limits)
                if shape is not None:
                    if len(self._shapes) >= _MAX_SHAPES:
                        self._shapes.clear()
                    self._shapes[shape] = amounts
            else:
                # Everything but the amounts from the pod without its resource fields.
                rest = {k: v for k, v in spec.items() if k not in _SHAPE_FIELDS}
                rest["containers"] = []
                summary = summarize_pod({**pod, "spec": rest})
        except Exception:  # MalformedObject; anything else would be a bug, still not fatal
            return None
        return dataclasses.replace(
            summary,
            namespace=sys.intern(summary.namespace),
            node_name=sys.intern(summary.node_name) if summary.node_name else summary.node_name,
            phase=sys.intern(summary.phase),
            requests=amounts[0],
            limits=amounts[1],
        )

    def prepare_pod(self, pod: Any) -> PreparedPod:
        """What a listed pod contributes, made as it is read so the raw object can go at
        once. A pod still at the resourceVersion its current summary was made from keeps
        that summary."""
        key = _pod_key(pod)
        if key is None:
            return None, None, None
        version = _version(pod)
        if version is not None and self._pod_versions.get(key) == version:
            return key, version, self.pods[key]
        return key, version, self.summarize(pod)

    def _unlink_pod(self, key: PodKey) -> None:
        self._pod_versions.pop(key, None)
        self.job_pods.pop(key, None)
        self.server_pods.pop(key, None)
        old = self.pods.pop(key, None)
        if old is not None and old.node_name:
            self.pods_by_node.get(old.node_name, {}).pop(key, None)
            self._touch(old.node_name)

    def apply_pod(self, event_type: str, pod: Any) -> None:
        key = _pod_key(pod)
        if key is None:
            # Without a name it cannot be followed by later events; count it once per list.
            self._unnamed["Pod"] += 1
            return
        if event_type == "DELETED":
            self._bad_pods.discard(key)
            self._unlink_pod(key)
            return
        version = _version(pod)
        if version is not None and self._pod_versions.get(key) == version:
            return  # this pod has not changed since its summary was made
        summary = self.summarize(pod)
        if summary is None:
            self._bad_pods.add(key)
            self._unlink_pod(key)
            return
        self._bad_pods.discard(key)
        old = self.pods.get(key)
        if old == summary:
            if version is not None:
                self._pod_versions[key] = version
            return  # a status-only change the accounting does not see
        self._unlink_pod(key)
        self.pods[key] = summary
        if summary.job_id:
            self.job_pods[key] = summary
        if summary.server_user is not None:
            self.server_pods[key] = summary
        if version is not None:
            self._pod_versions[key] = version
        if summary.node_name:
            self.pods_by_node.setdefault(summary.node_name, {})[key] = summary
            self._touch(summary.node_name)

    def replace_pods(self, pods: Iterable[Any]) -> None:
        """A full relist of raw pods: what is not in it is gone."""
        self.replace_prepared_pods([self.prepare_pod(pod) for pod in pods])

    def replace_prepared_pods(self, prepared: Iterable[PreparedPod]) -> None:
        """A full relist, as :meth:`prepare_pod` made it: what is not in it is gone. Only
        the nodes whose pods changed are rebuilt."""
        pods: dict[PodKey, PodSummary] = {}
        versions: dict[PodKey, str] = {}
        bad: set[PodKey] = set()
        unnamed = 0
        for key, version, summary in prepared:
            if key is None:
                unnamed += 1
            elif summary is None:
                bad.add(key)
            else:
                pods[key] = summary
                if version is not None:
                    versions[key] = version
        bad.difference_update(pods)  # listed twice, the later one good: not a duplicate bug
        old_pods = self.pods
        for key, summary in pods.items():
            old = old_pods.get(key)
            if old is summary:
                continue
            if old == summary:
                pods[key] = old  # a new version the accounting does not see
                continue
            if old is not None and old.node_name:
                self._touch(old.node_name)
            if summary.node_name:
                self._touch(summary.node_name)
        for key, old in old_pods.items():
            if key not in pods and old.node_name:
                self._touch(old.node_name)
        by_node: dict[str, dict[PodKey, PodSummary]] = {}
        for key, summary in pods.items():
            if summary.node_name:
                by_node.setdefault(summary.node_name, {})[key] = summary
        self.pods, self._pod_versions, self.pods_by_node = pods, versions, by_node
        self.job_pods = {key: summary for key, summary in pods.items() if summary.job_id}
        self.server_pods = {
            key: summary for key, summary in pods.items() if summary.server_user is not None
        }
        self._bad_pods = bad
        self._unnamed["Pod"] = unnamed

    def counted_jobs(self) -> dict[str, str]:
        """The GPU queue's jobs whose pods the node documents count now: job id -> node."""
        return {
            summary.job_id: summary.node_name
            for summary in self.job_pods.values()
            if summary.job_id and summary.node_name and summary.counts_on_node
        }

    def held_servers(self) -> list[dict[str, Any]]:
        """Notebook servers' pods that hold GPUs on a node now: `id` (the pod's name),
        `user`, `node`, `started_at` (its creation), `gpus`, and `entry` (the queue's id of
        the waiting request that started it, if one did)."""
        held = []
        for summary in self.server_pods.values():
            if not summary.node_name or not summary.counts_on_node:
                continue
            gpus = sum(
                int(amount)
                for name, amount in summary.requests.items()
                if name.startswith("nvidia.com/")
            )
            if gpus:
                held.append(
                    {
                        "id": summary.name,
                        "user": summary.server_user,
                        "node": summary.node_name,
                        "started_at": summary.created_at,
                        "gpus": gpus,
                        "entry": summary.job_id,
                    }
                )
        return held

    # -- nodes ---------------------------------------------------------------------

    def apply_node(self, event_type: str, node: Any) -> None:
        name = _node_name(node)
        if name is None:
            self._unnamed["Node"] += 1
            return
        if event_type == "DELETED":
            self.nodes.pop(name, None)
            self._bad_nodes.discard(name)
        else:
            self.nodes[name] = node
            self.metrics_by_node[name] = metrics_for_node(self.dcgm, name) or {}
        self._touch(name)

    def replace_nodes(self, nodes: Iterable[Any]) -> None:
        """A full relist: what is not in it is gone; a node still at the resourceVersion
        its document was made from keeps it."""
        listed: dict[str, Any] = {}
        unnamed = 0
        for node in nodes:
            name = _node_name(node)
            if name is None:
                unnamed += 1
            else:
                listed[name] = node
        for name in [name for name in self.nodes if name not in listed]:
            self.apply_node("DELETED", self.nodes[name])
            self.metrics_by_node.pop(name, None)
        for name, node in listed.items():
            old = self.nodes.get(name)
            version = _version(node)
            if old is not None and version is not None and _version(old) == version:
                continue
            self.apply_node("ADDED", node)
        self._unnamed["Node"] = unnamed

    def set_dcgm(self, merged: DcgmMetrics) -> None:
        """Live GPU metrics from DCGM, by hostname (as :mod:`hub_service.dcgm` merges them);
        each node takes its own, and only nodes whose metrics changed are rebuilt."""
        self.dcgm = merged
        for name in self.nodes:
            metrics = metrics_for_node(merged, name) or {}
            if metrics != self.metrics_by_node.get(name):
                self.metrics_by_node[name] = metrics
                self._touch(name)

    # -- documents -----------------------------------------------------------------

    def _touch(self, name: str) -> None:
        if self.dirty is not None:
            self.dirty.add(name)

    def _touch_all(self) -> None:
        self.dirty = None

    def _drop_document(self, name: str) -> None:
        if self._documents.pop(name, None) is not None:
            del self._order[bisect.bisect_left(self._order, name)]

    def _set_document(self, name: str, document: dict) -> None:
        if name not in self._documents:
            bisect.insort(self._order, name)
        self._documents[name] = document

    def node_documents(self) -> list[dict]:
        """Every node's document by name, rebuilding only the nodes that changed."""
        names = set(self.nodes) | set(self._documents) if self.dirty is None else self.dirty
        for name in names:
            node = self.nodes.get(name)
            if node is None:
                self._drop_document(name)
                continue
            try:
                document = node_document(
                    node, self.pods_by_node.get(name, {}).values(), self.metrics_by_node.get(name)
                )
            except Exception:  # MalformedObject; anything else would be a bug, still not fatal
                self._bad_nodes.add(name)
                self._drop_document(name)
                continue
            self._bad_nodes.discard(name)
            self._set_document(name, document)
        self.dirty = set()
        return [self._documents[name] for name in self._order]
