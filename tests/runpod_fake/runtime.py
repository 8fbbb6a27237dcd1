"""What makes the stand-in's pods real: each running pod gets a loopback address of its
own (127.x.y.z), its `dockerArgs` command runs there as a local process with the pod's env
(binds to 0.0.0.0 rewritten to that address), and each `N/tcp` port gets a forwarder on
127.0.0.1 (its "public IP") to the pod's port, as RunPod maps TCP ports to public ones."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import ipaddress
import logging
import os
import random
import shlex
import shutil
import signal
import sys
import tempfile
from dataclasses import dataclass, field

import psutil

log = logging.getLogger("runpod_fake.runtime")

# What a process needs from the host to find its interpreter at all.
HOST_ENV = ("PATH", "LANG", "LC_ALL", "VIRTUAL_ENV", "PYTHONPATH", "TMPDIR", "SSL_CERT_FILE")
PUBLIC_IP = "127.0.0.1"


class AddressPool:
    """Loopback addresses for pods: 127.N.128.2 upwards, N random per stand-in so that two
    stand-ins (or kubesim) on one machine are unlikely to hand out the same address."""

    def __init__(self, rng: random.Random | None = None) -> None:
        rng = rng or random.Random()
        self._next = int(ipaddress.IPv4Address(f"127.{rng.randint(2, 250)}.128.2"))
        self._free: list[str] = []

    def take(self) -> str:
        if self._free:
            return self._free.pop()
        while True:
            address = str(ipaddress.IPv4Address(self._next))
            self._next += 1
            if not address.endswith((".0", ".1", ".255")):
                return address

    def give_back(self, address: str) -> None:
        self._free.append(address)


def parse_ports(ports: str | None) -> list[tuple[int, str]]:
    """RunPod's `ports` string, "8888/http,22/tcp", as [(8888, "http"), (22, "tcp")]."""
    result = []
    for item in (ports or "").split(","):
        item = item.strip()
        if not item:
            continue
        number, _, kind = item.partition("/")
        result.append((int(number), (kind or "http").lower()))
    return result


def venv_path() -> str:
    """PATH for pod processes: this interpreter's bin first (the "image" has our tools)."""
    here = os.path.dirname(sys.executable)
    return os.pathsep.join([here, os.environ.get("PATH", "/usr/bin:/bin")])


def jupyter_command(address: str, port: int, workdir: str) -> list[str]:
    """What RunPod's images run with `startJupyter`: jupyter-lab on port 8888 with the
    JUPYTER_PASSWORD as token (given here as JUPYTER_TOKEN, so that it is not on the
    command line), base URL /. Falls back to jupyter-server where JupyterLab is missing."""
    path = venv_path()
    program = shutil.which("jupyter-lab", path=path) or shutil.which("jupyter-server", path=path)
    if program is None:
        raise FileNotFoundError("neither jupyter-lab nor jupyter-server is installed")
    return [
        program,
        "--no-browser",
        "--allow-root",
        f"--ip={address}",
        f"--port={port}",
        "--ServerApp.port_retries=0",
        "--ServerApp.allow_origin=*",
        f"--ServerApp.root_dir={workdir}",
    ]


def rewrite_binds(value: str, address: str) -> str:
    return value.replace("0.0.0.0", address)


def docker_args_argv(docker_args: str, address: str) -> list[str]:
    argv = [rewrite_binds(arg, address) for arg in shlex.split(docker_args)]
    return [("--ip=" + address) if arg in ("--ip=*", "--ip='*'") else arg for arg in argv]


@dataclass
class Container:
    """One pod's running container: its process (if it has a command) and forwarders."""

    address: str
    workdir: str
    process: asyncio.subprocess.Process | None = None
    output: collections.deque = field(default_factory=lambda: collections.deque(maxlen=4000))
    forwarders: dict[int, asyncio.Server] = field(default_factory=dict)  # private -> server
    public_ports: dict[int, int] = field(default_factory=dict)  # private -> public
    follow_task: asyncio.Task | None = None

    def text(self) -> str:
        return "".join(self.output)


async def start_process(
    container: Container, argv: list[str], env: dict[str, str]
) -> asyncio.subprocess.Process:
    argv = list(argv)
    argv[0] = shutil.which(argv[0], path=env.get("PATH")) or argv[0]
    process = await asyncio.create_subprocess_exec(
        *argv,
        env=env,
        cwd=container.workdir,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        start_new_session=True,
    )
    container.process = process
    return process


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except (ConnectionError, OSError):
        pass
    finally:
        with contextlib.suppress(Exception):
            writer.close()


async def open_forwarder(target_host: str, target_port: int) -> asyncio.Server:
    """A TCP listener on 127.0.0.1 (any free port) relaying to target_host:target_port."""

    async def relay(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(target_host, target_port)
        except OSError:
            writer.close()
            return
        await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))

    return await asyncio.start_server(relay, PUBLIC_IP, 0)


def _descendants(process: asyncio.subprocess.Process | None) -> list[psutil.Process]:
    if process is None or process.returncode is not None:
        return []
    try:
        return psutil.Process(process.pid).children(recursive=True)
    except psutil.Error:
        return []


def _kill(processes: list[psutil.Process]) -> None:
    for process in processes:
        with contextlib.suppress(psutil.Error):
            process.kill()


async def close_container(container: Container, grace_s: float = 5.0) -> None:
    # A container's end ends every process in it, also those that left its process group
    # (a program that starts its children in sessions of their own): found before the
    # group is stopped, while they are still its descendants, and killed with it after the
    # grace (one of them may hold the container's output open, and its end waits for that).
    process = container.process
    descendants = _descendants(process)
    if process is not None and process.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            await asyncio.wait_for(process.wait(), grace_s)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            _kill(descendants)
            await process.wait()
    _kill(descendants)
    for server in container.forwarders.values():
        server.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(server.wait_closed(), 2)
    container.forwarders.clear()
    if container.follow_task is not None and not container.follow_task.done():
        container.follow_task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await container.follow_task
    shutil.rmtree(container.workdir, ignore_errors=True)


def new_workdir(pod_id: str) -> str:
    return tempfile.mkdtemp(prefix=f"runpod-fake-{pod_id}-")
