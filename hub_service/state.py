"""The availability cache: the cluster as the service knows it, kept from list and watch
events. Pure: no I/O, so it is tested without any server.

It keeps raw Node objects (there are few, and the documents need their labels and
conditions) but only a compact summary per pod (its node, phase and requests/limits,
computed once when the pod arrives), never whole pod objects.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from typing import Any

from .accounting import MalformedObject, PodSummary, summarize_pod
from .nodes import node_document

PodKey = tuple[str, str]


class ClusterState:
    def __init__(self) -> None:
        self.nodes: dict[str, dict] = {}
        self.pods: dict[PodKey, PodSummary] = {}
        self.pods_by_node: dict[str, dict[PodKey, PodSummary]] = {}
        # Node names whose documents must be rebuilt; None means all of them.
        self.dirty: set[str] | None = None
        self.skipped: Counter[str] = Counter()  # malformed objects, by kind
        self.version = 0  # bumped on every change that can alter a document
        self._documents: dict[str, dict] = {}
        self.metrics_by_node: dict[str, dict[int, dict]] = {}

    # -- pods ----------------------------------------------------------------------

    def _unlink_pod(self, key: PodKey) -> None:
        old = self.pods.pop(key, None)
        if old is not None and old.node_name:
            self.pods_by_node.get(old.node_name, {}).pop(key, None)
            self._touch(old.node_name)

    def apply_pod(self, event_type: str, pod: Any) -> None:
        try:
            meta = pod["metadata"]
            key = (meta.get("namespace", ""), meta["name"])
        except (KeyError, TypeError):
            self.skipped["Pod"] += 1
            return
        if event_type == "DELETED":
            self._unlink_pod(key)
            return
        try:
            summary = summarize_pod(pod)
        except MalformedObject:
            self.skipped["Pod"] += 1
            self._unlink_pod(key)
            return
        old = self.pods.get(key)
        if old == summary:
            return  # a status-only change the accounting does not see
        self._unlink_pod(key)
        self.pods[key] = summary
        if summary.node_name:
            self.pods_by_node.setdefault(summary.node_name, {})[key] = summary
            self._touch(summary.node_name)

    def replace_pods(self, pods: Iterable[Any]) -> None:
        """A full relist: what is not in it is gone."""
        self.pods.clear()
        self.pods_by_node.clear()
        self.skipped["Pod"] = 0
        for pod in pods:
            self.apply_pod("ADDED", pod)
        self._touch_all()

    # -- nodes ---------------------------------------------------------------------

    def apply_node(self, event_type: str, node: Any) -> None:
        try:
            name = node["metadata"]["name"]
        except (KeyError, TypeError):
            self.skipped["Node"] += 1
            return
        if event_type == "DELETED":
            self.nodes.pop(name, None)
            self._documents.pop(name, None)
        else:
            self.nodes[name] = node
        self._touch(name)

    def replace_nodes(self, nodes: Iterable[Any]) -> None:
        self.nodes.clear()
        self._documents.clear()
        self.skipped["Node"] = 0
        for node in nodes:
            self.apply_node("ADDED", node)
        self._touch_all()

    def set_metrics(self, metrics_by_node: dict[str, dict[int, dict]]) -> None:
        changed = {
            n
            for n in set(metrics_by_node) | set(self.metrics_by_node)
            if metrics_by_node.get(n) != self.metrics_by_node.get(n)
        }
        self.metrics_by_node = metrics_by_node
        for name in changed:
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
            except MalformedObject:
                self.skipped["Node"] += 1
                self._documents.pop(name, None)
        self.dirty = set()
        return [self._documents[name] for name in sorted(self._documents)]
