"""On a machine with NVIDIA GPUs (marker `gpu`; skipped elsewhere): two servers asking for
one GPU each get different GPUs, and inside each, CUDA and nvidia-smi list only its own; a
person who waits for a GPU held by another's server gets one when that server stops.

What a server sees is recorded from inside it: its command starts with tests/local/probe.py,
which runs nvidia-smi and the CUDA driver API in the server's own namespace, environment and
CPU affinity before starting jupyterhub-singleuser."""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
import tempfile
from pathlib import Path
from urllib.parse import urljoin

import pytest

from hub_service.nvml import gpus_from_records, read_nvml
from tests.local.hubproc import local_hub, option
from tests.local.test_hub_command import form_fields, options_of
from tests.utils import eventually

GPUS = gpus_from_records(read_nvml()) if shutil.which("nvidia-smi") else []
PROBE = Path(__file__).with_name("probe.py")

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not GPUS, reason="needs an NVIDIA GPU (nvidia-smi, NVML)"),
]


@pytest.fixture
def shared():
    """A folder every server may write its probe record to (as root, each server runs as
    its person's account; pytest's tmp_path is closed to them)."""
    folder = Path(tempfile.mkdtemp(prefix="thinkube-gpu-probe-"))
    folder.chmod(0o1777)
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def probing_config(folder: Path) -> Path:
    """`thinkube hub --config`: every server's command starts with the probe (a copy in
    `folder`: as root the servers' accounts may not reach the checkout)."""
    singleuser = str(Path(sys.executable).parent / "jupyterhub-singleuser")
    out = str(folder / "seen-{user}.json")
    probe = shutil.copy(PROBE, folder / "probe.py")
    os.chmod(probe, 0o644)
    config = folder / "probe_config.py"
    config.write_text(
        "c = get_config()  # noqa: F821\n"
        "c.ThinkubeLocalSpawner.gpu_isolation = 'required'\n"
        "c.ThinkubeLocalSpawner.environments = {'local': {'cmd': "
        f"[{sys.executable!r}, {str(probe)!r}, {out!r}, '--gpu', '--', {singleuser!r}]}}}}\n"
    )
    return config


def seen_by(folder: Path, user: str) -> dict:
    return json.loads((folder / f"seen-{user}.json").read_text())


async def spawn_one_gpu(hub, user: str) -> dict:
    browser = await hub.login(user)
    html = await hub.form(browser)
    where = next(
        key
        for key, enabled in options_of(html, "where").items()
        if enabled and key.startswith("gpu:")
    )
    fields = {
        **form_fields(html),
        option("where"): where,
        option("gpus"): "1",
        option("cpu"): "1",
        option("memory"): "2",
    }
    await browser.post(urljoin(hub.url, "hub/spawn"), data={**fields, "_xsrf": hub.xsrf(browser)})
    await hub.server(browser, user)
    return await hub.allocation(user)


def listed_by_nvidia_smi(seen: dict) -> list[str]:
    return [re.sub(r"\s", "", uuid) for uuid in seen["nvidia_smi"]]


async def test_nvidia_smi_and_cuda_inside_a_server_list_only_its_gpu(tmp_path, shared):
    async with local_hub(tmp_path / "hub", config=probing_config(shared)) as hub:
        allocation = await spawn_one_gpu(hub, "alice")
        seen = seen_by(shared, "alice")
        assert len(allocation["gpus"]) == 1
        assert seen["cuda_visible_devices"] == allocation["gpus"][0]
        assert seen["cuda"] == allocation["gpus"]
        assert listed_by_nvidia_smi(seen) == allocation["gpus"]


@pytest.mark.skipif(len(GPUS) < 2, reason="needs at least two NVIDIA GPUs")
async def test_two_servers_get_different_gpus_and_see_only_their_own(tmp_path, shared):
    async with local_hub(tmp_path / "hub", config=probing_config(shared)) as hub:
        first = await spawn_one_gpu(hub, "alice")
        second = await spawn_one_gpu(hub, "bob")
        assert len(first["gpus"]) == len(second["gpus"]) == 1
        assert first["gpus"] != second["gpus"]
        for user, allocation in (("alice", first), ("bob", second)):
            seen = seen_by(shared, user)
            assert seen["cpus"] == allocation["cores"]
            assert seen["cuda"] == allocation["gpus"]
            assert listed_by_nvidia_smi(seen) == allocation["gpus"]


async def test_a_person_waits_for_the_machines_gpus_and_gets_a_server_when_they_free(
    tmp_path, shared
):
    """One machine (`thinkube hub`): alice's server holds every GPU; carol chooses to wait
    for one in the form, the hub answers at once with her place in the queue, and her
    server starts by itself, on a GPU of its own, when alice stops."""
    async with local_hub(tmp_path / "hub", config=probing_config(shared)) as hub:
        alice = await hub.login("alice")
        html = await hub.form(alice)
        where = next(
            key
            for key, enabled in options_of(html, "where").items()
            if enabled and key.startswith("gpu:")
        )
        fields = {
            **form_fields(html),
            option("where"): where,
            option("gpus"): str(len(GPUS)),
            option("cpu"): "1",
            option("memory"): "2",
        }
        await alice.post(urljoin(hub.url, "hub/spawn"), data={**fields, "_xsrf": hub.xsrf(alice)})
        await hub.server(alice, "alice")

        carol = await hub.login("carol")

        async def full_form():
            html = await hub.form(carol)
            return html if f"wait:{where}" in options_of(html, "where") else None

        html = await eventually(full_form, within=30, interval=0.5)
        fields = {
            **form_fields(html),
            option("where"): f"wait:{where}",
            option("gpus"): "1",
            option("cpu"): "1",
            option("memory"): "2",
        }
        answer = await carol.post(
            urljoin(hub.url, "hub/spawn"),
            data={**fields, "_xsrf": hub.xsrf(carol)},
            follow_redirects=False,
        )
        assert answer.status_code == 303, answer.text[-1500:]
        assert "/waiting/s-" in answer.headers["location"]

        await hub.stop_server(alice, "alice")
        await hub.server(carol, "carol")
        allocation = await hub.allocation("carol")
        assert len(allocation["gpus"]) == 1
        assert seen_by(shared, "carol")["cuda"] == allocation["gpus"]
