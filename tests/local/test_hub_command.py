"""Acceptance of the single-machine mode: `thinkube hub` as a real subprocess (real
JupyterHub, configurable-http-proxy, the service with the local inventory, real
jupyterhub-singleuser servers), driven over HTTP as a person would."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import socket
import subprocess
import sys
from html import unescape
from urllib.parse import urljoin

import psutil
import pytest

from tests.e2e.test_thinkube_spawner import form_fields
from tests.local.hubproc import REPO_ROOT, local_hub, option, server_processes
from tests.utils import eventually
from thinkube_spawner.form import _gib_text

CORES = sorted(os.sched_getaffinity(0))


def options_of(html: str, name: str) -> dict[str, bool]:
    """The choices of one select: value -> enabled."""
    body = re.search(rf'<select name="{option(name)}"[^>]*>(.*?)</select>', html, re.S).group(1)
    return {
        value: "disabled" not in attrs
        for value, attrs in re.findall(r'<option value="([^"]*)"([^>]*)>', body)
    }


def machine_line(html: str) -> str:
    return unescape(re.search(r'<p id="thinkube-machine"[^>]*>(.*?)</p>', html, re.S).group(1))


@pytest.mark.skipif(len(CORES) < 2, reason="needs at least 2 CPU cores to share")
async def test_thinkube_hub_login_form_spawn_proxy_second_user_and_ctrl_c(tmp_path):
    async with local_hub(tmp_path / "hub") as hub:
        # The password printed at start is the one that works; another does not.
        intruder = await hub.login("mallory", password="not-the-password", expect=403)
        assert (await intruder.get(urljoin(hub.url, "hub/spawn"))).url.path == "/hub/login"
        alice = await hub.login("alice")
        # The Services menu lists the availability service (display, and the user's role
        # may access it).
        home = (await alice.get(urljoin(hub.url, "hub/home"))).text
        assert 'href="/services/thinkube-resources/"' in home, home[-3000:]
        html = await hub.form(alice)

        # This machine: its CPU count and memory, and plainly no GPU.
        total = psutil.virtual_memory().total
        line = machine_line(html)
        assert f"{len(CORES)} CPUs ({len(CORES)} free)" in line, line
        assert f"{_gib_text(total)} GiB memory" in line, line
        assert "no GPU (no NVIDIA GPU: " in line, line
        assert "Memory is advisory on this machine" in line  # cgroup v1, no systemd here
        assert options_of(html, "gpus") == {
            "0": True,
            "1": False,
            "2": False,
            "4": False,
            "8": False,
        }
        assert options_of(html, "image") == {"local": True}
        node_option = re.search(r'<option value="node:[^"]+"[^>]*>([^<]*)</option>', html).group(1)
        assert f"{len(CORES)}/{len(CORES)} CPU" in node_option, node_option

        fields = {**form_fields(html), option("cpu"): "1", option("memory"): "2"}
        response = await alice.post(
            urljoin(hub.url, "hub/spawn"), data={**fields, "_xsrf": hub.xsrf(alice)}
        )
        assert response.status_code == 200, response.text[:500]
        server = await hub.server(alice, "alice")
        options = server["user_options"]
        assert options["cpu"] == "1" and options["gpus"] == "0" and options["image"] == "local"
        assert "allocation" not in options  # the pick is the hub's record, not the user's
        allocation = await hub.allocation("alice")
        assert len(allocation["cores"]) == 1 and allocation["gpus"] == []
        assert allocation["memory_enforced"] is False

        # Through the proxy, with the hub's login: the server's own API.
        api = await alice.get(urljoin(hub.url, "user/alice/api"))
        assert api.status_code == 200 and "version" in api.json(), api.text[:300]

        # The process runs on the core it was given and sees no GPU.
        (process,) = server_processes(hub, "alice")
        assert process.cpu_affinity() == allocation["cores"]
        assert process.environ()["CUDA_VISIBLE_DEVICES"] == ""
        assert process.cwd() == hub.home("alice")
        assert process.uids().real != 0  # never root, whoever runs the hub

        # A second user sees alice's core as taken (the service reads the hub's servers).
        bob = await hub.login("bob")

        async def bobs_form():
            page = await hub.form(bob)
            return (
                page if f"{len(CORES)} CPUs ({len(CORES) - 1} free)" in machine_line(page) else None
            )

        bob_html = await eventually(bobs_form, within=15, interval=0.5)
        for value, enabled in options_of(bob_html, "cpu").items():
            assert enabled == (int(value) <= len(CORES) - 1), (value, enabled)
        bob_node = re.search(r'<option value="node:[^"]+"[^>]*>([^<]*)</option>', bob_html).group(1)
        assert f"{len(CORES) - 1}/{len(CORES)} CPU" in bob_node, bob_node

        # bob starts a server: he gets a different core.
        bob_fields = {**form_fields(bob_html), option("cpu"): "1", option("memory"): "2"}
        await bob.post(urljoin(hub.url, "hub/spawn"), data={**bob_fields, "_xsrf": hub.xsrf(bob)})
        await hub.server(bob, "bob")
        assert set((await hub.allocation("bob"))["cores"]).isdisjoint(allocation["cores"])

        await hub.stop_server(alice, "alice")
        assert server_processes(hub, "alice") == []
        bob_pid = server_processes(hub, "bob")[0].pid

        # Ctrl-C: the hub stops, and with it bob's server, the proxy and the service.
        children = psutil.Process(hub.process.pid).children(recursive=True)
        hub.process.send_signal(signal.SIGINT)
        await asyncio.wait_for(hub.process.wait(), 30)

        def running(process: psutil.Process) -> bool:
            try:
                return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
            except psutil.NoSuchProcess:
                return False

        async def all_stopped():
            return not any(running(c) for c in children)

        await eventually(all_stopped, within=15, interval=0.2)
        assert bob_pid in [c.pid for c in children]
        # The password was printed once, at start, and never logged.
        assert "".join(hub.output).count(hub.password) == 1
        # The service's reads of the servers (every 2 s) stay out of the hub's log.
        assert "GET /hub/api/users?state=" not in "".join(hub.output)


async def test_tampered_and_impossible_choices_are_rejected_and_nothing_starts(tmp_path):
    async with local_hub(tmp_path / "hub") as hub:
        carol = await hub.login("carol")
        html = await hub.form(carol)
        base = form_fields(html)
        cases = [
            ({option("cpu"): "3"}, "CPUs must be one of"),
            ({option("gpus"): "1"}, "has no GPUs"),
            ({option("image"): "scipy"}, "Unknown image 'scipy'"),
            ({option("cpu"): "16"}, "No node has room for 16 CPU"),
        ]
        for change, message in cases:
            response = await carol.post(
                urljoin(hub.url, "hub/spawn"),
                data={**base, **change, "_xsrf": hub.xsrf(carol)},
            )
            assert message in unescape(response.text), (change, response.text[-2000:])
            model = (await hub.api(carol, "GET", "users/carol")).json()
            assert model["servers"] == {}, model
            assert server_processes(hub, "carol") == []
        # The REST API: an allocation of one's own choosing is not accepted either.
        response = await hub.api(
            carol,
            "POST",
            "users/carol/server",
            json={"cpu": "1", "memory": "2", "allocation": {"cores": [0, 1]}},
        )
        assert response.status_code == 400 and "allocation" in response.json()["message"]
        assert server_processes(hub, "carol") == []


async def test_service_down_offers_nothing_and_the_hub_stays_up(tmp_path):
    async with local_hub(tmp_path / "hub") as hub:
        dave = await hub.login("dave")
        await hub.form(dave)
        service = next(
            p
            for p in psutil.Process(hub.process.pid).children(recursive=True)
            if "hub_service" in " ".join(p.cmdline())
        )
        service.terminate()

        async def gone():  # the hub, its parent, reaps it
            return not service.is_running() or service.status() == psutil.STATUS_ZOMBIE

        await eventually(gone, within=15, interval=0.2)
        page = await hub.form(dave, marker="The availability service cannot be reached")
        assert 'name="profile-option-thinkube--where"' not in page
        response = await dave.post(
            urljoin(hub.url, "hub/spawn"), data={"profile": "thinkube", "_xsrf": hub.xsrf(dave)}
        )
        assert "The availability service cannot be reached" in unescape(response.text)
        assert server_processes(hub, "dave") == []
        assert (await dave.get(urljoin(hub.url, "hub/api/"))).status_code == 200


def _run_cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    env = {
        **{k: v for k, v in os.environ.items() if k != "MAKELEVEL"},  # as if typed
        "PATH": f"{REPO_ROOT / 'node_modules' / '.bin'}:{os.environ['PATH']}",
        **(env or {}),
    }
    return subprocess.run(
        [sys.executable, "-m", "thinkube_spawner.cli", "hub", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )


def test_a_port_in_use_is_a_plain_error(tmp_path):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = _run_cli("--port", str(port), "--data-dir", str(tmp_path / "d"))
        under_make = _run_cli(
            "--port", str(port), "--data-dir", str(tmp_path / "d"), env={"MAKELEVEL": "1"}
        )
    assert result.returncode == 1
    message = re.fullmatch(
        rf"thinkube: error: 127\.0\.0\.1:{port} is in use: choose another with --port, "
        r"e\.g\. --port (\d+)",
        result.stderr.strip(),
    )
    assert message and int(message.group(1)) > port, result.stderr
    assert "Traceback" not in result.stderr
    # Started by `make run`: the hint is the make command.
    assert under_make.returncode == 1
    assert re.search(r'e\.g\. make run RUN_ARGS="--port \d+"$', under_make.stderr.strip())


def test_a_missing_config_file_is_a_plain_error(tmp_path):
    result = _run_cli("--config", str(tmp_path / "mine.py"), "--data-dir", str(tmp_path / "d"))
    assert result.returncode == 1
    assert result.stderr.strip() == (
        f"thinkube: error: --config {tmp_path / 'mine.py'}: no such file"
    )
    assert not (tmp_path / "d").exists()  # nothing created


def test_no_proxy_on_path_is_a_plain_error(tmp_path):
    env = {**os.environ, "PATH": str(tmp_path)}
    result = subprocess.run(
        [sys.executable, "-m", "thinkube_spawner.cli", "hub", "--data-dir", str(tmp_path / "d")],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert result.returncode == 1
    assert "configurable-http-proxy is not on PATH" in result.stderr
    assert not (tmp_path / "d").exists()  # nothing created


def test_without_jupyter_server_it_says_what_to_install(tmp_path):
    """A Python with the package but not its `local` extra (a bare venv sharing ours)."""
    venv = tmp_path / "bare"
    subprocess.run(
        [sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=60
    )
    # The package and its dependencies, but a site where jupyter_server cannot be found.
    site = next((venv / "lib").glob("python3*/site-packages"))
    blocker = site / "no_jupyter_server.py"
    blocker.write_text("import sys\nsys.modules['jupyter_server'] = None  # not importable\n")
    (site / "no_jupyter_server.pth").write_text("import no_jupyter_server\n")
    ours = [p for p in sys.path if p.endswith("site-packages")]
    (site / "ours.pth").write_text("\n".join([*ours, str(REPO_ROOT)]) + "\n")
    env = {**os.environ, "PATH": f"{REPO_ROOT / 'node_modules' / '.bin'}:{os.environ['PATH']}"}
    result = subprocess.run(
        [
            str(venv / "bin" / "python"),
            "-m",
            "thinkube_spawner.cli",
            "hub",
            "--data-dir",
            str(tmp_path / "d"),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert result.returncode == 1, result.stderr
    assert "jupyter_server is not installed in this Python" in result.stderr
    assert "thinkube-hub[local]" in result.stderr


@pytest.mark.skipif(len(CORES) < 2, reason="needs at least 2 CPU cores to share")
async def test_two_spawns_at_the_same_instant_never_share_a_core(tmp_path):
    async with local_hub(tmp_path / "hub") as hub:
        people = {name: await hub.login(name) for name in ("erin", "frank")}
        pages = {name: await hub.form(browser) for name, browser in people.items()}

        async def submit(name: str):
            browser = people[name]
            fields = {**form_fields(pages[name]), option("cpu"): "1", option("memory"): "2"}
            return await browser.post(
                urljoin(hub.url, "hub/spawn"), data={**fields, "_xsrf": hub.xsrf(browser)}
            )

        # Both submitted before the service can have seen either server.
        await asyncio.gather(submit("erin"), submit("frank"))
        for name in people:
            await hub.server(people[name], name)
        cores = [set((await hub.allocation(name))["cores"]) for name in people]
        assert all(len(c) == 1 for c in cores) and cores[0].isdisjoint(cores[1]), cores
        affinities = [set(server_processes(hub, name)[0].cpu_affinity()) for name in people]
        assert affinities == cores


async def test_a_token_without_the_scopes_is_told_which_scopes_it_needs(tmp_path):
    from hub_service.local import LocalInventory

    async with local_hub(tmp_path / "hub") as hub:
        gina = await hub.login("gina")
        token = (await hub.api(gina, "POST", "users/gina/tokens", json={})).json()["token"]
        inventory = LocalInventory(hub_api_url=urljoin(hub.url, "hub/api"), api_token=token)
        await inventory.start()
        try:
            assert not inventory.ready
            assert inventory.not_ready_reason == (
                "the service's token may not list servers: give its role the scopes "
                "list:users, read:servers and admin:server_state"
            )
        finally:
            await inventory.stop()
