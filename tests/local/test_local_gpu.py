"""On a machine with NVIDIA GPUs (marker `gpu`; skipped elsewhere): two servers asking for
one GPU each get different GPUs, and inside each only its own GPU is visible."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from urllib.parse import urljoin

import pytest

from hub_service.nvml import gpus_from_records, read_nvml
from tests.local.hubproc import local_hub, option, server_processes
from tests.local.test_hub_command import form_fields, options_of

GPUS = gpus_from_records(read_nvml()) if shutil.which("nvidia-smi") else []

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not GPUS, reason="needs an NVIDIA GPU (nvidia-smi, NVML)"),
]

# What CUDA itself sees: the driver API, which honours CUDA_VISIBLE_DEVICES (no torch needed).
CUDA_UUIDS = r"""
import ctypes
cuda = ctypes.CDLL("libcuda.so.1")
assert cuda.cuInit(0) == 0
count = ctypes.c_int()
assert cuda.cuDeviceGetCount(ctypes.byref(count)) == 0
for ordinal in range(count.value):
    device, raw = ctypes.c_int(), (ctypes.c_ubyte * 16)()
    assert cuda.cuDeviceGet(ctypes.byref(device), ordinal) == 0
    assert cuda.cuDeviceGetUuid(raw, device) == 0
    h = bytes(raw).hex()
    print(f"GPU-{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}")
"""


def inside(process, *command: str) -> list[str]:
    """Run a command with the server's own environment and CPU affinity."""
    result = subprocess.run(
        ["taskset", "-c", ",".join(map(str, process.cpu_affinity())), *command],
        env=process.environ(),
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return result.stdout.split()


async def spawn_one_gpu(hub, user: str) -> tuple[dict, object]:
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
    server = await hub.server(browser, user)
    (process,) = server_processes(hub, user)
    return server["user_options"]["allocation"], process


@pytest.mark.skipif(len(GPUS) < 2, reason="needs at least two NVIDIA GPUs")
async def test_two_servers_get_different_gpus_and_see_only_their_own(tmp_path):
    async with local_hub(tmp_path / "hub") as hub:
        first, first_process = await spawn_one_gpu(hub, "alice")
        second, second_process = await spawn_one_gpu(hub, "bob")
        assert len(first["gpus"]) == len(second["gpus"]) == 1
        assert first["gpus"] != second["gpus"]
        for allocation, process in ((first, first_process), (second, second_process)):
            assert process.environ()["CUDA_VISIBLE_DEVICES"] == allocation["gpus"][0]
            assert inside(process, sys.executable, "-c", CUDA_UUIDS) == allocation["gpus"]


@pytest.mark.xfail(
    strict=True,
    reason="nvidia-smi reads NVML, which ignores CUDA_VISIBLE_DEVICES: hiding the other GPUs "
    "from it needs device isolation, which the single-machine mode does not do yet",
)
async def test_nvidia_smi_inside_a_server_lists_only_its_gpu(tmp_path):
    async with local_hub(tmp_path / "hub") as hub:
        allocation, process = await spawn_one_gpu(hub, "alice")
        listed = inside(process, "nvidia-smi", "--query-gpu=uuid", "--format=csv,noheader")
        assert [re.sub(r"\s", "", u) for u in listed] == allocation["gpus"]
