"""What Zero to JupyterHub does with our values files, for tests.

- :func:`chart_values`: the chart's default values (the fixture in ../shared) deep-merged
  with overlay files the way `helm -f a.yaml -f b.yaml` merges them;
  :func:`overlay_values`: the overlay files merged alike without the chart's defaults, for
  tests that must run without ../shared.
- :func:`hub_config`: the traitlets configuration the chart's ``jupyterhub_config.py``
  builds from those values, for the parts our files touch: ``hub.services`` (with the API
  tokens the chart seeds), ``hub.loadRoles``, the user pods' tolerations and volumes,
  the KubeSpawner traits set from ``singleuser.*``,
  ``hub.config`` passed through, then every ``hub.extraConfig`` snippet executed in sorted
  key order, last, against the same ``c``.

Written from the chart's jupyterhub_config.py and z2jh.py at the commit of the fixture
(chart 4.x): services are a dict keyed by name (``name`` defaults to the key, ``apiToken``
comes from the chart's Secret), roles likewise, ``KubeSpawner.volumes`` and
``volume_mounts`` are dicts, tolerations are ``scheduling.userPods.tolerations`` followed by
``singleuser.extraTolerations``, and each snippet is ``exec``-ed in the config file's
namespace, where ``c``, ``get_config``, ``set_config_if_not_none`` and ``get_secret_value``
are defined.
"""

from __future__ import annotations

import copy
import os
import secrets
import sys
import types
from collections.abc import Mapping
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import yaml
from traitlets.config import Config

REPO = Path(__file__).resolve().parents[2]
HELM_VALUES = REPO / "helm-values"
# The minimal install, and the lab's overlay applied after it.
VALUES = HELM_VALUES / "values.yaml"
LAB = HELM_VALUES / "lab.yaml"
# manifests/: what every install applies; manifests/lab/: what only lab.yaml needs.
MANIFESTS = HELM_VALUES / "manifests"
LAB_MANIFESTS = MANIFESTS / "lab"


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(Path(path).read_text())


def helm_merge(base: Mapping, override: Mapping) -> dict:
    """Helm's merge of values: maps merge key by key, anything else replaces, and a null
    in the override deletes the key."""
    merged = copy.deepcopy(dict(base))
    for key, value in override.items():
        if value is None:
            merged.pop(key, None)
        elif isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = helm_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def set_path(values: dict, dotted: str, value: Any) -> dict:
    """Like `helm --set a.b.c=value` (keys without dots or brackets only)."""
    node = values
    *parents, last = dotted.split(".")
    for key in parents:
        node = node.setdefault(key, {})
    node[last] = value
    return values


def overlay_values(*overlays: Path | Mapping, base: Mapping | None = None) -> dict:
    """`base` (default: nothing) with the overlays merged in order, as helm merges -f files.

    Without the chart's defaults the result holds only what our files say; the hub
    configuration built from it differs from the chart's by the chart's own defaults
    (its tolerations, uid, labels, start timeout), none of which our files rely on."""
    values = dict(base or {})
    for overlay in overlays:
        values = helm_merge(values, overlay if isinstance(overlay, Mapping) else load_yaml(overlay))
    return values


def chart_values(shared_dir: Path, *overlays: Path | Mapping) -> dict:
    """The chart's default values (from ../shared) with the overlays merged in order."""
    return overlay_values(
        *overlays, base=load_yaml(shared_dir / "fixtures" / "z2jh" / "values.yaml")
    )


def get_path(values: Mapping, dotted: str, default: Any = None) -> Any:
    node: Any = values
    for key in dotted.split("."):
        if not isinstance(node, Mapping) or key not in node:
            return default
        node = node[key]
    return node


def hub_env(values: Mapping, secret_values: Mapping[str, str] | None = None) -> dict[str, str]:
    """hub.extraEnv as the hub container sees it: literals as given, secretKeyRef values
    from `secret_values` ("secret-name/key" -> value; missing ones are left out)."""
    env: dict[str, str] = {}
    extra = get_path(values, "hub.extraEnv") or {}
    items = extra.items() if isinstance(extra, Mapping) else ((e["name"], e) for e in extra)
    for name, spec in items:
        if not isinstance(spec, Mapping):
            env[name] = str(spec)
            continue
        name = spec.get("name", name)
        if "value" in spec:
            env[name] = str(spec["value"])
            continue
        ref = (spec.get("valueFrom") or {}).get("secretKeyRef")
        if ref and secret_values and f"{ref['name']}/{ref['key']}" in secret_values:
            env[name] = secret_values[f"{ref['name']}/{ref['key']}"]
    return env


@contextmanager
def environment(env: Mapping[str, str]):
    saved = {name: os.environ.get(name) for name in env}
    os.environ.update(env)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


# KubeSpawner traits the chart sets from singleuser.<key> when the value is not null.
SINGLEUSER_TO_KUBESPAWNER = (
    ("pod_name_template", "podNameTemplate"),
    ("start_timeout", "startTimeout"),
    ("image_pull_policy", "image.pullPolicy"),
    ("events_enabled", "events"),
    ("extra_labels", "extraLabels"),
    ("extra_annotations", "extraAnnotations"),
    ("uid", "uid"),
    ("fs_gid", "fsGid"),
    ("service_account", "serviceAccountName"),
    ("storage_extra_labels", "storage.extraLabels"),
    ("node_selector", "nodeSelector"),
    ("node_affinity_required", "extraNodeAffinity.required"),
    ("node_affinity_preferred", "extraNodeAffinity.preferred"),
    ("pod_affinity_required", "extraPodAffinity.required"),
    ("pod_affinity_preferred", "extraPodAffinity.preferred"),
    ("pod_anti_affinity_required", "extraPodAntiAffinity.required"),
    ("pod_anti_affinity_preferred", "extraPodAntiAffinity.preferred"),
    ("lifecycle_hooks", "lifecycleHooks"),
    ("init_containers", "initContainers"),
    ("extra_containers", "extraContainers"),
    ("mem_limit", "memory.limit"),
    ("mem_guarantee", "memory.guarantee"),
    ("cpu_limit", "cpu.limit"),
    ("cpu_guarantee", "cpu.guarantee"),
    ("extra_resource_limits", "extraResource.limits"),
    ("extra_resource_guarantees", "extraResource.guarantees"),
    ("environment", "extraEnv"),
    ("profile_list", "profileList"),
    ("extra_pod_config", "extraPodConfig"),
)


def hub_config(
    values: Mapping, service_tokens: Mapping[str, str] | None = None
) -> tuple[Config, dict]:
    """The hub's configuration from chart values; returns (c, the chart's seeded secrets).

    Run it inside :func:`environment` with the hub's env when snippets read variables.
    """
    values = copy.deepcopy(dict(values))
    seeded = {
        f"hub.services.{key}.apiToken": (service_tokens or {}).get(key)
        or service.get("apiToken")
        or service.get("api_token")
        or secrets.token_hex(32)
        for key, service in (get_path(values, "hub.services") or {}).items()
    }

    def get_config(key: str, default: Any = None) -> Any:
        return copy.deepcopy(get_path(values, key, default))

    def set_config_if_not_none(parent: Any, name: str, key: str) -> None:
        data = get_config(key)
        if data is not None:
            setattr(parent, name, data)

    def get_secret_value(key: str, default: Any = "never-explicitly-set") -> Any:
        if key in seeded:
            return seeded[key]
        if default != "never-explicitly-set":
            return default
        raise Exception(f"{key} not found in either k8s Secret!")

    c = Config()
    c.JupyterHub.spawner_class = "kubespawner.KubeSpawner"
    tolerations = (get_config("scheduling.userPods.tolerations") or []) + (
        get_config("singleuser.extraTolerations") or []
    )
    if tolerations:
        c.KubeSpawner.tolerations = tolerations
    volumes: dict = {}
    volume_mounts: dict = {}
    storage_type = get_config("singleuser.storage.type")
    if storage_type in ("dynamic", "static"):
        volumes["home"] = {"name": "home", "persistentVolumeClaim": {"claimName": "claim-home"}}
        volume_mounts["home"] = {
            "mountPath": get_config("singleuser.storage.homeMountPath"),
            "name": "home",
        }
    extra_volumes = get_config("singleuser.storage.extraVolumes") or {}
    for volume in extra_volumes.values() if isinstance(extra_volumes, dict) else extra_volumes:
        volumes[volume["name"]] = volume
    c.KubeSpawner.volumes = volumes
    c.KubeSpawner.volume_mounts = volume_mounts
    for trait, key in SINGLEUSER_TO_KUBESPAWNER:
        set_config_if_not_none(c.KubeSpawner, trait, f"singleuser.{key}")
    image = get_config("singleuser.image.name")
    if image:
        tag = get_config("singleuser.image.tag")
        c.KubeSpawner.image = f"{image}:{tag}" if tag else image

    c.JupyterHub.services = []
    c.JupyterHub.load_roles = []
    for key, service in (get_config("hub.services") or {}).items():
        service.setdefault("name", key)
        service.pop("apiToken", None)
        service["api_token"] = get_secret_value(f"hub.services.{key}.apiToken")
        c.JupyterHub.services.append(service)
    for key, role in (get_config("hub.loadRoles") or {}).items():
        role.setdefault("name", key)
        c.JupyterHub.load_roles.append(role)

    for section, cfg in (get_config("hub.config") or {}).items():
        if not section[:1].isupper():
            raise ValueError(f"hub.config sections must be class names: {section}")
        c[section].update(cfg)

    # z2jh.py is importable from the config file's directory in the hub image.
    z2jh = types.ModuleType("z2jh")
    z2jh.get_config = get_config
    z2jh.set_config_if_not_none = set_config_if_not_none
    z2jh.get_secret_value = get_secret_value
    saved_module = sys.modules.get("z2jh")
    sys.modules["z2jh"] = z2jh
    try:
        namespace = {
            "__name__": "__main__",
            "c": c,
            "get_config": get_config,
            "set_config_if_not_none": set_config_if_not_none,
            "get_secret_value": get_secret_value,
        }
        for key, snippet in sorted((get_config("hub.extraConfig") or {}).items()):
            exec(compile(snippet, f"hub.extraConfig.{key}", "exec"), namespace)
    finally:
        if saved_module is None:
            sys.modules.pop("z2jh", None)
        else:
            sys.modules["z2jh"] = saved_module
    return c, seeded


def manifest_documents(path: Path) -> list[dict]:
    return [doc for doc in yaml.safe_load_all(Path(path).read_text()) if doc]


def manifest_files(folder: Path = MANIFESTS) -> list[Path]:
    """The manifest files in `folder` and the folders below it."""
    return sorted(folder.rglob("*.yaml"))


def all_manifests(folder: Path = MANIFESTS) -> list[tuple[str, dict]]:
    return [
        (f"{path.relative_to(MANIFESTS)}#{index}", doc)
        for path in manifest_files(folder)
        for index, doc in enumerate(manifest_documents(path))
    ]


def spawner_for(config: Config, name: str, groups: list[str]):
    """ThinkubeSpawner as the hub builds it from this configuration, for a user in these
    hub groups (oauthenticator's manage_groups makes Keycloak's groups hub groups)."""
    from jupyterhub.objects import Hub

    from thinkube_spawner import ThinkubeSpawner

    user = SimpleNamespace(
        name=name, id=1, url=f"/user/{name}/", groups=[SimpleNamespace(name=g) for g in groups]
    )
    return ThinkubeSpawner(
        config=config,
        hub=Hub(),
        user=user,
        _mock=True,
        k8s_api_host="http://127.0.0.1:9",
        namespace="jupyterhub",
    )
