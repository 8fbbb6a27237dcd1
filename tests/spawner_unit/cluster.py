"""A small realistic cluster for the spawner's pure modules, built the way the availability
service builds its documents: generator manifests -> ``summarize_pod`` ->
``node_document`` / ``summary_document``. No servers."""

from __future__ import annotations

import copy
import json
from collections import defaultdict

from hub_service.catalog import DEFAULT_IMAGES
from hub_service.nodes import node_document, summary_document
from tests.kubesim.generator import GPU_MODELS, make_node
from thinkube_core.accounting import summarize_pod
from thinkube_spawner.menu import Menu, MenuSettings, build_menu

A100, H100, RTX4090, L4, RTX3090_SHARED, GB10 = GPU_MODELS
GIB = 1024**3


def pod(
    node: str,
    name: str,
    cpu: str,
    memory: str,
    gpus: int = 0,
    resource: str = "nvidia.com/gpu",
    phase: str = "Running",
) -> dict:
    """A pod bound to ``node`` with these requests (limits equal)."""
    resources = {"cpu": cpu, "memory": memory}
    if gpus:
        resources[resource] = str(gpus)
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": "ml-team", "uid": f"uid-{name}"},
        "spec": {
            "nodeName": node,
            "containers": [
                {
                    "name": "main",
                    "image": "python:3.12-slim",
                    "resources": {"requests": dict(resources), "limits": dict(resources)},
                }
            ],
        },
        "status": {"phase": phase},
    }


def cordon(node: dict) -> dict:
    node["spec"]["unschedulable"] = True
    return node


def not_ready(node: dict) -> dict:
    for condition in node["status"]["conditions"]:
        if condition["type"] == "Ready":
            condition.update(status="Unknown", reason="NodeStatusUnknown")
    return node


def taint(node: dict, key: str, value: str, effect: str = "NoSchedule") -> dict:
    node["spec"].setdefault("taints", []).append({"key": key, "value": value, "effect": effect})
    return node


def mig_node(name: str, index: int) -> dict:
    """An A100 80GB with MIG strategy mixed: 7 x 1g.10gb on one GPU, 2 x 3g.40gb on another,
    two whole GPUs left as nvidia.com/gpu."""
    node = make_node(name, 64, 512, A100, index)
    labels = node["metadata"]["labels"]
    labels["nvidia.com/mig.strategy"] = "mixed"
    labels["nvidia.com/gpu.count"] = "4"
    for profile, count, memory in (("1g.10gb", 7, 9728), ("3g.40gb", 2, 40192)):
        resource = f"nvidia.com/mig-{profile}"
        labels[f"{resource}.count"] = str(count)
        labels[f"{resource}.memory"] = str(memory)
        labels[f"{resource}.product"] = f"NVIDIA-A100-SXM4-80GB-MIG-{profile}"
        labels[f"{resource}.replicas"] = "1"
        for field in ("capacity", "allocatable"):
            node["status"][field][resource] = str(count)
    for field in ("capacity", "allocatable"):
        node["status"][field]["nvidia.com/gpu"] = "2"
    return node


def renamed_time_sliced_node(name: str, index: int) -> dict:
    """Time-slicing with renameByDefault: 1 RTX 3090 as 4 x nvidia.com/gpu.shared."""
    node = make_node(name, 16, 64, RTX3090_SHARED, index)
    labels = node["metadata"]["labels"]
    labels["nvidia.com/gpu.product"] = "NVIDIA-GeForce-RTX-3090"  # renamed: no -SHARED
    for field in ("capacity", "allocatable"):
        node["status"][field]["nvidia.com/gpu.shared"] = node["status"][field].pop("nvidia.com/gpu")
    return node


def documents(nodes: list[dict], pods: list[dict]) -> tuple[list[dict], dict]:
    by_node = defaultdict(list)
    for manifest in pods:
        summary = summarize_pod(manifest)
        by_node[summary.node_name].append(summary)
    node_docs = [node_document(n, by_node[n["metadata"]["name"]]) for n in nodes]
    return node_docs, summary_document(node_docs)


def images() -> list[dict]:
    """The catalog the hub ships with, as the service serves it (scipy is the default)."""
    return [dict(copy.deepcopy(entry), pull_policy="IfNotPresent") for entry in DEFAULT_IMAGES]


def lab_nodes() -> list[dict]:
    """A small lab: every case the form has to get right."""
    return [
        make_node("cpu-node-1", 16, 64, None, 1),
        make_node("gpu-node-3", 32, 128, RTX4090, 3),
        make_node("gpu-a", 64, 512, A100, 4),
        make_node("gpu-b", 64, 512, A100, 5),
        make_node("gpu-l4", 16, 64, L4, 6),  # full: every CPU requested
        make_node("ts-3090", 16, 64, RTX3090_SHARED, 7),
        make_node("spark-1", 20, 128, GB10, 8),
        cordon(make_node("cpu-cordoned", 64, 256, None, 9)),
        not_ready(make_node("h100-down", 96, 1024, H100, 10)),
        taint(make_node("infra-1", 32, 128, None, 11), "dedicated", "infra"),
    ]


def lab_pods() -> list[dict]:
    return [
        # cpu-node-1: 15.9 CPU / 63 GiB allocatable -> 12 CPU, 40 GiB free
        pod("cpu-node-1", "etl", "3900m", "23Gi"),
        # gpu-node-3: 31.9 CPU / 127 GiB -> 12 CPU, 40 GiB, 1 of 2 GPUs free
        pod("gpu-node-3", "train-1", "19900m", "87Gi", gpus=1),
        # gpu-a: all four A100s taken
        pod("gpu-a", "train-big", "8", "64Gi", gpus=4),
        # gpu-l4: every CPU requested
        pod("gpu-l4", "render", "15900m", "8Gi"),
        # ts-3090: one of four time slices taken
        pod("ts-3090", "share-1", "1", "4Gi", gpus=1),
        # finished pods do not count
        pod("gpu-b", "done", "60", "500Gi", gpus=4, phase="Succeeded"),
    ]


def lab_menu(
    settings: MenuSettings | None = None, freshness: dict | None = None, nodes=None, pods=None
) -> Menu:
    node_docs, summary = documents(
        lab_nodes() if nodes is None else nodes, lab_pods() if pods is None else pods
    )
    return build_menu(node_docs, summary, images(), settings or MenuSettings(), freshness)


# --- a ThinkubeSpawner that talks to no server -------------------------------------------


class FakeAvailability:
    """Stands in for the AvailabilityClient: answers with documents built here, or fails as
    the real client does when the service cannot be reached."""

    def __init__(
        self,
        nodes=None,
        pods=None,
        freshness: dict | None = None,
        error: str | None = None,
        estimates: dict | None = None,
    ):
        self.nodes, self.pods, self.freshness, self.error = nodes, pods, freshness or {}, error
        self.estimates = estimates  # the GPU queue's answer; None: the service does not queue
        self.calls = 0

    async def waiting_estimates(self):
        return self.estimates

    async def fetch(self, held_version: str | None = None):
        from thinkube_spawner.availability import Answer, ServiceUnavailable

        self.calls += 1
        if self.error:
            raise ServiceUnavailable(self.error)
        version = self.freshness.get("version")
        freshness = {k: v for k, v in self.freshness.items() if k != "version"}
        if held_version and version == held_version:
            return Answer(version, unchanged=True, **freshness)  # the service's 304
        node_docs, summary = documents(
            lab_nodes() if self.nodes is None else self.nodes,
            lab_pods() if self.pods is None else self.pods,
        )
        body = {"nodes": node_docs, "summary": summary, "images": images(), **self.freshness}
        return Answer(version, raw=json.dumps(body).encode(), **freshness)


def make_spawner(availability: FakeAvailability | None = None, **traits):
    """A ThinkubeSpawner as the hub makes one, without a hub or a cluster behind it."""
    from types import SimpleNamespace

    from jupyterhub.objects import Hub

    from thinkube_spawner import ThinkubeSpawner

    user = SimpleNamespace(name="alice", id=7, url="/user/alice/")
    spawner = ThinkubeSpawner(
        hub=Hub(),
        user=user,
        api_token="not-a-real-token",
        oauth_client_id="jupyterhub-user-alice",
        _mock=True,
        k8s_api_host="http://127.0.0.1:9",
        namespace="jupyterhub",
        **traits,
    )
    spawner._availability_client = availability or FakeAvailability()
    return spawner


async def apply_options(spawner) -> None:
    """What happens to a spawner's user_options before kubespawner makes the pod: JupyterHub's
    apply_user_options hook (the check at submit), the start taking that choice, then
    kubespawner's load_user_options hook (the choice applied to the pod's traits)."""
    from thinkube_spawner.servers import KubernetesServer

    await spawner.apply_user_options(spawner, spawner.user_options)
    await KubernetesServer(spawner).prepare()
    await spawner.load_user_options()
