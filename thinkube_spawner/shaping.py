"""Pure builders that turn a checked Choice into KubeSpawner settings, in the manner of
kubespawner's objects.py: no I/O, every result a plain value the spawner assigns to its
traits (and kubespawner then renders into the pod manifest)."""

from __future__ import annotations

import functools
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from .choice import GIB, GPU_TAINT_KEY, Choice


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
    # Taint keys of GPU nodes that a server which may use GPUs tolerates.
    gpu_taint_keys: tuple[str, ...] = (GPU_TAINT_KEY,)
    # Whether a GPU model is chosen by its product label (Kubernetes: one resource name,
    # nvidia.com/gpu, for every model) or by the resource name alone (one machine, whose
    # models each have a resource of their own).
    match_gpu_product: bool = True


def gpu_tolerations(taint_keys: tuple[str, ...] = (GPU_TAINT_KEY,)) -> list[dict]:
    """What a server that may use GPUs tolerates: the GPU nodes' taints (any effect)."""
    return [{"key": key, "operator": "Exists"} for key in taint_keys]


def placement_overrides(choice: Choice, settings: PodSettings | None = None) -> dict[str, Any]:
    """Where the pod may run: a pinned node, or any node with the chosen GPU model. Our
    required node affinity is one term, which `apply_to_configured` adds to every term the
    admin configured (terms are ORed: joining them as a separate term would widen, not
    narrow, where the pod may go)."""
    settings = settings or PodSettings()
    placement = choice.placement
    overrides: dict[str, Any] = {"node_affinity_required": [], "tolerations": []}
    if choice.node:
        overrides["node_affinity_required"] = [
            {"matchFields": [{"key": "metadata.name", "operator": "In", "values": [choice.node]}]}
        ]
    elif placement.kind == "gpu" and placement.gpu_product and settings.match_gpu_product:
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
        overrides["tolerations"] = gpu_tolerations(settings.gpu_taint_keys)
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


def scheduling_overrides(choice: Choice, settings: PodSettings) -> dict[str, Any]:
    """The trait values that decide where the pod may run and what it asks for."""
    return {
        **placement_overrides(choice, settings),
        **resource_overrides(choice),
    }


def spawner_overrides(choice: Choice, settings: PodSettings) -> dict[str, Any]:
    """All KubeSpawner trait values for this choice."""
    return {
        **image_overrides(choice),
        **scheduling_overrides(choice, settings),
        **storage_overrides(settings.storage),
        **server_overrides(settings),
    }


# Traits an admin may configure too: the choice adds to them rather than replacing them.
# The value says how: the key that names a list entry (ours replace the admin's of the same
# name), DICT (merged, ours win), JOIN (lists joined) or TERMS (node selector terms: ours
# are added to every configured term).
DICT, JOIN, TERMS = "dict", "join", "terms"
MERGED_TRAITS = {
    "volumes": "name",
    "volume_mounts": "mountPath",
    "tolerations": "key",
    "node_affinity_required": TERMS,
    "extra_resource_limits": DICT,
    "extra_resource_guarantees": DICT,
    "args": JOIN,
}


def as_list(value: Any) -> list:
    """kubespawner (and z2jh) take list traits as dicts too, used in key order."""
    if isinstance(value, dict):
        return [value[k] for k in sorted(value)]
    return list(value or [])


def and_terms(configured: list, ours: list) -> list:
    """Node selector terms that hold where a configured term and our term both hold."""
    if not configured or not ours:
        return [*configured, *ours]
    (term,) = ours  # the choice adds one term (placement_overrides)
    return [
        {
            **base,
            **{
                field: [*(base.get(field) or []), *term[field]]
                for field in ("matchExpressions", "matchFields")
                if term.get(field)
            },
        }
        for base in configured
    ]


def apply_to_configured(overrides: dict[str, Any], configured: dict[str, Any]) -> dict[str, Any]:
    """The overrides combined with the admin's configured values of the same traits."""
    combined = dict(overrides)
    for name, how in MERGED_TRAITS.items():
        if name not in overrides or name not in configured:
            continue
        base = configured[name]
        if how == DICT:
            combined[name] = {**(base or {}), **overrides[name]}
        elif how == JOIN:
            combined[name] = [*as_list(base), *overrides[name]]
        elif how == TERMS:
            combined[name] = and_terms(as_list(base), overrides[name])
        else:
            combined[name] = merge_by_name(as_list(base), overrides[name], how)
    return combined


def merge_by_name(configured: list, ours: list, key: str = "name") -> list:
    """Admin-configured list entries first; ours replace any of the same name."""
    names = {item.get(key) for item in ours if isinstance(item, dict)}
    return [
        item for item in configured if not (isinstance(item, dict) and item.get(key) in names)
    ] + ours


# -- the pod's scheduling, as kubespawner will write it -----------------------------------

# The KubeSpawner traits that reach the scheduling fields of the pod (and its requests).
SCHEDULING_TRAITS = (
    "cpu_limit",
    "cpu_guarantee",
    "mem_limit",
    "mem_guarantee",
    "extra_resource_limits",
    "extra_resource_guarantees",
    "extra_container_config",
    "init_containers",
    "extra_containers",
    "tolerations",
    "node_selector",
    "node_affinity_required",
    "scheduler_name",
    "extra_pod_config",
)


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(part[:1].upper() + part[1:] for part in rest)


def _camel_keys(value: Any) -> Any:
    """Top-level keys as the API names them (kubespawner maps snake_case ones; what lies
    below is sent as written)."""
    return {_camel(k): v for k, v in value.items()} if isinstance(value, dict) else value


def pod_scheduling_spec(traits: dict[str, Any]) -> dict[str, Any]:
    """The part of the pod spec that kubespawner's `get_pod_manifest` makes from these trait
    values and the scheduler reads: containers' resources, tolerations, nodeSelector,
    required node affinity, schedulerName, then `extra_pod_config` over them, as kubespawner
    applies it. Raw JSON, camelCase, ready for `thinkube_core.scheduling`. A test holds it
    equal to kubespawner's own manifest."""
    requests: dict[str, Any] = {}
    limits: dict[str, Any] = {}
    if traits.get("cpu_guarantee"):
        requests["cpu"] = traits["cpu_guarantee"]
    if traits.get("mem_guarantee"):
        requests["memory"] = traits["mem_guarantee"]
    requests.update(traits.get("extra_resource_guarantees") or {})
    if traits.get("cpu_limit"):
        limits["cpu"] = traits["cpu_limit"]
    if traits.get("mem_limit"):
        limits["memory"] = traits["mem_limit"]
    limits.update(traits.get("extra_resource_limits") or {})
    notebook = {"name": "notebook", "resources": {"requests": requests, "limits": limits}}
    notebook.update(_camel_keys(traits.get("extra_container_config") or {}))
    spec: dict[str, Any] = {
        "containers": [notebook, *map(_camel_keys, as_list(traits.get("extra_containers")))]
    }
    init = as_list(traits.get("init_containers"))
    if init:
        spec["initContainers"] = [_camel_keys(c) for c in init]
    if traits.get("node_selector"):
        spec["nodeSelector"] = dict(traits["node_selector"])
    if traits.get("scheduler_name"):
        spec["schedulerName"] = traits["scheduler_name"]
    tolerations = as_list(traits.get("tolerations"))
    if tolerations:
        spec["tolerations"] = [_camel_keys(t) for t in tolerations]
    terms = as_list(traits.get("node_affinity_required"))
    if terms:
        spec["affinity"] = {
            "nodeAffinity": {
                "requiredDuringSchedulingIgnoredDuringExecution": {
                    "nodeSelectorTerms": [_camel_keys(t) for t in terms]
                }
            }
        }
    spec.update(_camel_keys(traits.get("extra_pod_config") or {}))
    return spec


@dataclass(frozen=True)
class PodTemplate:
    """How a choice becomes the scheduling part of the pod on this hub: the admin's
    configured trait values with the choice's overrides applied, as at spawn. Hashable (the
    configuration is kept as JSON), so that menus built for one configuration are shared."""

    settings: PodSettings = field(default_factory=PodSettings)
    configured_json: str = "{}"

    @classmethod
    def of(cls, configured: Mapping[str, Any], settings: PodSettings) -> PodTemplate:
        """From the admin's values of SCHEDULING_TRAITS (and the merged traits)."""
        return cls(settings, json.dumps(dict(configured), sort_keys=True, default=str))

    @functools.cached_property
    def configured(self) -> dict[str, Any]:
        return json.loads(self.configured_json)

    def traits(self, choice: Choice) -> dict[str, Any]:
        overrides = scheduling_overrides(choice, self.settings)
        return {**self.configured, **apply_to_configured(overrides, self.configured)}

    def spec(self, choice: Choice) -> dict[str, Any]:
        return pod_scheduling_spec(self.traits(choice))
