"""Inventories: where availability comes from, and the documents published from it.

`KubernetesInventory` watches Nodes and Pods into a ClusterState. After a change it waits
a short debounce, rebuilds only the changed nodes' documents and serialises the responses
once; requests are then answered from those bytes, never by computing per request.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime

from kubernetes_asyncio import client, config

from .dcgm import DcgmScraper, metrics_for_node
from .kube import ResourceWatcher
from .nodes import summary_document
from .state import ClusterState

log = logging.getLogger("thinkube.inventory")


def iso_now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def dumps(value) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()


@dataclass
class Published:
    """The serialised answers, made once per change."""

    generated_at: str = ""
    resource_version: str = ""
    resources: bytes = b"[]"  # the node list, §2-compatible
    nodes: dict[str, bytes] = field(default_factory=dict)
    summary: bytes = b"{}"
    node_count: int = 0
    pod_count: int = 0
    built_at: float = 0.0  # monotonic


class Inventory:
    """What the HTTP layer needs from any inventory."""

    published: Published
    metrics_status: dict

    @property
    def ready(self) -> bool:
        raise NotImplementedError

    def stale_since(self) -> float | None:
        """Wall-clock time since when the data may be out of date; None while fresh."""
        raise NotImplementedError

    async def start(self) -> None:
        raise NotImplementedError

    async def stop(self) -> None:
        raise NotImplementedError

    def stats(self) -> dict:
        return {}


class KubernetesInventory(Inventory):
    def __init__(
        self,
        kubeconfig: str = "",
        debounce_s: float = 0.1,
        page_size: int = 500,
        watch_timeout_s: int = 300,
        dcgm_endpoints: list[str] | None = None,
        dcgm_interval_s: float = 15.0,
    ):
        self.kubeconfig = kubeconfig
        self.debounce_s = debounce_s
        self.page_size = page_size
        self.watch_timeout_s = watch_timeout_s
        self.state = ClusterState()
        self.published = Published()
        self.watchers: list[ResourceWatcher] = []
        self._tasks: list[asyncio.Task] = []
        self._rebuild_handle: asyncio.TimerHandle | None = None
        self._api: client.ApiClient | None = None
        self.dcgm = (
            DcgmScraper(
                dcgm_endpoints, interval_s=dcgm_interval_s, log=log, on_update=self._on_metrics
            )
            if dcgm_endpoints
            else None
        )

    async def _api_client(self) -> client.ApiClient:
        configuration = client.Configuration()
        if self.kubeconfig:
            await config.load_kube_config(
                config_file=self.kubeconfig, client_configuration=configuration
            )
        else:
            try:
                config.load_incluster_config(client_configuration=configuration)
            except config.ConfigException:
                await config.load_kube_config(client_configuration=configuration)
        return client.ApiClient(configuration)

    async def start(self) -> None:
        self._api = await self._api_client()
        common = {
            "on_change": self.changed,
            "on_health": self.changed,
            "page_size": self.page_size,
            "watch_timeout_s": self.watch_timeout_s,
        }
        self.watchers = [
            ResourceWatcher(
                self._api, "nodes", self.state.replace_nodes, self.state.apply_node, **common
            ),
            ResourceWatcher(
                self._api, "pods", self.state.replace_pods, self.state.apply_pod, **common
            ),
        ]
        self._tasks = [asyncio.ensure_future(w.run()) for w in self.watchers]
        if self.dcgm:
            self.dcgm.start()

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self.dcgm:
            await self.dcgm.stop()
        if self._api is not None:
            await self._api.close()

    @property
    def ready(self) -> bool:
        return bool(self.watchers) and all(w.health.synced_once for w in self.watchers)

    def stale_since(self) -> float | None:
        times = [
            w.health.unhealthy_since for w in self.watchers if w.health.unhealthy_since is not None
        ]
        if not self.ready:
            return min(times) if times else time.time()
        return min(times) if times else None

    @property
    def metrics_status(self) -> dict:
        return self.dcgm.metrics_status() if self.dcgm else {"status": "off"}

    def _on_metrics(self, merged) -> None:
        self.state.set_metrics(
            {name: metrics_for_node(merged, name) or {} for name in self.state.nodes}
        )
        self.changed()

    def changed(self) -> None:
        """Something changed: publish new documents after the debounce."""
        if self._rebuild_handle is None:
            loop = asyncio.get_running_loop()
            self._rebuild_handle = loop.call_later(self.debounce_s, self.rebuild)

    def rebuild(self) -> None:
        self._rebuild_handle = None
        documents = self.state.node_documents()
        versions = [w.resource_version for w in self.watchers if w.resource_version]
        summary = summary_document(documents)
        summary["metrics"] = self.metrics_status
        summary["skipped_objects"] = dict(self.state.skipped)
        node_bytes = {doc["name"]: dumps(doc) for doc in documents}
        self.published = Published(
            generated_at=iso_now(),
            resource_version=max(versions, key=lambda v: (len(v), v)) if versions else "",
            resources=b"[" + b",".join(node_bytes[doc["name"]] for doc in documents) + b"]",
            nodes=node_bytes,
            summary=dumps(summary),
            node_count=len(documents),
            pod_count=len(self.state.pods),
            built_at=time.monotonic(),
        )

    def stats(self) -> dict:
        return {
            "watch_restarts": sum(w.health.restarts for w in self.watchers),
            "watch_errors": sum(w.health.errors for w in self.watchers),
            "skipped": dict(self.state.skipped),
        }
