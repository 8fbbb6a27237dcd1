"""Realistic generated clusters: CPU nodes, GPU nodes with NVIDIA GPU Feature Discovery
labels and the GPU taint, and pods spread over them that fit, as a running cluster has."""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import UTC, datetime

from .quantity import parse_quantity
from .resources import BY_PATH

NODES = BY_PATH[("", "v1", "nodes")]
PODS = BY_PATH[("", "v1", "pods")]
NAMESPACES = BY_PATH[("", "v1", "namespaces")]


@dataclass(frozen=True)
class GpuModel:
    product: str  # nvidia.com/gpu.product as GFD writes it
    memory_mib: int | None  # None: NVML cannot say (GB10 / DGX Spark)
    family: str
    count: int  # physical GPUs per node
    replicas: int = 1  # time-slicing replicas per GPU
    cpu: int = 64
    memory_gi: int = 512


GPU_MODELS = (
    GpuModel("NVIDIA-A100-SXM4-80GB", 81920, "ampere", 4, cpu=64, memory_gi=512),
    GpuModel("NVIDIA-H100-80GB-HBM3", 81559, "hopper", 8, cpu=96, memory_gi=1024),
    GpuModel("NVIDIA-GeForce-RTX-4090", 24564, "ada-lovelace", 2, cpu=32, memory_gi=128),
    GpuModel("NVIDIA-L4", 23034, "ada-lovelace", 1, cpu=16, memory_gi=64),
    GpuModel(
        "NVIDIA-GeForce-RTX-3090-SHARED", 24576, "ampere", 1, replicas=4, cpu=16, memory_gi=64
    ),
    GpuModel("NVIDIA-GB10", None, "blackwell", 1, cpu=20, memory_gi=128),
)
CPU_SHAPES = ((16, 64), (32, 128), (64, 256))
NAMESPACE_NAMES = ("default", "jupyterhub", "ml-team", "data-eng", "monitoring")


def _ready_conditions(now: str) -> list[dict]:
    pressure = [
        ("MemoryPressure", "KubeletHasSufficientMemory"),
        ("DiskPressure", "KubeletHasNoDiskPressure"),
        ("PIDPressure", "KubeletHasSufficientPID"),
    ]
    conditions = [
        {
            "type": kind,
            "status": "False",
            "reason": reason,
            "message": "",
            "lastHeartbeatTime": now,
            "lastTransitionTime": now,
        }
        for kind, reason in pressure
    ]
    conditions.append(
        {
            "type": "Ready",
            "status": "True",
            "reason": "KubeletReady",
            "message": "kubelet is posting ready status",
            "lastHeartbeatTime": now,
            "lastTransitionTime": now,
        }
    )
    return conditions


def make_node(
    name: str, cpu: int, memory_gi: int, gpu: GpuModel | None = None, index: int = 0
) -> dict:
    now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    capacity = {
        "cpu": str(cpu),
        "memory": f"{memory_gi * 1024 * 1024}Ki",
        "pods": "110",
        "ephemeral-storage": "976284404Ki",
        "hugepages-2Mi": "0",
    }
    # The kubelet reserves a little for the system, as real nodes show.
    allocatable = dict(
        capacity, cpu=f"{cpu * 1000 - 100}m", memory=f"{memory_gi * 1024 * 1024 - 1024 * 1024}Ki"
    )
    labels = {
        "kubernetes.io/hostname": name,
        "kubernetes.io/os": "linux",
        "kubernetes.io/arch": "amd64",
        "beta.kubernetes.io/os": "linux",
        "beta.kubernetes.io/arch": "amd64",
    }
    taints = []
    if gpu is not None:
        schedulable = gpu.count * gpu.replicas
        capacity["nvidia.com/gpu"] = allocatable["nvidia.com/gpu"] = str(schedulable)
        labels.update(
            {
                "nvidia.com/gpu.present": "true",
                "nvidia.com/gpu.product": gpu.product,
                "nvidia.com/gpu.count": str(gpu.count),
                "nvidia.com/gpu.replicas": str(gpu.replicas),
                "nvidia.com/gpu.sharing-strategy": "time-slicing" if gpu.replicas > 1 else "none",
                "nvidia.com/gpu.family": gpu.family,
                "nvidia.com/mig.strategy": "none",
                "nvidia.com/cuda.driver.major": "570",
            }
        )
        if gpu.memory_mib is not None:
            labels["nvidia.com/gpu.memory"] = str(gpu.memory_mib)
        taints.append({"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"})
    octet3, octet4 = divmod(index + 10, 250)
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "labels": labels,
            "annotations": {"node.alpha.kubernetes.io/ttl": "0"},
        },
        "spec": {"podCIDR": f"10.244.{index % 256}.0/24", **({"taints": taints} if taints else {})},
        "status": {
            "capacity": capacity,
            "allocatable": allocatable,
            "conditions": _ready_conditions(now),
            "addresses": [
                {"type": "InternalIP", "address": f"10.0.{octet3}.{octet4}"},
                {"type": "Hostname", "address": name},
            ],
            "nodeInfo": {
                "architecture": "amd64",
                "operatingSystem": "linux",
                "osImage": "Ubuntu 24.04.1 LTS",
                "kernelVersion": "6.8.0-51-generic",
                "containerRuntimeVersion": "containerd://1.7.24",
                "kubeletVersion": "v1.32.0",
                "kubeProxyVersion": "v1.32.0",
                "machineID": f"{index:032x}",
                "systemUUID": f"{index:08x}-0000-0000-0000-000000000000",
                "bootID": f"{index:08x}-1111-1111-1111-111111111111",
            },
        },
    }


def generate_nodes(count: int, gpu_count: int, rng: random.Random) -> list[dict]:
    nodes = []
    for i in range(gpu_count):
        model = GPU_MODELS[i % len(GPU_MODELS)]
        nodes.append(make_node(f"gpu-node-{i + 1:02d}", model.cpu, model.memory_gi, model, i))
    for i in range(count - gpu_count):
        cpu, memory_gi = rng.choice(CPU_SHAPES)
        nodes.append(make_node(f"node-{i + 1:04d}", cpu, memory_gi, None, gpu_count + i))
    return nodes


def _container(name: str, cpu_m: int, mem_mi: int, image: str, limit_factor: int = 2) -> dict:
    return {
        "name": name,
        "image": image,
        "imagePullPolicy": "IfNotPresent",
        "resources": {
            "requests": {"cpu": f"{cpu_m}m", "memory": f"{mem_mi}Mi"},
            "limits": {"cpu": f"{cpu_m * limit_factor}m", "memory": f"{mem_mi * limit_factor}Mi"},
        },
        "terminationMessagePath": "/dev/termination-log",
        "terminationMessagePolicy": "File",
    }


def generate_pods(nodes: list[dict], count: int, rng: random.Random) -> list[dict]:
    """Pods bound to nodes, never more than a node's allocatable (as the scheduler would
    have placed them), a few with init containers or sidecars, a few finished."""
    free = {}
    for node in nodes:
        alloc = node["status"]["allocatable"]
        free[node["metadata"]["name"]] = {
            "cpu": int(parse_quantity(alloc["cpu"]) * 1000),
            "memory": int(parse_quantity(alloc["memory"]) / (1024 * 1024)),
            "pods": int(alloc["pods"]),
            "gpu": int(alloc.get("nvidia.com/gpu", "0")),
            "gpu_node": "nvidia.com/gpu" in alloc,
        }
    names = list(free)
    now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    pods = []
    for i in range(count):
        cpu_m = rng.choice((50, 100, 100, 250, 250, 500, 1000, 2000))
        mem_mi = rng.choice((64, 128, 256, 256, 512, 1024, 2048, 4096))
        finished = rng.random() < 0.05
        want_gpu = rng.random() < 0.3
        for _ in range(20):
            node = rng.choice(names)
            room = free[node]
            if room["pods"] > 0 and room["cpu"] >= cpu_m and room["memory"] >= mem_mi:
                break
        else:
            break  # the cluster is full
        use_gpu = want_gpu and room["gpu_node"] and room["gpu"] > 0 and not finished
        if not finished:
            room["pods"] -= 1
            room["cpu"] -= cpu_m
            room["memory"] -= mem_mi
            if use_gpu:
                room["gpu"] -= 1
        namespace = NAMESPACE_NAMES[i % len(NAMESPACE_NAMES)]
        main = _container(
            "main",
            cpu_m,
            mem_mi,
            rng.choice(
                ("nginx:1.27", "python:3.12-slim", "quay.io/jupyter/base-notebook:2025-01-06")
            ),
        )
        spec: dict = {
            "containers": [main],
            "nodeName": node,
            "restartPolicy": "Never" if finished else "Always",
            "schedulerName": "default-scheduler",
            "terminationGracePeriodSeconds": 30,
            "dnsPolicy": "ClusterFirst",
            "serviceAccountName": "default",
        }
        if use_gpu:
            main["resources"]["limits"]["nvidia.com/gpu"] = "1"
            main["resources"]["requests"]["nvidia.com/gpu"] = "1"
        if room["gpu_node"]:
            spec["tolerations"] = [
                {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
            ]
        if i % 10 == 3:  # a classic init container, smaller than the main one
            spec["initContainers"] = [
                _container(
                    "init-config", max(10, cpu_m // 2), max(16, mem_mi // 2), "busybox:1.36", 1
                )
            ]
        elif i % 20 == 7:  # a restartable sidecar (log shipper)
            sidecar = _container("log-shipper", 10, 16, "fluent/fluent-bit:3.2", 1)
            sidecar["restartPolicy"] = "Always"
            spec["initContainers"] = [sidecar]
            if not finished:
                room["cpu"] -= 10
                room["memory"] -= 16
        phase = rng.choice(("Succeeded", "Failed")) if finished else "Running"
        pod_ip = f"10.244.{(i // 250) % 256}.{i % 250 + 2}"
        pods.append(
            {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {
                    "name": f"workload-{i:06d}",
                    "namespace": namespace,
                    "labels": {"app": f"app-{i % 97}", "tier": rng.choice(("web", "batch", "ml"))},
                },
                "spec": spec,
                "status": {
                    "phase": phase,
                    "podIP": pod_ip,
                    "hostIP": "10.0.0.1",
                    "startTime": now,
                    "qosClass": "Burstable",
                    "conditions": [
                        {
                            "type": "PodScheduled",
                            "status": "True",
                            "lastProbeTime": None,
                            "lastTransitionTime": now,
                        }
                    ],
                },
            }
        )
    return pods


def populate(sim, nodes: int, gpu_nodes: int, pods: int, seed: int = 42) -> tuple[int, int]:
    """Load a generated cluster into a KubeSim through the bulk path."""
    rng = random.Random(seed)
    node_objs = generate_nodes(nodes, min(gpu_nodes, nodes), rng)
    for name in NAMESPACE_NAMES:
        if sim.store.find(NAMESPACES, None, name) is None:
            sim.store.insert(
                NAMESPACES,
                {
                    "metadata": {"name": name},
                    "spec": {"finalizers": ["kubernetes"]},
                    "status": {"phase": "Active"},
                },
            )
    for node in node_objs:
        sim.store.insert(NODES, node)
    pod_objs = generate_pods(node_objs, pods, rng)
    for pod in pod_objs:
        sim.store.insert(PODS, pod)
    return len(node_objs), len(pod_objs)


__all__ = ["GPU_MODELS", "GpuModel", "make_node", "generate_nodes", "generate_pods", "populate"]
