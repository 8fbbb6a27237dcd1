"""kubesim's kubelet: runs the pods the scheduler bound.

By default a pod's containers are pretend: the pod goes Pending (containers waiting,
ContainerCreating) -> Running with the status fields and events a real kubelet writes. With
the process runtime (for the whole emulator, or per pod with the annotation
`kubesim.thinkube.dev/runtime: process`) each container with a command (the first one must
have one) runs as a real local process with the container's environment (env, envFrom and
valueFrom of ConfigMaps, Secrets, fields and resources) and volumes (see sandbox.py), on a
loopback address of the pod's own (its podIP), so a kubespawner-made
`jupyterhub-singleuser` really serves at podIP:port. Its stdout and stderr, interleaved,
are the container's log (logs.py).

A container that exits ends terminated with its exit code (reason Completed or Error); the
pod's restartPolicy decides what follows: Always restarts it, OnFailure restarts it after a
failure, Never leaves it. A restart comes at once the first time, then after a back-off
(`restart_backoff_s`, doubled each time, at most five minutes) while the container waits in
CrashLoopBackOff; the previous instance's log stays readable (`previous=true`). When every
container has ended for good the pod is Succeeded (all exited 0) or Failed.

Deleting the pod stops its processes (SIGTERM, then SIGKILL after the grace period); a pod
a finalizer holds keeps its final status until the finalizer goes.
"""

from __future__ import annotations

import asyncio
import base64
import copy
import ipaddress
import logging
import os
import random
import shutil
import signal
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tests.utils import stop_process_group

from . import sandbox
from .logs import LogBuffer
from .resources import BY_PATH
from .store import Change, now_rfc3339

if TYPE_CHECKING:
    from .sim import KubeSim

log = logging.getLogger("kubesim.kubelet")

PODS = BY_PATH[("", "v1", "pods")]
SECRETS = BY_PATH[("", "v1", "secrets")]
CONFIGMAPS = BY_PATH[("", "v1", "configmaps")]
CLAIMS = BY_PATH[("", "v1", "persistentvolumeclaims")]
RUNTIME_ANNOTATION = "kubesim.thinkube.dev/runtime"
# Variables a process needs from the host to find its interpreter at all.
HOST_ENV = ("PATH", "LANG", "LC_ALL", "VIRTUAL_ENV", "PYTHONPATH", "TMPDIR")
MAX_RESTART_BACKOFF_S = 300.0
MOUNT_RETRY_S = 2.0
# A line longer than this is split, as the container runtime splits long lines.
MAX_LINE_BYTES = 16 * 1024

PodKey = tuple[str, str]


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


def exit_code(returncode: int) -> int:
    """A process killed by signal N exits 128+N, as a container's main process does."""
    return 128 - returncode if returncode < 0 else returncode


def should_restart(restart_policy: str, code: int) -> bool:
    return restart_policy == "Always" or (restart_policy == "OnFailure" and code != 0)


def restart_delay(restarts: int, base_s: float) -> float:
    """The kubelet's crash back-off: the first restart at once, then base, 2x base, ..."""
    if restarts == 0:
        return 0.0
    return min(base_s * 2 ** (restarts - 1), MAX_RESTART_BACKOFF_S)


def pod_phase(containers: list[ContainerRun]) -> str:
    """Running while any container runs or will run again; then Succeeded or Failed."""
    if any(not c.ended for c in containers):
        return "Running"
    return "Succeeded" if all(c.last_exit == 0 for c in containers) else "Failed"


@dataclass(eq=False)
class ContainerRun:
    """One container of a started pod: its process (when it runs one), log and restarts."""

    spec: dict
    image_id: str
    process: asyncio.subprocess.Process | None = None
    log: LogBuffer = field(default_factory=LogBuffer)
    previous_log: LogBuffer | None = None
    container_id: str = field(default_factory=lambda: f"containerd://{os.urandom(32).hex()}")
    state: dict = field(default_factory=dict)
    last_state: dict = field(default_factory=dict)
    restarts: int = 0
    ended: bool = False  # terminated and not coming back
    last_exit: int | None = None
    restart_timer: asyncio.TimerHandle | None = None

    @property
    def name(self) -> str:
        return self.spec["name"]

    def status(self) -> dict:
        running = "running" in self.state
        return {
            "name": self.name,
            "state": copy.deepcopy(self.state),
            "lastState": copy.deepcopy(self.last_state),
            "ready": running,
            "restartCount": self.restarts,
            "image": self.spec.get("image", ""),
            "imageID": self.image_id,
            "containerID": self.container_id,
            "started": running,
        }


@dataclass(eq=False)
class PodRun:
    key: PodKey
    uid: str
    pod_ip: str
    workdir: str
    started_at: str
    containers: list[ContainerRun]
    process_runtime: bool
    mounts: dict[str, list[sandbox.Mount]] = field(default_factory=dict)
    stopping: bool = False


class Kubelet:
    def __init__(
        self,
        sim: KubeSim,
        process_runtime: bool = False,
        start_delay_s: float = 0.02,
        restart_backoff_s: float = 10.0,
        volume_mounts: str = sandbox.AUTO,
    ):
        if volume_mounts not in sandbox.MOUNT_MODES:
            raise ValueError(f"volume_mounts must be one of {', '.join(sandbox.MOUNT_MODES)}")
        self.sim = sim
        self.store = sim.store
        self.process_runtime = process_runtime
        self.start_delay_s = start_delay_s
        self.restart_backoff_s = restart_backoff_s
        self.volume_mounts = volume_mounts
        self.addresses = AddressPool()
        self.pods: dict[PodKey, PodRun] = {}
        self.all_processes: set[asyncio.subprocess.Process] = set()
        self._volume_root: Path | None = None
        self._starting: set[PodKey] = set()
        self._stopping: set[PodKey] = set()
        self._terminated: set[PodKey] = set()
        self._silent: dict[tuple[PodKey, str], LogBuffer] = {}
        self._tasks: set[asyncio.Task] = set()
        self.store.subscribe(self.on_change)

    def _spawn(self, coro) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    @property
    def processes(self) -> dict[PodKey, list[asyncio.subprocess.Process]]:
        """The running processes of each pod."""
        running = {}
        for key, run in self.pods.items():
            alive = [
                c.process
                for c in run.containers
                if c.process is not None and c.process.returncode is None
            ]
            if alive:
                running[key] = alive
        return running

    @property
    def volume_root(self) -> Path:
        """Where PersistentVolumes keep their files, one folder per volume."""
        if self._volume_root is None:
            self._volume_root = Path(tempfile.mkdtemp(prefix="kubesim-volumes-"))
            self._volume_root.chmod(0o755)
        return self._volume_root

    def mount_mode(self) -> str:
        if self.volume_mounts == sandbox.AUTO:
            self.volume_mounts = sandbox.NAMESPACE if sandbox.namespaces_work() else sandbox.REWRITE
            if self.volume_mounts == sandbox.REWRITE:
                log.info("no private mount namespaces here: mountPaths are rewritten")
        return self.volume_mounts

    def on_change(self, change: Change) -> None:
        if change.plural != "pods":
            return
        pod = change.obj
        key = (pod["metadata"]["namespace"], pod["metadata"]["name"])
        if change.type == "DELETED" or pod["metadata"].get("deletionTimestamp"):
            self._end_silent_logs(key)
        if change.type == "DELETED":
            self._terminated.discard(key)
            if key in self.pods:
                self._spawn(self._forget(key))
            return
        node = (pod.get("spec") or {}).get("nodeName")
        if pod["metadata"].get("deletionTimestamp"):
            if node and key not in self._stopping and key not in self._terminated:
                self._stopping.add(key)
                self._spawn(self._terminate(key, pod))
            return
        phase = (pod.get("status") or {}).get("phase", "Pending")
        if (
            node
            and phase == "Pending"
            and key not in self._starting
            and key not in self.pods
            and not (pod.get("status") or {}).get("podIP")
        ):
            self._starting.add(key)
            self._spawn(self._start(key))

    def _end_silent_logs(self, key: PodKey) -> None:
        if self._silent:
            for silent_key in [k for k in self._silent if k[0] == key]:
                self._silent.pop(silent_key).close()

    def uses_process(self, pod: dict) -> bool:
        wanted = (pod["metadata"].get("annotations") or {}).get(RUNTIME_ANNOTATION)
        return wanted == "process" if wanted else self.process_runtime

    def log_buffer(self, key: PodKey, container: str, previous: bool = False) -> LogBuffer:
        """The log of a container's current (or previous) instance. While a container waits
        to restart, its current log is the instance that ended, which is also the previous
        one. A container kubesim does not run (pretend, or loaded as running) has a silent
        log that ends with the pod."""
        run = self.pods.get(key)
        for c in run.containers if run else ():
            if c.name == container:
                if not previous:
                    return c.log
                if "waiting" in c.state:
                    return c.log
                if c.previous_log is not None:
                    return c.previous_log
        return self._silent.setdefault((key, container), LogBuffer())

    # -- start -------------------------------------------------------------------------

    async def _start(self, key: PodKey) -> None:
        try:
            await asyncio.sleep(self.start_delay_s)
            pod = self.store.find(PODS, *key)
            if pod is None or pod["metadata"].get("deletionTimestamp") or key in self.pods:
                return
            self._write_status(key, self._waiting_status(pod, now_rfc3339()))
            pod = self.store.find(PODS, *key)
            if pod is None:
                return
            pod_ip = self.addresses.take()
            for container in pod["spec"]["containers"]:
                image = container.get("image", "")
                self._container_event(
                    pod, container, "Pulling", f'Pulling image "{image}"', "Normal"
                )
                self._container_event(
                    pod,
                    container,
                    "Pulled",
                    f'Successfully pulled image "{image}" in 12ms (12ms including waiting). '
                    "Image size: 104857600 bytes.",
                    "Normal",
                )
            started_at = now_rfc3339()
            containers = [
                ContainerRun(c, f"docker-pullable://{c.get('image', '')}@sha256:{'0' * 64}")
                for c in pod["spec"]["containers"]
            ]
            workdir = tempfile.mkdtemp(prefix=f"kubesim-{key[1]}-")
            run = PodRun(
                key,
                pod["metadata"].get("uid", ""),
                pod_ip,
                workdir,
                started_at,
                containers,
                self.uses_process(pod),
            )
            pod_with_ip = copy.deepcopy(pod)
            pod_with_ip["status"].update(podIP=pod_ip, podIPs=[{"ip": pod_ip}])
            if run.process_runtime:
                try:
                    self._prepare_volumes(run, pod_with_ip)
                except sandbox.MountError as err:
                    self._mount_failed(key, pod, run, pod_ip, str(err))
                    return
                try:
                    self._check_commands(pod)
                    for container in containers:
                        if self._command(container.spec):
                            await self._run(run, container, pod_with_ip)
                        else:
                            container.state = {"running": {"startedAt": started_at}}
                except (OSError, ValueError) as err:
                    self.pods[key] = run
                    self._fail(key, pod, run, f"failed to start container: {err}")
                    return
            else:
                for container in containers:
                    container.state = {"running": {"startedAt": started_at}}
            self.pods[key] = run
            for container in containers:
                self._container_event(
                    pod, container.spec, "Created", f"Created container: {container.name}", "Normal"
                )
                self._container_event(
                    pod, container.spec, "Started", f"Started container {container.name}", "Normal"
                )
            current = self.store.find(PODS, *key)
            if current is None or current["metadata"].get("deletionTimestamp"):
                return
            self._write_status(key, self._status(current, run))
        finally:
            self._starting.discard(key)

    def _mount_failed(self, key: PodKey, pod: dict, run: PodRun, pod_ip: str, message: str) -> None:
        """FailedMount: the pod waits in ContainerCreating and the kubelet tries again."""
        self.sim.record_event(pod, "Warning", "FailedMount", message, "kubelet")
        self.addresses.give_back(pod_ip)
        shutil.rmtree(run.workdir, ignore_errors=True)

        def retry() -> None:
            current = self.store.find(PODS, *key)
            if current is not None and key not in self._starting and key not in self.pods:
                if not current["metadata"].get("deletionTimestamp"):
                    self._starting.add(key)
                    self._spawn(self._start(key))

        asyncio.get_running_loop().call_later(MOUNT_RETRY_S, retry)

    @staticmethod
    def _command(container: dict) -> list[str]:
        return [*(container.get("command") or []), *(container.get("args") or [])]

    def _check_commands(self, pod: dict) -> None:
        if not self._command(pod["spec"]["containers"][0]):
            raise ValueError(
                "the process runtime needs a command or args (images have no entrypoint here)"
            )

    def _prepare_volumes(self, run: PodRun, pod: dict) -> None:
        namespace = pod["metadata"]["namespace"]
        kinds = {"ConfigMap": CONFIGMAPS, "Secret": SECRETS, "PersistentVolumeClaim": CLAIMS}

        def find(kind: str, name: str) -> dict | None:
            return self.store.find(kinds[kind], namespace, name)

        prepared: dict[str, tuple[str, bool]] = {}
        directory = Path(run.workdir) / "volumes"
        for volume in pod["spec"].get("volumes") or []:
            try:
                prepared[volume["name"]] = sandbox.prepare_volume(
                    volume, directory, find, self.volume_root
                )
            except LookupError:
                continue  # a source kubesim does not mount (projected, downwardAPI, ...)
        for container in pod["spec"]["containers"]:
            run.mounts[container["name"]] = sandbox.container_mounts(container, prepared)

    def _container_event(
        self, pod: dict, container: dict, reason: str, message: str, type_: str
    ) -> None:
        self.sim.record_event(
            pod, type_, reason, message, "kubelet", f"spec.containers{{{container['name']}}}"
        )

    def _waiting_status(self, pod: dict, now: str) -> dict:
        """What the kubelet writes when it takes the pod: containers being created."""
        status = copy.deepcopy(pod.get("status") or {})
        names = [c["name"] for c in pod["spec"]["containers"]]
        unready = f"containers with unready status: [{' '.join(names)}]"
        conditions = {c["type"]: c for c in status.get("conditions") or []}
        for kind, state, reason, message in (
            ("PodReadyToStartContainers", "False", None, None),
            ("Initialized", "True", None, None),
            ("Ready", "False", "ContainersNotReady", unready),
            ("ContainersReady", "False", "ContainersNotReady", unready),
        ):
            conditions[kind] = {
                "type": kind,
                "status": state,
                "lastProbeTime": None,
                "lastTransitionTime": now,
                **({"reason": reason, "message": message} if reason else {}),
            }
        status.update(
            phase="Pending",
            conditions=list(conditions.values()),
            hostIP="127.0.0.1",
            hostIPs=[{"ip": "127.0.0.1"}],
            startTime=now,
            containerStatuses=[
                {
                    "name": c["name"],
                    "state": {"waiting": {"reason": "ContainerCreating"}},
                    "lastState": {},
                    "ready": False,
                    "restartCount": 0,
                    "image": c.get("image", ""),
                    "imageID": "",
                    "started": False,
                }
                for c in pod["spec"]["containers"]
            ],
        )
        return status

    def _status(self, pod: dict, run: PodRun) -> dict:
        status = copy.deepcopy(pod.get("status") or {})
        spec = pod["spec"]
        phase = pod_phase(run.containers)
        statuses = [c.status() for c in run.containers]
        all_ready = phase == "Running" and all(s["ready"] for s in statuses)
        unready = [s["name"] for s in statuses if not s["ready"]]
        conditions = {c["type"]: c for c in status.get("conditions") or []}
        now = now_rfc3339()
        wanted = {
            "PodReadyToStartContainers": ("True", None, None),
            "Initialized": ("True", None, None),
            "PodScheduled": ("True", None, None),
        }
        if all_ready:
            wanted["Ready"] = wanted["ContainersReady"] = ("True", None, None)
        elif phase == "Running":
            message = f"containers with unready status: [{' '.join(unready)}]"
            wanted["Ready"] = wanted["ContainersReady"] = ("False", "ContainersNotReady", message)
        else:
            reason = "PodCompleted" if phase == "Succeeded" else "PodFailed"
            wanted["Ready"] = wanted["ContainersReady"] = ("False", reason, None)
        for kind in (
            "PodReadyToStartContainers",
            "Initialized",
            "Ready",
            "ContainersReady",
            "PodScheduled",
        ):
            state, reason, message = wanted[kind]
            existing = conditions.get(kind) or {}
            if (existing.get("status"), existing.get("reason")) == (state, reason):
                continue
            conditions[kind] = {
                "type": kind,
                "status": state,
                "lastProbeTime": None,
                "lastTransitionTime": now,
                **({"reason": reason} if reason else {}),
                **({"message": message} if message else {}),
            }
        status.update(
            {
                "phase": phase,
                "conditions": list(conditions.values()),
                "hostIP": "127.0.0.1",
                "hostIPs": [{"ip": "127.0.0.1"}],
                "podIP": run.pod_ip,
                "podIPs": [{"ip": run.pod_ip}],
                "startTime": status.get("startTime") or run.started_at,
                "containerStatuses": statuses,
            }
        )
        if spec.get("initContainers"):
            status["initContainerStatuses"] = [
                {
                    "name": c["name"],
                    "state": (
                        {"running": {"startedAt": run.started_at}}
                        if c.get("restartPolicy") == "Always"
                        else {
                            "terminated": {
                                "exitCode": 0,
                                "reason": "Completed",
                                "startedAt": run.started_at,
                                "finishedAt": run.started_at,
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
        return status

    def _write_status(self, key: PodKey, status: dict) -> None:
        current = self.store.find(PODS, *key)
        if current is None or current.get("status") == status:
            return
        new = copy.deepcopy(current)
        new["status"] = status
        self.store.replace(PODS, key[0], key[1], new, subresource="status", check_version=False)

    def _resolve_env(self, pod: dict, container: dict, pod_ip: str) -> dict[str, str]:
        namespace = pod["metadata"]["namespace"]
        env: dict[str, str] = {}
        for source in container.get("envFrom") or []:
            ref = source.get("secretRef") or source.get("configMapRef")
            if ref is None:
                continue
            rt = SECRETS if "secretRef" in source else CONFIGMAPS
            obj = self.store.find(rt, namespace, ref["name"])
            if obj is None and not ref.get("optional"):
                raise ValueError(f'{rt.kind.lower()} "{ref["name"]}" not found')
            for name, value in ((obj or {}).get("data") or {}).items():
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

    async def _run(self, run: PodRun, container: ContainerRun, pod: dict) -> None:
        """Start one instance of a container's process."""
        spec = container.spec
        argv = self._command(spec)
        env = {name: os.environ[name] for name in HOST_ENV if name in os.environ}
        env["HOME"] = run.workdir
        env["HOSTNAME"] = run.key[1]
        env.update(self._resolve_env(pod, spec, run.pod_ip))
        # Containers bind to all interfaces; here each pod has its own loopback address.
        argv = [arg.replace("0.0.0.0", run.pod_ip) for arg in argv]
        mounts = run.mounts.get(container.name) or []
        identity = run_as(pod, spec)
        if identity:
            os.chown(run.workdir, *identity)
        options: dict[str, Any] = {}
        if mounts and self.mount_mode() == sandbox.NAMESPACE:
            root = os.path.join(run.workdir, f".root-{container.name}")
            os.makedirs(root, exist_ok=True)
            options["preexec_fn"] = sandbox.namespace_preexec(mounts, root, run.workdir, identity)
        else:
            if mounts:
                argv = [sandbox.rewrite(arg, mounts) for arg in argv]
                env = {name: sandbox.rewrite(value, mounts) for name, value in env.items()}
            if identity:
                options.update(user=identity[0], group=identity[1], extra_groups=[])
        argv[0] = shutil.which(argv[0], path=env.get("PATH")) or argv[0]
        process = await asyncio.create_subprocess_exec(
            *argv,
            env=env,
            # The container's workingDir names a path in its image; here it starts in its own.
            cwd=run.workdir,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            start_new_session=True,
            limit=MAX_LINE_BYTES,
            **options,
        )
        container.process = process
        container.state = {"running": {"startedAt": now_rfc3339()}}
        self.all_processes.add(process)
        self._spawn(self._follow(run, container, process))

    async def _follow(
        self, run: PodRun, container: ContainerRun, process: asyncio.subprocess.Process
    ) -> None:
        assert process.stdout is not None
        buffer = container.log
        while True:
            try:
                line = await process.stdout.readuntil(b"\n")
            except asyncio.IncompleteReadError as partial:
                if partial.partial:
                    buffer.append(partial.partial)
                break
            except asyncio.LimitOverrunError as err:
                line = await process.stdout.readexactly(err.consumed)
            buffer.append(line)
            log.debug("%s/%s %s: %s", *run.key, container.name, line.rstrip())
        code = exit_code(await process.wait())
        buffer.close()
        if run.stopping or self.pods.get(run.key) is not run:
            return
        self._exited(run, container, code)

    def _exited(self, run: PodRun, container: ContainerRun, code: int) -> None:
        now = now_rfc3339()
        started = (container.state.get("running") or {}).get("startedAt", now)
        terminated = {
            "exitCode": code,
            "reason": "Completed" if code == 0 else "Error",
            "startedAt": started,
            "finishedAt": now,
            "containerID": container.container_id,
        }
        container.last_exit = code
        container.process = None
        pod = self.store.find(PODS, *run.key)
        if pod is None:
            return
        policy = pod["spec"].get("restartPolicy", "Always")
        if should_restart(policy, code):
            delay = restart_delay(container.restarts, self.restart_backoff_s)
            container.last_state = {"terminated": terminated}
            if delay > 0:
                container.state = {
                    "waiting": {
                        "reason": "CrashLoopBackOff",
                        "message": f"back-off {delay:g}s restarting failed container="
                        f"{container.name} pod={run.key[1]}_{run.key[0]}({run.uid})",
                    }
                }
                self._container_event(
                    pod,
                    container.spec,
                    "BackOff",
                    f"Back-off restarting failed container {container.name} in pod "
                    f"{run.key[1]}_{run.key[0]}({run.uid})",
                    "Warning",
                )
            else:
                container.state = {"terminated": terminated}
            container.restart_timer = asyncio.get_running_loop().call_later(
                delay, lambda: self._spawn(self._restart(run, container))
            )
        else:
            container.state = {"terminated": terminated}
            container.ended = True
        self._write_status(run.key, self._status(pod, run))

    async def _restart(self, run: PodRun, container: ContainerRun) -> None:
        container.restart_timer = None
        pod = self.store.find(PODS, *run.key)
        if run.stopping or pod is None or pod["metadata"].get("deletionTimestamp"):
            return
        container.previous_log = container.log
        container.log = LogBuffer()
        container.restarts += 1
        container.container_id = f"containerd://{os.urandom(32).hex()}"
        self._container_event(
            pod,
            container.spec,
            "Pulled",
            f'Container image "{container.spec.get("image", "")}" already present on machine',
            "Normal",
        )
        try:
            await self._run(run, container, pod)
        except (OSError, ValueError) as err:
            self._exited(run, container, 128)
            self.sim.record_event(pod, "Warning", "Failed", f"Error: {err}", "kubelet")
            return
        self._container_event(
            pod, container.spec, "Created", f"Created container: {container.name}", "Normal"
        )
        self._container_event(
            pod, container.spec, "Started", f"Started container {container.name}", "Normal"
        )
        current = self.store.find(PODS, *run.key)
        if current is not None:
            self._write_status(run.key, self._status(current, run))

    def _fail(self, key: PodKey, pod: dict, run: PodRun, message: str) -> None:
        """The container could not start: the pod fails with exit code 128."""
        self.sim.record_event(pod, "Warning", "Failed", f"Error: {message}", "kubelet")
        now = now_rfc3339()
        for container in run.containers:
            if container.process is None:
                container.state = {
                    "terminated": {
                        "exitCode": 128,
                        "reason": "StartError",
                        "message": message,
                        "startedAt": now,
                        "finishedAt": now,
                        "containerID": container.container_id,
                    }
                }
                container.last_exit, container.ended = 128, True
                container.log.close()
        current = self.store.find(PODS, *key)
        if current is not None:
            self._write_status(key, self._status(current, run))

    # -- stop ----------------------------------------------------------------------------

    async def _terminate(self, key: PodKey, pod: dict) -> None:
        try:
            grace = pod["metadata"].get("deletionGracePeriodSeconds", 30)
            run = self.pods.get(key)
            if (pod.get("status") or {}).get("phase") == "Running":
                for container in pod["spec"].get("containers") or []:
                    self._container_event(
                        pod,
                        container,
                        "Killing",
                        f"Stopping container {container['name']}",
                        "Normal",
                    )
            if run is not None:
                await self._stop(run, grace)
            current = self.store.find(PODS, *key)
            if current is not None:
                status = self._final_status(current, run)
                self.sim.pod_terminated(key, status)
            self._terminated.add(key)
        finally:
            self._stopping.discard(key)

    async def _stop(self, run: PodRun, grace_s: float) -> None:
        run.stopping = True
        for container in run.containers:
            if container.restart_timer is not None:
                container.restart_timer.cancel()
                container.restart_timer = None
        live = [c for c in run.containers if c.process is not None]
        codes = await asyncio.gather(*(self._kill(c.process, grace_s) for c in live))
        now = now_rfc3339()
        for container, code in zip(live, codes, strict=True):
            started = (container.state.get("running") or {}).get("startedAt", now)
            container.state = {
                "terminated": {
                    "exitCode": code,
                    "reason": "Completed" if code == 0 else "Error",
                    "startedAt": started,
                    "finishedAt": now,
                    "containerID": container.container_id,
                }
            }
            container.last_exit, container.ended, container.process = code, True, None
        for container in run.containers:
            container.log.close()

    @staticmethod
    async def _kill(process: asyncio.subprocess.Process | None, grace_s: float) -> int:
        if process is None:
            return 137
        await stop_process_group(process, grace_s)
        return exit_code(process.returncode if process.returncode is not None else -9)

    def _final_status(self, pod: dict, run: PodRun | None) -> dict:
        """The status a deleted pod ends with: what ran was stopped, pretend containers killed."""
        status = copy.deepcopy(pod.get("status") or {})
        if status.get("phase") in ("Succeeded", "Failed"):
            return status
        now = now_rfc3339()
        if run is not None:
            for container in run.containers:
                if not container.ended:
                    started = (container.state.get("running") or {}).get("startedAt", now)
                    container.state = {
                        "terminated": {
                            "exitCode": 137,
                            "reason": "Error",
                            "startedAt": started,
                            "finishedAt": now,
                            "containerID": container.container_id,
                        }
                    }
                    container.last_exit, container.ended = 137, True
            status = self._status(pod, run)
        else:
            status["phase"] = "Failed"
        return status

    async def _forget(self, key: PodKey) -> None:
        """The pod is gone from the API: its processes, folders and address go too."""
        run = self.pods.pop(key, None)
        if run is None:
            return
        if not run.stopping:
            await self._stop(run, 0)
        shutil.rmtree(run.workdir, ignore_errors=True)
        self.addresses.give_back(run.pod_ip)

    def kill_now(self, key: PodKey) -> None:
        """A deletion with no grace period: the processes go at once."""
        run = self.pods.get(key)
        if run is not None and any(c.process is not None for c in run.containers):
            for container in run.containers:
                if container.process is not None and container.process.returncode is None:
                    try:
                        os.killpg(container.process.pid, signal.SIGKILL)
                    except ProcessLookupError:
                        pass

    async def shutdown(self) -> None:
        for key in list(self.pods):
            run = self.pods.pop(key)
            await self._stop(run, 5)
            shutil.rmtree(run.workdir, ignore_errors=True)
        # Pods still in their grace period when the emulator stops: their processes too.
        for process in list(self.all_processes):
            await stop_process_group(process, 0)
        for buffer in self._silent.values():
            buffer.close()
        for task in list(self._tasks):
            task.cancel()
        if self._volume_root is not None:
            shutil.rmtree(self._volume_root, ignore_errors=True)


__all__: list[Any] = ["AddressPool", "Kubelet", "exit_code", "restart_delay", "should_restart"]
