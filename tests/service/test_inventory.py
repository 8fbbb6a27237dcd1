"""KubernetesInventory and ClusterState directly, without a hub: against kubesim (and a real
HTTP server speaking the DCGM exporter's text) where they do I/O, pure where they do not."""

from __future__ import annotations

import asyncio
import copy
import json
import random

import pytest
from tornado.httpserver import HTTPServer
from tornado.testing import bind_unused_port
from tornado.web import Application, RequestHandler

from hub_service.cluster import KubernetesInventory
from hub_service.kube import read_list
from hub_service.state import ClusterState
from tests.kubesim import Faults
from tests.kubesim.generator import GPU_MODELS, generate_nodes, generate_pods, make_node
from tests.utils import eventually
from thinkube_core.accounting import MalformedObject, summarize_pod

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


# --- list bodies parsed as they arrive -------------------------------------------------------


async def chunks_of(body: bytes, size: int):
    for start in range(0, len(body), size):
        yield body[start : start + size]


def generated_pods(count: int) -> list[dict]:
    """Pods as kubesim's generator makes them (init containers, sidecars, finished pods)
    plus the odd shapes accounting has rules for, and some it rejects."""
    rng = random.Random(5)
    nodes = generate_nodes(8, 2, rng)
    pods = generate_pods(nodes, count, rng)
    for index, item in enumerate(pods):
        item["metadata"]["resourceVersion"] = str(100 + index)
    odd = [
        pod("overhead", "node-0001", overhead={"cpu": "250m", "memory": "120Mi"}),
        pod("pod-level", "node-0001", resources={"requests": {"cpu": "3", "memory": "2Gi"}}),
        pod("int-cpu", "node-0002", cpu=2),  # a number where a string is usual
        pod("str-cpu", "node-0002", cpu="2"),
        pod("bool-cpu", "node-0002", cpu=True),  # not a quantity: rejected
        pod("bad-quantity", "node-0002", cpu="1.2.3"),
        pod("containers-not-a-list", "node-0002", containers={"name": "main"}),
        {"metadata": {"namespace": "default"}},  # no name
        "not an object",
        pod("unicode-ünïcødé", "node-0003"),
    ]
    odd[-1]["metadata"]["annotations"] = {"note": "caf\u00e9 \u2615 \U0001f680"}  # multi-byte
    return pods + odd


def list_body(items: list, order=("kind", "apiVersion", "metadata", "items")) -> bytes:
    parts = {
        "kind": "PodList",
        "apiVersion": "v1",
        "metadata": {"resourceVersion": "4242", "remainingItemCount": 12345},
        "items": items,
    }
    return json.dumps({key: parts[key] for key in order}, ensure_ascii=False).encode()


@pytest.mark.parametrize("chunk_size", [1, 7, 4096, 10**9])
async def test_a_list_read_while_it_arrives_is_the_list(chunk_size):
    items = generated_pods(120)
    body = list_body(items)
    seen: list = []
    head = await read_list(chunks_of(body, chunk_size), seen.append)
    assert seen == json.loads(body)["items"]
    assert head == {
        "kind": "PodList",
        "apiVersion": "v1",
        "metadata": {"resourceVersion": "4242", "remainingItemCount": 12345},
    }


async def test_a_list_read_while_it_arrives_takes_any_member_order_and_empty_lists():
    body = list_body([pod("a", "n1")], order=("items", "metadata", "kind", "apiVersion"))
    seen: list = []
    head = await read_list(chunks_of(body, 3), seen.append)
    assert [item["metadata"]["name"] for item in seen] == ["a"]
    assert head["metadata"]["resourceVersion"] == "4242"
    for empty in (b'{"items":[],"metadata":{}}', b' {"items" : null} ', b"{}"):
        seen.clear()
        await read_list(chunks_of(empty, 2), seen.append)
        assert seen == []


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"[]",
        b'{"items":[{"a":1},',  # cut off
        b'{"items":[{"a":1}]',  # no closing brace
        b'{"items":[{"a":1}]} {}',  # something after it
        b'{"items":[{"a":1} {"b":2}]}',  # no comma
        b'{1:"x"}',
        b'{"metadata":{"resourceVersion":"1"},"items":[{"a":tru}]}',
        b'{"items":["\xff"]}',  # not UTF-8
    ],
)
async def test_a_body_that_is_not_one_json_object_is_an_error(body):
    with pytest.raises(ValueError):
        await read_list(chunks_of(body, 5), lambda item: None)


async def test_a_number_cut_by_a_chunk_boundary_is_read_whole():
    body = b'{"metadata":{"remainingItemCount":123456789},"items":[]}'
    for size in range(1, len(body) + 1):
        head = await read_list(chunks_of(body, size), lambda item: None)
        assert head["metadata"]["remainingItemCount"] == 123456789


async def test_pods_summarised_as_they_are_read_give_the_state_of_whole_pages():
    items = generated_pods(400)
    nodes = [make_node(f"node-{i:04d}", 16, 64) for i in range(1, 9)]
    # the old path: whole objects, each summarised by accounting itself
    whole = ClusterState()
    whole.replace_nodes(nodes)
    expected = {}
    for item in items:
        try:
            summary = summarize_pod(item)
        except MalformedObject:
            continue
        expected[(summary.namespace, summary.name)] = summary
    # the new path: parsed from a stream, summarised item by item (shapes shared)
    streamed = ClusterState()
    streamed.replace_nodes(nodes)
    prepared: list = []
    await read_list(
        chunks_of(list_body(items), 1000),
        lambda item: prepared.append(streamed.prepare_pod(item)),
    )
    streamed.replace_prepared_pods(prepared)
    assert streamed.pods == expected
    # shapes are shared, and each summary still has its own pod's amounts
    assert len(streamed._shapes) < len(expected) / 4
    assert streamed.pods[("default", "int-cpu")].requests["cpu"] == 2
    assert streamed.pods[("default", "pod-level")].requests["cpu"] == 3
    assert streamed.skipped["Pod"] == 5  # bool-cpu, bad-quantity, not a list, no name, a str
    whole.replace_pods(items)
    assert whole.pods == expected
    assert streamed.node_documents() == whole.node_documents()


def test_a_relist_rebuilds_only_the_nodes_whose_pods_changed():
    state = ClusterState()
    state.replace_nodes([make_node(f"n{i}", 8, 32) for i in range(1, 4)])
    state.replace_pods([pod("a", "n1", version="1"), pod("b", "n2", version="2")])
    first = {doc["name"]: doc for doc in state.node_documents()}
    # b moved to n3 (a new version); a is unchanged; n1 is left alone
    state.replace_pods([pod("a", "n1", version="1"), pod("b", "n3", version="3")])
    assert state.dirty == {"n2", "n3"}
    second = {doc["name"]: doc for doc in state.node_documents()}
    assert second["n1"] is first["n1"]
    assert (second["n2"]["pod_count"], second["n3"]["pod_count"]) == (0, 1)
    # a node relist keeps the documents of nodes at the same resourceVersion
    nodes = [make_node(f"n{i}", 8, 32) for i in range(1, 4)]
    for node in nodes:
        node["metadata"]["resourceVersion"] = "7"
    state.replace_nodes(nodes)
    state.node_documents()
    relisted = copy.deepcopy(nodes[:2])  # n3 gone
    relisted[0]["metadata"]["resourceVersion"] = "8"  # n1 changed
    state.replace_nodes(relisted)
    assert state.dirty == {"n1", "n3"}
    assert [doc["name"] for doc in state.node_documents()] == ["n1", "n2"]


# --- the reflector's resourceVersions, against kubesim ----------------------------------------


def record_requests(sim) -> list[tuple[str, dict[str, str]]]:
    """Every request kubesim gets, as (path, query), in order of arrival: seen where its
    tornado application picks the handler for it."""
    seen: list[tuple[str, dict[str, str]]] = []
    application = sim.server.request_callback
    find_handler = application.find_handler

    def record(request, **kwargs):
        query = {key: values[-1].decode() for key, values in request.query_arguments.items()}
        seen.append((request.path, query))
        return find_handler(request, **kwargs)

    application.find_handler = record
    return seen


def lists_of(seen, path):
    return [query for p, query in seen if p == path and query.get("watch") != "True"]


def watches_of(seen, path):
    return [query for p, query in seen if p == path and query.get("watch") == "True"]


async def test_the_first_list_is_from_the_cache_and_the_watch_starts_at_its_version(
    make_kubesim, inventories
):
    sim = await make_kubesim()
    seen = record_requests(sim)
    sim.load([make_node("n1", 8, 32)])
    sim.load([{"apiVersion": "v1", "kind": "Pod", **pod(f"p{i}", "n1")} for i in range(3)])
    inventory = await inventories(kubeconfig=str(sim.kubeconfig))
    await until_ready(inventory)

    async def watching():
        return watches_of(seen, "/api/v1/pods") or None

    await eventually(watching, within=2)
    [first] = lists_of(seen, "/api/v1/pods")
    assert (first["resourceVersion"], first["limit"]) == ("0", "500")
    listed_version = str(sim.store.resource_version)
    assert watches_of(seen, "/api/v1/pods")[0]["resourceVersion"] == listed_version
    assert watches_of(seen, "/api/v1/pods")[0]["allowWatchBookmarks"] == "True"


async def test_after_a_410_it_relists_at_the_last_version_seen_unpaged(make_kubesim, inventories):
    sim = await make_kubesim()
    seen = record_requests(sim)
    sim.load([make_node("n1", 8, 32)])
    inventory = await inventories(kubeconfig=str(sim.kubeconfig))
    await until_ready(inventory)
    sim.load([{"apiVersion": "v1", "kind": "Pod", **pod("late", "n1")}])

    async def seen_late():
        return ("default", "late") in inventory.state.pods

    await eventually(seen_late, within=2)
    last_seen = inventory.watchers[1].resource_version
    sim.store.compact()
    sim.drop_watches()

    async def relisted():
        return len(lists_of(seen, "/api/v1/pods")) >= 2 and inventory.ready

    await eventually(relisted, within=5)
    first, again = lists_of(seen, "/api/v1/pods")[:2]
    assert first["resourceVersion"] == "0"
    # served from the watch cache: at least as new as what was seen, and no limit
    assert again["resourceVersion"] == last_seen
    assert "limit" not in again
    assert inventory.stats()["watch_relists"] >= 2


async def test_a_server_that_pages_the_first_list_gets_paged_relists(make_kubesim, inventories):
    sim = await make_kubesim(cached_lists_paginate=True)  # as Kubernetes 1.33+ does
    seen = record_requests(sim)
    sim.load([make_node("n1", 8, 32)])
    sim.load([{"apiVersion": "v1", "kind": "Pod", **pod(f"p{i}", "n1")} for i in range(5)])
    inventory = await inventories(kubeconfig=str(sim.kubeconfig), page_size=2)
    await until_ready(inventory)
    assert len(inventory.state.pods) == 5
    pages = lists_of(seen, "/api/v1/pods")
    assert [(page.get("resourceVersion"), "continue" in page) for page in pages] == [
        ("0", False),
        (None, True),  # a continue token carries the version; none is sent beside it
        (None, True),
    ]
    sim.store.compact()
    sim.drop_watches()

    async def relisted():
        return len(lists_of(seen, "/api/v1/pods")) >= 4 and inventory.ready

    await eventually(relisted, within=5)
    again = lists_of(seen, "/api/v1/pods")[3]
    assert again["limit"] == "2" and again["resourceVersion"] not in ("", "0")


async def test_a_version_the_server_has_not_reached_relists_the_newest(make_kubesim, inventories):
    """An API server restored from an older backup: its versions are behind the client's,
    the list at the last version seen is refused (504 Too large resource version), and the
    reflector lists the newest data instead (resourceVersion unset)."""
    sim = await make_kubesim()
    sim.load([make_node("old", 8, 32)])
    sim.load(
        [
            {
                "apiVersion": "v1",
                "kind": "ConfigMap",
                "metadata": {"name": f"c{i}", "namespace": "default"},
            }
            for i in range(30)
        ]
    )
    inventory = await inventories(kubeconfig=str(sim.kubeconfig))
    await until_ready(inventory)
    ahead = inventory.watchers[0].resource_version
    port = sim.port
    errors = inventory.watchers[0].health.errors
    await sim.stop()

    async def refused():  # the watch resumed, found nobody there, and failed: a list is next
        return inventory.watchers[0].health.errors > errors

    await eventually(refused, within=5)
    restored = await make_kubesim()
    await restored.stop()
    await restored.start(port)
    seen = record_requests(restored)
    restored.load([make_node("restored", 8, 32)])
    assert restored.store.resource_version < int(ahead)

    async def switched():
        return sorted(inventory.published.nodes) == ["restored"] and inventory.ready

    await eventually(switched, within=10)
    lists = lists_of(seen, "/api/v1/nodes")
    assert lists[0]["resourceVersion"] == ahead  # refused: too large
    assert "resourceVersion" not in lists[1]  # the newest, a consistent read
    assert inventory.watchers[0].version_unavailable is False


async def test_a_continue_token_that_expires_falls_back_to_one_unpaged_list(
    make_kubesim, inventories
):
    sim = await make_kubesim(cached_lists_paginate=True)  # pages, as Kubernetes 1.33+ does
    sim.load([make_node(f"n{i}", 8, 32) for i in range(3)])
    seen = record_requests(sim)

    def compact_after_the_first_page(handler) -> None:
        query = handler.request.query_arguments
        if handler.request.path == "/api/v1/nodes" and b"1" in query.get("limit", []):
            if "continue" not in query:
                sim.store.compact()  # the version the first page fixed is gone

    sim.server.request_callback.settings["log_function"] = compact_after_the_first_page
    inventory = await inventories(kubeconfig=str(sim.kubeconfig), page_size=1)
    await until_ready(inventory)
    assert sorted(inventory.published.nodes) == ["n0", "n1", "n2"]
    lists = lists_of(seen, "/api/v1/nodes")
    assert [(q.get("resourceVersion"), q.get("limit"), "continue" in q) for q in lists[:3]] == [
        ("0", "1", False),
        (None, "1", True),  # 410: expired
        ("0", None, False),  # one unpaged list at the version first asked for
    ]
