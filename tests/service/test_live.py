"""The service follows kubesim live, through a real hub: pods created and deleted show within
a second; a 410 Gone makes it relist; kubesim going down leaves the last state served as
stale and not ready, logged once, until it comes back by itself; malformed objects are
skipped and counted, never fatal.

The tests share one hub and one kubesim and run in file order.
"""

from __future__ import annotations

import asyncio
import time

import httpx
import pytest
import pytest_asyncio

from tests.hub_fixtures import ACCESS_SCOPE
from tests.kubesim.generator import make_node
from tests.utils import eventually
from thinkube_spawner.availability import Answer, AvailabilityClient

pytestmark = pytest.mark.asyncio(loop_scope="module")

GI = 1024**3


def pod_manifest(name, node=None, cpu="500m", memory="1Gi"):
    spec = {
        "containers": [
            {
                "name": "main",
                "image": "busybox:1.36",
                "resources": {
                    "requests": {"cpu": cpu, "memory": memory},
                    "limits": {"cpu": cpu, "memory": memory},
                },
            }
        ]
    }
    if node:
        spec["nodeName"] = node
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name}, "spec": spec}


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def sim(module_kubesim):
    sim = await module_kubesim()
    sim.load([make_node("worker-1", 8, 32, index=1), make_node("worker-2", 8, 32, index=2)])
    return sim


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def hub(sim, module_hub_factory):
    return await module_hub_factory(sim=sim)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def client(hub):
    return hub.client(hub.token("watcher", [ACCESS_SCOPE]))


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def kube(sim):
    async with httpx.AsyncClient(base_url=f"{sim.url}/api/v1/namespaces/default/", timeout=10) as c:
        yield c


async def node_doc(client, name) -> dict:
    response = await client.get(f"api/v1/cluster/resources/{name}")
    assert response.status_code == 200, response.text
    return response.json()


async def wait_until(predicate, within: float) -> float:
    """Seconds until `predicate()` (async) holds, polling every 10 ms; fails after `within`."""
    started = time.perf_counter()
    await eventually(predicate, within=within, interval=0.01)
    return time.perf_counter() - started


async def metric(client, name) -> float:
    text = (await client.get("metrics")).text
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"no metric {name}")


async def test_pods_created_and_deleted_show_within_a_second(client, kube):
    before = await node_doc(client, "worker-1")
    assert (before["pod_count"], before["allocated"]["cpu"]) == (0, 0.0)

    created = await kube.post("pods", json=pod_manifest("fresh-1", "worker-1", "1500m", "2Gi"))
    assert created.status_code == 201

    async def counted():
        doc = await node_doc(client, "worker-1")
        return doc["pod_count"] == 1 and doc["allocated"] == {
            "cpu": 1.5,
            "memory": 2 * GI,
            "gpu": 0,
        }

    assert await wait_until(counted, within=1.0) < 1.0

    # an unbound pod: kubesim's scheduler binds it, then it counts where it landed
    created = await kube.post("pods", json=pod_manifest("fresh-2", None, "7", "1Gi"))
    assert created.status_code == 201

    async def scheduled():
        docs = [await node_doc(client, name) for name in ("worker-1", "worker-2")]
        return sum(doc["pod_count"] for doc in docs) == 2

    await wait_until(scheduled, within=5.0)
    # 7 cores do not fit next to 1.5 on worker-1 (7.9 allocatable): it went to worker-2
    assert (await node_doc(client, "worker-2"))["allocated"]["cpu"] == 7.0

    deleted = await kube.delete("pods/fresh-1", params={"gracePeriodSeconds": "0"})
    assert deleted.status_code == 200

    async def gone():
        doc = await node_doc(client, "worker-1")
        return doc["pod_count"] == 0 and doc["allocated"]["cpu"] == 0.0

    assert await wait_until(gone, within=1.0) < 1.0
    assert (await kube.delete("pods/fresh-2", params={"gracePeriodSeconds": "0"})).is_success


async def test_availability_is_revalidated_and_every_change_is_seen(hub, client, kube):
    """Spawners hold the last answer and ask with If-None-Match: 304 while nothing changed
    (with the freshness in the headers), the new document as soon as a pod changes."""
    # the previous test's last pod is gone first
    await wait_until(lambda: _pod_count_is(client, "worker-2", 0), within=2.0)
    first = await client.get("api/v1/availability")
    version = first.json()["version"]
    assert first.headers["etag"] == f'"{version}"'
    assert first.headers["cache-control"] == "no-cache"
    again = await client.get("api/v1/availability", headers={"If-None-Match": f'"{version}"'})
    assert (again.status_code, again.content) == (304, b"")
    assert again.headers["x-thinkube-stale"] == "false"
    assert again.headers["x-thinkube-generated-at"] == first.json()["generated_at"]
    other = await client.get("api/v1/availability", headers={"If-None-Match": '"0123"'})
    assert other.status_code == 200 and other.json()["version"] == version
    # auth comes first: a stranger holding the version gets 401, not 304
    stranger = hub.client()
    refused = await stranger.get("api/v1/availability", headers={"If-None-Match": f'"{version}"'})
    assert refused.status_code == 401

    # the spawners' client: the second fetch reuses the parsed answer
    availability = AvailabilityClient(
        hub.service_direct_url, hub.token("spawner-like", [ACCESS_SCOPE])
    )
    held = await availability.fetch()
    assert held.version == version and not held.unchanged
    assert len(held.document()["nodes"]) == 2
    assert await availability.fetch(version) == Answer(
        version, generated_at=held.generated_at, stale=False, age_seconds=0.0, unchanged=True
    )
    assert availability.calls == 2  # each fetch asked the service

    created = await kube.post("pods", json=pod_manifest("seen-1", "worker-2", "3", "1Gi"))
    assert created.status_code == 201

    async def new_answer():
        answer = await availability.fetch(version)
        if answer.unchanged:
            return None
        body = {**answer.document(), "version": answer.version}
        worker_2 = next(node for node in body["nodes"] if node["name"] == "worker-2")
        return body if worker_2["allocated"]["cpu"] == 3.0 else None

    changed = await eventually(new_answer, within=2.0, interval=0.05)
    assert changed["version"] != version
    assert (await kube.delete("pods/seen-1", params={"gracePeriodSeconds": "0"})).is_success
    await wait_until(lambda: _pod_count_is(client, "worker-2", 0), within=2.0)


async def test_410_gone_makes_it_relist_and_stay_current(hub, sim, client, kube):
    relists_before = await metric(client, "thinkube_watch_relists")
    # the watch cache forgets everything, then the streams are cut: both watches resume
    # from a resourceVersion the server no longer has, get 410 Gone and must list again
    sim.store.compact()
    assert sim.drop_watches() >= 2

    async def relisted():
        return await metric(client, "thinkube_watch_relists") >= relists_before + 2

    await wait_until(relisted, within=5.0)
    log = hub.service_log()
    assert "nodes watch expired (410 Gone" in log
    assert "pods watch expired (410 Gone" in log
    ready = await client.get("api/v1/ready")
    assert ready.status_code == 200
    assert ready.json()["stale"] is False

    # and the watches opened after the relist deliver new events
    assert (await kube.post("pods", json=pod_manifest("after-410", "worker-1"))).is_success

    async def seen():
        return (await node_doc(client, "worker-1"))["pod_count"] == 1

    assert await wait_until(seen, within=1.0) < 1.0
    assert (await kube.delete("pods/after-410", params={"gracePeriodSeconds": "0"})).is_success
    await wait_until(lambda: _pod_count_is(client, "worker-1", 0), within=1.0)


async def _pod_count_is(client, node, count) -> bool:
    return (await node_doc(client, node))["pod_count"] == count


BAD_NODE = make_node("bad-node", 4, 16, index=9)
BAD_NODE["status"]["allocatable"]["cpu"] = "lots"  # not a quantity


def odd_pods() -> list[dict]:
    bad_quantity = pod_manifest("bad-quantity", "worker-1", cpu="1.2.3")
    containers_not_a_list = pod_manifest("no-container-list", "worker-1")
    containers_not_a_list["spec"]["containers"] = {"name": "main"}
    for manifest in (bad_quantity, containers_not_a_list):
        manifest["metadata"]["namespace"] = "default"
        manifest["status"] = {"phase": "Running"}
    # odd but countable: unknown fields, a null status, an extended resource of its own
    odd_but_fine = pod_manifest("odd-but-fine", "worker-2", cpu="250m", memory="256Mi")
    odd_but_fine["metadata"]["namespace"] = "default"
    odd_but_fine["spec"]["futureField"] = {"x": 1}
    odd_but_fine["spec"]["containers"][0]["resources"]["requests"]["example.com/dongle"] = "1"
    odd_but_fine["spec"]["containers"][0]["resources"]["limits"]["example.com/dongle"] = "1"
    return [bad_quantity, containers_not_a_list, odd_but_fine]


async def test_malformed_objects_are_skipped_and_counted(hub, sim, client):
    # objects the API server would have refused, stored as they are (no admission)
    sim.load([BAD_NODE, *odd_pods()], admit=False)

    async def counted():
        summary = (await client.get("api/v1/cluster/summary")).json()
        return summary["skipped_objects"] == {"Node": 1, "Pod": 2} and summary

    summary = await wait_until_value(counted, within=2.0)
    assert summary["nodes"]["total"] == 2  # worker-1, worker-2; bad-node left out
    assert (await client.get("api/v1/cluster/resources/bad-node")).status_code == 404
    # the countable odd pod is counted: 0.25 cpu and its dongle on worker-2
    worker_2 = await node_doc(client, "worker-2")
    assert worker_2["pod_count"] == 1
    assert worker_2["requests"] == {"cpu": 0.25, "example.com/dongle": 1, "memory": 256 * 1024**2}
    assert (await node_doc(client, "worker-1"))["pod_count"] == 0
    assert 'thinkube_skipped_objects{kind="Pod"} 2.0' in (await client.get("metrics")).text

    # modifying a malformed pod does not count it twice; deleting it uncounts it
    from tests.kubesim.sim import PODS

    store = sim.store
    for label in ("a", "b"):
        bad = store.get(PODS, "default", "bad-quantity")
        bad = {**bad, "metadata": {**bad["metadata"], "labels": {"touch": label}}}
        store.replace(PODS, "default", "bad-quantity", bad, subresource="all")
    store.remove(PODS, "default", "no-container-list")

    async def one_left():
        summary = (await client.get("api/v1/cluster/summary")).json()
        return summary["skipped_objects"] == {"Node": 1, "Pod": 1}

    await wait_until(one_left, within=2.0)

    # the node fixed: it appears, and nothing is skipped but the one pod
    from tests.kubesim.sim import BY_KIND

    nodes = BY_KIND[("v1", "Node")]
    fixed = store.get(nodes, None, "bad-node")
    fixed = {
        **fixed,
        "status": {
            **fixed["status"],
            "allocatable": {**fixed["status"]["allocatable"], "cpu": "3900m"},
        },
    }
    store.replace(nodes, None, "bad-node", fixed, subresource="all")

    async def node_back():
        response = await client.get("api/v1/cluster/resources/bad-node")
        return response.status_code == 200 and response.json()["capacity"]["cpu"] == 3.9

    await wait_until(node_back, within=2.0)
    summary = (await client.get("api/v1/cluster/summary")).json()
    assert summary["skipped_objects"] == {"Node": 0, "Pod": 1}
    # the service lived through all of it
    assert (await client.get("api/v1/ready")).status_code == 200
    store.remove(nodes, None, "bad-node")
    store.remove(PODS, "default", "bad-quantity")
    store.remove(PODS, "default", "odd-but-fine")
    await wait_until(lambda: _skipped_is(client, {"Node": 0, "Pod": 0}), within=2.0)


async def _skipped_is(client, expected) -> bool:
    return (await client.get("api/v1/cluster/summary")).json()["skipped_objects"] == expected


async def wait_until_value(predicate, within: float):
    return await eventually(predicate, within=within, interval=0.01)


UNREACHABLE = "Kubernetes API unreachable"
BACK = "Kubernetes inventory back"


async def test_kubesim_down_then_back(hub, sim, client, kube):
    before = await client.get("api/v1/cluster/resources")
    assert before.headers["x-thinkube-stale"] == "false"
    last_state = before.json()
    log_before = hub.service_log()
    assert UNREACHABLE not in log_before

    await sim.go_down()

    async def not_ready():
        response = await client.get("api/v1/ready")
        return response.status_code == 503 and response.json()

    body = await wait_until_value(not_ready, within=3.0)
    assert body["ready"] is False
    assert body["stale"] is True
    assert body["reason"].startswith(UNREACHABLE + " (")

    # the last known state is still served, marked stale, and ages
    stale = await client.get("api/v1/cluster/resources")
    assert stale.status_code == 200
    assert stale.json() == last_state
    assert stale.headers["x-thinkube-stale"] == "true"
    first_age = float(stale.headers["x-thinkube-age-seconds"])
    summary = (await client.get("api/v1/cluster/summary")).json()
    assert summary["stale"] is True
    assert summary["nodes"]["total"] == 2

    # the cluster changes while the service cannot see it
    sim.load([pod_manifest("while-down", "worker-1", "2", "4Gi")])
    # several reconnection attempts (backoff capped at 1 s here)...
    await asyncio.sleep(2.5)
    older = await client.get("api/v1/cluster/resources")
    assert float(older.headers["x-thinkube-age-seconds"]) > first_age + 2
    assert older.json() == last_state
    assert await metric(client, "thinkube_inventory_stale") == 1.0
    assert await metric(client, "thinkube_watch_errors") >= 4
    # ...but one log line for the change of state, not one per attempt or per request
    log = hub.service_log()[len(log_before) :]
    assert log.count(UNREACHABLE) == 1
    assert "serving the last known state" in log

    sim.come_back()  # with a new watch cache: old resourceVersions are gone

    async def ready_again():
        return (await client.get("api/v1/ready")).status_code == 200

    await wait_until(ready_again, within=5.0)
    fresh = await client.get("api/v1/cluster/resources")
    assert fresh.headers["x-thinkube-stale"] == "false"
    assert fresh.headers["x-thinkube-age-seconds"] == "0.0"
    worker_1 = next(node for node in fresh.json() if node["name"] == "worker-1")
    assert worker_1["pod_count"] == 1
    assert worker_1["allocated"] == {"cpu": 2.0, "memory": 4 * GI, "gpu": 0}
    log = hub.service_log()[len(log_before) :]
    assert log.count(UNREACHABLE) == 1
    assert log.count(BACK) == 1
    # and it keeps following
    assert (await kube.delete("pods/while-down", params={"gracePeriodSeconds": "0"})).is_success
    await wait_until(lambda: _pod_count_is(client, "worker-1", 0), within=1.0)
