import json
from decimal import Decimal

import pytest

from hub_service.nodes import gpu_details, gpu_inventory, node_document, summary_document
from thinkube_core.accounting import MalformedObject, node_allocatable, summarize_pod

GI = 1024**3
GPU_TAINT = {"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"}


# --- realistic objects ----------------------------------------------------------------------


def make_node(
    name,
    cpu="31500m",
    memory="126Gi",
    extra=None,
    labels=None,
    ready="True",
    unschedulable=False,
    taints=None,
):
    """A node as the API returns it; capacity is larger than allocatable (kubelet reserve)."""
    allocatable = {"cpu": cpu, "memory": memory, "pods": "110", "ephemeral-storage": "900Gi"}
    allocatable.update(extra or {})
    capacity = dict(allocatable, cpu="32", memory="128Gi", pods="110")
    spec = {"podCIDR": "10.244.1.0/24"}
    if unschedulable:
        spec["unschedulable"] = True
    if taints:
        spec["taints"] = taints
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "uid": f"uid-{name}",
            "labels": {
                "kubernetes.io/hostname": name,
                "kubernetes.io/os": "linux",
                **(labels or {}),
            },
        },
        "spec": spec,
        "status": {
            "capacity": capacity,
            "allocatable": allocatable,
            "conditions": [
                {
                    "type": "MemoryPressure",
                    "status": "False",
                    "reason": "KubeletHasSufficientMemory",
                },
                {"type": "Ready", "status": ready, "reason": "KubeletReady"},
            ],
        },
    }


def gfd_labels(
    product, count, memory=None, replicas=1, strategy="none", family="ampere", mig="none"
):
    labels = {
        "nvidia.com/gpu.present": "true",
        "nvidia.com/gpu.product": product,
        "nvidia.com/gpu.count": str(count),
        "nvidia.com/gpu.replicas": str(replicas),
        "nvidia.com/gpu.sharing-strategy": strategy,
        "nvidia.com/gpu.family": family,
        "nvidia.com/mig.strategy": mig,
    }
    if memory is not None:
        labels["nvidia.com/gpu.memory"] = str(memory)
    return labels


def make_pod(name, node, requests=None, limits=None, phase="Running", terminating=False):
    """A pod bound to ``node``; extended resources get limits equal to requests, as required."""
    requests = dict(requests or {})
    limits = dict(limits if limits is not None else requests)
    for resource, amount in requests.items():
        if "/" in resource:
            limits[resource] = amount
    metadata = {"name": name, "namespace": "jupyterhub", "uid": f"uid-{name}"}
    if terminating:
        metadata["deletionTimestamp"] = "2025-01-01T00:00:00Z"
    spec = {
        "nodeName": node,
        "containers": [
            {
                "name": "main",
                "image": "jupyter/base",
                "resources": {"requests": requests, "limits": limits},
            }
        ],
        "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
    }
    return summarize_pod(
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": metadata,
            "spec": spec,
            "status": {"phase": phase},
        }
    )


def gpu_pod(name, node, gpus, cpu="1", memory="4Gi", resource="nvidia.com/gpu"):
    return make_pod(name, node, {"cpu": cpu, "memory": memory, resource: str(gpus)})


# --- the nodes used below (also summarised together at the end) -----------------------------


def cpu_node_document():
    node = make_node(
        "cpu-1",
        cpu="7800m",
        memory="31Gi",
        labels={"node.kubernetes.io/instance-type": "m5.2xlarge"},
    )
    app = {
        "requests": {"cpu": "250m", "memory": "512Mi"},
        "limits": {"cpu": "500m", "memory": "1Gi"},
    }
    worker = {  # two app containers, and an init container that runs alone before them
        "metadata": {"name": "worker", "namespace": "jupyterhub", "uid": "uid-worker"},
        "spec": {
            "nodeName": "cpu-1",
            "containers": [{"name": "a", "resources": app}, {"name": "b", "resources": app}],
            "initContainers": [
                {"name": "fetch", "resources": {"requests": {"cpu": "1", "memory": "256Mi"}}}
            ],
        },
        "status": {"phase": "Running"},
    }
    pods = [
        make_pod("web", "cpu-1", {"cpu": "500m", "memory": "1Gi"}, {"cpu": "1", "memory": "2Gi"}),
        summarize_pod(worker),
        make_pod("leaving", "cpu-1", {"cpu": "1", "memory": "2Gi"}, terminating=True),
        make_pod("done", "cpu-1", {"cpu": "4", "memory": "8Gi"}, phase="Succeeded"),
        make_pod("besteffort", "cpu-1", phase="Pending"),
    ]
    return node_document(node, pods)


def a100_node(name="a100-1", unschedulable=False, taints=(GPU_TAINT,)):
    labels = gfd_labels("NVIDIA-A100-SXM4-80GB", 4, memory=81920)
    return make_node(
        name,
        extra={"nvidia.com/gpu": "4"},
        labels=labels,
        unschedulable=unschedulable,
        taints=list(taints),
    )


def a100_document(metrics=None):
    pods = [
        gpu_pod("trainer", "a100-1", 2, cpu="8", memory="64Gi"),
        gpu_pod("notebook", "a100-1", 1, cpu="2", memory="16Gi"),
    ]
    return node_document(a100_node(), pods, metrics)


def a100_busy_cpu_document():
    # 4 GPUs free, but a CPU-heavy pod leaves little cpu/memory
    pods = [make_pod("etl", "a100-2", {"cpu": "30", "memory": "100Gi"})]
    return node_document(a100_node("a100-2"), pods)


def rtx3090_shared_document():
    labels = gfd_labels(
        "NVIDIA-GeForce-RTX-3090-SHARED", 1, memory=24576, replicas=4, strategy="time-slicing"
    )
    node = make_node("rtx3090-1", extra={"nvidia.com/gpu": "4"}, labels=labels)
    pods = [gpu_pod(f"nb-{i}", "rtx3090-1", 1) for i in range(2)]
    return node_document(node, pods)


def rtx4090_renamed_document():
    labels = gfd_labels(
        "NVIDIA-GeForce-RTX-4090",
        2,
        memory=24564,
        replicas=2,
        strategy="time-slicing",
        family="ada-lovelace",
    )
    node = make_node("rtx4090-1", extra={"nvidia.com/gpu.shared": "4"}, labels=labels)
    pods = [gpu_pod("nb", "rtx4090-1", 3, cpu="4", memory="16Gi", resource="nvidia.com/gpu.shared")]
    return node_document(node, pods)


def mig_document():
    # Two A100-80GB: one split 7 x 1g.10gb, one 2 x 3g.40gb. GFD writes replicas 0 for
    # MIG-enabled GPUs (sharing disabled); the plugin left nvidia.com/gpu at 0.
    labels = gfd_labels("NVIDIA-A100-SXM4-80GB", 2, memory=81920, replicas=0, mig="mixed")
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
    extra = {"nvidia.com/gpu": "0", "nvidia.com/mig-1g.10gb": "7", "nvidia.com/mig-3g.40gb": "2"}
    node = make_node("mig-1", extra=extra, labels=labels)
    pods = [
        gpu_pod("a", "mig-1", 2, cpu="2", memory="8Gi", resource="nvidia.com/mig-1g.10gb"),
        gpu_pod("b", "mig-1", 1, cpu="1", memory="4Gi", resource="nvidia.com/mig-1g.10gb"),
        gpu_pod("c", "mig-1", 1, cpu="4", memory="32Gi", resource="nvidia.com/mig-3g.40gb"),
    ]
    return node_document(node, pods)


def gb10_document(metrics=None):
    labels = gfd_labels("NVIDIA-GB10", 1, memory=None, family="blackwell")
    node = make_node(
        "gb10-1", cpu="19500m", memory="120Gi", extra={"nvidia.com/gpu": "1"}, labels=labels
    )
    return node_document(node, [], metrics)


def cordoned_document():
    taint = {"key": "node.kubernetes.io/unschedulable", "effect": "NoSchedule"}
    return node_document(a100_node("a100-3", unschedulable=True, taints=[GPU_TAINT, taint]), [])


def not_ready_document():
    return node_document(
        make_node("cpu-2", ready="Unknown"), [make_pod("p", "cpu-2", {"cpu": "1", "memory": "1Gi"})]
    )


# --- node documents -------------------------------------------------------------------------


def test_cpu_node_counts_requests_of_running_pending_and_terminating_pods():
    doc = cpu_node_document()
    # counted: web 500m/1Gi, worker max(250m+250m, init 1) = 1 cpu / max(1Gi, 256Mi) = 1Gi,
    # leaving (terminating) 1/2Gi, besteffort 0. Not counted: done (Succeeded) 4/8Gi.
    # requests: cpu 0.5 + 1 + 1 = 2.5, memory 1 + 1 + 2 = 4Gi
    # limits: cpu 1 + (0.5 + 0.5) + 1 = 3, memory 2 + (1 + 1) + 2 = 6Gi
    assert doc["name"] == "cpu-1"
    assert doc["instance_type"] == "m5.2xlarge"
    assert doc["capacity"] == {"cpu": 7.8, "memory": 31 * GI, "gpu": 0}  # allocatable, not 32/128Gi
    assert doc["allocated"] == {"cpu": 2.5, "memory": 4 * GI, "gpu": 0}
    # available: 7.8 - 2.5 = 5.3 cores; 31Gi - 4Gi = 27Gi
    assert doc["available"] == {"cpu": 5.3, "memory": 27 * GI, "gpu": 0}
    assert doc["requests"] == {"cpu": 2.5, "memory": 4 * GI}
    assert doc["limits"] == {"cpu": 3.0, "memory": 6 * GI}
    assert doc["allocatable"] == {
        "cpu": 7.8,
        "ephemeral-storage": 900 * GI,
        "memory": 31 * GI,
        "pods": 110,
    }
    # kubectl: int(2500/7800*100) = 32, int(3000/7800*100) = 38, int(4/31*100) = 12, int(6/31*100) = 19
    assert doc["percent"] == {
        "cpu_requests": 32,
        "cpu_limits": 38,
        "memory_requests": 12,
        "memory_limits": 19,
    }
    assert doc["pod_count"] == 4  # web, worker, leaving, besteffort
    assert doc["pods_allocatable"] == 110
    assert (doc["ready"], doc["unschedulable"], doc["schedulable"], doc["reason"]) == (
        True,
        False,
        True,
        None,
    )
    assert doc["taints"] == []
    assert doc["gpu"] is None
    assert doc["gpu_details"] == []
    json.dumps(doc, allow_nan=False)


def test_a100_node_free_gpus_are_allocatable_minus_requests():
    metrics = {
        0: {"utilization": 87, "memory_used_mib": 40000, "memory_free_mib": 41920},
        3: {"utilization": 0, "memory_used_mib": 0},
    }
    doc = a100_document(metrics)
    # 4 allocatable, trainer 2 + notebook 1 requested -> 1 free
    # cpu 31.5 - (8 + 2) = 21.5; memory 126Gi - (64 + 16)Gi = 46Gi
    assert doc["capacity"] == {"cpu": 31.5, "memory": 126 * GI, "gpu": 4}
    assert doc["allocated"] == {"cpu": 10.0, "memory": 80 * GI, "gpu": 3}
    assert doc["available"] == {"cpu": 21.5, "memory": 46 * GI, "gpu": 1}
    assert doc["requests"]["nvidia.com/gpu"] == 3
    assert doc["limits"]["nvidia.com/gpu"] == 3
    assert doc["taints"] == [GPU_TAINT]
    assert doc["gpu"] == {
        "model": "NVIDIA A100 SXM4 80GB",
        "product": "NVIDIA-A100-SXM4-80GB",
        "family": "ampere",
        "memory_mib": 81920,
        "physical_count": 4,
        "replicas": 1,
        "shared": False,
        "sharing_strategy": "none",
        "mig_strategy": "none",
        "resources": [
            {
                "name": "nvidia.com/gpu",
                "kind": "gpu",
                "product": "NVIDIA-A100-SXM4-80GB",
                "model": "NVIDIA A100 SXM4 80GB",
                "memory_mib": 81920,
                "replicas": 1,
                "shared": False,
                "allocatable": 4,
                "allocated": 3,
                "free": 1,
            }
        ],
        "schedulable_count": 4,
        "allocated_count": 3,
        "free_count": 1,
    }
    # the 3 used slots are assigned to GPUs 0, 1, 2 in index order; GPU 3 is free
    details = doc["gpu_details"]
    assert [d["index"] for d in details] == [0, 1, 2, 3]
    assert [d["available"] for d in details] == [False, False, False, True]
    assert details[0] == {
        "index": 0,
        "model": "NVIDIA A100 SXM4 80GB",
        "memory_total": 81920,
        "memory_used": 40000,
        "memory_free": 41920,
        "utilization": 87,
        "available": False,
        "slots": 1,
        "slots_used": 1,
    }
    # no metrics for GPU 1: unknown, not zero
    assert (details[1]["memory_used"], details[1]["memory_free"], details[1]["utilization"]) == (
        None,
        None,
        None,
    )
    # GPU 3: free memory derived from the label total: 81920 - 0
    assert (details[3]["memory_used"], details[3]["memory_free"], details[3]["utilization"]) == (
        0,
        81920,
        0,
    )


def test_time_sliced_shared_product_counts_physical_and_schedulable():
    doc = rtx3090_shared_document()
    gpu = doc["gpu"]
    # 1 physical x 4 replicas = 4 schedulable slots, 2 requested -> 2 free
    assert gpu["model"] == "NVIDIA GeForce RTX 3090"  # -SHARED stripped for display
    assert gpu["product"] == "NVIDIA-GeForce-RTX-3090-SHARED"
    assert (gpu["physical_count"], gpu["replicas"], gpu["shared"]) == (1, 4, True)
    assert gpu["sharing_strategy"] == "time-slicing"
    assert (gpu["schedulable_count"], gpu["allocated_count"], gpu["free_count"]) == (4, 2, 2)
    assert doc["capacity"]["gpu"] == 4
    assert doc["available"]["gpu"] == 2
    # one physical GPU with 4 slots, 2 used -> still available
    assert [
        (d["index"], d["slots"], d["slots_used"], d["available"]) for d in doc["gpu_details"]
    ] == [(0, 4, 2, True)]


def test_time_sliced_renamed_resource_gpu_shared():
    doc = rtx4090_renamed_document()
    gpu = doc["gpu"]
    # renamed: no -SHARED suffix; resource nvidia.com/gpu.shared, 2 physical x 2 replicas = 4
    assert gpu["model"] == "NVIDIA GeForce RTX 4090"
    assert (gpu["physical_count"], gpu["replicas"], gpu["shared"]) == (2, 2, True)
    assert [
        (r["name"], r["kind"], r["allocatable"], r["allocated"], r["free"])
        for r in gpu["resources"]
    ] == [("nvidia.com/gpu.shared", "gpu", 4, 3, 1)]
    assert doc["allocated"]["gpu"] == 3
    assert doc["available"]["gpu"] == 1
    # 3 used slots fill GPU 0 (2 of 2) then GPU 1 (1 of 2)
    assert [(d["slots"], d["slots_used"], d["available"]) for d in doc["gpu_details"]] == [
        (2, 2, False),
        (2, 1, True),
    ]


def test_mig_mixed_node_lists_each_profile():
    doc = mig_document()
    gpu = doc["gpu"]
    assert gpu["mig_strategy"] == "mixed"
    assert gpu["replicas"] == 1  # label "0" read as no sharing
    assert gpu["physical_count"] == 2
    by_name = {r["name"]: r for r in gpu["resources"]}
    assert list(by_name) == ["nvidia.com/gpu", "nvidia.com/mig-1g.10gb", "nvidia.com/mig-3g.40gb"]
    assert by_name["nvidia.com/gpu"]["allocatable"] == 0
    # 1g.10gb: 7 allocatable, a 2 + b 1 = 3 requested -> 4 free
    assert by_name["nvidia.com/mig-1g.10gb"] == {
        "name": "nvidia.com/mig-1g.10gb",
        "kind": "mig",
        "product": "NVIDIA-A100-SXM4-80GB-MIG-1g.10gb",
        "model": "NVIDIA A100 SXM4 80GB MIG 1g.10gb",
        "memory_mib": 9728,
        "replicas": 1,
        "shared": False,
        "allocatable": 7,
        "allocated": 3,
        "free": 4,
    }
    # 3g.40gb: 2 allocatable, 1 requested -> 1 free
    assert (
        by_name["nvidia.com/mig-3g.40gb"]["memory_mib"],
        by_name["nvidia.com/mig-3g.40gb"]["free"],
    ) == (40192, 1)
    # totals over GPU resources: 0 + 7 + 2 = 9 schedulable, 3 + 1 = 4 allocated, 5 free
    assert (gpu["schedulable_count"], gpu["allocated_count"], gpu["free_count"]) == (9, 4, 5)
    assert doc["available"] == {"cpu": 24.5, "memory": 82 * GI, "gpu": 5}  # 31.5 - 7, 126Gi - 44Gi
    # both GPUs are MIG-partitioned: 9 instances spread 5 + 4, 4 used fill GPU 0 first
    assert [(d["slots"], d["slots_used"], d["available"]) for d in doc["gpu_details"]] == [
        (5, 4, True),
        (4, 0, True),
    ]
    assert doc["gpu_details"][0]["memory_total"] == 81920


def test_gb10_without_memory_label():
    doc = gb10_document()
    gpu = doc["gpu"]
    assert (gpu["model"], gpu["family"], gpu["memory_mib"]) == ("NVIDIA GB10", "blackwell", None)
    assert (gpu["physical_count"], gpu["free_count"]) == (1, 1)
    assert doc["gpu_details"][0]["memory_total"] is None
    assert doc["gpu_details"][0]["available"] is True
    # with live metrics the total is used + free: 1000 + 120000
    detail = gb10_document(
        {0: {"memory_used_mib": 1000, "memory_free_mib": 120000, "utilization": 5.5}}
    )["gpu_details"][0]
    assert (
        detail["memory_total"],
        detail["memory_used"],
        detail["memory_free"],
        detail["utilization"],
    ) == (121000, 1000, 120000, 5.5)
    # dcgm's own total (used + free) when it has one; free then follows from total - used
    detail = gb10_document({0: {"memory_total_mib": 122880.0, "memory_used_mib": 880.0}})[
        "gpu_details"
    ][0]
    assert (detail["memory_total"], detail["memory_free"]) == (122880.0, 122000.0)


def test_cordoned_node_is_reported_with_nothing_available():
    doc = cordoned_document()
    assert (doc["ready"], doc["unschedulable"], doc["schedulable"], doc["reason"]) == (
        True,
        True,
        False,
        "cordoned",
    )
    assert doc["available"] == {"cpu": 0.0, "memory": 0, "gpu": 0}
    assert doc["capacity"] == {"cpu": 31.5, "memory": 126 * GI, "gpu": 4}  # still reported
    assert doc["gpu"]["free_count"] == 4  # scheduler truth kept in the inventory
    assert [d["available"] for d in doc["gpu_details"]] == [False] * 4
    assert {
        "key": "node.kubernetes.io/unschedulable",
        "value": None,
        "effect": "NoSchedule",
    } in doc["taints"]


def test_not_ready_node_is_reported_with_nothing_available():
    doc = not_ready_document()
    assert (doc["ready"], doc["schedulable"], doc["reason"]) == (False, False, "NotReady")
    assert doc["available"] == {"cpu": 0.0, "memory": 0, "gpu": 0}
    assert doc["allocated"] == {"cpu": 1.0, "memory": GI, "gpu": 0}


def test_not_ready_and_cordoned_gives_both_reasons():
    doc = node_document(make_node("n", ready="False", unschedulable=True), [])
    assert doc["reason"] == "NotReady, cordoned"


# --- GPU label fallbacks --------------------------------------------------------------------


def inventory(labels, allocatable, requested=None):
    node = make_node("g", extra=allocatable, labels=labels)
    return gpu_inventory(
        node, node_allocatable(node), {k: Decimal(v) for k, v in (requested or {}).items()}
    )


def test_bad_gpu_labels_are_ignored_with_fallbacks():
    labels = gfd_labels("NVIDIA-L4", "four", memory="lots", replicas=4, strategy="time-slicing")
    gpu = inventory(labels, {"nvidia.com/gpu": "8"})
    # count unreadable -> 8 slots / 4 replicas = 2; memory unreadable -> None
    assert (gpu["physical_count"], gpu["memory_mib"], gpu["schedulable_count"]) == (2, None, 8)

    labels = gfd_labels("NVIDIA-L4", 1, replicas="x")
    del labels["nvidia.com/gpu.sharing-strategy"]
    gpu = inventory(labels, {"nvidia.com/gpu": "3"})
    assert (gpu["replicas"], gpu["sharing_strategy"], gpu["physical_count"]) == (1, "none", 1)

    # a count too large to be real is ignored: 3 slots / 1 = 3
    gpu = inventory(gfd_labels("NVIDIA-L4", 999999999), {"nvidia.com/gpu": "3"})
    assert gpu["physical_count"] == 3


def test_count_falls_back_to_slots_over_replicas_rounded_up():
    labels = {"nvidia.com/gpu.replicas": "4"}  # no product, no count
    gpu = inventory(labels, {"nvidia.com/gpu": "6"})
    # 6 / 4 -> 2 physical; older GFD without a strategy label: time-slicing
    assert (gpu["physical_count"], gpu["model"], gpu["product"], gpu["sharing_strategy"]) == (
        2,
        "NVIDIA GPU",
        None,
        "time-slicing",
    )
    # slots go 4 to GPU 0 and 2 to GPU 1
    assert [d["slots"] for d in gpu_details(gpu)] == [4, 2]


def test_labelled_gpu_node_without_device_plugin_has_nothing_schedulable():
    gpu = inventory(gfd_labels("NVIDIA-L4", 1, memory=23034), {})
    assert (
        gpu["physical_count"],
        gpu["schedulable_count"],
        gpu["free_count"],
        gpu["resources"],
    ) == (1, 0, 0, [])
    assert [d["available"] for d in gpu_details(gpu)] == [False]


def test_no_gpus_no_inventory():
    assert inventory({}, {}) is None
    assert gpu_details(None, {0: {"utilization": 3}}) == []


def test_requests_beyond_allocatable_never_give_negative_free():
    gpu = inventory(gfd_labels("NVIDIA-L4", 1), {"nvidia.com/gpu": "1"}, {"nvidia.com/gpu": "2"})
    assert (gpu["allocated_count"], gpu["free_count"]) == (2, 0)


def test_bad_metric_values_read_as_unknown():
    gpu = inventory(gfd_labels("NVIDIA-L4", 1, memory=23034), {"nvidia.com/gpu": "1"})
    [detail] = gpu_details(
        gpu, {0: {"utilization": "high", "memory_used_mib": float("nan"), "memory_free_mib": True}}
    )
    assert (detail["utilization"], detail["memory_used"], detail["memory_free"]) == (
        None,
        None,
        None,
    )
    assert detail["memory_total"] == 23034


# --- robustness -----------------------------------------------------------------------------


def test_odd_informational_fields_do_not_fail_the_node():
    node = make_node("odd", extra={"nvidia.com/gpu": "2"})
    node["metadata"]["labels"] = ["not", "a", "dict"]
    node["spec"] = "nonsense"
    node["status"]["conditions"] = {"Ready": "True"}
    doc = node_document(node, [])
    assert (doc["ready"], doc["reason"], doc["taints"], doc["instance_type"]) == (
        False,
        "NotReady",
        [],
        None,
    )
    assert doc["gpu"]["physical_count"] == 2  # no labels: 2 slots / 1 replica

    node = make_node("odd2")
    node["spec"]["taints"] = [
        {"effect": "NoSchedule"},
        "x",
        {"key": "k", "value": 3, "effect": "NoExecute"},
    ]
    node["metadata"]["labels"]["node.kubernetes.io/instance-type"] = 7
    doc = node_document(node, [])
    assert doc["taints"] == [{"key": "k", "value": None, "effect": "NoExecute"}]
    assert doc["instance_type"] is None


def test_node_without_status_is_not_ready_and_empty():
    node = {"metadata": {"name": "new"}}
    doc = node_document(node, [])
    assert (doc["ready"], doc["schedulable"], doc["reason"]) == (False, False, "NotReady")
    assert doc["capacity"] == {"cpu": 0.0, "memory": 0, "gpu": 0}
    assert doc["percent"] == {
        "cpu_requests": 0,
        "cpu_limits": 0,
        "memory_requests": 0,
        "memory_limits": 0,
    }
    assert doc["pods_allocatable"] == 0


@pytest.mark.parametrize(
    "node",
    [
        None,
        [],
        {"metadata": {}},
        {"metadata": "x"},
        {"metadata": {"name": 5}},
        {"metadata": {"name": "n"}, "status": "broken"},
        {"metadata": {"name": "n"}, "status": {"allocatable": {"cpu": "lots"}}},
        {"metadata": {"name": "n"}, "status": {"allocatable": ["cpu"]}},
        {"metadata": {"name": "n"}, "status": {"capacity": {"nvidia.com/gpu": None}}},
    ],
)
def test_uncountable_nodes_raise_malformed_object_only(node):
    with pytest.raises(MalformedObject):
        node_document(node, [])


# --- summary --------------------------------------------------------------------------------


def test_summary_over_a_mixed_cluster():
    summary = summary_document(
        [
            cpu_node_document(),
            a100_document(),
            a100_busy_cpu_document(),
            rtx3090_shared_document(),
            rtx4090_renamed_document(),
            mig_document(),
            gb10_document(),
            cordoned_document(),  # excluded from capacity: 4 free A100s not counted
            not_ready_document(),  # excluded
        ]
    )
    assert summary["nodes"] == {"total": 9, "ready": 8, "schedulable": 7}
    # schedulable nodes, cpu allocatable / requested / available:
    #   cpu-1 7.8 / 2.5 / 5.3, a100-1 31.5 / 10 / 21.5, a100-2 31.5 / 30 / 1.5,
    #   rtx3090 31.5 / 2 / 29.5, rtx4090 31.5 / 4 / 27.5, mig 31.5 / 7 / 24.5, gb10 19.5 / 0 / 19.5
    assert summary["cpu"] == {"allocatable": 184.8, "requested": 55.5, "available": 129.3}
    # memory Gi: 31/4/27, 126/80/46, 126/100/26, 126/8/118, 126/16/110, 126/44/82, 120/0/120
    assert summary["memory"] == {
        "allocatable": 781 * GI,
        "requested": 252 * GI,
        "available": 529 * GI,
    }
    # physical 4 + 4 + 1 + 2 + 2 + 1 = 14; schedulable 4 + 4 + 4 + 4 + 9 + 1 = 26;
    # free 1 + 4 + 2 + 1 + 5 + 1 = 14
    assert summary["gpus"] == {"physical": 14, "schedulable": 26, "free": 14}

    models = {(m["model"], m["resource"]): m for m in summary["gpu_models"]}
    assert list(models) == [
        ("NVIDIA A100 SXM4 80GB", "nvidia.com/gpu"),  # mig-1's nvidia.com/gpu: 0 is left out
        ("NVIDIA A100 SXM4 80GB MIG 1g.10gb", "nvidia.com/mig-1g.10gb"),
        ("NVIDIA A100 SXM4 80GB MIG 3g.40gb", "nvidia.com/mig-3g.40gb"),
        ("NVIDIA GB10", "nvidia.com/gpu"),
        ("NVIDIA GeForce RTX 3090", "nvidia.com/gpu"),
        ("NVIDIA GeForce RTX 4090", "nvidia.com/gpu.shared"),
    ]
    # A100: a100-1 has 1 free (21.5 cpu, 46Gi), a100-2 has 4 free (1.5 cpu, 26Gi) -> the
    # largest slot is a100-2, while the most cpu/memory next to a free A100 is on a100-1
    assert models[("NVIDIA A100 SXM4 80GB", "nvidia.com/gpu")] == {
        "model": "NVIDIA A100 SXM4 80GB",
        "product": "NVIDIA-A100-SXM4-80GB",
        "resource": "nvidia.com/gpu",
        "memory_mib": 81920,
        "shared": False,
        "schedulable": 8,
        "free": 5,
        "nodes": 2,
        "nodes_with_free": 2,
        "largest_free_slot": {"node": "a100-2", "gpus": 4, "cpu": 1.5, "memory": 26 * GI},
        "max_cpu_with_free_gpu": 21.5,
        "max_memory_with_free_gpu": 46 * GI,
    }
    mig_small = models[("NVIDIA A100 SXM4 80GB MIG 1g.10gb", "nvidia.com/mig-1g.10gb")]
    assert (mig_small["memory_mib"], mig_small["schedulable"], mig_small["free"]) == (9728, 7, 4)
    assert mig_small["largest_free_slot"] == {
        "node": "mig-1",
        "gpus": 4,
        "cpu": 24.5,
        "memory": 82 * GI,
    }
    assert models[("NVIDIA A100 SXM4 80GB MIG 3g.40gb", "nvidia.com/mig-3g.40gb")]["free"] == 1
    gb10 = models[("NVIDIA GB10", "nvidia.com/gpu")]
    assert (gb10["memory_mib"], gb10["free"], gb10["largest_free_slot"]["cpu"]) == (None, 1, 19.5)
    rtx3090 = models[("NVIDIA GeForce RTX 3090", "nvidia.com/gpu")]
    assert (rtx3090["product"], rtx3090["shared"], rtx3090["schedulable"], rtx3090["free"]) == (
        "NVIDIA-GeForce-RTX-3090-SHARED",
        True,
        4,
        2,
    )
    rtx4090 = models[("NVIDIA GeForce RTX 4090", "nvidia.com/gpu.shared")]
    assert (rtx4090["shared"], rtx4090["free"], rtx4090["nodes_with_free"]) == (True, 1, 1)
    json.dumps(summary, allow_nan=False)


def test_summary_model_with_nothing_free():
    labels = gfd_labels("NVIDIA-L4", 1, memory=23034)
    node = make_node("l4-1", extra={"nvidia.com/gpu": "1"}, labels=labels)
    summary = summary_document([node_document(node, [gpu_pod("nb", "l4-1", 1)])])
    [l4] = summary["gpu_models"]
    assert (l4["free"], l4["nodes"], l4["nodes_with_free"], l4["largest_free_slot"]) == (
        0,
        1,
        0,
        None,
    )
    assert (l4["max_cpu_with_free_gpu"], l4["max_memory_with_free_gpu"]) == (None, None)


def test_summary_of_no_nodes():
    assert summary_document([]) == {
        "nodes": {"total": 0, "ready": 0, "schedulable": 0},
        "cpu": {"allocatable": 0, "requested": 0, "available": 0},
        "memory": {"allocatable": 0, "requested": 0, "available": 0},
        "gpus": {"physical": 0, "schedulable": 0, "free": 0},
        "gpu_models": [],
    }
