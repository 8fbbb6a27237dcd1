"""A real `jupyterhub` process for tests of the service's lifecycle: the hub CLI in a process
of its own (dummy authenticator, the real configurable-http-proxy) running
`python -m hub_service` as a managed service against a kubesim, on fixed ports, so that a
second hub started from the same workdir takes the same ports as the first.

Unlike ``tests.hub_fixtures`` (MockHub inside the test process), the hub here can be killed
with SIGKILL, stopped with SIGTERM as an init system does, and timed while it stops.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import shutil
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import psutil

from tests.kubesim.sim import free_ports

SERVICE_NAME = "thinkube-resources"
ACCESS_SCOPE = f"access:services!service={SERVICE_NAME}"
REPO_ROOT = Path(__file__).resolve().parents[2]


@dataclass
class HubPorts:
    public: int
    hub_api: int
    proxy_api: int
    service: int

    @classmethod
    def free(cls) -> HubPorts:
        return cls(*free_ports(4))  # never one port twice (the proxy and its API once were)


@dataclass
class HubSettings:
    """What a hub of these tests is started with; the same settings make the same hub."""

    workdir: Path
    kubeconfig: Path
    ports: HubPorts
    service_token: str  # the managed service's own hub token
    reader_token: str  # a token of a second service that may only read the service
    admin_token: str  # a service that may make users and issue and revoke their tokens
    service_args: tuple[str, ...] = ()
    service_env: dict[str, str] = field(default_factory=dict)

    @classmethod
    def new(
        cls,
        workdir: Path,
        kubeconfig: Path,
        service_args: tuple[str, ...] = (),
        service_env: dict[str, str] | None = None,
    ) -> HubSettings:
        return cls(
            workdir,
            kubeconfig,
            HubPorts.free(),
            secrets.token_hex(32),
            secrets.token_hex(32),
            secrets.token_hex(32),
            service_args,
            dict(service_env or {}),
        )

    def config_text(self) -> str:
        command = [
            sys.executable,
            "-m",
            "hub_service",
            "--kubeconfig",
            str(self.kubeconfig),
            "--db-url",
            f"sqlite:///{self.workdir / 'catalog.sqlite'}",
            "--log-file",
            str(self.workdir / "service.log"),
            "--ThinkubeService.max_backoff_seconds=1",
            *self.service_args,
        ]
        return f"""
c = get_config()  # noqa
c.JupyterHub.bind_url = "http://127.0.0.1:{self.ports.public}/"
c.JupyterHub.hub_ip = "127.0.0.1"
c.JupyterHub.hub_port = {self.ports.hub_api}
c.ConfigurableHTTPProxy.api_url = "http://127.0.0.1:{self.ports.proxy_api}"
c.JupyterHub.db_url = "sqlite:///{self.workdir / "jupyterhub.sqlite"}"
c.JupyterHub.cookie_secret_file = "{self.workdir / "jupyterhub_cookie_secret"}"
c.ConfigurableHTTPProxy.pid_file = "{self.workdir / "jupyterhub-proxy.pid"}"
c.JupyterHub.pid_file = "{self.workdir / "jupyterhub.pid"}"
c.JupyterHub.authenticator_class = "dummy"
c.Authenticator.allow_all = True
c.JupyterHub.spawner_class = "simple"
c.JupyterHub.log_level = "INFO"
c.JupyterHub.services = [
    {{
        "name": "{SERVICE_NAME}",
        "url": "http://127.0.0.1:{self.ports.service}",
        "api_token": "{self.service_token}",
        "command": {command!r},
        "cwd": "{REPO_ROOT}",
        "display": False,
        "oauth_no_confirm": True,
        "environment": {self.service_env!r},
    }},
    {{"name": "reader", "api_token": "{self.reader_token}"}},
    {{"name": "token-admin", "api_token": "{self.admin_token}"}},
]
c.JupyterHub.load_roles = [
    {{"name": "user", "scopes": ["self", "{ACCESS_SCOPE}"]}},
    {{"name": "reader", "scopes": ["{ACCESS_SCOPE}"], "services": ["reader"]}},
    {{
        "name": "token-admin",
        "scopes": ["admin:users", "tokens", "{ACCESS_SCOPE}"],
        "services": ["token-admin"],
    }},
]
"""


@dataclass
class HubProcess:
    settings: HubSettings
    process: asyncio.subprocess.Process
    log_offset: int  # where this hub's lines begin in the workdir's hub.log

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def hub_api_url(self) -> str:
        return f"http://127.0.0.1:{self.settings.ports.hub_api}/hub/api/"

    @property
    def service_url(self) -> str:
        return f"http://127.0.0.1:{self.settings.ports.service}/services/{SERVICE_NAME}/"

    @property
    def log_path(self) -> Path:
        return self.settings.workdir / "hub.log"

    def log(self) -> str:
        """What this hub has logged (a hub started before it in the workdir logged above)."""
        if not self.log_path.exists():
            return ""
        with self.log_path.open("rb") as log:
            log.seek(self.log_offset)
            return log.read().decode(errors="replace")

    def service_log(self) -> str:
        path = self.settings.workdir / "service.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def service_process(self) -> psutil.Process | None:
        """The service process this hub started (its direct child)."""
        try:
            for child in psutil.Process(self.pid).children():
                if "hub_service" in child.cmdline():
                    return child
        except psutil.Error:
            return None
        return None

    async def wait_service(self, within: float = 60.0) -> psutil.Process:
        """Wait until the hub has started and its service answers `ready` with the
        reader's token; return the service process."""
        deadline = time.monotonic() + within
        last = ""
        async with httpx.AsyncClient(
            base_url=self.service_url,
            headers={"Authorization": f"token {self.settings.reader_token}"},
            timeout=5,
        ) as client:
            while time.monotonic() < deadline:
                if self.process.returncode is not None:
                    raise AssertionError(f"the hub exited:\n{self.log()[-4000:]}")
                if "JupyterHub is now running" not in self.log():
                    # (a managed service that ends while the hub starts ends the hub)
                    await asyncio.sleep(0.1)
                    continue
                try:
                    response = await client.get("api/v1/ready")
                    last = f"HTTP {response.status_code} {response.text[:200]}"
                    service = self.service_process()
                    if response.status_code == 200 and service is not None:
                        return service
                except httpx.TransportError as err:
                    last = repr(err)
                await asyncio.sleep(0.1)
        raise AssertionError(
            f"the service did not answer within {within}s: {last}\n"
            f"hub log:\n{self.log()[-3000:]}\nservice log:\n{self.service_log()[-3000:]}"
        )

    async def stop(self, sig: int = signal.SIGTERM, within: float = 60.0) -> float:
        """Send `sig` to the hub and wait until it has exited; the seconds that took."""
        started = time.monotonic()
        if self.process.returncode is None:
            self.process.send_signal(sig)
            await asyncio.wait_for(self.process.wait(), within)
        return time.monotonic() - started

    async def kill(self) -> None:
        """SIGKILL the hub process alone (not its children), as the OOM killer would."""
        if self.process.returncode is None:
            self.process.kill()
            await self.process.wait()


def hub_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("JUPYTERHUB_")}
    env["PATH"] = f"{REPO_ROOT / 'node_modules' / '.bin'}{os.pathsep}{env.get('PATH', '')}"
    return env


async def start_hub(settings: HubSettings) -> HubProcess:
    """`jupyterhub -f <config>` in a session of its own, logging to workdir/hub.log."""
    settings.workdir.mkdir(parents=True, exist_ok=True)
    config = settings.workdir / "jupyterhub_config.py"
    config.write_text(settings.config_text())
    env = hub_env()
    jupyterhub = shutil.which("jupyterhub", path=env["PATH"]) or str(
        Path(sys.executable).parent / "jupyterhub"
    )
    log_path = settings.workdir / "hub.log"
    log = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    offset = os.fstat(log).st_size
    try:
        process = await asyncio.create_subprocess_exec(
            jupyterhub,
            "-f",
            str(config),
            cwd=str(settings.workdir),
            env=env,
            stdout=log,
            stderr=asyncio.subprocess.STDOUT,
            start_new_session=True,
        )
    finally:
        os.close(log)
    return HubProcess(settings, process, offset)


async def reap(*processes: psutil.Process | None) -> None:
    """SIGKILL what a failed test left running (the hub's own children included)."""
    for process in processes:
        if process is None:
            continue
        try:
            for child in process.children(recursive=True):
                child.kill()
            process.kill()
        except psutil.Error:
            pass


def port_is_free(port: int) -> bool:
    """Whether a new server could listen on 127.0.0.1:`port` now."""
    import socket

    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True
