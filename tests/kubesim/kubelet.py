"""kubesim's kubelet: runs the pods the scheduler bound.

By default a pod's containers are pretend: the pod goes Pending -> Running with the
status fields and events a real kubelet writes. With the process runtime (for the whole
emulator, or per pod with the annotation `kubesim.thinkube.dev/runtime: process`) the
first container's command and args run as a real local process with the container's
environment, on a loopback address of the pod's own (its podIP), so a kubespawner-made
`jupyterhub-singleuser` really serves at podIP:port. Deleting the pod stops the process
(SIGTERM, then SIGKILL after the grace period); the process exiting ends the pod.
"""

from __future__ import annotations

import asyncio
import base64
import collections
import copy
import ipaddress
import logging
import os
import random
import shutil
import tempfile
from typing import TYPE_CHECKING, Any

from tests.utils import stop_process_group

from .resources import BY_PATH
from .store import Change, now_rfc3339

if TYPE_CHECKING:
    from .sim import KubeSim

log = logging.getLogger("kubesim.kubelet")

PODS = BY_PATH[("", "v1", "pods")]
SECRETS = BY_PATH[("", "v1", "secrets")]
CONFIGMAPS = BY_PATH[("", "v1", "configmaps")]
RUNTIME_ANNOTATION = "kubesim.thinkube.dev/runtime"
# Variables a process needs from the host to find its interpreter at all.
HOST_ENV = ("PATH", "LANG", "LC_ALL", "VIRTUAL_ENV", "PYTHONPATH", "TMPDIR")


class AddressPool:
    """Loopback addresses for pod IPs: 127.N.x.y, N random per emulator so that two
    emulators on one machine do not hand out the same address."""

    def __init__(self) -> None:
        self._next = int(ipaddress.IPv4Address(f"127.{random.randint(2, 250)}.0.2"))
        self._free: list[str] = []

    def take(self) -> str:
        if self._free:
            return self._free.pop()
        address = str(ipaddress.IPv4Address(self._next))
        self._next += 1
        if address.endswith((".255", ".0")):
            return self.take()
        return address

    def give_back(self, address: str) -> None:
        self._free.append(address)


def field_ref(pod: dict, path: str) -> str:
    meta, spec, status = pod["metadata"], pod.get("spec") or {}, pod.get("status") or {}
    values = {
        "metadata.name": meta.get("name"),
        "metadata.namespace": meta.get("namespace"),
        "metadata.uid": meta.get("uid"),
        "spec.nodeName": spec.get("nodeName"),
        "spec.serviceAccountName": spec.get("serviceAccountName"),
        "status.podIP": status.get("podIP"),
        "status.hostIP": status.get("hostIP"),
    }
    if path.startswith(("metadata.labels['", "metadata.annotations['")):
        where, key = path.split("['", 1)
        return (meta.get(where.split(".")[1]) or {}).get(key.rstrip("']"), "")
    return values.get(path) or ""


def run_as(pod: dict, container: dict) -> tuple[int, int] | None:
    """The uid/gid a container runs as (securityContext runAsUser/runAsGroup, container
    over pod), applied when kubesim itself runs as root, as a container runtime would."""
    if os.geteuid() != 0:
        return None
    merged = {
        **((pod.get("spec") or {}).get("securityContext") or {}),
        **(container.get("securityContext") or {}),
    }
    uid = merged.get("runAsUser")
    if uid is None or uid == 0:
        return None
    return int(uid), int(merged.get("runAsGroup", merged.get("fsGroup", uid)))


class Kubelet:
    def __init__(self, sim: KubeSim, process_runtime: bool = False, start_delay_s: float = 0.02):
        self.sim = sim
        self.store = sim.store
        self.process_runtime = process_runtime
        self.start_delay_s = start_delay_s
        self.addresses = AddressPool()
        self.processes: dict[tuple[str, str], asyncio.subprocess.Process] = {}
        self.workdirs: dict[tuple[str, str], str] = {}
        self.output: dict[tuple[str, str], collections.deque] = {}
        self.all_processes: set[asyncio.subprocess.Process] = set()
        self._starting: set[tuple[str, str]] = set()
        self._stopping: set[tuple[str, str]] = set()
        self._tasks: set[asyncio.Task] = set()
        self.store.subscribe(self.on_change)

    def _spawn(self, coro) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def on_change(self, change: Change) -> None:
        if change.plural != "pods" or change.type == "DELETED":
            return
        pod = change.obj
        key = (pod["metadata"]["namespace"], pod["metadata"]["name"])
        node = (pod.get("spec") or {}).get("nodeName")
        if pod["metadata"].get("deletionTimestamp"):
            if key not in self._stopping:
                self._stopping.add(key)
                self._spawn(self._terminate(key, pod))
            return
        phase = (pod.get("status") or {}).get("phase", "Pending")
        if (
            node
            and phase == "Pending"
            and key not in self._starting
            and not (pod.get("status") or {}).get("podIP")
        ):
            self._starting.add(key)
            self._spawn(self._start(key))

    def uses_process(self, pod: dict) -> bool:
        wanted = (pod["metadata"].get("annotations") or {}).get(RUNTIME_ANNOTATION)
        return wanted == "process" if wanted else self.process_runtime

    # -- start -------------------------------------------------------------------

    async def _start(self, key: tuple[str, str]) -> None:
        try:
            await asyncio.sleep(self.start_delay_s)
            pod = self.store.find(PODS, *key)
            if pod is None or pod["metadata"].get("deletionTimestamp"):
                return
            pod_ip = self.addresses.take()
            containers = pod["spec"]["containers"]
            for container in containers:
                image = container.get("image", "")
                self.sim.record_event(
                    pod,
                    "Normal",
                    "Pulling",
                    f'Pulling image "{image}"',
                    "kubelet",
                    f"spec.containers{{{container['name']}}}",
                )
                self.sim.record_event(
                    pod,
                    "Normal",
                    "Pulled",
                    f'Successfully pulled image "{image}" in 12ms (12ms including waiting). Image size: 104857600 bytes.',
                    "kubelet",
                    f"spec.containers{{{container['name']}}}",
                )
            started_at = now_rfc3339()
            running = self._status(pod, pod_ip, started_at)
            if self.uses_process(pod):
                pod_with_ip = copy.deepcopy(pod)
                pod_with_ip["status"] = running["status"]
                try:
                    await self._run_process(key, pod_with_ip, pod_ip)
                except (OSError, ValueError) as err:
                    self._fail(key, pod, pod_ip, f"failed to start container: {err}")
                    return
            for container in containers:
                self.sim.record_event(
                    pod,
                    "Normal",
                    "Created",
                    f"Created container: {container['name']}",
                    "kubelet",
                    f"spec.containers{{{container['name']}}}",
                )
                self.sim.record_event(
                    pod,
                    "Normal",
                    "Started",
                    f"Started container {container['name']}",
                    "kubelet",
                    f"spec.containers{{{container['name']}}}",
                )
            current = self.store.find(PODS, *key)
            if current is None or current["metadata"].get("deletionTimestamp"):
                return
            new = copy.deepcopy(current)
            new["status"] = running["status"]
            self.store.replace(PODS, key[0], key[1], new, subresource="status", check_version=False)
        finally:
            self._starting.discard(key)

    def _status(self, pod: dict, pod_ip: str, started_at: str) -> dict:
        spec = pod["spec"]
        status = copy.deepcopy(pod.get("status") or {})
        conditions = {c["type"]: c for c in status.get("conditions") or []}
        for kind in (
            "PodReadyToStartContainers",
            "Initialized",
            "Ready",
            "ContainersReady",
            "PodScheduled",
        ):
            conditions[kind] = {
                "type": kind,
                "status": "True",
                "lastProbeTime": None,
                "lastTransitionTime": started_at,
            }
        status.update(
            {
                "phase": "Running",
                "conditions": list(conditions.values()),
                "hostIP": "127.0.0.1",
                "hostIPs": [{"ip": "127.0.0.1"}],
                "podIP": pod_ip,
                "podIPs": [{"ip": pod_ip}],
                "startTime": started_at,
                "containerStatuses": [
                    {
                        "name": c["name"],
                        "state": {"running": {"startedAt": started_at}},
                        "lastState": {},
                        "ready": True,
                        "restartCount": 0,
                        "image": c.get("image", ""),
                        "imageID": f"docker-pullable://{c.get('image', '')}@sha256:{'0' * 64}",
                        "containerID": f"containerd://{os.urandom(32).hex()}",
                        "started": True,
                    }
                    for c in spec.get("containers") or []
                ],
            }
        )
        if spec.get("initContainers"):
            status["initContainerStatuses"] = [
                {
                    "name": c["name"],
                    "state": (
                        {"running": {"startedAt": started_at}}
                        if c.get("restartPolicy") == "Always"
                        else {
                            "terminated": {
                                "exitCode": 0,
                                "reason": "Completed",
                                "startedAt": started_at,
                                "finishedAt": started_at,
                            }
                        }
                    ),
                    "ready": c.get("restartPolicy") == "Always",
                    "restartCount": 0,
                    "image": c.get("image", ""),
                    "imageID": "",
                }
                for c in spec["initContainers"]
            ]
        return {"status": status}

    def _resolve_env(self, pod: dict, container: dict, pod_ip: str) -> dict[str, str]:
        namespace = pod["metadata"]["namespace"]
        env: dict[str, str] = {}
        for source in container.get("envFrom") or []:
            ref = source.get("secretRef") or source.get("configMapRef")
            if ref is None:
                continue
            rt = SECRETS if "secretRef" in source else CONFIGMAPS
            obj = self.store.find(rt, namespace, ref["name"]) or {}
            for name, value in (obj.get("data") or {}).items():
                env[source.get("prefix", "") + name] = (
                    base64.b64decode(value).decode() if rt is SECRETS else value
                )
        for item in container.get("env") or []:
            name = item["name"]
            if "value" in item:
                env[name] = item["value"]
                continue
            value_from = item.get("valueFrom") or {}
            if "fieldRef" in value_from:
                env[name] = field_ref(pod, value_from["fieldRef"]["fieldPath"])
            elif "secretKeyRef" in value_from or "configMapKeyRef" in value_from:
                ref = value_from.get("secretKeyRef") or value_from.get("configMapKeyRef")
                rt = SECRETS if "secretKeyRef" in value_from else CONFIGMAPS
                obj = self.store.find(rt, namespace, ref["name"]) or {}
                raw = (obj.get("data") or {}).get(ref["key"])
                if raw is None:
                    if ref.get("optional"):
                        continue
                    raise ValueError(
                        f"couldn't find key {ref['key']} in {rt.kind} {namespace}/{ref['name']}"
                    )
                env[name] = base64.b64decode(raw).decode() if rt is SECRETS else raw
            elif "resourceFieldRef" in value_from:
                resource = value_from["resourceFieldRef"]["resource"]
                kind, _, res = resource.partition(".")
                env[name] = str(((container.get("resources") or {}).get(kind) or {}).get(res, "0"))
        # Expand $(VAR) references as the kubelet does.
        for name, value in list(env.items()):
            for ref_name, ref_value in env.items():
                value = value.replace(f"$({ref_name})", ref_value)
            env[name] = value.replace("0.0.0.0", pod_ip)
        return env

    async def _run_process(self, key: tuple[str, str], pod: dict, pod_ip: str) -> None:
        container = pod["spec"]["containers"][0]
        argv = [*(container.get("command") or []), *(container.get("args") or [])]
        if not argv:
            raise ValueError(
                "the process runtime needs a command or args (images have no entrypoint here)"
            )
        workdir = tempfile.mkdtemp(prefix=f"kubesim-{key[1]}-")
        env = {name: os.environ[name] for name in HOST_ENV if name in os.environ}
        env["HOME"] = workdir
        env["HOSTNAME"] = key[1]
        env.update(self._resolve_env(pod, container, pod_ip))
        # Containers bind to all interfaces; here each pod has its own loopback address.
        argv = [arg.replace("0.0.0.0", pod_ip) for arg in argv]
        argv[0] = shutil.which(argv[0], path=env.get("PATH")) or argv[0]
        identity = run_as(pod, container)
        if identity:
            os.chown(workdir, *identity)
        process = await asyncio.create_subprocess_exec(
            *argv,
            env=env,
            # The container's workingDir names a path in its image; here it starts in its own.
            cwd=workdir,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            start_new_session=True,
            **({"user": identity[0], "group": identity[1], "extra_groups": []} if identity else {}),
        )
        self.processes[key] = process
        self.all_processes.add(process)
        self.workdirs[key] = workdir
        self.output[key] = collections.deque(maxlen=2000)
        self._spawn(self._follow(key, process, pod_ip))

    async def _follow(
        self, key: tuple[str, str], process: asyncio.subprocess.Process, pod_ip: str
    ) -> None:
        assert process.stdout is not None
        lines = self.output[key]
        async for line in process.stdout:
            lines.append(line.decode(errors="replace"))
            log.debug("%s/%s: %s", key[0], key[1], line.decode(errors="replace").rstrip())
        code = await process.wait()
        if key in self._stopping or self.processes.get(key) is not process:
            return
        self.processes.pop(key, None)
        pod = self.store.find(PODS, *key)
        if pod is None:
            return
        self._finish(key, pod, code)
        self.addresses.give_back(pod_ip)

    def _finish(
        self, key: tuple[str, str], pod: dict, code: int, message: str | None = None
    ) -> None:
        now = now_rfc3339()
        new = copy.deepcopy(pod)
        status = new.setdefault("status", {})
        status["phase"] = "Succeeded" if code == 0 else "Failed"
        for condition in status.get("conditions") or []:
            if condition["type"] in ("Ready", "ContainersReady"):
                condition.update(
                    status="False",
                    reason="PodCompleted" if code == 0 else "PodFailed",
                    lastTransitionTime=now,
                )
        for container_status in status.get("containerStatuses") or []:
            started = (container_status.get("state", {}).get("running") or {}).get("startedAt", now)
            terminated = {
                "exitCode": code,
                "reason": "Completed" if code == 0 else "Error",
                "startedAt": started,
                "finishedAt": now,
            }
            if message:
                terminated["message"] = message
            container_status.update(state={"terminated": terminated}, ready=False, started=False)
        self.store.replace(PODS, key[0], key[1], new, subresource="status", check_version=False)

    def _fail(self, key: tuple[str, str], pod: dict, pod_ip: str, message: str) -> None:
        self.sim.record_event(pod, "Warning", "Failed", f"Error: {message}", "kubelet")
        current = self.store.find(PODS, *key)
        if current is not None:
            with_status = copy.deepcopy(current)
            with_status["status"] = self._status(current, pod_ip, now_rfc3339())["status"]
            self._finish(key, with_status, 128, message)
        self.addresses.give_back(pod_ip)

    # -- stop --------------------------------------------------------------------

    async def _terminate(self, key: tuple[str, str], pod: dict) -> None:
        try:
            grace = pod["metadata"].get("deletionGracePeriodSeconds", 30)
            for container in pod["spec"].get("containers") or []:
                if (pod.get("status") or {}).get("phase") == "Running":
                    self.sim.record_event(
                        pod,
                        "Normal",
                        "Killing",
                        f"Stopping container {container['name']}",
                        "kubelet",
                        f"spec.containers{{{container['name']}}}",
                    )
            await self.stop_process(key, grace)
            current = self.store.find(PODS, *key)
            if current is not None:
                self.sim.pod_terminated(key, self._terminal_status(current))
            pod_ip = (pod.get("status") or {}).get("podIP")
            if pod_ip:
                self.addresses.give_back(pod_ip)
        finally:
            self._stopping.discard(key)

    def _terminal_status(self, pod: dict) -> dict:
        """The status a deleted pod ends with: containers that were running were killed."""
        status = copy.deepcopy(pod.get("status") or {})
        if status.get("phase") in ("Succeeded", "Failed"):
            return status
        now = now_rfc3339()
        status["phase"] = "Failed"
        for container_status in status.get("containerStatuses") or []:
            running = (container_status.get("state") or {}).get("running")
            if running is None and "terminated" in (container_status.get("state") or {}):
                continue
            container_status.update(
                state={
                    "terminated": {
                        "exitCode": 137,
                        "reason": "Error",
                        "startedAt": (running or {}).get("startedAt", now),
                        "finishedAt": now,
                    }
                },
                ready=False,
                started=False,
            )
        for condition in status.get("conditions") or []:
            if condition["type"] in ("Ready", "ContainersReady") and condition["status"] != "False":
                condition.update(status="False", reason="PodFailed", lastTransitionTime=now)
        return status

    def kill_now(self, key: tuple[str, str]) -> None:
        """A deletion with no grace period: the process goes at once."""
        if key in self.processes:
            self._spawn(self.stop_process(key, 0))

    async def stop_process(self, key: tuple[str, str], grace_s: float) -> None:
        await stop_process_group(self.processes.pop(key, None), grace_s)
        workdir = self.workdirs.pop(key, None)
        if workdir:
            shutil.rmtree(workdir, ignore_errors=True)

    def logs(self, namespace: str | None, name: str) -> str:
        return "".join(self.output.get((namespace or "", name), ()))

    async def shutdown(self) -> None:
        for key in list(self.processes):
            await self.stop_process(key, 5)
        # Pods still in their grace period when the emulator stops: their processes too.
        for process in list(self.all_processes):
            await stop_process_group(process, 0)
        for task in list(self._tasks):
            task.cancel()


__all__: list[Any] = ["Kubelet", "AddressPool"]
