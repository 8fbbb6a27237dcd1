"""`make dev` (examples/kubesim/dev.py) as a person runs it: kubesim and a real hub, the
address printed once the hub answers, two checkouts side by side without colliding, a
server started through the form running as a real process (never as root), and Ctrl-C
stopping the hub first (its clean-up deletes the pod through kubesim) and kubesim after,
with no error on the way."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import sys
import time
from pathlib import Path
from urllib.parse import urljoin

import httpx
import psutil

from tests.e2e.test_thinkube_spawner import form_fields
from tests.local.hubproc import REPO_ROOT, _collect, hub_env
from tests.utils import eventually, stop_process_group

DEV = REPO_ROOT / "examples" / "kubesim" / "dev.py"
BANNER = re.compile(r"make dev: open (\S+) and log in")


async def start_dev(state: Path) -> tuple[asyncio.subprocess.Process, list[str]]:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        str(DEV),
        "--nodes", "3", "--gpu-nodes", "1", "--pods", "10", "--state-dir", str(state),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        env={k: v for k, v in hub_env().items() if not k.startswith("THINKUBE_")},
        cwd=str(REPO_ROOT),
        start_new_session=True,  # as a terminal's foreground job: signals reach dev.py alone
    )  # fmt: skip
    output: list[str] = []
    process._reader = asyncio.ensure_future(_collect(process, output))

    async def address():
        if process.returncode is not None:
            raise AssertionError("make dev exited:\n" + "".join(output)[-3000:])
        return next(filter(None, map(BANNER.search, output)), None)

    await eventually(address, within=180, interval=0.2)
    return process, output


def url_of(output: list[str]) -> str:
    return next(filter(None, map(BANNER.search, output))).group(1)


def children(process) -> dict[str, psutil.Process]:
    """dev.py's kubesim and hub."""
    found = {}
    for child in psutil.Process(process.pid).children():
        command = " ".join(child.cmdline())
        found["kubesim" if "tests.kubesim" in command else "hub"] = child
    return found


def gone(process: psutil.Process) -> bool:
    try:
        return process.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


async def start_server(url: str) -> httpx.AsyncClient:
    browser = httpx.AsyncClient(timeout=30, follow_redirects=True)
    await browser.get(urljoin(url, "hub/login"))
    xsrf = browser.cookies.get("_xsrf", path="/hub/")
    login = await browser.post(
        urljoin(url, "hub/login"), data={"username": "alice", "password": "x", "_xsrf": xsrf}
    )
    assert login.status_code == 200, login.text[-500:]

    async def form():
        html = (await browser.get(urljoin(url, "hub/spawn"))).text
        return html if "profile-option-thinkube--where" in html else None

    html = await eventually(form, within=60, interval=0.5)
    xsrf = browser.cookies.get("_xsrf", path="/hub/")
    spawn = await browser.post(urljoin(url, "hub/spawn"), data={**form_fields(html), "_xsrf": xsrf})
    assert spawn.status_code == 200, spawn.text[-500:]

    async def ready():
        model = await browser.get(
            urljoin(url, "hub/api/users/alice"), headers={"X-XSRFToken": xsrf}
        )
        server = (model.json().get("servers") or {}).get("")
        return server if server and server.get("ready") else None

    await eventually(ready, within=120, interval=0.5)
    return browser


async def test_two_checkouts_side_by_side_and_ctrl_c_stops_the_hub_before_kubesim(tmp_path):
    first, first_output = await start_dev(tmp_path / "one" / ".dev")
    try:
        second, second_output = await start_dev(tmp_path / "two" / ".dev")
        try:
            # Side by side: different ports, each hub answering, each state in its folder.
            urls = [url_of(first_output), url_of(second_output)]
            assert urls[0] != urls[1], urls
            async with httpx.AsyncClient(timeout=10) as http:
                for url in urls:
                    assert (await http.get(urljoin(url, "hub/login"))).status_code == 200
            for folder in ("one", "two"):
                assert (tmp_path / folder / ".dev" / "kubeconfig").is_file()
                assert (tmp_path / folder / ".dev" / "jupyterhub.sqlite").is_file()
        finally:
            second.send_signal(signal.SIGINT)
            assert await asyncio.wait_for(second.wait(), 120) == 0
            second._reader.cancel()

        # A server through the form: a real process kubesim runs, never as root.
        browser = await start_server(urls[0])
        await browser.aclose()
        (server,) = [
            p
            for p in children(first)["kubesim"].children(recursive=True)
            if "jupyterhub-singleuser" in " ".join(p.cmdline())
        ]
        assert server.uids().effective == (1000 if os.geteuid() == 0 else os.geteuid())

        # Ctrl-C: the hub stops first, while kubesim still answers its clean-up; then kubesim.
        processes = children(first)
        before = len(first_output)
        first.send_signal(signal.SIGINT)
        stopped: dict[str, float] = {}
        deadline = time.monotonic() + 120
        while len(stopped) < 2 and time.monotonic() < deadline:
            for name, process in processes.items():
                if name not in stopped and gone(process):
                    stopped[name] = time.monotonic()
            await asyncio.sleep(0.02)
        assert await asyncio.wait_for(first.wait(), 60) == 0
        assert stopped["hub"] < stopped["kubesim"], stopped
        after = "".join(first_output[before:])
        assert "Deleting pod default/jupyter-alice" in after, after[-3000:]
        assert "Traceback" not in after and "[E " not in after, after[-3000:]
        assert gone(server)
    finally:
        await stop_process_group(first)
        first._reader.cancel()
