"""KubernetesInventory and ClusterState directly, without a hub: against kubesim (and a real
HTTP server speaking the DCGM exporter's text) where they do I/O, pure where they do not."""

from __future__ import annotations

import asyncio
import json

import pytest
from tornado.httpserver import HTTPServer
from tornado.testing import bind_unused_port
from tornado.web import Application, RequestHandler

from hub_service.inventory import KubernetesInventory
from hub_service.state import ClusterState
from tests.kubesim import Faults
from tests.kubesim.generator import GPU_MODELS, make_node
from tests.utils import eventually

GI = 1024**3


def pod(name, node, cpu="1", memory="1Gi", version="1", **extra):
    return {
        "metadata": {"name": name, "namespace": "default", "resourceVersion": version},
        "spec": {
            "nodeName": node,
            "containers": [
                {
                    "name": "main",
                    "image": "busybox:1.36",
                    "resources": {"requests": {"cpu": cpu, "memory": memory}},
                }
            ],
            **extra,
        },
        "status": {"phase": "Running"},
    }


@pytest.fixture
async def inventories():
    started: list[KubernetesInventory] = []

    async def start(**kwargs) -> KubernetesInventory:
        inventory = KubernetesInventory(debounce_s=0.01, max_backoff_s=0.2, **kwargs)
        await inventory.start()
        started.append(inventory)
        return inventory

    yield start
    for inventory in started:
        await inventory.stop()


async def until_ready(inventory, within=5.0):
    async def ready():
        return inventory.ready

    await eventually(ready, within=within)


# --- ClusterState (pure) ---------------------------------------------------------------------


def test_relist_reuses_summaries_of_unchanged_pods():
    state = ClusterState()
    state.replace_nodes([make_node("n1", 8, 32)])
    state.replace_pods([pod("a", "n1", version="10"), pod("b", "n1", version="11")])
    a, b = state.pods[("default", "a")], state.pods[("default", "b")]
    # b changed (new resourceVersion, 2 cpu); a did not; c is new; nothing else survives
    state.replace_pods(
        [pod("a", "n1", version="10"), pod("b", "n1", "2", version="12"), pod("c", "n1")]
    )
    assert state.pods[("default", "a")] is a
    assert state.pods[("default", "b")] is not b
    assert state.pods[("default", "b")].requests["cpu"] == 2
    assert sorted(state.pods) == [("default", "a"), ("default", "b"), ("default", "c")]
    [doc] = state.node_documents()
    assert doc["requests"]["cpu"] == 4.0  # 1 + 2 + 1
    state.replace_pods([pod("c", "n1")])
    assert state.node_documents()[0]["pod_count"] == 1


def test_malformed_objects_count_once_and_stop_counting_when_gone():
    state = ClusterState()
    bad = pod("bad", "n1", cpu="1.2.3")
    for version in ("1", "2", "3"):  # three MODIFIED events of the same bad pod
        state.apply_pod(
            "MODIFIED", {**bad, "metadata": {**bad["metadata"], "resourceVersion": version}}
        )
    state.apply_pod("ADDED", {"metadata": {}})  # no name: cannot be followed, counted
    state.apply_pod("ADDED", "not an object")
    assert state.skipped == {"Node": 0, "Pod": 3}
    # fixed: no longer skipped, and counted on its node
    state.apply_pod("MODIFIED", pod("bad", "n1", cpu="1500m", version="4"))
    assert state.skipped["Pod"] == 2
    state.apply_pod("DELETED", pod("bad", "n1", version="5"))
    assert ("default", "bad") not in state.pods
    # a relist starts the count of nameless objects afresh
    state.replace_pods([])
    assert state.skipped == {"Node": 0, "Pod": 0}

    bad_node = make_node("bad-node", 4, 16)
    bad_node["status"]["allocatable"]["memory"] = "sixteen gigs"
    state.replace_nodes([make_node("n1", 8, 32), bad_node])
    assert [doc["name"] for doc in state.node_documents()] == ["n1"]
    assert state.skipped["Node"] == 1
    state.apply_node("MODIFIED", make_node("bad-node", 4, 16))
    assert [doc["name"] for doc in state.node_documents()] == ["bad-node", "n1"]
    assert state.skipped["Node"] == 0


def test_only_changed_nodes_are_rebuilt():
    state = ClusterState()
    state.replace_nodes([make_node("n1", 8, 32), make_node("n2", 8, 32)])
    first = {doc["name"]: doc for doc in state.node_documents()}
    state.apply_pod("ADDED", pod("a", "n1"))
    second = {doc["name"]: doc for doc in state.node_documents()}
    assert second["n2"] is first["n2"]
    assert second["n1"] is not first["n1"]
    assert second["n1"]["pod_count"] == 1
    # a status-only change the accounting cannot see rebuilds nothing
    running = pod("a", "n1", version="2")
    running["status"]["podIP"] = "10.0.0.7"
    state.apply_pod("MODIFIED", running)
    assert state.dirty == set()


# --- KubernetesInventory against kubesim ----------------------------------------------------


async def test_inventory_lists_follows_and_reserialises_only_changed_nodes(
    make_kubesim, inventories
):
    sim = await make_kubesim()
    sim.load([make_node("n1", 8, 32), make_node("n2", 8, 32)])
    inventory = await inventories(kubeconfig=str(sim.kubeconfig))
    await until_ready(inventory)
    assert inventory.stale_since() is None
    assert inventory.not_ready_reason is None
    published = inventory.published
    assert sorted(published.nodes) == ["n1", "n2"]
    assert published.resource_version == str(sim.store.resource_version)

    sim.load([{"apiVersion": "v1", "kind": "Pod", **pod("a", "n1", "2", "3Gi")}])

    async def counted():
        return b'"pod_count":1' in inventory.published.nodes["n1"]

    await eventually(counted, within=2)
    after = inventory.published
    assert after.nodes["n2"] is published.nodes["n2"]  # the same bytes object: not redone
    assert after.nodes["n1"] != published.nodes["n1"]
    assert after.pod_count == 1
    assert after.resources.startswith(b"[" + after.nodes["n1"] + b",")


async def test_a_missing_kubeconfig_is_retried_until_it_appears(
    make_kubesim, tmp_path, inventories
):
    sim = await make_kubesim()
    sim.load([make_node("n1", 8, 32)])
    kubeconfig = tmp_path / "later" / "kubeconfig"
    inventory = await inventories(kubeconfig=str(kubeconfig))
    await asyncio.sleep(0.3)
    assert not inventory.ready
    assert inventory.not_ready_reason.startswith("cannot load the Kubernetes configuration")
    assert inventory.stale_since() is not None
    # as `make dev` does: kubesim writes its kubeconfig while the hub starts the service
    kubeconfig.parent.mkdir()
    sim.write_kubeconfig(kubeconfig)
    await until_ready(inventory)
    assert list(inventory.published.nodes) == ["n1"]


async def test_api_errors_are_retried_and_never_taken_for_objects(make_kubesim, inventories):
    # a third of the requests fail with 500 or 429 (Status bodies, not lists or events)
    sim = await make_kubesim(faults=Faults(error_rate=0.3, seed=7))
    sim.load([make_node("n1", 8, 32), make_node("n2", 8, 32)])
    sim.load([{"apiVersion": "v1", "kind": "Pod", **pod("a", "n2", "3")}])
    inventory = await inventories(kubeconfig=str(sim.kubeconfig))
    await until_ready(inventory, within=10)
    assert sim.injected_errors > 0
    assert inventory.stats()["watch_errors"] > 0
    assert inventory.state.skipped == {"Node": 0, "Pod": 0}
    docs = {doc["name"]: doc for doc in inventory.state.node_documents()}
    assert docs["n2"]["requests"] == {"cpu": 3.0, "memory": GI}


async def test_410_on_a_watch_relists(make_kubesim, inventories):
    sim = await make_kubesim()
    sim.load([make_node("n1", 8, 32)])
    inventory = await inventories(kubeconfig=str(sim.kubeconfig))
    await until_ready(inventory)
    sim.store.compact()
    sim.drop_watches()

    async def relisted():
        return inventory.stats()["watch_relists"] >= 2

    await eventually(relisted, within=5)
    assert inventory.ready
    assert inventory.stats()["watch_errors"] == 0
    sim.load([{"apiVersion": "v1", "kind": "Pod", **pod("late", "n1")}])

    async def seen():
        return ("default", "late") in inventory.state.pods

    await eventually(seen, within=2)


# --- live GPU metrics from a DCGM exporter ---------------------------------------------------

DCGM_TEXT = """\
# HELP DCGM_FI_DEV_GPU_UTIL GPU utilization (in %).
# TYPE DCGM_FI_DEV_GPU_UTIL gauge
DCGM_FI_DEV_GPU_UTIL{gpu="0",UUID="GPU-aaaa",device="nvidia0",modelName="NVIDIA GeForce RTX 4090",Hostname="gpu-node-01"} 37
DCGM_FI_DEV_GPU_UTIL{gpu="1",UUID="GPU-bbbb",device="nvidia1",modelName="NVIDIA GeForce RTX 4090",hostname="gpu-node-01"} 0
# HELP DCGM_FI_DEV_FB_USED Framebuffer memory used (in MiB).
# TYPE DCGM_FI_DEV_FB_USED gauge
DCGM_FI_DEV_FB_USED{gpu="0",UUID="GPU-aaaa",device="nvidia0",modelName="NVIDIA GeForce RTX 4090",Hostname="gpu-node-01"} 20000
DCGM_FI_DEV_FB_USED{gpu="1",UUID="GPU-bbbb",device="nvidia1",modelName="NVIDIA GeForce RTX 4090",hostname="gpu-node-01"} 1
# HELP DCGM_FI_DEV_FB_FREE Framebuffer memory free (in MiB).
# TYPE DCGM_FI_DEV_FB_FREE gauge
DCGM_FI_DEV_FB_FREE{gpu="0",UUID="GPU-aaaa",device="nvidia0",modelName="NVIDIA GeForce RTX 4090",Hostname="gpu-node-01"} 4564
DCGM_FI_DEV_FB_FREE{gpu="1",UUID="GPU-bbbb",device="nvidia1",modelName="NVIDIA GeForce RTX 4090",hostname="gpu-node-01"} 24563
"""


class ExporterHandler(RequestHandler):
    def get(self) -> None:
        self.set_header("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
        self.write(DCGM_TEXT)


async def test_dcgm_metrics_reach_each_gpu_and_unreachable_is_reported(make_kubesim, inventories):
    sim = await make_kubesim()
    rtx_4090 = GPU_MODELS[2]  # 2 GPUs, 24564 MiB each (the gpu.memory label)
    sim.load([make_node("gpu-node-01", 32, 128, rtx_4090), make_node("cpu-1", 8, 32)])
    sock, port = bind_unused_port()
    exporter = HTTPServer(Application([("/metrics", ExporterHandler)]))
    exporter.add_sockets([sock])
    url = f"http://127.0.0.1:{port}/metrics"
    try:
        inventory = await inventories(
            kubeconfig=str(sim.kubeconfig), dcgm_endpoints=[url], dcgm_interval_s=0.1
        )
        await until_ready(inventory)

        def published(name):
            return json.loads(inventory.published.nodes[name])

        def gpu_details():
            return [
                (
                    d["index"],
                    d["utilization"],
                    d["memory_used"],
                    d["memory_free"],
                    d["memory_total"],
                )
                for d in published("gpu-node-01")["gpu_details"]
            ]

        async def scraped():
            return (
                b'"metrics":{"status":"ok"' in inventory.published.summary
                and gpu_details()[0][1] is not None
            )

        await eventually(scraped, within=3)
        # utilisation and memory per GPU; the total from the GFD label (24564 MiB);
        # `Hostname` and `hostname` both matched to the node
        assert gpu_details() == [(0, 37.0, 20000.0, 4564.0, 24564), (1, 0.0, 1.0, 24563.0, 24564)]
        # informational only: both GPUs' slots are still free
        assert published("gpu-node-01")["available"]["gpu"] == 2
        assert published("cpu-1")["gpu_details"] == []
    finally:
        exporter.stop()
        await exporter.close_all_connections()

    async def unreachable():
        # (the first failed scrape may find its kept-alive connection cut instead)
        status = inventory.metrics_status
        return status["status"] == "unreachable" and status["endpoints"][url]["error"] == (
            "connection refused"
        )

    await eventually(unreachable, within=3)
    assert inventory.metrics_status["since"]
    await eventually(
        lambda: _async(b'"status":"unreachable"' in inventory.published.summary), within=2
    )
    # the node documents are still served; the last good samples stay for a while
    assert gpu_details()[0][1] == 37.0


async def _async(value):
    return value
