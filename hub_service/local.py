"""The single-machine inventory: this machine as the one node, without Kubernetes.

It publishes the same node and summary documents as the Kubernetes inventory (so the spawn
form is built by the same code), from:

- psutil: the CPUs this process may run on, load, memory total and available;
- NVML (:mod:`hub_service.nvml`): the GPUs, with UUID, memory, utilisation, processes;
- the hub's REST API: the active servers. What those servers were given is *allocated*,
  exactly as requests are on a Kubernetes node: pinned CPU cores, GPUs by UUID and chosen
  memory. ``ThinkubeLocalSpawner`` records its pick in the server's state
  (:mod:`thinkube_core.allocation`), which only the hub writes; a server still starting,
  without a pick yet, counts the CPUs and GPUs it asked for;
- the claims folder the hub and this service share (:mod:`thinkube_core.device_claims`):
  the cores and GPUs the GPU queue's jobs hold (so the spawn form shows a job's GPU as
  taken), and those of servers the hub's API does not show with a pick yet.

Reading the servers needs a token with the scopes ``list:users``, ``read:servers`` and
``admin:server_state`` (the same on JupyterHub 5.5 and 6.x; see docs/local.md). Without
them, or with the hub unreachable, the data is served marked stale.

Pure functions build the documents; :class:`LocalInventory` is the thin I/O around them.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import os
import socket
import time
from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any

import httpx

from thinkube_core.allocation import allocation_in
from thinkube_core.device_claims import Claim, DeviceClaims

from .background import cancel_and_wait
from .gpu_idle import GpuReading, gpu_label
from .inventory import Inventory, Published, dumps, iso_now
from .nodes import GPU_RESOURCE, summary_document
from .nvml import gpus_from_records, read_nvml

log = logging.getLogger("thinkube.inventory")

__all__ = [
    "LocalInventory",
    "allocations_from_users",
    "allocations_with_claims",
    "host_snapshot",
    "machine_document",
    "server_gpus_from",
]

GIB = 1024**3
# Nothing like a pod limit applies; a number the menu never reaches.
_SERVERS_ALLOWED = 10_000


# --- reading the machine -------------------------------------------------------------------


def host_snapshot() -> dict:
    """CPUs (those this process may run on), load and memory, from psutil."""
    import psutil

    try:
        cores = sorted(os.sched_getaffinity(0))
    except AttributeError:  # not Linux: every logical CPU
        cores = list(range(psutil.cpu_count() or 1))
    memory = psutil.virtual_memory()
    try:
        load = [round(x, 2) for x in os.getloadavg()]
    except OSError:
        load = None
    return {
        "hostname": socket.gethostname(),
        "cores": cores,
        "load_average": load,
        "cpu_percent": psutil.cpu_percent(interval=None),
        "memory_total": int(memory.total),
        "memory_available": int(memory.available),
    }


# --- what running servers were given --------------------------------------------------------


def _number(value: Any) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return 0.0
    return number if math.isfinite(number) and number > 0 else 0.0


def allocations_from_users(users: Iterable[Mapping[str, Any]]) -> list[dict]:
    """One entry per active server in hub API user models: ``user``, ``server``, pinned
    ``cores``, ``gpus`` (UUIDs), ``memory`` (bytes), and, for a server still starting that
    has no pick yet, the counts it asked for (``cpu_unpinned``, ``gpus_unpinned``)."""
    found = []
    for user in users:
        if not isinstance(user, Mapping):
            continue
        servers = user.get("servers")
        for name, server in (servers if isinstance(servers, Mapping) else {}).items():
            if not isinstance(server, Mapping) or server.get("stopped"):
                continue
            picked = allocation_in(server.get("state"))
            # A server still starting has no pick yet: what it asked for counts meanwhile.
            options = server.get("user_options")
            options = options if isinstance(options, Mapping) else {}
            found.append(
                {
                    "user": str(user.get("name", "")),
                    "server": str(name),
                    "cores": picked["cores"] if picked else [],
                    "gpus": picked["gpus"] if picked else [],
                    "memory": int(
                        (picked["memory_gib"] if picked else _number(options.get("memory"))) * GIB
                    ),
                    "cpu_unpinned": 0 if picked else math.ceil(_number(options.get("cpu"))),
                    "gpus_unpinned": 0 if picked else int(_number(options.get("gpus"))),
                    # since when (the GPU queue's estimates count a server's longest run)
                    **({"started": server["started"]} if server.get("started") else {}),
                }
            )
    return found


def _epoch(text: Any) -> float | None:
    try:
        return datetime.fromisoformat(str(text).replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def held_servers(allocations: Iterable[Mapping[str, Any]], node: str) -> list[dict]:
    """The hub's servers that hold GPUs on this machine, as the GPU queue reads them
    (`Published.held_servers`): whose, since when (the hub's `started`), how many."""
    held = []
    for allocation in allocations:
        if "job" in allocation or "server" not in allocation:
            continue
        gpus = len(allocation.get("gpus") or ()) + int(allocation.get("gpus_unpinned") or 0)
        if gpus:
            held.append(
                {
                    "id": f"{allocation.get('user')}/{allocation['server']}",
                    "user": allocation.get("user"),
                    "node": node,
                    "started_at": _epoch(allocation.get("started")),
                    "gpus": gpus,
                    "entry": None,
                }
            )
    return held


def allocations_with_claims(allocations: list[dict], claims: Iterable[Claim]) -> list[dict]:
    """The servers' allocations with what the live claims hold: a job's claim is an entry
    of its own (``job``: its id); a server's claim gives its pick to a server the hub's API
    shows without one yet (still starting), or is an entry of its own for a server the API
    does not show yet. A server the API shows with a pick keeps it (the two are the same)."""
    merged = [dict(a) for a in allocations]
    by_server = {f"{a['user']}/{a['server']}": a for a in merged}
    for claim in claims:
        if claim.kind == "server":
            known = by_server.get(claim.id)
            if known is not None:
                if not known["cores"] and not known["gpus"]:
                    known.update(
                        cores=list(claim.cores),
                        gpus=list(claim.gpus),
                        cpu_unpinned=0,
                        gpus_unpinned=0,
                    )
                    known["memory"] = known["memory"] or claim.memory
                continue
        _, _, server = claim.id.partition("/")
        merged.append(
            {
                "user": claim.user,
                "server": server if claim.kind == "server" else "",
                **({"job": claim.id} if claim.kind == "job" else {}),
                "cores": list(claim.cores),
                "gpus": list(claim.gpus),
                "memory": claim.memory,
                "cpu_unpinned": 0,
                "gpus_unpinned": 0,
            }
        )
    return merged


def server_gpus_from(
    allocations: list[dict], claims: Iterable[Claim], nvml: Mapping[str, Any], hostname: str
) -> list[dict]:
    """The hub's servers that hold GPUs by UUID (as the inventory's allocations and the
    claims say), with NVML's utilisation of each, as `Inventory.server_gpus` answers. A GPU
    NVML does not show now (no driver, gone, no reading) has utilisation None. Jobs are left
    out: they have their deadline."""
    by_uuid = {gpu["uuid"]: gpu for gpu in gpus_from_records(dict(nvml))}
    found = []
    for allocation in allocations_with_claims(allocations, claims):
        if "job" in allocation or not allocation.get("gpus"):
            continue
        readings = []
        for uuid in allocation["gpus"]:
            gpu = by_uuid.get(uuid)
            readings.append(
                GpuReading(
                    key=uuid,
                    label=gpu_label(gpu["index"], gpu["name"]) if gpu else uuid,
                    utilization=None if gpu is None else gpu["utilization"],
                )
            )
        found.append(
            {
                "user": allocation["user"],
                "server": allocation["server"],
                "node": hostname,
                "gpus": len(readings),
                "readings": readings,
            }
        )
    return found


# --- the node document ----------------------------------------------------------------------


def _slug_model(name: str) -> str:
    return "-".join("".join(c if c.isalnum() else " " for c in name.lower()).split())


def _gpu_section(gpus: list[dict], taken: set[str], unpinned: int) -> tuple[dict | None, list]:
    """The node's ``gpu`` (as :func:`hub_service.nodes.gpu_inventory` shapes it) and
    ``gpu_details``. One resource per model: ``nvidia.com/gpu`` when the machine has one
    model, ``nvidia.com/gpu.<model>`` each when it mixes models (so each can be asked for)."""
    if not gpus:
        return None, []
    models: dict[tuple[str, int | None], list[dict]] = {}
    for gpu in gpus:
        models.setdefault((gpu["name"], gpu["memory_total"]), []).append(gpu)
    resources = []
    left_unpinned = unpinned
    for (name, memory), members in models.items():
        resource_name = GPU_RESOURCE if len(models) == 1 else f"{GPU_RESOURCE}.{_slug_model(name)}"
        used = sum(1 for g in members if g["uuid"] in taken)
        # A server still starting has no GPU picked yet: count it against the first model.
        extra = min(left_unpinned, len(members) - used)
        left_unpinned -= extra
        used += extra
        resources.append(
            {
                "name": resource_name,
                "kind": "gpu",
                "product": name.replace(" ", "-"),
                "model": name,
                "memory_mib": memory,
                "replicas": 1,
                "shared": False,
                "allocatable": len(members),
                "allocated": used,
                "free": len(members) - used,
            }
        )
    first = gpus[0]
    gpu = {
        "model": first["name"],
        "product": first["name"].replace(" ", "-"),
        "family": None,
        "memory_mib": first["memory_total"],
        "physical_count": len(gpus),
        "replicas": 1,
        "shared": False,
        "sharing_strategy": "none",
        "mig_strategy": "none",
        "resources": resources,
        "schedulable_count": len(gpus),
        "allocated_count": sum(r["allocated"] for r in resources),
        "free_count": sum(r["free"] for r in resources),
    }
    details = [
        {
            "index": g["index"],
            "model": g["name"],
            "memory_total": g["memory_total"],
            "memory_used": g["memory_used"],
            "memory_free": g["memory_free"],
            "utilization": g["utilization"],
            "available": g["uuid"] not in taken,
            "slots": 1,
            "slots_used": 1 if g["uuid"] in taken else 0,
        }
        for g in gpus
    ]
    return gpu, details


def _percent(used: float, total: float) -> int:
    return int(100 * used / total) if total > 0 else 0


def machine_document(
    host: Mapping[str, Any], nvml: Mapping[str, Any], allocations: list[dict]
) -> dict:
    """This machine as one node document (the shape of :func:`hub_service.nodes.node_document`),
    plus a ``local`` section: which cores and GPUs are taken, NVML's status, load and memory.

    Allocated CPUs are the distinct pinned cores plus what starting servers asked for;
    allocated memory is the sum of the chosen memory. ``available`` never goes below zero.
    """
    cores = list(host["cores"])
    core_set = set(cores)
    pinned = sorted({c for a in allocations for c in a["cores"]} & core_set)
    unpinned_cpu = sum(a["cpu_unpinned"] for a in allocations)
    cpu_total = len(cores)
    cpu_used = min(cpu_total, len(pinned) + unpinned_cpu)
    memory_total = int(host["memory_total"])
    memory_used = sum(a["memory"] for a in allocations)

    gpus = gpus_from_records(nvml)
    uuids = {g["uuid"] for g in gpus}
    taken_gpus = {u for a in allocations for u in a["gpus"]} & uuids
    unpinned_gpus = sum(a["gpus_unpinned"] for a in allocations)
    gpu, details = _gpu_section(gpus, taken_gpus, unpinned_gpus)
    gpu_total = len(gpus)
    gpu_used = gpu["allocated_count"] if gpu else 0

    capacity = {"cpu": float(cpu_total), "memory": memory_total, "gpu": gpu_total}
    allocated = {"cpu": float(cpu_used), "memory": memory_used, "gpu": gpu_used}
    available = {
        "cpu": float(cpu_total - cpu_used),
        "memory": max(0, memory_total - memory_used),
        "gpu": gpu_total - gpu_used,
    }
    allocatable = {"cpu": float(cpu_total), "memory": memory_total}
    requests = {"cpu": float(cpu_used), "memory": memory_used}
    for resource in (gpu or {}).get("resources", []):
        allocatable[resource["name"]] = resource["allocatable"]
        requests[resource["name"]] = resource["allocated"]
    return {
        "name": host["hostname"],
        "instance_type": None,
        "ready": True,
        "unschedulable": False,
        "schedulable": True,
        "reason": None,
        "taints": [],
        "capacity": capacity,
        "allocated": allocated,
        "available": available,
        "allocatable": allocatable,
        "requests": requests,
        "limits": dict(requests),
        "percent": {
            "cpu_requests": _percent(cpu_used, cpu_total),
            "cpu_limits": _percent(cpu_used, cpu_total),
            "memory_requests": _percent(memory_used, memory_total),
            "memory_limits": _percent(memory_used, memory_total),
        },
        "pod_count": len(allocations),  # servers and jobs
        "pods_allocatable": _SERVERS_ALLOWED,
        "labels": {},
        "scheduling_key": "this-machine",  # no labels or taints that could change
        "free": {
            "cpu": round((cpu_total - cpu_used) * 1000),
            "memory": memory_total - memory_used,
            **{r["name"]: r["free"] for r in (gpu or {}).get("resources", [])},
            "pods": _SERVERS_ALLOWED - len(allocations),
        },
        "gpu": gpu,
        "gpu_details": details,
        "local": {
            "cores": cores,
            "cores_taken": pinned,
            "gpus": [{**g, "taken": g["uuid"] in taken_gpus} for g in gpus],
            "gpu_status": nvml.get("status") or "",
            "driver_version": nvml.get("driver_version"),
            "load_average": host.get("load_average"),
            "cpu_percent": host.get("cpu_percent"),
            "memory_available": host.get("memory_available"),
            "servers": sum(1 for a in allocations if "job" not in a),
            "jobs": sum(1 for a in allocations if "job" in a),
        },
    }


# --- the inventory --------------------------------------------------------------------------


class HubServersError(Exception):
    """The hub's server list could not be read; the message says why in a few words."""


class LocalInventory(Inventory):
    """Re-reads the machine and the hub's active servers every ``refresh_s`` seconds and
    publishes the documents when they changed. The data is stale (and `ready` false) while
    the hub's server list cannot be read, since allocation is then unknown."""

    def __init__(
        self,
        hub_api_url: str = "",
        api_token: str = "",
        refresh_s: float = 2.0,
        timeout_s: float = 5.0,
        claims: DeviceClaims | None = None,
    ):
        self.hub_api_url = hub_api_url.rstrip("/")
        # Default: $THINKUBE_CLAIMS_DIR, which the hub sets in this service's environment.
        self.claims = claims if claims is not None else DeviceClaims()
        self._token = api_token
        self.refresh_s = refresh_s
        self.timeout_s = timeout_s
        self.metrics_status = {"status": "off"}
        self._task: asyncio.Task | None = None
        self._started_at = time.time()
        self._failing_since: float | None = None
        self._error: str | None = None
        self._synced = False
        self._host: dict | None = None  # the last reading of this machine
        self._nvml: dict = {}
        self._allocations: list[dict] = []  # the last allocation read from the hub
        self._claims: list[Claim] = []  # the live claims at the last reading
        # One client for the inventory's life: the hub is asked every refresh_s.
        self._http: httpx.AsyncClient | None = None
        self.refreshes = 0
        self.listeners: list = []
        self.published = Published()
        self._publish([])

    # -- I/O ---------------------------------------------------------------------------

    def gpus_held(self) -> set[str]:
        """UUIDs of the GPUs the hub's servers hold (as last read)."""
        return {uuid for allocation in self._allocations for uuid in allocation["gpus"]}

    async def active_servers(self) -> list[dict]:
        """Users with active servers, every page, from the hub's REST API."""
        if not self.hub_api_url:
            raise HubServersError("no hub API URL (JUPYTERHUB_API_URL is not set)")
        users: list[dict] = []
        offset = 0
        headers = {
            "Authorization": f"token {self._token}",
            "Accept": "application/jupyterhub-pagination+json",
        }
        if self._http is None:
            self._http = httpx.AsyncClient(timeout=self.timeout_s)
        http = self._http
        while True:
            try:
                response = await http.get(
                    f"{self.hub_api_url}/users",
                    params={"state": "active", "offset": offset, "limit": 200},
                    headers=headers,
                )
            except httpx.HTTPError as err:
                raise HubServersError(f"hub API unreachable ({type(err).__name__})") from None
            if response.status_code == 403:
                raise HubServersError(
                    "the service's token may not list servers: give its role the scopes "
                    "list:users, read:servers and admin:server_state"
                )
            if response.status_code != 200:
                raise HubServersError(f"hub API answered HTTP {response.status_code}")
            try:
                body = response.json()
            except json.JSONDecodeError:
                raise HubServersError("hub API sent something that is not JSON") from None
            items = body.get("items", []) if isinstance(body, dict) else body
            users.extend(u for u in items if isinstance(u, dict))
            pagination = body.get("_pagination") if isinstance(body, dict) else None
            if not pagination or not pagination.get("next"):
                return users
            offset = int(pagination["next"].get("offset") or (offset + len(items)))

    async def refresh(self) -> None:
        """One pass: machine, GPUs, servers; publish."""
        loop = asyncio.get_running_loop()
        # psutil and NVML are blocking calls (NVML can take a while per GPU).
        host, nvml, claims = await asyncio.gather(
            loop.run_in_executor(None, host_snapshot),
            loop.run_in_executor(None, read_nvml),
            loop.run_in_executor(None, self.claims.current),
        )
        try:
            users = await self.active_servers()
        except HubServersError as err:
            self._set_error(str(err))  # keep the last allocation known, marked stale
        else:
            self._set_error(None)
            self._allocations = allocations_from_users(users)
            self._synced = True
        self._host, self._nvml, self._claims = host, nvml, claims
        self.refreshes += 1
        self._publish(self._allocations)

    def _set_error(self, error: str | None) -> None:
        if error and self._error is None:
            self._failing_since = time.time()
            log.warning(
                "Local inventory: %s; serving the last known allocation marked stale", error
            )
        elif error is None and self._error is not None:
            log.info("Local inventory: the hub's server list is readable again; data is current")
            self._failing_since = None
        self._error = error

    def _publish(self, allocations: list[dict]) -> None:
        if self._host is None:
            return  # nothing read yet: the empty documents stand
        allocations = allocations_with_claims(allocations, self._claims)
        document = machine_document(self._host, self._nvml, allocations)
        summary = summary_document([document])
        summary["metrics"] = self.metrics_status
        summary["skipped_objects"] = {}
        summary["local"] = {
            "gpu_status": document["local"]["gpu_status"],
            "hostname": document["name"],
        }
        raw = dumps(document)
        self.published = Published(
            generated_at=iso_now(),
            resource_version=str(self.refreshes),
            resources=b"[" + raw + b"]",
            nodes={document["name"]: raw},
            summary=dumps(summary),
            node_count=1,
            pod_count=len(allocations),
            built_at=time.monotonic(),
            documents=[document],
            # Every live job claim is counted in the document (the GPU queue stops assuming it).
            counted_jobs={a["job"]: document["name"] for a in allocations if "job" in a},
            held_servers=held_servers(allocations, document["name"]),
        )
        self.notify()

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.refresh_s)
            try:
                await self.refresh()
            except asyncio.CancelledError:
                raise
            except Exception as err:  # psutil or NVML broke in a new way: keep serving
                self._set_error(f"refresh failed ({type(err).__name__}: {err})")

    def server_gpus(self) -> list[dict] | None:
        if not self._synced or self._error:
            return None  # who holds what is not known now: nothing is decided meanwhile
        hostname = self._host["hostname"] if self._host else ""
        return server_gpus_from(self._allocations, self._claims, self._nvml, hostname)

    # -- Inventory -----------------------------------------------------------------------

    async def start(self) -> None:
        self._started_at = time.time()
        await self.refresh()  # the first documents before the first request
        self._task = asyncio.ensure_future(self._run())

    async def stop(self) -> None:
        task, self._task = self._task, None
        await cancel_and_wait(task)
        if self._http is not None:
            await self._http.aclose()
            self._http = None

    @property
    def ready(self) -> bool:
        return self._synced and self._error is None

    def stale_since(self) -> float | None:
        if not self._synced:
            return self._started_at
        return self._failing_since

    @property
    def not_ready_reason(self) -> str | None:
        if self._error:
            return self._error
        return None if self._synced else "reading this machine and the hub's servers"

    def stats(self) -> dict:
        return {"watch_errors": 1 if self._error else 0}
