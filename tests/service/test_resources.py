"""The resources documents for a hand-built cluster, through a real hub and the managed
service watching kubesim. Every expected number is worked out by hand in the comments,
following `kubectl describe node` (requests, not limits; init containers and sidecars;
overhead; pod-level resources; Succeeded/Failed pods left out; terminating pods counted;
percentages against allocatable)."""

from __future__ import annotations

import asyncio
import copy
import os
import signal

import httpx
import pytest
import pytest_asyncio

from tests.hub_fixtures import ACCESS_SCOPE
from tests.kubesim.generator import GPU_MODELS, make_node
from tests.utils import eventually

pytestmark = pytest.mark.asyncio(loop_scope="module")

MI = 1024**2
GI = 1024**3
RTX_3090_SHARED = GPU_MODELS[4]  # NVIDIA-GeForce-RTX-3090-SHARED: 1 GPU x 4 time-slices
GPU_TOLERATION = [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
# make_node(name, cpu, memory_gi): allocatable = cpu - 100m, memory - 1Gi; pods 110;
# ephemeral-storage 976284404Ki; hugepages-2Mi 0.
EPHEMERAL = 976284404 * 1024


def container(name, requests=None, limits=None, **extra):
    resources = {}
    if requests:
        resources["requests"] = requests
    if limits:
        resources["limits"] = limits
    return {"name": name, "image": "busybox:1.36", "resources": resources, **extra}


def pod(name, node, containers, phase=None, **spec):
    manifest = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": "lab"},
        "spec": {"nodeName": node, "containers": containers, **spec},
    }
    if phase:
        manifest["status"] = {"phase": phase}
    return manifest


def gpu_pod(name, node, resource, count, cpu, memory, phase=None):
    amounts = {"cpu": cpu, "memory": memory, resource: str(count)}
    return pod(
        name,
        node,
        [container("main", amounts, amounts)],
        phase=phase,
        tolerations=GPU_TOLERATION,
    )


def mig_node():
    """Two A100-80GB in MIG mixed mode: one split 7 x 1g.10gb, one 2 x 3g.40gb (GFD labels
    as the device plugin writes them; replicas 0 for MIG-enabled GPUs)."""
    node = make_node("mig-a100", 64, 512, GPU_MODELS[0], index=3)
    labels = node["metadata"]["labels"]
    labels.update(
        {
            "nvidia.com/gpu.count": "2",
            "nvidia.com/gpu.replicas": "0",
            "nvidia.com/mig.strategy": "mixed",
        }
    )
    for profile, count, memory in (("1g.10gb", 7, 9728), ("3g.40gb", 2, 40192)):
        prefix = f"nvidia.com/mig-{profile}"
        labels.update(
            {
                f"{prefix}.count": str(count),
                f"{prefix}.memory": str(memory),
                f"{prefix}.product": f"NVIDIA-A100-SXM4-80GB-MIG-{profile}",
                f"{prefix}.replicas": "1",
                f"{prefix}.sharing-strategy": "none",
            }
        )
    for field in ("capacity", "allocatable"):
        node["status"][field].update(
            {"nvidia.com/gpu": "0", "nvidia.com/mig-1g.10gb": "7", "nvidia.com/mig-3g.40gb": "2"}
        )
    return node


def scenario() -> list[dict]:
    cordoned = make_node("cordoned-1", 8, 32, index=4)
    cordoned["spec"]["unschedulable"] = True
    not_ready = make_node("notready-1", 8, 32, index=5)
    for condition in not_ready["status"]["conditions"]:
        if condition["type"] == "Ready":
            condition.update(
                status="False", reason="KubeletNotReady", message="PLEG is not healthy"
            )
    return [
        make_node("cpu-a", 16, 64, index=1),
        make_node("ts-3090", 16, 64, RTX_3090_SHARED, index=2),
        mig_node(),
        cordoned,
        not_ready,
        # --- cpu-a --------------------------------------------------------------------------
        # init + sidecar. Requests: containers sum (0.5, 1Gi).
        #   init-a (normal): own (2, 512Mi) + sidecars so far (0) -> peak (2, 512Mi)
        #   log-shipper (sidecar): sum += (0.1, 128Mi) -> (0.6, 1Gi+128Mi); sidecars (0.1, 128Mi)
        #   init-b (normal): (1, 3Gi) + sidecars (0.1, 128Mi) = (1.1, 3Gi+128Mi)
        #   peak = (max(2, 1.1), max(512Mi, 3Gi+128Mi)) = (2, 3200Mi)
        #   pod = max(sum, peak) = (max(0.6, 2), max(1152Mi, 3200Mi)) = (2, 3200Mi)
        # Limits: sum (1, 2Gi); init-a (2, 512Mi); sidecar sum += (0.2, 256Mi) -> (1.2, 2304Mi);
        #   init-b (1, 3Gi) + (0.2, 256Mi) = (1.2, 3328Mi); pod = (max(1.2, 2), 3328Mi)
        pod(
            "init-and-sidecar",
            "cpu-a",
            [container("main", {"cpu": "500m", "memory": "1Gi"}, {"cpu": "1", "memory": "2Gi"})],
            initContainers=[
                container(
                    "init-a", {"cpu": "2", "memory": "512Mi"}, {"cpu": "2", "memory": "512Mi"}
                ),
                container(
                    "log-shipper",
                    {"cpu": "100m", "memory": "128Mi"},
                    {"cpu": "200m", "memory": "256Mi"},
                    restartPolicy="Always",
                ),
                container("init-b", {"cpu": "1", "memory": "3Gi"}, {"cpu": "1", "memory": "3Gi"}),
            ],
        ),
        # overhead (a sandboxed runtime): requests (0.25, 256Mi) + (0.1, 64Mi) = (0.35, 320Mi);
        # limits (0.5, 512Mi) + (0.1, 64Mi) = (0.6, 576Mi)
        pod(
            "sandboxed",
            "cpu-a",
            [
                container(
                    "main", {"cpu": "250m", "memory": "256Mi"}, {"cpu": "500m", "memory": "512Mi"}
                )
            ],
            runtimeClassName="kata-qemu",
            overhead={"cpu": "100m", "memory": "64Mi"},
        ),
        # pod-level resources replace the containers' cpu and memory: requests (3, 4Gi),
        # limits (4, 8Gi), whatever the containers say (1, 1Gi and nothing)
        pod(
            "pod-level",
            "cpu-a",
            [container("a", {"cpu": "1", "memory": "1Gi"}), container("b")],
            resources={
                "requests": {"cpu": "3", "memory": "4Gi"},
                "limits": {"cpu": "4", "memory": "8Gi"},
            },
        ),
        # completed: not counted
        pod(
            "done",
            "cpu-a",
            [container("main", {"cpu": "4", "memory": "8Gi"})],
            phase="Succeeded",
            restartPolicy="Never",
        ),
        # (the terminating pod on cpu-a is made by the fixture: it needs a running process)
        # --- ts-3090: 1 RTX 3090 time-sliced 4 ways -> nvidia.com/gpu allocatable 4 ----------
        gpu_pod("slice-1", "ts-3090", "nvidia.com/gpu", 1, "2", "8Gi"),
        gpu_pod("slice-2", "ts-3090", "nvidia.com/gpu", 2, "1", "4Gi"),
        gpu_pod("crashed", "ts-3090", "nvidia.com/gpu", 1, "1", "1Gi", phase="Failed"),
        # --- mig-a100 ------------------------------------------------------------------------
        gpu_pod("mig-small", "mig-a100", "nvidia.com/mig-1g.10gb", 2, "2", "8Gi"),
        gpu_pod("mig-large", "mig-a100", "nvidia.com/mig-3g.40gb", 1, "4", "32Gi"),
        # --- cordoned-1 ----------------------------------------------------------------------
        pod(
            "on-cordoned",
            "cordoned-1",
            [container("main", {"cpu": "1", "memory": "1Gi"}, {"cpu": "2", "memory": "2Gi"})],
        ),
    ]


# A pod that is being deleted still holds its resources until its containers have stopped:
# this one's process ignores SIGTERM, so it stays terminating for its grace period.
TERMINATING = {
    "apiVersion": "v1",
    "kind": "Pod",
    "metadata": {
        "name": "terminating",
        "namespace": "lab",
        "annotations": {"kubesim.thinkube.dev/runtime": "process"},
    },
    "spec": {
        "nodeName": "cpu-a",
        "terminationGracePeriodSeconds": 40,
        "containers": [
            {
                "name": "main",
                "image": "busybox:1.36",
                # $PIDFILE: see kill_terminating_pod
                "command": ["sh", "-c", "echo $$ > $PIDFILE; trap '' TERM; sleep 40"],
                "resources": {
                    "requests": {"cpu": "1", "memory": "2Gi"},
                    "limits": {"cpu": "1", "memory": "2Gi"},
                },
            }
        ],
    },
}


async def start_terminating_pod(sim, pidfile) -> None:
    manifest = copy.deepcopy(TERMINATING)
    manifest["spec"]["containers"][0]["env"] = [{"name": "PIDFILE", "value": str(pidfile)}]
    async with httpx.AsyncClient(base_url=sim.url, timeout=10) as kube:
        created = await kube.post("/api/v1/namespaces/lab/pods", json=manifest)
        assert created.status_code == 201, created.text

        async def running():
            got = (await kube.get("/api/v1/namespaces/lab/pods/terminating")).json()
            return got.get("status", {}).get("phase") == "Running"

        await eventually(running, within=10)
        deleted = await kube.delete(
            "/api/v1/namespaces/lab/pods/terminating", params={"gracePeriodSeconds": "40"}
        )
        assert deleted.status_code == 200, deleted.text
        assert deleted.json()["metadata"]["deletionTimestamp"]


def kill_terminating_pod(pidfile) -> None:
    """kubesim's kubelet, stopped while a pod is in its grace period, leaves the pod's
    process running (see the report); end it, and its sleep, here."""
    try:
        os.killpg(int(pidfile.read_text()), signal.SIGKILL)
    except (OSError, ValueError):
        pass


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def hub(module_kubesim, module_hub_factory, tmp_path_factory):
    sim = await module_kubesim()
    sim.load(scenario())
    hub = await module_hub_factory(sim=sim)
    pidfile = tmp_path_factory.mktemp("terminating") / "pid"
    try:
        await start_terminating_pod(sim, pidfile)
        yield hub
    finally:
        kill_terminating_pod(pidfile)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def client(hub):
    return hub.client(hub.token("viewer", [ACCESS_SCOPE]))


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def documents(client):
    """One snapshot of the list, taken once the terminating pod is seen on cpu-a."""

    async def snapshot():
        response = await client.get("api/v1/cluster/resources")
        nodes = {node["name"]: node for node in response.json()}
        cpu_a = nodes.get("cpu-a")
        return (response, nodes) if cpu_a and cpu_a["pod_count"] == 4 else None

    return await eventually(snapshot, within=10)


async def test_list_is_sorted_with_freshness_in_headers(documents):
    response, nodes = documents
    assert list(nodes) == ["cordoned-1", "cpu-a", "mig-a100", "notready-1", "ts-3090"]
    assert response.headers["x-thinkube-stale"] == "false"
    assert response.headers["x-thinkube-age-seconds"] == "0.0"
    assert int(response.headers["x-thinkube-resource-version"]) > 0
    assert response.headers["x-thinkube-generated-at"].endswith("Z")
    # the shape of the old service, for the profile_list code that reads it
    for node in nodes.values():
        assert set(node["capacity"]) == set(node["allocated"]) == {"cpu", "memory", "gpu"}


def scheduling_facts(node: dict) -> tuple[dict, dict]:
    """What the feasibility filter reads besides taints, and the rest of the document."""
    keys = ("labels", "free", "scheduling_key")
    facts = {key: node[key] for key in keys}
    assert len(facts["scheduling_key"]) == 16 and isinstance(facts["labels"], dict)
    return facts, {key: value for key, value in node.items() if key not in keys}


async def test_cpu_node_with_init_sidecar_overhead_pod_level_terminating_and_completed(documents):
    _, nodes = documents
    facts, node = scheduling_facts(nodes["cpu-a"])
    # the room the filter sees, in the scheduler's units (cpu millicores), pods counted
    assert facts["free"] == {
        "cpu": 9550,
        "ephemeral-storage": EPHEMERAL,
        "hugepages-2Mi": 0,
        "memory": 54848 * MI,
        "pods": 106,
    }
    assert facts["labels"]["kubernetes.io/hostname"] == "cpu-a"
    # requests: init-and-sidecar (2, 3200Mi) + sandboxed (0.35, 320Mi) + pod-level (3, 4096Mi)
    #   + terminating (1, 2048Mi) = (6.35, 9664Mi); "done" (Succeeded) is left out
    # limits: (2, 3328Mi) + (0.6, 576Mi) + (4, 8192Mi) + (1, 2048Mi) = (7.6, 14144Mi)
    # allocatable (15.9, 63Gi); available (15.9 - 6.35, 63Gi - 9664Mi) = (9.55, 54848Mi)
    # percent (kubectl: int(used / allocatable * 100), cpu in millicores):
    #   cpu requests 6350/15900 = 39.9 -> 39; cpu limits 7600/15900 = 47.8 -> 47
    #   memory requests 9664/64512 = 14.98 -> 14; memory limits 14144/64512 = 21.9 -> 21
    assert node == {
        "name": "cpu-a",
        "instance_type": None,
        "ready": True,
        "unschedulable": False,
        "schedulable": True,
        "reason": None,
        "taints": [],
        "capacity": {"cpu": 15.9, "memory": 63 * GI, "gpu": 0},
        "allocated": {"cpu": 6.35, "memory": 9664 * MI, "gpu": 0},
        "available": {"cpu": 9.55, "memory": 54848 * MI, "gpu": 0},
        "allocatable": {
            "cpu": 15.9,
            "ephemeral-storage": EPHEMERAL,
            "hugepages-2Mi": 0,
            "memory": 63 * GI,
            "pods": 110,
        },
        "requests": {"cpu": 6.35, "memory": 9664 * MI},
        "limits": {"cpu": 7.6, "memory": 14144 * MI},
        "percent": {
            "cpu_requests": 39,
            "cpu_limits": 47,
            "memory_requests": 14,
            "memory_limits": 21,
        },
        "pod_count": 4,
        "pods_allocatable": 110,
        "gpu": None,
        "gpu_details": [],
    }


async def test_time_sliced_gpu_node(documents):
    _, nodes = documents
    facts, node = scheduling_facts(nodes["ts-3090"])
    assert facts["free"] == {
        "cpu": 12900,
        "ephemeral-storage": EPHEMERAL,
        "hugepages-2Mi": 0,
        "memory": 51 * GI,
        "nvidia.com/gpu": 1,
        "pods": 108,
    }
    assert facts["labels"]["nvidia.com/gpu.product"] == "NVIDIA-GeForce-RTX-3090-SHARED"
    # slice-1 (2, 8Gi, 1 GPU) + slice-2 (1, 4Gi, 2 GPUs) = (3, 12Gi, 3); "crashed" (Failed) out
    # 1 physical RTX 3090 x 4 replicas = 4 schedulable, 3 allocated, 1 free
    # available (15.9 - 3, 63Gi - 12Gi) = (12.9, 51Gi); percent 3000/15900 = 18.9 -> 18,
    # 12/63 = 19.05 -> 19
    rtx = {
        "product": "NVIDIA-GeForce-RTX-3090-SHARED",
        "model": "NVIDIA GeForce RTX 3090",
        "memory_mib": 24576,
        "replicas": 4,
        "shared": True,
    }
    assert node == {
        "name": "ts-3090",
        "instance_type": None,
        "ready": True,
        "unschedulable": False,
        "schedulable": True,
        "reason": None,
        "taints": [{"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"}],
        "capacity": {"cpu": 15.9, "memory": 63 * GI, "gpu": 4},
        "allocated": {"cpu": 3.0, "memory": 12 * GI, "gpu": 3},
        "available": {"cpu": 12.9, "memory": 51 * GI, "gpu": 1},
        "allocatable": {
            "cpu": 15.9,
            "ephemeral-storage": EPHEMERAL,
            "hugepages-2Mi": 0,
            "memory": 63 * GI,
            "nvidia.com/gpu": 4,
            "pods": 110,
        },
        "requests": {"cpu": 3.0, "memory": 12 * GI, "nvidia.com/gpu": 3},
        "limits": {"cpu": 3.0, "memory": 12 * GI, "nvidia.com/gpu": 3},
        "percent": {
            "cpu_requests": 18,
            "cpu_limits": 18,
            "memory_requests": 19,
            "memory_limits": 19,
        },
        "pod_count": 2,
        "pods_allocatable": 110,
        "gpu": {
            **{k: rtx[k] for k in ("model", "product", "memory_mib", "replicas", "shared")},
            "family": "ampere",
            "physical_count": 1,
            "sharing_strategy": "time-slicing",
            "mig_strategy": "none",
            "resources": [
                {
                    "name": "nvidia.com/gpu",
                    "kind": "gpu",
                    **rtx,
                    "allocatable": 4,
                    "allocated": 3,
                    "free": 1,
                }
            ],
            "schedulable_count": 4,
            "allocated_count": 3,
            "free_count": 1,
        },
        # one physical GPU carrying all 4 slots, 3 of them used; no DCGM: no live values
        "gpu_details": [
            {
                "index": 0,
                "model": "NVIDIA GeForce RTX 3090",
                "memory_total": 24576,
                "memory_used": None,
                "memory_free": None,
                "utilization": None,
                "available": True,
                "slots": 4,
                "slots_used": 3,
            }
        ],
    }


async def test_mig_mixed_node(documents):
    _, nodes = documents
    node = nodes["mig-a100"]
    # mig-small (2, 8Gi, 2 x 1g.10gb) + mig-large (4, 32Gi, 1 x 3g.40gb) = (6, 40Gi)
    # allocatable (63.9, 511Gi) -> available (57.9, 471Gi)
    assert node["requests"] == {
        "cpu": 6.0,
        "memory": 40 * GI,
        "nvidia.com/mig-1g.10gb": 2,
        "nvidia.com/mig-3g.40gb": 1,
    }
    # GPUs: nvidia.com/gpu 0 + 1g.10gb 7 + 3g.40gb 2 = 9 schedulable; 2 + 1 = 3 used; 6 free
    assert node["capacity"] == {"cpu": 63.9, "memory": 511 * GI, "gpu": 9}
    assert node["allocated"] == {"cpu": 6.0, "memory": 40 * GI, "gpu": 3}
    assert node["available"] == {"cpu": 57.9, "memory": 471 * GI, "gpu": 6}
    # percent: 6000/63900 = 9.4 -> 9; 40/511 = 7.8 -> 7
    assert node["percent"] == {
        "cpu_requests": 9,
        "cpu_limits": 9,
        "memory_requests": 7,
        "memory_limits": 7,
    }
    gpu = node["gpu"]
    a100 = {"product": "NVIDIA-A100-SXM4-80GB", "model": "NVIDIA A100 SXM4 80GB"}
    assert {k: v for k, v in gpu.items() if k != "resources"} == {
        **a100,
        "family": "ampere",
        "memory_mib": 81920,
        "physical_count": 2,
        "replicas": 1,  # GFD's "0" for MIG-enabled GPUs means no sharing
        "shared": False,
        "sharing_strategy": "none",
        "mig_strategy": "mixed",
        "schedulable_count": 9,
        "allocated_count": 3,
        "free_count": 6,
    }
    assert gpu["resources"] == [
        {
            "name": "nvidia.com/gpu",
            "kind": "gpu",
            **a100,
            "memory_mib": 81920,
            "replicas": 1,
            "shared": False,
            "allocatable": 0,
            "allocated": 0,
            "free": 0,
        },
        {
            "name": "nvidia.com/mig-1g.10gb",
            "kind": "mig",
            "product": "NVIDIA-A100-SXM4-80GB-MIG-1g.10gb",
            "model": "NVIDIA A100 SXM4 80GB MIG 1g.10gb",
            "memory_mib": 9728,
            "replicas": 1,
            "shared": False,
            "allocatable": 7,
            "allocated": 2,
            "free": 5,
        },
        {
            "name": "nvidia.com/mig-3g.40gb",
            "kind": "mig",
            "product": "NVIDIA-A100-SXM4-80GB-MIG-3g.40gb",
            "model": "NVIDIA A100 SXM4 80GB MIG 3g.40gb",
            "memory_mib": 40192,
            "replicas": 1,
            "shared": False,
            "allocatable": 2,
            "allocated": 1,
            "free": 1,
        },
    ]
    # 9 MIG instances over the 2 GPUs: 5 + 4; the 3 used fill GPU 0 first
    assert [
        (d["index"], d["slots"], d["slots_used"], d["available"], d["memory_total"])
        for d in node["gpu_details"]
    ] == [(0, 5, 3, True, 81920), (1, 4, 0, True, 81920)]


async def test_cordoned_and_not_ready_nodes_are_reported_but_not_available(documents):
    _, nodes = documents
    cordoned = nodes["cordoned-1"]
    assert (cordoned["ready"], cordoned["unschedulable"], cordoned["schedulable"]) == (
        True,
        True,
        False,
    )
    assert cordoned["reason"] == "cordoned"
    # allocatable (7.9, 31Gi); on-cordoned requests (1, 1Gi); nothing offered
    assert cordoned["capacity"] == {"cpu": 7.9, "memory": 31 * GI, "gpu": 0}
    assert cordoned["allocated"] == {"cpu": 1.0, "memory": 1 * GI, "gpu": 0}
    assert cordoned["available"] == {"cpu": 0.0, "memory": 0, "gpu": 0}
    assert cordoned["pod_count"] == 1

    not_ready = nodes["notready-1"]
    assert (not_ready["ready"], not_ready["unschedulable"], not_ready["schedulable"]) == (
        False,
        False,
        False,
    )
    assert not_ready["reason"] == "NotReady"
    assert not_ready["available"] == {"cpu": 0.0, "memory": 0, "gpu": 0}
    assert not_ready["capacity"] == {"cpu": 7.9, "memory": 31 * GI, "gpu": 0}
    # the node controller's taint (kubesim plays it) is reported as it is
    assert {"key": "node.kubernetes.io/not-ready", "value": None, "effect": "NoSchedule"} in (
        not_ready["taints"]
    )


async def test_summary(client, documents):
    response = await client.get("api/v1/cluster/summary")
    assert response.status_code == 200
    summary = response.json()
    assert summary["stale"] is False
    assert summary["age_seconds"] == 0.0
    assert summary["resource_version"] == documents[0].headers["x-thinkube-resource-version"]
    # only schedulable nodes count: cpu-a, mig-a100, ts-3090 (not cordoned-1, notready-1)
    assert summary["nodes"] == {"total": 5, "ready": 4, "schedulable": 3}
    # cpu: 15.9 + 63.9 + 15.9 = 95.7 allocatable; 6.35 + 6 + 3 = 15.35 requested;
    # 9.55 + 57.9 + 12.9 = 80.35 available
    assert summary["cpu"] == {"allocatable": 95.7, "requested": 15.35, "available": 80.35}
    # memory: 63Gi + 511Gi + 63Gi = 637Gi; 9664Mi + 40Gi + 12Gi = 62912Mi; 652288 - 62912 Mi
    assert summary["memory"] == {
        "allocatable": 637 * GI,
        "requested": 62912 * MI,
        "available": 589376 * MI,
    }
    # GPUs: physical 2 (A100) + 1 (3090); schedulable 9 + 4; free 6 + 1
    assert summary["gpus"] == {"physical": 3, "schedulable": 13, "free": 7}
    models = summary["gpu_models"]
    # one entry per resource + product + memory; the A100's nvidia.com/gpu (0) is left out
    assert [(m["model"], m["resource"], m["schedulable"], m["free"]) for m in models] == [
        ("NVIDIA A100 SXM4 80GB MIG 1g.10gb", "nvidia.com/mig-1g.10gb", 7, 5),
        ("NVIDIA A100 SXM4 80GB MIG 3g.40gb", "nvidia.com/mig-3g.40gb", 2, 1),
        ("NVIDIA GeForce RTX 3090", "nvidia.com/gpu", 4, 1),
    ]
    assert models[2] == {
        "model": "NVIDIA GeForce RTX 3090",
        "product": "NVIDIA-GeForce-RTX-3090-SHARED",
        "resource": "nvidia.com/gpu",
        "memory_mib": 24576,
        "shared": True,
        "schedulable": 4,
        "free": 1,
        "nodes": 1,
        "nodes_with_free": 1,
        "largest_free_slot": {"node": "ts-3090", "gpus": 1, "cpu": 12.9, "memory": 51 * GI},
        "max_cpu_with_free_gpu": 12.9,
        "max_memory_with_free_gpu": 51 * GI,
    }
    assert models[0]["largest_free_slot"] == {
        "node": "mig-a100",
        "gpus": 5,
        "cpu": 57.9,
        "memory": 471 * GI,
    }
    assert summary["metrics"] == {"status": "off"}
    assert summary["skipped_objects"] == {"Node": 0, "Pod": 0}


async def test_one_node_with_freshness_in_the_body(client, documents):
    _, nodes = documents
    response = await client.get("api/v1/cluster/resources/ts-3090")
    assert response.status_code == 200
    body = response.json()
    freshness = {
        k: body.pop(k) for k in ("generated_at", "resource_version", "stale", "age_seconds")
    }
    assert body == nodes["ts-3090"]
    assert freshness["stale"] is False
    assert freshness["resource_version"] == documents[0].headers["x-thinkube-resource-version"]
    assert response.headers["x-thinkube-stale"] == "false"


async def test_availability_is_nodes_summary_and_images_from_one_snapshot(client, documents):
    _, nodes = documents
    response = await client.get("api/v1/availability")
    assert response.status_code == 200
    body = response.json()
    assert list(body) == [
        "generated_at",
        "resource_version",
        "stale",
        "age_seconds",
        "version",
        "nodes",
        "summary",
        "images",
        "cloud",
    ]
    assert body["stale"] is False
    assert {node["name"]: node for node in body["nodes"]} == nodes
    summary = (await client.get("api/v1/cluster/summary")).json()
    assert body["summary"] == summary
    assert body["summary"]["generated_at"] == body["generated_at"]
    assert [image["name"] for image in body["images"]] == ["scipy", "minimal", "pytorch-cuda"]
    # no RunPod key in this service's environment
    assert body["cloud"]["configured"] is False and body["cloud"]["offers"] == []
    assert "no RunPod API key" in body["cloud"]["reason"]


async def test_unknown_node_is_404_json(client):
    response = await client.get("api/v1/cluster/resources/no-such-node")
    assert response.status_code == 404
    assert response.json() == {"status": 404, "error": "no node named 'no-such-node'"}


async def test_ready(client):
    response = await client.get("api/v1/ready")
    assert response.status_code == 200
    body = response.json()
    assert (body["ready"], body["reason"], body["stale"], body["age_seconds"]) == (
        True,
        None,
        False,
        0.0,
    )


async def test_metrics_are_prometheus_text(client, documents):
    await client.get("api/v1/cluster/summary")
    response = await client.get("metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    lines = response.text.splitlines()
    # 5 nodes; 11 pods known: cpu-a 5 (with "done"), ts-3090 3, mig-a100 2, cordoned-1 1
    assert "thinkube_nodes 5.0" in lines
    assert "thinkube_pods 11.0" in lines
    assert "thinkube_inventory_ready 1.0" in lines
    assert "thinkube_inventory_stale 0.0" in lines
    assert "thinkube_inventory_age_seconds 0.0" in lines
    assert 'thinkube_skipped_objects{kind="Pod"} 0.0' in lines
    assert any(
        line.startswith(
            'thinkube_request_duration_seconds_count{code="200",handler="SummaryHandler"}'
        )
        for line in lines
    )
    assert "# TYPE thinkube_watch_relists gauge" in lines


async def test_documents_are_served_from_one_serialisation(client):
    # the same bytes for every request until something changes
    first = await client.get("api/v1/cluster/resources")
    await asyncio.sleep(0.05)
    second = await client.get("api/v1/cluster/resources")
    assert first.content == second.content
    assert first.headers["x-thinkube-generated-at"] == second.headers["x-thinkube-generated-at"]
