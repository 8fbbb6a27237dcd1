"""The Kubernetes inventory: Nodes and Pods of a cluster, watched into a ClusterState.

After a change it waits a short debounce, rebuilds only the changed nodes' documents and
serialises the responses once; requests are then answered from those bytes, never by
computing per request.

Health: the inventory is *ready* once both watches have listed and while both are
connected; otherwise its data is *stale* (served all the same, marked so). Changes of that
state are logged once each (a warning when Kubernetes becomes unreachable, an info line when
it is back), never once per retry or per request.

Imported only when the service watches a cluster (kubernetes_asyncio is not a small import).
"""

from __future__ import annotations

import asyncio
import logging
import random
import time

from kubernetes_asyncio import client, config

from .dcgm import DcgmMetrics, DcgmScraper
from .gpu_idle import GpuReading, gpu_label
from .inventory import Inventory, Published, dumps, iso_now
from .kube import ResourceWatcher, describe_error
from .nodes import summary_document
from .state import ClusterState

log = logging.getLogger("thinkube.inventory")


class KubernetesInventory(Inventory):
    def __init__(
        self,
        kubeconfig: str = "",
        debounce_s: float = 0.1,
        page_size: int = 500,
        watch_timeout_s: int = 300,
        dcgm_endpoints: list[str] | None = None,
        dcgm_interval_s: float = 15.0,
        max_backoff_s: float = 10.0,
    ):
        self.kubeconfig = kubeconfig
        self.debounce_s = debounce_s
        self.page_size = page_size
        self.watch_timeout_s = watch_timeout_s
        self.max_backoff_s = max_backoff_s
        self.state = ClusterState()
        self.watchers: list[ResourceWatcher] = []
        self._tasks: list[asyncio.Task] = []
        self._rebuild_handle: asyncio.TimerHandle | None = None
        self._api: client.ApiClient | None = None
        self._started_at = time.time()
        self._config_error: str | None = None
        self._healthy: bool | None = None  # the state last logged; None before the first
        self.dcgm = (
            DcgmScraper(
                dcgm_endpoints, interval_s=dcgm_interval_s, log=log, on_update=self._on_metrics
            )
            if dcgm_endpoints
            else None
        )
        self._node_bytes: dict[str, tuple[dict, bytes]] = {}
        self.listeners: list = []
        self.published = Published()
        self.rebuild()  # valid (empty) documents before the first sync

    async def api_client(self) -> client.ApiClient:
        """A new client for the API this inventory watches (the caller closes it)."""
        return await self._api_client()

    async def _api_client(self) -> client.ApiClient:
        configuration = client.Configuration()
        if self.kubeconfig:
            await config.load_kube_config(
                config_file=self.kubeconfig, client_configuration=configuration
            )
        else:
            try:
                config.load_incluster_config(client_configuration=configuration)
            except config.ConfigException as in_cluster:
                try:
                    await config.load_kube_config(client_configuration=configuration)
                except Exception as err:
                    # Say both: in a hub pod the usual cause is a managed service started
                    # without KUBERNETES_SERVICE_HOST/PORT in its environment.
                    raise config.ConfigException(
                        f"no in-cluster configuration ({in_cluster}) and no kubeconfig ({err})"
                    ) from err
        return client.ApiClient(configuration)

    async def start(self) -> None:
        """Start watching in the background; returns at once and never raises: a missing
        kubeconfig or an unreachable API server is retried, and reported by `ready`."""
        self._started_at = time.time()
        self._tasks = [asyncio.ensure_future(self._run())]
        if self.dcgm:
            self.dcgm.start()

    async def _run(self) -> None:
        backoff = 0.5
        while self._api is None:
            try:
                self._api = await self._api_client()
            except asyncio.CancelledError:
                raise
            except Exception as err:  # no kubeconfig yet, no in-cluster environment
                self._config_error = (
                    f"cannot load the Kubernetes configuration: {describe_error(err)}"
                )
                self._health_changed()
                await asyncio.sleep(backoff * (0.5 + random.random() / 2))
                backoff = min(backoff * 2, self.max_backoff_s)
        self._config_error = None
        common = {
            "on_change": self.changed,
            "on_health": self._health_changed,
            "page_size": self.page_size,
            "watch_timeout_s": self.watch_timeout_s,
            "max_backoff_s": self.max_backoff_s,
        }
        self.watchers = [
            ResourceWatcher(
                self._api, "nodes", self.state.replace_nodes, self.state.apply_node, **common
            ),
            ResourceWatcher(
                self._api,
                "pods",
                self.state.replace_prepared_pods,
                self.state.apply_pod,
                prepare=self.state.prepare_pod,
                **common,
            ),
        ]
        await asyncio.gather(*(w.run() for w in self.watchers))

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._rebuild_handle is not None:
            self._rebuild_handle.cancel()
            self._rebuild_handle = None
        if self.dcgm:
            await self.dcgm.stop()
        if self._api is not None:
            await self._api.close()

    def server_gpus(self) -> list[dict] | None:
        """Notebook servers' pods holding GPUs, with what the DCGM exporters (run with
        Kubernetes mapping, which labels each GPU's samples with the pod using it) say of
        each; no answering exporter, or none naming the pod: no readings."""
        if not self.ready:
            return None  # who holds what may be out of date: nothing is decided meanwhile
        usage = self.dcgm.fresh_pod_usage() if self.dcgm is not None else {}
        found = []
        for summary in self.state.server_pods.values():
            if not summary.node_name or summary.phase != "Running" or summary.terminating:
                continue
            count = sum(
                int(amount)
                for name, amount in summary.requests.items()
                if name.startswith("nvidia.com/")
            )
            if not count or summary.server_user is None:
                continue
            entries = usage.get((summary.namespace, summary.name), [])
            readings = [
                GpuReading(
                    key=entry["key"],
                    label=gpu_label(entry["gpu"], entry["model"], entry["instance"]),
                    utilization=entry["utilization"],
                )
                for entry in entries
            ]
            # a GPU of the pod that no sample names is a GPU without data
            readings += [
                GpuReading(key=f"{summary.name}/missing-{n}", label="a GPU", utilization=None)
                for n in range(count - len(readings))
            ]
            found.append(
                {
                    "user": summary.server_user,
                    "server": summary.server_name or "",
                    "node": summary.node_name,
                    "gpus": count,
                    "readings": readings,
                }
            )
        return found

    # -- health ------------------------------------------------------------------

    @property
    def synced(self) -> bool:
        return bool(self.watchers) and all(w.health.synced_once for w in self.watchers)

    @property
    def ready(self) -> bool:
        """Listed once, and every watch connected now."""
        return self.synced and all(w.health.unhealthy_since is None for w in self.watchers)

    def stale_since(self) -> float | None:
        if not self.synced:
            return self._started_at
        times = [
            w.health.unhealthy_since for w in self.watchers if w.health.unhealthy_since is not None
        ]
        return min(times) if times else None

    @property
    def not_ready_reason(self) -> str | None:
        if self._config_error:
            return self._config_error
        errors = [
            f"{w.kind}: {w.health.last_error}"
            for w in self.watchers
            if w.health.unhealthy_since is not None
        ]
        if errors:
            return "Kubernetes API unreachable (" + "; ".join(errors) + ")"
        if not self.synced:
            return "listing nodes and pods"
        return None

    def _health_changed(self) -> None:
        """Log a change between healthy and not, once; nothing while it stays the same."""
        failing = self._config_error is not None or any(
            w.health.unhealthy_since is not None for w in self.watchers
        )
        if failing and self._healthy is not False:
            if self.synced:
                log.warning(
                    "%s; serving the last known state (resourceVersion %s) marked stale "
                    "and retrying",
                    self.not_ready_reason,
                    self.published.resource_version,
                )
            else:
                log.warning("%s; not ready, retrying", self.not_ready_reason)
            self._healthy = False
        elif not failing and self.ready and self._healthy is not True:
            # Publish the fresh lists now, not after the debounce: from this moment the
            # answers say "not stale", so they must already hold what was listed.
            if self._rebuild_handle is not None:
                self._rebuild_handle.cancel()
            self.rebuild()
            verb = "back" if self._healthy is False else "synced"
            log.info(
                "Kubernetes inventory %s: %d nodes, %d pods listed (in %.1f s); data is current",
                verb,
                len(self.state.nodes),
                len(self.state.pods),
                max(w.health.last_list_s or 0.0 for w in self.watchers),
            )
            self._healthy = True

    # -- metrics -----------------------------------------------------------------

    @property
    def metrics_status(self) -> dict:
        return self.dcgm.metrics_status() if self.dcgm else {"status": "off"}

    def _on_metrics(self, merged: DcgmMetrics) -> None:
        self.state.set_dcgm(merged)
        self.changed()

    # -- publishing --------------------------------------------------------------

    def changed(self) -> None:
        """Something changed: publish new documents after the debounce. Not before both
        lists are in: nodes without their pods would show everything free, and the first
        full publish comes when the inventory becomes ready."""
        if self._rebuild_handle is None and self.synced:
            loop = asyncio.get_running_loop()
            self._rebuild_handle = loop.call_later(self.debounce_s, self.rebuild)

    def rebuild(self) -> None:
        self._rebuild_handle = None
        documents = self.state.node_documents()
        versions = [w.resource_version for w in self.watchers if w.resource_version]
        summary = summary_document(documents)
        summary["metrics"] = self.metrics_status
        summary["skipped_objects"] = dict(self.state.skipped)
        # Unchanged nodes keep their document object (ClusterState rebuilds only the changed
        # ones), so only those are serialised again.
        cache, self._node_bytes = self._node_bytes, {}
        for doc in documents:
            cached = cache.get(doc["name"])
            self._node_bytes[doc["name"]] = (
                cached if cached is not None and cached[0] is doc else (doc, dumps(doc))
            )
        node_bytes = {name: raw for name, (_, raw) in self._node_bytes.items()}
        self.published = Published(
            generated_at=iso_now(),
            resource_version=max(versions, key=lambda v: (len(v), v)) if versions else "",
            resources=b"[" + b",".join(node_bytes[doc["name"]] for doc in documents) + b"]",
            nodes=node_bytes,
            summary=dumps(summary),
            node_count=len(documents),
            pod_count=len(self.state.pods),
            built_at=time.monotonic(),
            documents=documents,
            counted_jobs=self.state.counted_jobs(),
            held_servers=self.state.held_servers(),
        )
        self.notify()

    def stats(self) -> dict:
        return {
            "watch_restarts": sum(w.health.restarts for w in self.watchers),
            "watch_relists": sum(w.health.relists for w in self.watchers),
            "watch_errors": sum(w.health.errors for w in self.watchers),
            "skipped": dict(self.state.skipped),
        }
