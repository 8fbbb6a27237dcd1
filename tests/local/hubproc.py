"""`thinkube hub` as a real subprocess for tests: start it on a free port, read the printed
password, log users in over HTTP, and stop it with Ctrl-C (SIGINT) as a person would."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import sys
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urljoin

import httpx
import psutil

from tests.kubesim.sim import free_port
from tests.utils import eventually, stop_process_group

REPO_ROOT = Path(__file__).resolve().parents[2]
PASSWORD_LINE = re.compile(r"log in with any user name and the password: (\S+)")


def option(name: str) -> str:
    return f"profile-option-thinkube--{name}"


@dataclass
class LocalHub:
    url: str
    data_dir: Path
    process: asyncio.subprocess.Process
    password: str
    output: list[str] = field(default_factory=list)

    async def login(
        self, user: str, password: str | None = None, expect: int = 200
    ) -> httpx.AsyncClient:
        """A browser-like client logged in through the hub's login form (with the printed
        password unless given; `expect` is the login page's status)."""
        browser = httpx.AsyncClient(timeout=30, follow_redirects=True)
        page = await browser.get(urljoin(self.url, "hub/login"))
        assert page.status_code == 200, page.text[:300]
        response = await browser.post(
            urljoin(self.url, "hub/login"),
            data={
                "username": user,
                "password": self.password if password is None else password,
                "_xsrf": self.xsrf(browser),
            },
        )
        assert response.status_code == expect, (response.status_code, response.text[-1500:])
        return browser

    @staticmethod
    def xsrf(browser: httpx.AsyncClient) -> str:
        return next(
            c.value for c in browser.cookies.jar if c.name == "_xsrf" and c.path.startswith("/hub")
        )

    async def api(self, browser: httpx.AsyncClient, method: str, path: str, **kwargs):
        """The hub's REST API with the browser's cookie (JupyterHub wants the XSRF header)."""
        return await browser.request(
            method,
            urljoin(self.url, "hub/api/" + path),
            headers={"X-XSRFToken": self.xsrf(browser)},
            **kwargs,
        )

    async def form(self, browser: httpx.AsyncClient, marker: str = 'id="thinkube-machine"') -> str:
        """The spawn form, once the service answers (it starts with the hub)."""

        async def page():
            html = (await browser.get(urljoin(self.url, "hub/spawn"))).text
            return html if marker in html else None

        return await eventually(page, within=30, interval=0.3)

    async def server(self, browser: httpx.AsyncClient, user: str, ready: bool = True) -> dict:
        async def state():
            model = (await self.api(browser, "GET", f"users/{user}")).json()
            server = (model.get("servers") or {}).get("")
            return server if server and (server.get("ready") or not ready) else None

        return await eventually(state, within=60, interval=0.2)

    async def stop_server(self, browser: httpx.AsyncClient, user: str) -> None:
        response = await self.api(browser, "DELETE", f"users/{user}/server")
        assert response.status_code in (202, 204), response.text

        async def stopped():
            model = (await self.api(browser, "GET", f"users/{user}")).json()
            return model.get("servers") == {}

        await eventually(stopped, within=60, interval=0.2)


def server_processes(hub: LocalHub, user: str) -> list[psutil.Process]:
    """The jupyterhub-singleuser processes this hub runs for `user` (found by their
    environment and folder: other tests on the machine may serve an `alice` too)."""
    home = str(hub.data_dir / "users" / user)
    found = []
    for process in psutil.process_iter(["cmdline"]):
        try:
            if not any("jupyterhub-singleuser" in part for part in process.info["cmdline"] or []):
                continue
            environ = process.environ()
            if environ.get("JUPYTERHUB_USER") == user and environ.get("HOME") == home:
                found.append(process)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return found


@asynccontextmanager
async def local_hub(
    data_dir: Path,
    python: str = sys.executable,
    port: int | None = None,
    config: Path | None = None,
):
    """`thinkube hub` on a free port (with `--config config` if given); stopped with SIGINT
    (Ctrl-C) afterwards."""
    port = port or free_port()
    env = {
        **os.environ,
        "PATH": f"{REPO_ROOT / 'node_modules' / '.bin'}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    process = await asyncio.create_subprocess_exec(
        python,
        "-m",
        "thinkube_spawner.cli",
        "hub",
        "--port",
        str(port),
        "--data-dir",
        str(data_dir),
        *(["--config", str(config)] if config else []),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        env=env,
        cwd=str(REPO_ROOT),
        start_new_session=True,
    )
    output: list[str] = []
    reader = asyncio.ensure_future(_collect(process, output))
    try:

        async def password():
            match = next(
                (PASSWORD_LINE.search(line) for line in output if "password" in line), None
            )
            if process.returncode is not None:
                raise AssertionError("thinkube hub exited:\n" + "".join(output)[-3000:])
            return match.group(1) if match else None

        secret = await eventually(password, within=30, interval=0.1)
        hub = LocalHub(f"http://127.0.0.1:{port}/", data_dir, process, secret, output)

        async def up():
            try:
                async with httpx.AsyncClient(timeout=5) as http:
                    return (await http.get(urljoin(hub.url, "hub/login"))).status_code == 200
            except httpx.HTTPError:
                return False

        await eventually(up, within=60, interval=0.2)
        yield hub
    except BaseException:
        print("".join(output)[-6000:])  # the hub's log, shown with the failure
        raise
    finally:
        if process.returncode is None:
            process.send_signal(signal.SIGINT)
            try:
                await asyncio.wait_for(process.wait(), 30)
            except TimeoutError:
                await stop_process_group(process)
        reader.cancel()


async def _collect(process: asyncio.subprocess.Process, output: list[str]) -> None:
    assert process.stdout is not None
    async for line in process.stdout:
        output.append(line.decode(errors="replace"))
