"""Plain data the RunPod client speaks in: what to create (`PodRequest`) and what RunPod
says about a pod (`Pod`), plus the metadata convention.

RunPod has no tags. Pods are marked by name and by env entries: metadata `key=value`
becomes the env entry `THINKUBE_KEY=value` (so `hub=lab` is `THINKUBE_HUB=lab`), and
`Pod.meta` reads those back. `THINKUBE_*` entries are shown by `thinkube cloud ls`: never
put a secret in one. Every other env entry (tokens, passwords) stays out of reprs and
listings.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

DEFAULT_PROXY_URL_TEMPLATE = "https://{pod_id}-{port}.proxy.runpod.net"
META_PREFIX = "THINKUBE_"
# The client marks each create request with a unique id, so that a request whose answer was
# lost can be matched to the pod it made instead of creating a second one.
CREATE_ID_ENV = "THINKUBE_CREATE_ID"
_INTERNAL_META = {CREATE_ID_ENV}
_META_KEY = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")

# desiredStatus values (PodStatus in RunPod's schema).
CREATED = "CREATED"
RUNNING = "RUNNING"
RESTARTING = "RESTARTING"
EXITED = "EXITED"
PAUSED = "PAUSED"
DEAD = "DEAD"
TERMINATED = "TERMINATED"
ENDED_STATUSES = frozenset({EXITED, DEAD, TERMINATED})  # no longer running
# Where a spawner keeps the id of its server's pod (the hub's database, per server): the
# spawners write it, the service's reaper reads it to tell owned pods from orphans.
STATE_POD_ID = "runpod_pod_id"


def meta_env_key(key: str) -> str:
    """`hub` -> `THINKUBE_HUB`; `team-a.x` -> `THINKUBE_TEAM_A_X`. ValueError if unusable."""
    key = key.strip()
    if not _META_KEY.match(key):
        raise ValueError(f"metadata key {key!r} must be letters, digits, '_', '-' or '.'")
    name = re.sub(r"[^A-Z0-9_]", "_", key.upper())
    return name if name.startswith(META_PREFIX) else META_PREFIX + name


def meta_key(env_key: str) -> str:
    """`THINKUBE_HUB` -> `hub` (the reverse of meta_env_key, normalised)."""
    return env_key[len(META_PREFIX) :].lower()


def parse_meta(pairs: list[str] | tuple[str, ...]) -> dict[str, str]:
    """`["hub=lab", "user=alice"]` -> `{"hub": "lab", "user": "alice"}` (keys normalised)."""
    result: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise ValueError(f"metadata {pair!r} must be key=value")
        result[meta_key(meta_env_key(key))] = value
    return result


def meta_env(meta: Mapping[str, str]) -> dict[str, str]:
    """Metadata as env entries: `{"hub": "lab"}` -> `{"THINKUBE_HUB": "lab"}`."""
    return {meta_env_key(k): str(v) for k, v in meta.items()}


def _iso(value: datetime | str) -> str:
    if isinstance(value, str):
        return value
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass
class PodRequest:
    """What to create. Field names follow `PodFindAndDeployOnDemandInput` /
    `PodRentInterruptableInput`; `extra` passes any other input field of RunPod's schema
    through unchanged (by its GraphQL name)."""

    name: str
    image_name: str
    gpu_type_id: str | None = None
    gpu_type_ids: list[str] | None = None  # on-demand only: RunPod picks the first it can
    gpu_count: int = 1
    cloud_type: str = "ALL"  # SECURE | COMMUNITY | ALL
    docker_args: str | None = None
    env: Mapping[str, str] = field(default_factory=dict, repr=False)
    meta: Mapping[str, str] = field(default_factory=dict)
    ports: str | None = None  # e.g. "8888/http,22/tcp"
    start_jupyter: bool | None = None
    start_ssh: bool | None = None
    support_public_ip: bool | None = None
    container_disk_in_gb: int | None = None
    volume_in_gb: int | None = None
    volume_mount_path: str | None = None
    min_vcpu_count: int | None = None
    min_memory_in_gb: int | None = None
    network_volume_id: str | None = None
    terminate_after: datetime | str | None = None  # dead-man switch
    stop_after: datetime | str | None = None
    extra: Mapping[str, Any] = field(default_factory=dict, repr=False)

    def all_env(self) -> dict[str, str]:
        env = {str(k): str(v) for k, v in self.env.items()}
        env.update(meta_env(self.meta))
        return env

    def to_input(self, *, spot: bool = False) -> dict[str, Any]:
        """The GraphQL input object (sent as a variable, never spliced into a query)."""
        values: dict[str, Any] = {
            "name": self.name,
            "imageName": self.image_name,
            "gpuTypeId": self.gpu_type_id,
            "gpuCount": self.gpu_count,
            "cloudType": self.cloud_type,
            "dockerArgs": self.docker_args,
            "ports": self.ports,
            "startJupyter": self.start_jupyter,
            "startSsh": self.start_ssh,
            "supportPublicIp": self.support_public_ip,
            "containerDiskInGb": self.container_disk_in_gb,
            "volumeInGb": self.volume_in_gb,
            "volumeMountPath": self.volume_mount_path,
            "minVcpuCount": self.min_vcpu_count,
            "minMemoryInGb": self.min_memory_in_gb,
            "networkVolumeId": self.network_volume_id,
            "terminateAfter": _iso(self.terminate_after) if self.terminate_after else None,
            "stopAfter": _iso(self.stop_after) if self.stop_after else None,
        }
        if self.gpu_type_ids:
            if spot:
                raise ValueError("a spot pod names one gpu_type_id (no gpu_type_ids)")
            values["gpuTypeIdList"] = list(self.gpu_type_ids)
        env = self.all_env()
        if env:
            values["env"] = [{"key": k, "value": v} for k, v in env.items()]
        values.update(self.extra)
        return {k: v for k, v in values.items() if v is not None}

    def secret_values(self) -> list[str]:
        """Values that must not show up in an error message (all env values long enough to
        be a token or password)."""
        return [v for v in self.all_env().values() if len(v) >= 8]


@dataclass(frozen=True)
class PodLogEvent:
    """One line of a pod's log as REST v2 streams it: its event id (what resumes a stream
    after it, as `Last-Event-ID`), its time (RFC 3339), its source (`container`: what the
    pod's process wrote; `system`: the host's lifecycle lines) and its text."""

    id: str | None
    ts: str
    source: str
    line: str


@dataclass(frozen=True)
class PortMapping:
    ip: str | None
    is_ip_public: bool
    private_port: int | None
    public_port: int | None
    type: str | None  # "http" | "tcp"

    @classmethod
    def from_api(cls, data: Mapping[str, Any]) -> PortMapping:
        return cls(
            ip=data.get("ip"),
            is_ip_public=bool(data.get("isIpPublic")),
            private_port=data.get("privatePort"),
            public_port=data.get("publicPort"),
            type=data.get("type"),
        )


@dataclass(frozen=True)
class GpuUsage:
    id: str | None
    util_percent: int | None
    memory_util_percent: int | None


@dataclass
class Pod:
    id: str
    name: str
    desired_status: str
    cost_per_hr: float | None = None
    image_name: str | None = None
    gpu_count: int | None = None
    gpu_display_name: str | None = None
    pod_type: str | None = None
    machine_id: str | None = None
    has_runtime: bool = False  # RunPod's `runtime` is null until the container runs
    uptime_seconds: int | None = None
    ports: tuple[PortMapping, ...] = ()
    gpus: tuple[GpuUsage, ...] = ()
    env: dict[str, str] = field(default_factory=dict, repr=False)
    raw: dict[str, Any] = field(default_factory=dict, repr=False)

    @classmethod
    def from_api(cls, data: Mapping[str, Any]) -> Pod:
        runtime = data.get("runtime") or None
        env: dict[str, str] = {}
        for entry in data.get("env") or []:
            if isinstance(entry, str):
                key, _, value = entry.partition("=")
                env[key] = value
            elif isinstance(entry, Mapping) and "key" in entry:
                env[str(entry["key"])] = str(entry.get("value", ""))
        machine = data.get("machine") or {}
        return cls(
            id=data["id"],
            name=data.get("name") or "",
            desired_status=data.get("desiredStatus") or "",
            cost_per_hr=data.get("costPerHr"),
            image_name=data.get("imageName"),
            gpu_count=data.get("gpuCount"),
            gpu_display_name=machine.get("gpuDisplayName"),
            pod_type=data.get("podType"),
            machine_id=data.get("machineId"),
            has_runtime=runtime is not None,
            uptime_seconds=(runtime or {}).get("uptimeInSeconds"),
            ports=tuple(PortMapping.from_api(p) for p in (runtime or {}).get("ports") or [] if p),
            gpus=tuple(
                GpuUsage(g.get("id"), g.get("gpuUtilPercent"), g.get("memoryUtilPercent"))
                for g in (runtime or {}).get("gpus") or []
                if g
            ),
            env=env,
            raw=dict(data),
        )

    @property
    def meta(self) -> dict[str, str]:
        """The pod's metadata (its `THINKUBE_*` env entries, keys lower-cased)."""
        return {
            meta_key(k): v
            for k, v in self.env.items()
            if k.startswith(META_PREFIX) and k not in _INTERNAL_META
        }

    def matches(self, meta: Mapping[str, str]) -> bool:
        mine = self.meta
        return all(mine.get(meta_key(meta_env_key(k))) == v for k, v in meta.items())

    @property
    def is_running(self) -> bool:
        """Desired RUNNING and the container is up (RunPod reports `runtime`)."""
        return self.desired_status == RUNNING and self.has_runtime

    def port(self, private_port: int, type: str | None = None) -> PortMapping | None:
        for mapping in self.ports:
            if mapping.private_port == private_port and (type is None or mapping.type == type):
                return mapping
        return None

    def proxy_url(self, port: int, template: str = DEFAULT_PROXY_URL_TEMPLATE) -> str | None:
        """The HTTP proxy URL of `port`: `https://{pod_id}-{port}.proxy.runpod.net` on
        RunPod. A template may also use `{ip}` and `{public_port}` of the runtime port
        mapping; then it is None until that mapping exists."""
        values: dict[str, Any] = {"pod_id": self.id, "port": port}
        mapping = self.port(port)
        if mapping is not None:
            values.update(ip=mapping.ip, public_port=mapping.public_port)
        try:
            return template.format(**values).rstrip("/")
        except (KeyError, IndexError):
            return None

    def ssh_command(self, local_port: int = 8888, remote_port: int = 8888) -> str | None:
        """`ssh -p <port> root@<ip> -L 8888:localhost:8888` from the public 22/tcp mapping."""
        mapping = self.port(22, "tcp")
        if mapping is None or not mapping.ip or not mapping.public_port:
            return None
        return (
            f"ssh -p {mapping.public_port} root@{mapping.ip} "
            f"-L {local_port}:localhost:{remote_port}"
        )

    def summary(self) -> dict[str, Any]:
        """What is safe to show: no env values but the metadata."""
        return {
            "id": self.id,
            "name": self.name,
            "desired_status": self.desired_status,
            "running": self.is_running,
            "gpu": self.gpu_display_name,
            "gpu_count": self.gpu_count,
            "cost_per_hr": self.cost_per_hr,
            "pod_type": self.pod_type,
            "image_name": self.image_name,
            "uptime_seconds": self.uptime_seconds,
            "meta": self.meta,
        }


__all__ = [
    "CREATED",
    "CREATE_ID_ENV",
    "DEAD",
    "DEFAULT_PROXY_URL_TEMPLATE",
    "ENDED_STATUSES",
    "STATE_POD_ID",
    "EXITED",
    "META_PREFIX",
    "PAUSED",
    "RESTARTING",
    "RUNNING",
    "TERMINATED",
    "GpuUsage",
    "Pod",
    "PodLogEvent",
    "PodRequest",
    "PortMapping",
    "meta_env",
    "meta_env_key",
    "meta_key",
    "parse_meta",
]
