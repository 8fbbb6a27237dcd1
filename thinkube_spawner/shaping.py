"""Pure builders that turn a checked Choice into KubeSpawner settings, in the manner of
kubespawner's objects.py: no I/O, every result a plain value the spawner assigns to its
traits (and kubespawner then renders into the pod manifest)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .menu import GIB, GPU_TAINT_KEY, Choice


@dataclass(frozen=True)
class SharedVolume:
    """A ReadWriteMany claim mounted into every server."""

    claim: str
    mount_path: str
    read_only: bool = False


@dataclass(frozen=True)
class StorageSettings:
    shared: tuple[SharedVolume, ...] = (
        SharedVolume("thinkube-notebooks", "/home/jovyan/notebooks"),
        SharedVolume("thinkube-datasets", "/datasets"),
        SharedVolume("thinkube-models", "/models"),
    )
    scratch_path: str = "/home/jovyan/scratch"
    scratch_size_limit: str | None = "100Gi"  # None: no scratch volume
    enabled: bool = True


@dataclass(frozen=True)
class PodSettings:
    storage: StorageSettings = field(default_factory=StorageSettings)
    # The hub's public origin, when its proxy runs with --change-origin (needed to reach
    # cloud servers through RunPod's proxy): the server then sees its own address as Host,
    # and must be told that pages from the hub's origin may call it.
    hub_origin: str | None = None


def gpu_toleration() -> dict:
    return {"key": GPU_TAINT_KEY, "operator": "Exists", "effect": "NoSchedule"}


def placement_overrides(choice: Choice) -> dict[str, Any]:
    """Where the pod may run: a pinned node, or any node with the chosen GPU model."""
    placement = choice.placement
    overrides: dict[str, Any] = {
        "node_selector": {},
        "node_affinity_required": [],
        "tolerations": [],
    }
    if choice.node:
        overrides["node_selector"] = {"kubernetes.io/hostname": choice.node}
    elif placement.kind == "gpu" and placement.gpu_product:
        overrides["node_affinity_required"] = [
            {
                "matchExpressions": [
                    {
                        "key": placement.gpu_product_label,
                        "operator": "In",
                        "values": [placement.gpu_product],
                    }
                ]
            }
        ]
    if choice.gpus or (placement.kind == "node" and placement.gpu_resource):
        overrides["tolerations"] = [gpu_toleration()]
    return overrides


def resource_overrides(choice: Choice) -> dict[str, Any]:
    """CPU and memory limits and guarantees, and GPUs (extended resources must have equal
    requests and limits)."""
    overrides: dict[str, Any] = {
        "cpu_limit": choice.cpu,
        "cpu_guarantee": choice.cpu_request,
        "mem_limit": choice.memory_gib * GIB,
        "mem_guarantee": choice.memory_request,
        "extra_resource_limits": {},
        "extra_resource_guarantees": {},
    }
    if choice.gpus:
        amount = str(choice.gpus)
        overrides["extra_resource_limits"] = {choice.placement.gpu_resource: amount}
        overrides["extra_resource_guarantees"] = {choice.placement.gpu_resource: amount}
    return overrides


def image_overrides(choice: Choice) -> dict[str, Any]:
    return {
        "image": choice.image["image"],
        "image_pull_policy": choice.image.get("pull_policy") or "IfNotPresent",
    }


def storage_overrides(storage: StorageSettings) -> dict[str, list]:
    """The shared ReadWriteMany claims and the size-limited scratch space."""
    if not storage.enabled:
        return {"volumes": [], "volume_mounts": []}
    volumes, mounts = [], []
    for shared in storage.shared:
        name = shared.claim
        volumes.append({"name": name, "persistentVolumeClaim": {"claimName": shared.claim}})
        mount = {"name": name, "mountPath": shared.mount_path}
        if shared.read_only:
            mount["readOnly"] = True
        mounts.append(mount)
    if storage.scratch_size_limit:
        volumes.append({"name": "scratch", "emptyDir": {"sizeLimit": storage.scratch_size_limit}})
        mounts.append({"name": "scratch", "mountPath": storage.scratch_path})
    return {"volumes": volumes, "volume_mounts": mounts}


def server_overrides(settings: PodSettings) -> dict[str, Any]:
    """jupyterhub-singleuser's own options."""
    if not settings.hub_origin:
        return {}
    return {"args": [f"--ServerApp.allow_origin={settings.hub_origin}"]}


def spawner_overrides(choice: Choice, settings: PodSettings) -> dict[str, Any]:
    """All KubeSpawner trait values for this choice."""
    return {
        **image_overrides(choice),
        **placement_overrides(choice),
        **resource_overrides(choice),
        **storage_overrides(settings.storage),
        **server_overrides(settings),
    }


# Traits an admin may configure too: the choice adds to them rather than replacing them.
MERGED_TRAITS = {
    "volumes": "name",
    "volume_mounts": "mountPath",
    "tolerations": "key",
    "node_selector": None,
    "node_affinity_required": None,
    "extra_resource_limits": None,
    "extra_resource_guarantees": None,
    "args": None,
}


def apply_to_configured(overrides: dict[str, Any], configured: dict[str, Any]) -> dict[str, Any]:
    """The overrides combined with the admin's configured values of the same traits:
    dicts merged (ours win), lists joined (ours replace entries with the same key)."""
    combined = dict(overrides)
    for name, key in MERGED_TRAITS.items():
        if name not in overrides or name not in configured:
            continue
        base = configured[name]
        if isinstance(base, dict) and key is not None:
            # kubespawner (and z2jh) also take these lists as dicts, used in key order.
            base = [base[k] for k in sorted(base)]
        if isinstance(base, dict):
            combined[name] = {**base, **overrides[name]}
        elif key is None:
            combined[name] = [*base, *overrides[name]]
        else:
            combined[name] = merge_by_name(list(base), overrides[name], key)
    return combined


def merge_by_name(configured: list, ours: list, key: str = "name") -> list:
    """Admin-configured list entries first; ours replace any of the same name."""
    names = {item.get(key) for item in ours if isinstance(item, dict)}
    return [
        item for item in configured if not (isinstance(item, dict) and item.get(key) in names)
    ] + ours
