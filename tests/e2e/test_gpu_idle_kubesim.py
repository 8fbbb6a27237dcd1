"""Idle GPUs given back, through a real hub on kubesim: notebook servers run as real
jupyterhub-singleuser processes, a DCGM exporter stand-in serves their GPUs' utilisation
(mapped to their pods, as dcgm-exporter's Kubernetes mapping does) with values the test sets.

- an idle GPU server is warned (the reason in words, on the service's page with a Keep
  button), "keep" starts its clock again, then it is warned again and stopped;
- a busy one (90 %) is never warned; one whose metrics are missing is never warned, and its
  clock starts only when they come back;
- with `gpu_idle_stopped_by = 'jupyterhub-idle-culler'`, the real jupyterhub-idle-culler with
  the hook makes the same decision: it stops the idle GPU server, never the busy one (however
  long without HTTP activity), and culls a CPU server by its own inactivity rule.

The times are seconds here (idle 3 s, grace 3 s); the defaults are 2 h and 30 min.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import sys
import time
from urllib.parse import urljoin

import httpx
import jsonschema
import pytest

from tests.dcgm_exporter import DcgmExporter, ExporterGpu
from tests.e2e.test_thinkube_spawner import A100, CLAIMS, claim, hub_config, pods, storage_class
from tests.e2e.test_thinkube_spawner import wait_running as wait_ready_server
from tests.hub_fixtures import (
    ACCESS_SCOPE,
    IMAGE_WRITERS_ROLE,
    IMAGES_WRITE_SCOPE,
    REPO_ROOT,
    SERVICE_NAME,
)
from tests.kubesim.generator import make_node
from tests.kubesim.sim import free_port
from tests.utils import eventually

A100_KEY = "gpu:nvidia-a100-sxm4-80gb"
CULLER = "idle-culler"
IDLE_S, GRACE_S, INTERVAL_S = 3, 3, 0.4
WARNED = re.compile(
    r"^GPU \d \(A100\) at 1 % for the last \d+ s; this server stops at \d\d:\d\d UTC "
    r"unless you keep it$"
)

OPENAPI = json.loads((REPO_ROOT / "hub_service" / "openapi.json").read_text())
USAGE_SCHEMA = OPENAPI["components"]["schemas"]["GpuUsage"]

ROLES = [
    {"name": "user", "scopes": ["self", ACCESS_SCOPE]},
    {"name": IMAGE_WRITERS_ROLE, "scopes": [ACCESS_SCOPE, IMAGES_WRITE_SCOPE]},
    # the service starts waiting servers and stops idle ones (`servers`), reads the owners'
    # groups for the policy, and asks servers' kernels through the proxy (`access:servers`)
    {
        "name": SERVICE_NAME,
        "scopes": [ACCESS_SCOPE, "servers", "access:servers", "read:users:groups"],
        "services": [SERVICE_NAME],
    },
    # what jupyterhub-idle-culler's docs give it, and access to this service for the hook
    {
        "name": CULLER,
        "scopes": [
            "list:users",
            "read:users:activity",
            "read:servers",
            "delete:servers",
            ACCESS_SCOPE,
        ],
    },
]


async def gpu_lab(make_kubesim):
    sim = await make_kubesim(process_runtime=True)
    sim.load(
        [
            make_node("gpu-0", A100.cpu, A100.memory_gi, A100, 0),
            make_node("gpu-1", A100.cpu, A100.memory_gi, A100, 1),
            make_node("cpu-1", 16, 64, None, 9),
            storage_class("seaweedfs"),
            *[claim(name) for name in CLAIMS],
        ]
    )
    return sim


async def start_hub(hub_with_service, sim, exporter: DcgmExporter, **settings):
    """A hub whose proxy listens where the service is told it reaches servers."""
    proxy = f"http://127.0.0.1:{free_port()}"
    config = hub_config(sim)
    config["JupyterHub"]["bind_url"] = proxy + "/"
    config["JupyterHub"]["load_roles"] = ROLES
    settings = {
        "dcgm_endpoints": exporter.url,
        "dcgm_interval_seconds": 0.2,
        "gpu_idle_enabled": True,
        "gpu_idle_seconds": IDLE_S,
        "gpu_idle_grace_seconds": GRACE_S,
        "gpu_idle_interval_seconds": INTERVAL_S,
        "gpu_idle_proxy_url": proxy,
        **settings,
    }
    return await hub_with_service(
        sim=sim,
        config=config,
        service_args=[f"--ThinkubeService.{name}={value}" for name, value in settings.items()],
    )


async def start_server(hub, user: str, gpus: int) -> None:
    options = (
        {"where": A100_KEY, "gpus": str(gpus), "cpu": "1", "memory": "1"}
        if gpus
        else {"where": "node:cpu-1", "cpu": "1", "memory": "1"}
    )
    async with httpx.AsyncClient(
        base_url=urljoin(hub.url, "hub/api/"),
        headers={"Authorization": f"token {hub.token(user)}"},
        timeout=60,
    ) as api:
        response = await api.post(f"users/{user}/server", json=options)
    assert response.status_code in (201, 202), response.text
    await wait_ready_server(hub, user)


async def map_gpu(sim, exporter: DcgmExporter, user: str, utilization: float | None) -> None:
    """The exporter reports a GPU of the node the user's pod runs on, mapped to that pod."""
    (pod,) = [
        p
        for p in await pods(sim)
        if (p.metadata.annotations or {}).get("hub.jupyter.org/username") == user
    ]
    node = pod.spec.node_name
    index = sum(1 for gpu in exporter.gpus if gpu.hostname == node)
    exporter.gpus.append(
        ExporterGpu(
            hostname=node,
            index=index,
            uuid=f"GPU-{user}-0000-0000",
            utilization=utilization,
            namespace=pod.metadata.namespace,
            pod=pod.metadata.name,
        )
    )


async def server_gone(hub, user: str) -> bool:
    admin = httpx.AsyncClient(
        base_url=urljoin(hub.url, "hub/api/"), headers={"Authorization": f"token {hub._admin}"}
    )
    async with admin:
        return (await admin.get(f"users/{user}")).json()["servers"] == {}


@pytest.fixture
async def exporter():
    stand_in = DcgmExporter()
    stand_in.start()
    yield stand_in
    await stand_in.stop()


async def test_an_idle_gpu_server_is_warned_kept_then_stopped_a_busy_one_never(
    make_kubesim, hub_with_service, exporter
):
    sim = await gpu_lab(make_kubesim)
    hub = await start_hub(hub_with_service, sim, exporter)
    for user in ("alice", "bob", "carol"):
        await start_server(hub, user, gpus=1)
    # taken before her GPU reads idle: a lower bound of when the service's clock started
    idle_started = time.monotonic()
    await map_gpu(sim, exporter, "alice", 1)  # idle
    await map_gpu(sim, exporter, "bob", 90)  # training
    await map_gpu(sim, exporter, "carol", None)  # no utilisation metric for her GPU
    alice = hub.client(hub.token("alice"))
    bob = hub.client(hub.token("bob"))
    carol = hub.client(hub.token("carol"))

    async def state(client, user: str, wanted: str | None = None):
        response = await client.get(f"api/v1/servers/{user}/gpu-usage")
        if response.status_code != 200:
            return None
        usage = response.json()
        return usage if wanted is None or usage["decision"]["state"] == wanted else None

    # alice's idle GPU: warned, with the reason in words and when it stops
    warned = await eventually(lambda: state(alice, "alice", "warned"), within=30, interval=0.2)
    assert time.monotonic() - idle_started >= IDLE_S
    assert WARNED.match(warned["decision"]["reason"]), warned["decision"]["reason"]
    assert warned["gpus"] == 1 and warned["warned_at"] is not None
    assert warned["decision"]["gpus"] == [{"gpu": "GPU 0 (A100)", "lowest": 1.0, "highest": 1.0}]
    assert warned["history"][-1]["gpus"] == [{"gpu": "GPU 0 (A100)", "utilization": 1.0}]
    assert warned["policy"] == {
        "enabled": True,
        "threshold_percent": 5.0,
        "idle_seconds": IDLE_S,
        "grace_seconds": GRACE_S,
    }
    # the answer is what the OpenAPI document says (schemathesis sees only the 404s)
    jsonschema.validate(warned, USAGE_SCHEMA)
    # someone else's server is not theirs to see
    assert (await bob.get("api/v1/servers/alice/gpu-usage")).status_code == 404

    # her page shows the warning and a Keep button; pressing it starts the clock again
    browser = await hub.login("alice")
    page = await browser.get("", headers={"Accept": "text/html"})
    assert page.status_code == 200
    assert "Keep this server" in page.text and "stops at" in page.text
    xsrf = re.search(r'name="_xsrf" value="([^"]+)"', page.text).group(1)
    kept_at = time.monotonic()  # before the press: the service's keep comes after it
    kept = await browser.post("servers/alice/keep", data={"_xsrf": xsrf})
    assert kept.status_code == 303, kept.text
    after_keep = (await alice.get("api/v1/servers/alice/gpu-usage")).json()
    assert after_keep["decision"]["state"] == "active"
    assert after_keep["warned_at"] is None and after_keep["kept_at"] is not None

    # still idle: warned again a full idle time after the keep, then stopped after the grace
    await eventually(lambda: state(alice, "alice", "warned"), within=30, interval=0.2)
    assert time.monotonic() - kept_at >= IDLE_S
    await eventually(lambda: server_gone(hub, "alice"), within=60, interval=0.3)
    assert time.monotonic() - kept_at >= IDLE_S + GRACE_S
    log = hub.service_log()
    assert "GPU idle: warned server (default) of alice" in log
    assert re.search(r"GPU idle: stopped server \(default\) of alice, giving back 1 GPU", log)
    metrics = (await alice.get("metrics")).text
    assert "thinkube_gpu_servers_culled_total 1.0" in metrics
    hours = float(re.search(r"^thinkube_gpu_hours_reclaimed_total (\S+)$", metrics, re.M)[1])
    assert (IDLE_S + GRACE_S) / 3600 <= hours < 60 / 3600

    # bob's busy GPU was never warned; carol's missing metric is read as no data, not idle
    busy = await state(bob, "bob")
    assert busy["decision"]["state"] == "active" and busy["warned_at"] is None
    assert min(g["utilization"] for p in busy["history"] for g in p["gpus"]) == 90.0
    missing = await state(carol, "carol")
    assert missing["decision"]["state"] == "no-data" and missing["warned_at"] is None
    assert missing["decision"]["reason"].startswith("no GPU metrics")
    jsonschema.validate(missing, USAGE_SCHEMA)
    carol_page = await (await hub.login("carol")).get("", headers={"Accept": "text/html"})
    assert "no GPU metrics" in carol_page.text and "Keep this server" not in carol_page.text
    assert not await server_gone(hub, "bob") and not await server_gone(hub, "carol")
    assert "of bob" not in log and "of carol" not in log

    # carol's metric comes back: her clock starts then, not when her server started
    back = time.monotonic()
    exporter.gpu("GPU-carol-0000-0000").utilization = 0
    active = await eventually(lambda: state(carol, "carol", "active"), within=10, interval=0.2)
    assert active["decision"]["idle_since"] is not None
    await eventually(lambda: state(carol, "carol", "warned"), within=30, interval=0.2)
    assert time.monotonic() - back >= IDLE_S

    # the exporter stops answering: no data again, the warning is withdrawn, nothing stops
    exporter.status = 503
    gone = await eventually(lambda: state(carol, "carol", "no-data"), within=10, interval=0.2)
    assert gone["warned_at"] is None
    stopped_answering = time.monotonic()
    while time.monotonic() - stopped_answering < GRACE_S + 1:
        assert (await state(carol, "carol"))["decision"]["state"] == "no-data"
        await eventually(lambda: state(carol, "carol"), within=5)
    assert not await server_gone(hub, "carol")
    assert (await state(bob, "bob"))["decision"]["state"] == "no-data"


async def test_the_idle_culler_hook_makes_the_same_decision(
    make_kubesim, hub_with_service, exporter, tmp_path
):
    sim = await gpu_lab(make_kubesim)
    hub = await start_hub(
        hub_with_service, sim, exporter, gpu_idle_stopped_by="jupyterhub-idle-culler"
    )
    await start_server(hub, "alice", gpus=1)
    await start_server(hub, "bob", gpus=1)
    await start_server(hub, "dave", gpus=0)
    await map_gpu(sim, exporter, "alice", 1)  # idle
    await map_gpu(sim, exporter, "bob", 90)  # training, with nobody at a browser
    reader = hub.client(hub.token("alice"))
    bob = hub.client(hub.token("bob"))

    async def decision(client, user: str) -> str | None:
        response = await client.get(f"api/v1/servers/{user}/gpu-usage")
        return response.json()["decision"]["state"] if response.status_code == 200 else None

    await eventually(lambda: decision(bob, "bob"), within=10, interval=0.2)

    # the real jupyterhub-idle-culler with the hook, and a 1 s inactivity timeout that
    # would cull every server by its own rule; its token has what its docs ask for, and
    # access to the service
    culler_token = hub.token("culler-bot", roles_=[CULLER])
    service_url = urljoin(hub.url, f"services/{SERVICE_NAME}/")
    config = tmp_path / "idle_culler_config.py"
    config.write_text(
        "from thinkube_core.idle_culler_hook import make_gpu_cull_arbiter\n"
        f"c.IdleCuller.cull_arbiter_hook = make_gpu_cull_arbiter({service_url!r})\n"
    )
    culler_log = tmp_path / "idle-culler.log"
    with culler_log.open("w") as out:
        culler = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "jupyterhub_idle_culler",
            f"--config={config}",
            f"--url={urljoin(hub.url, 'hub/api')}",
            "--timeout=1",
            "--cull-every=1",
            env={**os.environ, "JUPYTERHUB_API_TOKEN": culler_token},
            stdout=out,
            stderr=asyncio.subprocess.STDOUT,
        )
    try:
        # dave's server holds no GPU: the culler's own rule culls it
        await eventually(lambda: server_gone(hub, "dave"), within=30, interval=0.3)
        # alice's: warned by the service, and stopped by the culler once the service says stop
        await eventually(lambda: _is(decision(reader, "alice"), "warned"), within=30, interval=0.2)
        assert not await server_gone(hub, "alice")
        warned_seen = time.monotonic()
        await eventually(lambda: server_gone(hub, "alice"), within=40, interval=0.3)
        assert time.monotonic() - warned_seen >= GRACE_S - 1
        # bob's busy GPU: never culled, however long without HTTP activity
        for _ in range(3):
            await asyncio.sleep(1.2)  # a culler round each
            assert not await server_gone(hub, "bob")
        assert await decision(bob, "bob") == "active"
    finally:
        culler.terminate()
        await culler.wait()
    text = culler_log.read_text()
    assert "Culling server alice" in text and "Culling server dave" in text, text[-3000:]
    assert "Culling server bob" not in text
    assert "thinkube GPU hook: culling alice: GPU 0 (A100) at 1 %" in text
    # the service decided, the culler stopped
    assert "GPU idle: stopped server" not in hub.service_log()


async def _is(awaitable, wanted: str) -> bool:
    return await awaitable == wanted
