"""Kueue in kubesim (``KubeSim(kueue=True)``): the webhooks, Workloads, admission in queue
order against ClusterQueue quota, un-suspending Jobs and un-gating pods, finishing and the
maximum execution time, queue status, and the visibility API's pending workloads."""

from __future__ import annotations

import json
import shutil
import sys
from decimal import Decimal

import httpx
import pytest
from kubernetes_asyncio import client
from kubernetes_asyncio.client.exceptions import ApiException

from tests.conftest import api_client_for
from tests.kubesim.generator import GPU_MODELS, make_node
from tests.kubesim.kueue import (
    assign_flavors,
    format_quantity,
    namespace_admitted,
    pending_items,
    pod_set_requests,
    queue_manifests,
    workload_name,
)
from tests.utils import eventually

PY = sys.executable
KUEUE = "kueue.x-k8s.io/v1beta2"
VISIBILITY = "/apis/visibility.kueue.x-k8s.io/v1beta2"


def cluster_queue(name="cq", flavors=None, strategy=None, selector=None, covered=None) -> dict:
    flavors = flavors or [("default", {"cpu": "8", "memory": "32Gi", "nvidia.com/gpu": "1"})]
    spec = {
        "resourceGroups": [
            {
                "coveredResources": covered or ["cpu", "memory", "nvidia.com/gpu"],
                "flavors": [
                    {
                        "name": flavor,
                        "resources": [{"name": r, "nominalQuota": q} for r, q in quotas.items()],
                    }
                    for flavor, quotas in flavors
                ],
            }
        ]
    }
    spec["namespaceSelector"] = {} if selector is None else selector
    if strategy:
        spec["queueingStrategy"] = strategy
    return {"apiVersion": KUEUE, "kind": "ClusterQueue", "metadata": {"name": name}, "spec": spec}


def flavor(name="default", **spec) -> dict:
    return {"apiVersion": KUEUE, "kind": "ResourceFlavor", "metadata": {"name": name}, "spec": spec}


def local_queue(name="lq", cq="cq", namespace="default") -> dict:
    return {
        "apiVersion": KUEUE,
        "kind": "LocalQueue",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"clusterQueue": cq},
    }


def priority_class(name: str, value: int) -> dict:
    return {
        "apiVersion": KUEUE,
        "kind": "WorkloadPriorityClass",
        "metadata": {"name": name},
        "value": value,
    }


GPU = GPU_MODELS[3]  # one L4 per node


def gpu_container(code: str, gpus: int = 1) -> dict:
    return {
        "name": "main",
        "image": "python:3.12",
        "command": [PY, "-c", code],
        "resources": {
            "requests": {"cpu": "1", "memory": "1Gi"},
            "limits": {"cpu": "1", "memory": "1Gi", "nvidia.com/gpu": str(gpus)},
        },
    }


def queued_job(name: str, code: str, queue: str = "lq", labels: dict | None = None) -> dict:
    return {
        "metadata": {
            "name": name,
            "labels": {"kueue.x-k8s.io/queue-name": queue, **(labels or {})},
        },
        "spec": {
            "template": {"spec": {"restartPolicy": "Never", "containers": [gpu_container(code)]}}
        },
    }


# -- pure parts ---------------------------------------------------------------------------


def test_workload_names_follow_kueue():
    name = workload_name("Job", "batch", "train", "uid-1")
    assert name.startswith("job-train-") and len(name) == len("job-train-") + 5
    assert name != workload_name("Job", "batch", "train", "uid-2")
    assert workload_name("Pod", "", "nb", "u").startswith("pod-nb-")
    assert len(workload_name("Job", "batch", "x" * 300, "u")) == 253


def test_flavor_assignment_against_nominal_quota():
    cq = cluster_queue(
        flavors=[
            ("small", {"cpu": "2", "memory": "8Gi", "nvidia.com/gpu": "1"}),
            ("big", {"cpu": "8", "memory": "64Gi", "nvidia.com/gpu": "4"}),
        ]
    )
    one_gpu = {"cpu": Decimal(1), "memory": Decimal(2**30), "nvidia.com/gpu": Decimal(1)}
    assert assign_flavors(cq, one_gpu, {}).flavors == dict.fromkeys(one_gpu, "small")
    used = {("small", "nvidia.com/gpu"): Decimal(1)}
    assert assign_flavors(cq, one_gpu, used).flavors == dict.fromkeys(one_gpu, "big")
    full = {("small", "nvidia.com/gpu"): Decimal(1), ("big", "nvidia.com/gpu"): Decimal(4)}
    waiting = assign_flavors(cq, one_gpu, full)
    assert (waiting.flavors, waiting.reason) == (None, "WaitingForQuota")
    assert waiting.message == (
        "insufficient unused quota for nvidia.com/gpu in flavor small, 1 more needed; "
        "insufficient unused quota for nvidia.com/gpu in flavor big, 1 more needed"
    )
    too_big = assign_flavors(cq, {"nvidia.com/gpu": Decimal(8)}, {})
    assert too_big.reason == "ExceedsMaxQuota"
    assert too_big.message.endswith(
        "insufficient quota for nvidia.com/gpu in flavor big, previously considered podsets "
        "requests (0) + current podset request (8) > maximum capacity (4)"
    )
    odd = assign_flavors(cq, {"example.com/fpga": Decimal(1)}, {})
    assert (odd.reason, odd.message) == (
        "Pending",
        "resource example.com/fpga unavailable in ClusterQueue",
    )


def test_requests_and_quantities():
    workload = {
        "spec": {
            "podSets": [
                {
                    "name": "main",
                    "count": 2,
                    "template": {"spec": {"containers": [gpu_container("pass", gpus=2)]}},
                }
            ]
        }
    }
    requests = pod_set_requests(workload, {"cpu", "pods"})
    assert requests == {
        "cpu": Decimal(2),
        "memory": Decimal(2 * 2**30),
        "nvidia.com/gpu": Decimal(4),
        "pods": Decimal(2),
    }
    assert format_quantity("cpu", Decimal("1.5")) == "1500m"
    assert format_quantity("memory", Decimal(2 * 2**30)) == "2Gi"
    assert format_quantity("nvidia.com/gpu", Decimal(4)) == "4"


def test_namespace_selectors_and_positions():
    team = {"metadata": {"labels": {"team": "ml"}}}
    assert not namespace_admitted(cluster_queue(selector={}) | {"spec": {}}, team)
    assert namespace_admitted(cluster_queue(selector={}), team)
    assert namespace_admitted(cluster_queue(selector={"matchLabels": {"team": "ml"}}), team)
    assert not namespace_admitted(cluster_queue(selector={"matchLabels": {"team": "x"}}), team)

    def workload(name, queue):
        return {
            "metadata": {"name": name, "namespace": "ns", "ownerReferences": []},
            "spec": {"queueName": queue, "priority": 5},
        }

    ordered = [workload("a", "x"), workload("b", "y"), workload("c", "x")]
    items = pending_items(ordered)
    assert [
        (i["metadata"]["name"], i["positionInClusterQueue"], i["positionInLocalQueue"])
        for i in items
    ] == [
        ("a", 0, 0),
        ("b", 1, 0),
        ("c", 2, 1),
    ]
    assert [i["metadata"]["name"] for i in pending_items(ordered, offset=1, limit=1)] == ["b"]
    assert items[0]["priority"] == 5 and items[0]["localQueueName"] == "x"


def test_queue_manifests_make_a_one_flavor_setup():
    objects = queue_manifests(
        {"cpu": 4, "nvidia.com/gpu": "2"},
        local_queues={"team-a": "jobs", "team-b": "jobs"},
        node_labels={"nvidia.com/gpu.product": "NVIDIA-L4"},
        priority_classes={"high": 100},
    )
    kinds = [(o["kind"], o["metadata"]["name"], o["metadata"].get("namespace")) for o in objects]
    assert kinds == [
        ("ResourceFlavor", "default-flavor", None),
        ("ClusterQueue", "cluster-queue", None),
        ("LocalQueue", "jobs", "team-a"),
        ("LocalQueue", "jobs", "team-b"),
        ("WorkloadPriorityClass", "high", None),
    ]
    [group] = objects[1]["spec"]["resourceGroups"]
    assert group["coveredResources"] == ["cpu", "nvidia.com/gpu"]
    assert group["flavors"][0]["resources"] == [
        {"name": "cpu", "nominalQuota": "4"},
        {"name": "nvidia.com/gpu", "nominalQuota": "2"},
    ]
    assert objects[1]["spec"]["namespaceSelector"] == {}
    assert objects[0]["spec"]["nodeLabels"] == {"nvidia.com/gpu.product": "NVIDIA-L4"}


# -- through the API ----------------------------------------------------------------------------


@pytest.fixture
async def queued(make_kubesim):
    sim = await make_kubesim(kueue=True, process_runtime=True, job_backoff_s=0.05)
    sim.load([make_node("gpu-1", 16, 64, GPU, 0), make_node("gpu-2", 16, 64, GPU, 1)])
    sim.load(
        queue_manifests(
            {"cpu": 8, "memory": "32Gi", "nvidia.com/gpu": 1},
            local_queues={"default": "lq"},
            cluster_queue="cq",
            flavor="default",
            tolerations=[{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
            priority_classes={"high": 1000},
        )
    )
    api = await api_client_for(sim.kubeconfig)
    sim.api = api
    sim.core, sim.batch = client.CoreV1Api(api), client.BatchV1Api(api)
    sim.custom = client.CustomObjectsApi(api)
    sim.http = httpx.AsyncClient(base_url=sim.url)
    yield sim
    await sim.http.aclose()
    await api.close()


async def workload_of(sim, owner_name: str) -> dict | None:
    found = await sim.custom.list_namespaced_custom_object(
        "kueue.x-k8s.io", "v1beta2", "default", "workloads"
    )
    for item in found["items"]:
        if any(ref["name"] == owner_name for ref in item["metadata"].get("ownerReferences", [])):
            return item
    return None


def condition(obj: dict, kind: str) -> dict:
    return next((c for c in obj.get("status", {}).get("conditions", []) if c["type"] == kind), {})


async def admitted(sim, owner_name: str) -> dict | None:
    workload = await workload_of(sim, owner_name)
    return (
        workload if workload and condition(workload, "Admitted").get("status") == "True" else None
    )


async def pending(sim, queue="lq") -> list[dict]:
    answer = await sim.http.get(
        f"{VISIBILITY}/namespaces/default/localqueues/{queue}/pendingworkloads"
    )
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["kind"] == "PendingWorkloadsSummary"
    return body["items"]


async def job_status(sim, name: str) -> dict:
    response = await sim.batch.read_namespaced_job(name, "default", _preload_content=False)
    return json.loads(await response.read())


async def test_kueue_is_served_only_when_installed(make_kubesim, kubesim):
    async with httpx.AsyncClient(base_url=kubesim.url) as http:
        assert (await http.get("/apis/kueue.x-k8s.io/v1beta2/clusterqueues")).status_code == 404
        groups = {g["name"] for g in (await http.get("/apis")).json()["groups"]}
        assert "kueue.x-k8s.io" not in groups
    with pytest.raises(ValueError, match="kueue=True"):
        kubesim.load([flavor()])

    sim = await make_kubesim(kueue=True)
    async with httpx.AsyncClient(base_url=sim.url) as http:
        groups = {g["name"]: g for g in (await http.get("/apis")).json()["groups"]}
        assert groups["kueue.x-k8s.io"]["preferredVersion"]["version"] == "v1beta2"
        assert "visibility.kueue.x-k8s.io" in groups
        resources = (await http.get("/apis/kueue.x-k8s.io/v1beta2")).json()["resources"]
        names = {r["name"]: r for r in resources}
        assert {"clusterqueues", "localqueues", "workloads", "resourceflavors"} <= set(names)
        assert not names["clusterqueues"]["namespaced"] and names["localqueues"]["namespaced"]
        assert "workloads/status" in names
        visibility = (await http.get(VISIBILITY)).json()["resources"]
        assert "localqueues/pendingworkloads" in {r["name"] for r in visibility}
        missing = await http.get(
            f"{VISIBILITY}/namespaces/default/localqueues/nope/pendingworkloads"
        )
        assert missing.status_code == 404
        assert missing.json()["message"] == 'localqueue.visibility.kueue.x-k8s.io "nope" not found'
        sim.load(queue_manifests({"cpu": 1}))
        odd = await http.get(f"{VISIBILITY}/clusterqueues/cluster-queue/pendingworkloads?limit=x")
        assert (odd.status_code, odd.json()["message"]) == (
            400,
            'limit must be a whole number, not "x"',
        )
        empty = await http.get(f"{VISIBILITY}/clusterqueues/cluster-queue/pendingworkloads")
        assert empty.json()["items"] == []


async def test_jobs_wait_in_queue_order_for_quota(queued):
    batch = queued.batch
    long = "import time; time.sleep(1.5)"
    created = await batch.create_namespaced_job("default", queued_job("first", long))
    assert created.spec.suspend is True  # the webhook suspends a queued Job

    first = await eventually(lambda: admitted(queued, "first"))
    assert first["metadata"]["name"].startswith("job-first-")
    assert first["spec"]["podSets"][0]["count"] == 1
    assert first["status"]["admission"] == {
        "clusterQueue": "cq",
        "podSetAssignments": [
            {
                "name": "main",
                "flavors": {"cpu": "default", "memory": "default", "nvidia.com/gpu": "default"},
                "resourceUsage": {"cpu": "1", "memory": "1Gi", "nvidia.com/gpu": "1"},
                "count": 1,
            }
        ],
    }
    assert condition(first, "QuotaReserved")["message"] == "Quota reserved in ClusterQueue cq"

    async def running(name):
        job = await job_status(queued, name)
        return job if job["status"].get("active") else None

    job = await eventually(lambda: running("first"))
    template = job["spec"]["template"]
    assert job["spec"]["suspend"] is False
    assert template["metadata"]["labels"]["kueue.x-k8s.io/cluster-queue-name"] == "cq"
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in template[
        "spec"
    ]["tolerations"]

    # Quota for one GPU: the next two wait, the later one with a higher priority first.
    await batch.create_namespaced_job("default", queued_job("second", "pass"))
    await batch.create_namespaced_job(
        "default",
        queued_job(
            "urgent",
            "import time; time.sleep(2)",  # holds the quota while the test looks
            labels={"kueue.x-k8s.io/priority-class": "high"},
        ),
    )

    async def two_pending():
        items = await pending(queued)
        return items if len(items) == 2 else None

    items = await eventually(two_pending)
    assert [(i["metadata"]["ownerReferences"][0]["name"], i["priority"]) for i in items] == [
        ("urgent", 1000),
        ("second", 0),
    ]
    assert [(i["positionInClusterQueue"], i["positionInLocalQueue"]) for i in items] == [
        (0, 0),
        (1, 1),
    ]
    assert items[0]["localQueueName"] == "lq"
    assert items[0]["metadata"]["ownerReferences"][0]["kind"] == "Job"
    second = await workload_of(queued, "second")
    reserved = condition(second, "QuotaReserved")
    assert (reserved["status"], reserved["reason"]) == ("False", "WaitingForQuota")
    assert reserved["message"] == (
        "couldn't assign flavors to pod set main: insufficient unused quota for nvidia.com/gpu "
        "in flavor default, 1 more needed"
    )
    assert (await job_status(queued, "second"))["spec"]["suspend"] is True
    cq = await queued.custom.get_cluster_custom_object(
        "kueue.x-k8s.io", "v1beta2", "clusterqueues", "cq"
    )
    assert (cq["status"]["pendingWorkloads"], cq["status"]["admittedWorkloads"]) == (2, 1)
    assert condition(cq, "Active")["reason"] == "Ready"
    cq_items = (await queued.http.get(f"{VISIBILITY}/clusterqueues/cq/pendingworkloads")).json()[
        "items"
    ]
    assert [i["positionInClusterQueue"] for i in cq_items] == [0, 1]

    # The first finishes, its quota goes to the urgent one, then to the second.
    done = await eventually(lambda: _finished(queued, "first"), within=15)
    assert (condition(done, "Finished")["reason"], condition(done, "Finished")["status"]) == (
        "Succeeded",
        "True",
    )
    await eventually(lambda: admitted(queued, "urgent"))
    assert not await admitted(queued, "second")
    await eventually(lambda: admitted(queued, "second"), within=15)
    lq = await queued.custom.get_namespaced_custom_object(
        "kueue.x-k8s.io", "v1beta2", "default", "localqueues", "lq"
    )
    assert condition(lq, "Active")["message"] == "Can submit new workloads to localQueue"


async def _finished(sim, owner):
    workload = await workload_of(sim, owner)
    return (
        workload if workload and condition(workload, "Finished").get("status") == "True" else None
    )


async def test_plain_pods_are_gated_until_admitted(queued):
    core = queued.core
    notebook = {
        "metadata": {"name": "notebook", "labels": {"kueue.x-k8s.io/queue-name": "lq"}},
        "spec": {
            "restartPolicy": "Never",
            "containers": [gpu_container("import time; time.sleep(60)")],
        },
    }
    blocker = await core.create_namespaced_pod("default", notebook)
    assert [g.name for g in blocker.spec.scheduling_gates] == ["kueue.x-k8s.io/admission"]
    assert blocker.metadata.labels["kueue.x-k8s.io/managed"] == "true"
    assert blocker.metadata.finalizers == ["kueue.x-k8s.io/managed"]
    assert [(c.type, c.reason) for c in blocker.status.conditions] == [
        ("PodScheduled", "SchedulingGated")
    ]

    async def scheduled(name):
        pod = await core.read_namespaced_pod(name, "default")
        return pod if pod.spec.node_name else None

    pod = await eventually(lambda: scheduled("notebook"))
    assert not pod.spec.scheduling_gates
    assert pod.metadata.labels["kueue.x-k8s.io/podset"] == "main"
    workload = await workload_of(queued, "notebook")
    assert workload["metadata"]["name"].startswith("pod-notebook-")
    assert workload["metadata"]["ownerReferences"][0]["kind"] == "Pod"

    waiting = dict(
        notebook, metadata={"name": "second", "labels": {"kueue.x-k8s.io/queue-name": "lq"}}
    )
    await core.create_namespaced_pod("default", waiting)
    items = await eventually(lambda: pending(queued))
    assert items[0]["metadata"]["ownerReferences"][0] == {
        "apiVersion": "v1",
        "kind": "Pod",
        "name": "second",
        "uid": (await core.read_namespaced_pod("second", "default")).metadata.uid,
    }
    table = await queued.http.get(
        "/api/v1/namespaces/default/pods/second",
        headers={"Accept": "application/json;as=Table;v=v1;g=meta.k8s.io"},
    )
    assert table.json()["rows"][0]["cells"][2] == "SchedulingGated"

    # Deleting the running notebook frees its quota: its Workload goes with it.
    await core.delete_namespaced_pod("notebook", "default", grace_period_seconds=0)
    second = await eventually(lambda: scheduled("second"))
    assert second.spec.node_name
    assert await workload_of(queued, "notebook") is None


async def test_gated_pods_keep_their_places_and_a_deleted_one_leaves_the_queue(queued):
    """Plain pods queue one behind the other; deleting a pod still gated (a spawn given up)
    takes its Workload out of the queue, and the next moves up; when quota frees, the first
    in line is admitted and un-gated, with its flavor's tolerations."""
    core = queued.core

    def notebook(name: str) -> dict:
        return {
            "metadata": {"name": name, "labels": {"kueue.x-k8s.io/queue-name": "lq"}},
            "spec": {
                "restartPolicy": "Never",
                "containers": [gpu_container("import time; time.sleep(60)")],
            },
        }

    async def scheduled(name):
        pod = await core.read_namespaced_pod(name, "default")
        return pod if pod.spec.node_name else None

    await core.create_namespaced_pod("default", notebook("first"))
    await eventually(lambda: scheduled("first"))
    for name in ("second", "third", "fourth"):
        await core.create_namespaced_pod("default", notebook(name))

    async def waiting(count: int):
        items = await pending(queued)
        return items if len(items) == count else None

    items = await eventually(lambda: waiting(3))
    assert [
        (i["metadata"]["ownerReferences"][0]["name"], i["positionInLocalQueue"]) for i in items
    ] == [("second", 0), ("third", 1), ("fourth", 2)]

    # A gated pod deleted: Kueue lets go of it (its finalizer), its Workload leaves the queue.
    third = await core.read_namespaced_pod("third", "default")
    assert third.metadata.finalizers == ["kueue.x-k8s.io/managed"]
    await core.delete_namespaced_pod("third", "default")

    async def third_gone():
        try:
            await core.read_namespaced_pod("third", "default")
        except ApiException as err:
            return err.status == 404
        return False

    await eventually(third_gone)
    items = await eventually(lambda: waiting(2))
    assert [
        (i["metadata"]["ownerReferences"][0]["name"], i["positionInLocalQueue"]) for i in items
    ] == [("second", 0), ("fourth", 1)]
    assert await workload_of(queued, "third") is None
    fourth = await core.read_namespaced_pod("fourth", "default")
    assert [g.name for g in fourth.spec.scheduling_gates] == ["kueue.x-k8s.io/admission"]

    # The first ends: the second is admitted and un-gated, the fourth moves up.
    await core.delete_namespaced_pod("first", "default", grace_period_seconds=0)
    second = await eventually(lambda: scheduled("second"))
    assert not second.spec.scheduling_gates
    assert ("nvidia.com/gpu", "Exists", "NoSchedule") in [
        (t.key, t.operator, t.effect) for t in second.spec.tolerations
    ]
    items = await eventually(lambda: waiting(1))
    assert items[0]["metadata"]["ownerReferences"][0]["name"] == "fourth"
    assert items[0]["positionInLocalQueue"] == 0


async def test_misconfigured_queues_and_namespaces(queued):
    await queued.batch.create_namespaced_job("default", queued_job("lost", "pass", queue="nope"))

    async def refused(name, reason):
        workload = await workload_of(queued, name)
        found = condition(workload or {}, "QuotaReserved")
        return found if found.get("reason") == reason else None

    found = await eventually(lambda: refused("lost", "Misconfigured"))
    assert found["message"] == "LocalQueue nope doesn't exist"

    # A ClusterQueue without a namespaceSelector admits no namespace.
    closed = cluster_queue("closed")
    del closed["spec"]["namespaceSelector"]
    queued.load([closed, local_queue("shut", "closed")])
    await queued.batch.create_namespaced_job(
        "default", queued_job("shut-out", "pass", queue="shut")
    )
    found = await eventually(lambda: refused("shut-out", "Misconfigured"))
    assert found["message"] == "workload namespace doesn't match ClusterQueue selector"


async def test_maximum_execution_time_deactivates_the_workload(queued):
    await queued.batch.create_namespaced_job(
        "default",
        queued_job(
            "endless",
            "import time; time.sleep(60)",
            labels={"kueue.x-k8s.io/max-exec-time-seconds": "1"},
        ),
    )
    workload = await eventually(lambda: admitted(queued, "endless"))
    assert workload["spec"]["maximumExecutionTimeSeconds"] == 1
    await queued.batch.create_namespaced_job("default", queued_job("next", "pass"))

    async def evicted():
        found = await workload_of(queued, "endless")
        return found if condition(found, "Evicted").get("status") == "True" else None

    found = await eventually(evicted, within=10)
    assert found["spec"]["active"] is False and "admission" not in found["status"]
    assert condition(found, "Evicted")["reason"] == "DeactivatedDueToMaximumExecutionTimeExceeded"
    assert condition(found, "Evicted")["message"] == (
        "The workload is deactivated due to exceeding the maximum execution time"
    )
    job = await job_status(queued, "endless")
    assert job["spec"]["suspend"] is True
    await eventually(lambda: admitted(queued, "next"))  # the quota went on


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl is not installed")
async def test_kubectl_reads_queues_and_pending_workloads(queued):
    from tests.kubesim.test_kubectl import kubectl

    await queued.batch.create_namespaced_job(
        "default", queued_job("a", "import time; time.sleep(30)")
    )
    await eventually(lambda: admitted(queued, "a"))
    await queued.batch.create_namespaced_job("default", queued_job("b", "pass"))
    await eventually(lambda: pending(queued))
    out = await kubectl(queued, "get", "clusterqueues")
    assert out.split()[:4] == ["NAME", "COHORT", "PENDING", "WORKLOADS"]
    assert out.splitlines()[1].split() == ["cq", "1"]
    out = await kubectl(queued, "get", "workloads")
    assert "job-a-" in out and "job-b-" in out
    raw = await kubectl(
        queued, "get", "--raw", f"{VISIBILITY}/namespaces/default/localqueues/lq/pendingworkloads"
    )
    assert json.loads(raw)["items"][0]["positionInLocalQueue"] == 0


async def test_a_missing_priority_class_holds_the_workload_back(queued):
    await queued.batch.create_namespaced_job(
        "default", queued_job("classy", "pass", labels={"kueue.x-k8s.io/priority-class": "gold"})
    )

    async def warned():
        events = await queued.core.list_namespaced_event("default")
        return [e for e in events.items if e.reason == "WorkloadPriorityClassNotFound"]

    [event] = await eventually(warned)
    assert event.message == 'WorkloadPriorityClass "gold" not found'
    assert await workload_of(queued, "classy") is None
    queued.load([priority_class("gold", 10)])
    workload = await eventually(lambda: workload_of(queued, "classy"))
    assert workload["spec"]["priority"] == 10
    assert workload["spec"]["priorityClassRef"] == {
        "group": "kueue.x-k8s.io",
        "kind": "WorkloadPriorityClass",
        "name": "gold",
    }
    with pytest.raises(ApiException):
        await queued.custom.get_cluster_custom_object(
            "kueue.x-k8s.io", "v1beta2", "workloadpriorityclasses", "missing"
        )
