"""`thinkube hub` as a real subprocess for tests: start it on a free port, read the printed
password, log users in over HTTP, and stop it with Ctrl-C (SIGINT) as a person would.

Run as root (as on the CI machines), the hub makes a system account for each person who
starts a server: each hub here uses an account prefix of its own (`tk<random>-`) and a
home folder of its own, and deletes the accounts it made when it stops."""

from __future__ import annotations

import asyncio
import json
import os
import pwd
import random
import re
import shutil
import signal
import string
import subprocess
import sys
import tempfile
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote, urljoin

import httpx
import psutil

from tests.kubesim.sim import free_port
from tests.utils import eventually, stop_process_group
from thinkube_core.accounts import account_name
from thinkube_core.allocation import STATE_KEY as ALLOCATION_STATE

REPO_ROOT = Path(__file__).resolve().parents[2]
PASSWORD_LINE = re.compile(r"log in with any user name and the password: (\S+)")
AS_ROOT = os.geteuid() == 0


def option(name: str) -> str:
    return f"profile-option-thinkube--{name}"


@dataclass
class LocalHub:
    url: str
    data_dir: Path
    process: asyncio.subprocess.Process
    password: str
    output: list[str] = field(default_factory=list)
    account_prefix: str | None = None  # as root: the accounts this hub makes
    verify: object = True  # httpx's `verify`: a context trusting the test's certificate

    def account(self, user: str) -> pwd.struct_passwd | None:
        """The system account `user`'s server runs as (None: the hub's own user)."""
        if self.account_prefix is None:
            return None
        return pwd.getpwnam(account_name(user, self.account_prefix))

    def home(self, user: str) -> str:
        account = self.account(user)
        return account.pw_dir if account else str(self.data_dir / "users" / user)

    @property
    def settings(self) -> dict:
        return json.loads((self.data_dir / "settings.json").read_text())

    async def login(
        self, user: str, password: str | None = None, expect: int = 200
    ) -> httpx.AsyncClient:
        """A browser-like client logged in through the hub's login form (with the printed
        password unless given; `expect` is the login page's status)."""
        browser = httpx.AsyncClient(timeout=30, follow_redirects=True, verify=self.verify)
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
            urljoin(self.url, "hub/api/" + quote(path)),
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

    async def allocation(self, user: str) -> dict:
        """What `user`'s server was given, from its state in the hub, read as the service
        reads it (its token, with admin:server_state): never from the user's options."""
        token = (self.data_dir / "service_token").read_text().strip()
        async with httpx.AsyncClient(headers={"Authorization": f"token {token}"}) as api:

            async def held():
                model = (await api.get(urljoin(self.url, f"hub/api/users/{quote(user)}"))).json()
                server = (model.get("servers") or {}).get("") or {}
                return (server.get("state") or {}).get(ALLOCATION_STATE)

            return await eventually(held, within=60, interval=0.2)

    async def stop_server(self, browser: httpx.AsyncClient, user: str) -> None:
        response = await self.api(browser, "DELETE", f"users/{user}/server")
        assert response.status_code in (202, 204), response.text

        async def stopped():
            model = (await self.api(browser, "GET", f"users/{user}")).json()
            return model.get("servers") == {}

        await eventually(stopped, within=60, interval=0.2)


async def run_in_terminal(
    hub: LocalHub, browser: httpx.AsyncClient, user: str, command: str
) -> str:
    """Run `command` in a terminal of `user`'s server (jupyter-server's terminal API over its
    websocket, through the proxy, as JupyterLab's terminal does) and return what it printed."""
    from tornado.httpclient import HTTPRequest
    from tornado.websocket import websocket_connect

    token = (await hub.api(browser, "POST", f"users/{user}/tokens", json={})).json()["token"]
    base = urljoin(hub.url, f"user/{quote(user, safe='')}/")
    headers = {"Authorization": f"token {token}"}
    created = await browser.post(base + "api/terminals", headers=headers)
    assert created.status_code == 200, created.text[:300]
    name = created.json()["name"]
    socket = await websocket_connect(
        HTTPRequest(base.replace("http", "ws", 1) + f"terminals/websocket/{name}", headers=headers)
    )
    try:
        # The shell prints the markers' values; the echo of the typed line shows formulas.
        line = f"echo BEGIN-$((5*5)); {command}; echo END-$((6*7))\r"
        socket.write_message(json.dumps(["stdin", line]))
        printed = ""
        while "END-42" not in printed:
            message = await asyncio.wait_for(socket.read_message(), 30)
            assert message is not None, f"the terminal closed; it printed: {printed}"
            kind, *content = json.loads(message)
            if kind == "stdout":
                printed += content[0]
        return printed.split("BEGIN-25", 1)[-1].split("END-42")[0].replace("\r", "")
    finally:
        socket.close()
        await browser.delete(base + f"api/terminals/{name}", headers=headers)


def server_processes(hub: LocalHub, user: str) -> list[psutil.Process]:
    """The jupyterhub-singleuser processes this hub runs for `user` (found by their
    environment: other tests on the machine may serve an `alice` too)."""
    hub_api = f"http://127.0.0.1:{hub.settings['hub_port']}/"
    found = []
    for process in psutil.process_iter(["cmdline"]):
        try:
            if not any("jupyterhub-singleuser" in part for part in process.info["cmdline"] or []):
                continue
            environ = process.environ()
            if environ.get("JUPYTERHUB_USER") == user and environ.get(
                "JUPYTERHUB_API_URL", ""
            ).startswith(hub_api):
                found.append(process)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return found


def hub_env() -> dict[str, str]:
    return {
        **os.environ,
        "PATH": f"{REPO_ROOT / 'node_modules' / '.bin'}{os.pathsep}{os.environ.get('PATH', '')}",
    }


async def start_hub(*args: str, python: str = sys.executable) -> asyncio.subprocess.Process:
    """`thinkube hub ARGS` in a session of its own, stdout and stderr together."""
    return await asyncio.create_subprocess_exec(
        python,
        "-m",
        "thinkube_spawner.cli",
        "hub",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        env=hub_env(),
        cwd=str(REPO_ROOT),
        start_new_session=True,
    )


def unique_account_prefix() -> str:
    """An account prefix no other hub on the machine uses (8 characters, as `jupyter-`)."""
    return "tk" + "".join(random.choices(string.ascii_lowercase, k=5)) + "-"


def delete_accounts(prefix: str) -> None:
    """userdel every account whose name starts with `prefix` (their homes go with the
    hub's home folder)."""
    for account in pwd.getpwall():
        if account.pw_name.startswith(prefix):
            subprocess.run(["userdel", account.pw_name], capture_output=True, check=False)


@contextmanager
def accounts_for_tests(config: Path | None):
    """As root: a configuration giving the hub an account prefix and home folder of its
    own (then `config`), and the accounts deleted afterwards. Otherwise `config` as it is."""
    if not AS_ROOT:
        yield config, None
        return
    prefix = unique_account_prefix()
    homes = Path(tempfile.mkdtemp(prefix="thinkube-homes-"))
    homes.chmod(0o755)  # the accounts pass through it to their homes
    wrapper = homes / "accounts_config.py"
    wrapper.write_text(
        "c = get_config()  # noqa: F821\n"
        f"c.ThinkubeLocalSpawner.account_prefix = {prefix!r}\n"
        f"c.ThinkubeLocalSpawner.account_home_root = {str(homes)!r}\n"
        + (f"load_subconfig({str(config)!r})  # noqa: F821\n" if config else "")
    )
    try:
        yield wrapper, prefix
    finally:
        delete_accounts(prefix)
        shutil.rmtree(homes, ignore_errors=True)


@asynccontextmanager
async def local_hub(
    data_dir: Path,
    python: str = sys.executable,
    port: int | None = None,
    config: Path | None = None,
    args: tuple[str, ...] = (),
):
    """`thinkube hub` on a free port (with `--config config` if given, and `args`); stopped
    with SIGINT (Ctrl-C) afterwards."""
    port = port or free_port()
    with accounts_for_tests(config) as (config, prefix):
        async with _local_hub(data_dir, python, port, config, args, prefix) as hub:
            yield hub


@asynccontextmanager
async def _local_hub(data_dir, python, port, config, args, prefix):
    process = await start_hub(
        "--port",
        str(port),
        "--data-dir",
        str(data_dir),
        *(["--config", str(config)] if config else []),
        *args,
        python=python,
    )
    output: list[str] = []
    reader = asyncio.ensure_future(_collect(process, output))
    try:

        async def password():
            match = next(filter(None, map(PASSWORD_LINE.search, output)), None)
            if process.returncode is not None:
                raise AssertionError("thinkube hub exited:\n" + "".join(output)[-3000:])
            return match.group(1) if match else None

        secret = await eventually(password, within=150, interval=0.1)
        hub = LocalHub(f"http://127.0.0.1:{port}/", data_dir, process, secret, output, prefix)
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
