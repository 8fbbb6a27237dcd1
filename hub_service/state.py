"""The availability cache: the cluster as the service knows it, kept from list and watch
events. Pure: no I/O, so it is tested without any server.

It keeps raw Node objects (there are few, and the documents need their labels and
conditions) but only a compact summary per pod (its node, phase and requests/limits,
computed once when the pod arrives), never whole pod objects.

Malformed objects (a pod whose spec cannot be counted, a node with a bad quantity) are left
out of every document and counted in :attr:`ClusterState.skipped`, by kind. The count is of
objects currently malformed, not of events: a bad pod modified ten times counts once, and it
stops counting when it is fixed or deleted.
"""

from __future__ import annotations

import dataclasses
import sys
from collections import Counter
from collections.abc import Iterable, Mapping
from typing import Any

from thinkube_core.accounting import PodSummary, summarize_pod

from .dcgm import DcgmMetrics, metrics_for_node
from .nodes import node_document

PodKey = tuple[str, str]


def _version(obj: Mapping[str, Any]) -> str | None:
    meta = obj.get("metadata")
    version = meta.get("resourceVersion") if isinstance(meta, Mapping) else None
    return version if isinstance(version, str) and version else None


_POD_METADATA = ("name", "namespace", "uid", "resourceVersion", "deletionTimestamp")
_CONTAINER_FIELDS = ("name", "resources", "restartPolicy")


def slim_pod(pod: Any) -> Any:
    """What accounting reads of a pod, and nothing else (env, volumes, status details go).
    Anything odd is passed on unchanged, for the accounting to reject and count."""
    try:
        meta, spec, status = pod["metadata"], pod.get("spec") or {}, pod.get("status") or {}
        slim_spec = {k: spec[k] for k in ("nodeName", "overhead", "resources") if k in spec}
        for kind in ("containers", "initContainers"):
            if kind in spec:
                slim_spec[kind] = [
                    {k: c[k] for k in _CONTAINER_FIELDS if k in c} for c in spec[kind]
                ]
        return {
            "metadata": {k: meta[k] for k in _POD_METADATA if k in meta},
            "spec": slim_spec,
            "status": {"phase": status["phase"]} if "phase" in status else {},
        }
    except (KeyError, TypeError, AttributeError):
        return pod


class ClusterState:
    def __init__(self) -> None:
        self.nodes: dict[str, dict] = {}
        self.pods: dict[PodKey, PodSummary] = {}
        self._resource_sets: dict[tuple, tuple] = {}
        self.pods_by_node: dict[str, dict[PodKey, PodSummary]] = {}
        # The resourceVersion each summary was made from: a relist reuses unchanged ones.
        self._pod_versions: dict[PodKey, str] = {}
        # Node names whose documents must be rebuilt; None means all of them.
        self.dirty: set[str] | None = None
        self.version = 0  # bumped on every change that can alter a document
        self._documents: dict[str, dict] = {}
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

    def _unlink_pod(self, key: PodKey) -> None:
        self._pod_versions.pop(key, None)
        old = self.pods.pop(key, None)
        if old is not None and old.node_name:
            self.pods_by_node.get(old.node_name, {}).pop(key, None)
            self._touch(old.node_name)

    def apply_pod(self, event_type: str, pod: Any) -> None:
        try:
            meta = pod["metadata"]
            key = (meta.get("namespace") or "", meta["name"])
            if not isinstance(key[0], str) or not isinstance(key[1], str) or not key[1]:
                raise TypeError("bad name")
        except (KeyError, TypeError, AttributeError):
            # Without a name it cannot be followed by later events; count it once per list.
            self._unnamed["Pod"] += 1
            return
        if event_type == "DELETED":
            self._bad_pods.discard(key)
            self._unlink_pod(key)
            return
        version = _version(pod)
        if version is not None and self._pod_versions.get(key) == version:
            return  # a relist: this pod has not changed since its summary was made
        try:
            summary = self._shared(summarize_pod(pod))
        except Exception:  # MalformedObject; anything else would be a bug, still not fatal
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
        if version is not None:
            self._pod_versions[key] = version
        if summary.node_name:
            self.pods_by_node.setdefault(summary.node_name, {})[key] = summary
            self._touch(summary.node_name)

    def _shared(self, summary: PodSummary) -> PodSummary:
        """Pods mostly ask for the same few amounts: keep one copy of each requests/limits
        mapping (and of the strings), not one per pod."""
        key = (tuple(sorted(summary.requests.items())), tuple(sorted(summary.limits.items())))
        shared = self._resource_sets.get(key)
        if shared is None:
            shared = self._resource_sets[key] = (summary.requests, summary.limits)
        return dataclasses.replace(
            summary,
            namespace=sys.intern(summary.namespace),
            node_name=sys.intern(summary.node_name) if summary.node_name else summary.node_name,
            phase=sys.intern(summary.phase),
            requests=shared[0],
            limits=shared[1],
        )

    def replace_pods(self, pods: Iterable[Any]) -> None:
        """A full relist: what is not in it is gone. Pods whose resourceVersion did not
        change keep their summary; only new or changed pods are summarised again."""
        pods = list(pods)
        listed: set[PodKey] = set()
        for pod in pods:
            try:
                meta = pod["metadata"]
                listed.add((meta.get("namespace") or "", meta["name"]))
            except (KeyError, TypeError, AttributeError):
                continue
        for key in [key for key in self.pods if key not in listed]:
            self._unlink_pod(key)
        self._bad_pods &= listed
        self._unnamed["Pod"] = 0
        for pod in pods:
            self.apply_pod("ADDED", pod)
        self._touch_all()

    # -- nodes ---------------------------------------------------------------------

    def apply_node(self, event_type: str, node: Any) -> None:
        try:
            name = node["metadata"]["name"]
            if not isinstance(name, str) or not name:
                raise TypeError("bad name")
        except (KeyError, TypeError, AttributeError):
            self._unnamed["Node"] += 1
            return
        if event_type == "DELETED":
            self.nodes.pop(name, None)
            self._documents.pop(name, None)
            self._bad_nodes.discard(name)
        else:
            self.nodes[name] = node
            self.metrics_by_node[name] = metrics_for_node(self.dcgm, name) or {}
        self._touch(name)

    def replace_nodes(self, nodes: Iterable[Any]) -> None:
        self.nodes.clear()
        self._documents.clear()
        self._bad_nodes.clear()
        self.metrics_by_node.clear()
        self._unnamed["Node"] = 0
        for node in nodes:
            self.apply_node("ADDED", node)
        self._touch_all()

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
        self.version += 1
        if self.dirty is not None:
            self.dirty.add(name)

    def _touch_all(self) -> None:
        self.version += 1
        self.dirty = None

    def node_documents(self) -> list[dict]:
        """Every node's document, rebuilding only the nodes that changed."""
        names = set(self.nodes) if self.dirty is None else self.dirty
        for name in names:
            node = self.nodes.get(name)
            if node is None:
                self._documents.pop(name, None)
                continue
            try:
                self._documents[name] = node_document(
                    node, self.pods_by_node.get(name, {}).values(), self.metrics_by_node.get(name)
                )
                self._bad_nodes.discard(name)
            except Exception:  # MalformedObject; anything else would be a bug, still not fatal
                self._bad_nodes.add(name)
                self._documents.pop(name, None)
        self.dirty = set()
        return [self._documents[name] for name in sorted(self._documents)]
