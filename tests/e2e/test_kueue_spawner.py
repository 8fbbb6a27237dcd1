"""ThinkubeSpawner with a Kueue LocalQueue for notebook servers, end to end: a real
JupyterHub behind the real configurable-http-proxy, the managed availability service, and
kubesim with its Kueue (plain-pod integration) running pods as real `jupyterhub-singleuser`
processes. The queue's quota holds one GPU although the lab has eight: the second server
waits in the queue, gated, and starts when the first stops; the third waits past the admin's
limit, and its failure offers the RunPod stand-in's cheapest fitting offer instead.
"""

from __future__ import annotations

import asyncio
import json
import time
from html import escape
from urllib.parse import urljoin

import httpx

from tests.e2e.test_thinkube_spawner import A100, pods, wait_running
from tests.kubesim.generator import make_node
from tests.kubesim.kueue import queue_manifests
from tests.kubesim.sim import free_port
from tests.runpod.test_thinkube_cloud import cloud_config
from tests.runpod_fake import RunPodFake
from tests.runpod_fake.catalog import GpuTypeSpec
from tests.utils import eventually

CATALOG = (
    GpuTypeSpec("NVIDIA RTX A6000", "RTX A6000", 48, 0.49, None),  # too little memory
    GpuTypeSpec("NVIDIA A100 80GB PCIe", "A100 PCIe", 80, 1.19, None),
    GpuTypeSpec("NVIDIA H100 80GB HBM3", "H100 SXM", 80, 2.69, None),  # over the cap
)

GPU_SERVER = {"where": "gpu:nvidia-a100-sxm4-80gb", "gpus": "1", "cpu": "1", "memory": "1"}


class Progress:
    """A user's spawn progress stream, read in the background: every event as it came."""

    def __init__(self, api: httpx.AsyncClient, user: str) -> None:
        self.events: list[dict] = []
        self.task = asyncio.ensure_future(self._read(api, user))

    async def _read(self, api: httpx.AsyncClient, user: str) -> None:
        async with api.stream("GET", f"users/{user}/server/progress", timeout=None) as response:
            async for line in response.aiter_lines():
                if line.startswith("data:"):
                    event = json.loads(line[5:])
                    self.events.append(event)
                    if event.get("ready") or event.get("failed"):
                        return

    @property
    def messages(self) -> list[str]:
        return [e.get("message", "") for e in self.events]

    def said(self, text: str) -> str | None:
        return next((m for m in self.messages if text in m), None)

    async def finished(self, within: float = 90) -> dict:
        await asyncio.wait_for(asyncio.shield(self.task), within)
        return self.events[-1]


async def pod_of(sim, user: str):
    found = [p for p in await pods(sim) if p.metadata.name == f"jupyter-{user}"]
    return found[0] if found else None


async def test_a_queued_server_waits_its_turn_and_starts_when_the_gpu_frees(
    make_kubesim, hub_with_service
):
    sim = await make_kubesim(process_runtime=True, kueue=True)
    sim.load(
        [
            make_node("gpu-a", A100.cpu, A100.memory_gi, A100, 0),
            make_node("gpu-b", A100.cpu, A100.memory_gi, A100, 1),
            *queue_manifests(
                {"cpu": 64, "memory": "256Gi", "nvidia.com/gpu": 1},
                local_queues={"default": "notebooks"},
            ),
        ]
    )
    fake = RunPodFake(gpu_types=CATALOG)
    await fake.start()
    try:
        await queued_servers(sim, fake, hub_with_service)
    finally:
        await fake.stop()
    assert not fake.invalid_requests()
    assert not fake.requests_for("podFindAndDeployOnDemand")  # offered, not rented


async def queued_servers(sim, fake, hub_with_service) -> None:
    start_timeout, max_wait = 8, 40
    config = cloud_config(
        sim,
        fake,
        free_port(),
        cloud_user_price_caps={"carol": 1.5},
        kueue_local_queue="notebooks",
        kueue_max_wait_seconds=max_wait,
        kueue_poll_seconds=0.3,
        start_timeout=start_timeout,
    )
    hub = await hub_with_service(sim=sim, config=config, service_env=fake.env())
    admin = hub.token("kueue-admin", roles_=["admin"])
    hub._admin = admin
    for user in ("alice", "bob", "carol"):
        hub.user(user)
    api = httpx.AsyncClient(
        base_url=urljoin(hub.url, "hub/api/"),
        headers={"Authorization": f"token {admin}"},
        timeout=60,
    )
    async with api:
        # The first GPU server takes the queue's one GPU: admitted, it runs.
        started = await api.post("users/alice/server", json=GPU_SERVER)
        assert started.status_code in (201, 202), started.text
        await wait_running(hub, "alice")
        alice_pod = await pod_of(sim, "alice")
        assert alice_pod.metadata.labels["kueue.x-k8s.io/queue-name"] == "notebooks"
        assert not alice_pod.spec.scheduling_gates

        # The next two wait in the queue, gated, the lab's seven other A100s notwithstanding.
        queued_at = time.monotonic()
        for user in ("bob", "carol"):
            answer = await api.post(f"users/{user}/server", json=GPU_SERVER)
            assert answer.status_code == 202, answer.text
            await asyncio.sleep(0.5)  # bob is first in line
        bob, carol = Progress(api, "bob"), Progress(api, "carol")

        async def placed(progress: Progress, text: str):
            return progress.said(text)

        first = await eventually(lambda: placed(bob, "number 1 in line"), within=20)
        assert (
            first
            == "Queued in 'notebooks' for 1 NVIDIA A100 SXM4 80GB GPU: number 1 in line (next in line)."
        )
        second = await eventually(lambda: placed(carol, "number 2 in line"), within=20)
        assert "(1 request ahead of yours)" in second
        bob_pod = await pod_of(sim, "bob")
        assert [g.name for g in bob_pod.spec.scheduling_gates] == ["kueue.x-k8s.io/admission"]
        assert (bob_pod.status.conditions[0].type, bob_pod.status.conditions[0].reason) == (
            "PodScheduled",
            "SchedulingGated",
        )

        # Past the hub's start_timeout and fail-fast's grace, both are still waiting.
        await asyncio.sleep(max(0.0, start_timeout + 2 - (time.monotonic() - queued_at)))
        for user, progress in (("bob", bob), ("carol", carol)):
            model = (await api.get(f"users/{user}")).json()
            assert model["servers"][""]["pending"] == "spawn", (user, progress.messages)
            assert not any(e.get("failed") for e in progress.events)
            assert (await pod_of(sim, user)).spec.scheduling_gates

        # The first stops: Kueue admits bob (the first in line), whose server starts and
        # answers through the proxy; carol is now first in line.
        stopped = await api.delete("users/alice/server")
        assert stopped.status_code in (202, 204)
        ready = await bob.finished(within=60)
        assert ready.get("ready"), bob.messages
        assert bob.said("Admitted by the queue 'notebooks': starting your server.")
        token = hub.token("bob")
        async with httpx.AsyncClient(headers={"Authorization": f"token {token}"}) as http:
            status = await http.get(urljoin(hub.url, "user/bob/api/status"))
        assert status.status_code == 200, status.text[:300]
        assert (await pod_of(sim, "bob")).spec.node_name in ("gpu-a", "gpu-b")
        await eventually(lambda: placed(carol, "number 1 in line"), within=20)

        # carol's wait passes the admin's limit: her spawn ends with that, her pod is gone,
        # and the cheapest cloud offer with an 80 GB GPU within her cap is one click away.
        failed = await carol.finished(within=max_wait + 30)
        assert failed.get("failed"), carol.messages
        said = (
            f"Your server waited {max_wait} seconds in the queue 'notebooks' and was not "
            "admitted; it was removed from the queue and nothing is running. Try again later."
        )
        assert failed["message"] == f"Spawn failed: {said}"
        assert failed["html_message"].startswith(
            f"{escape(said)}<br>An A100 PCIe on RunPod is free now at $1.19/h — "
            '<a id="thinkube-cloud-instead" href="/hub/spawn/carol?opt-profile=thinkube&amp;'
        )
        assert "opt-where=cloud%3ASECURE%3ANVIDIA+A100+80GB+PCIe%3A1" in failed["html_message"]
        assert "H100" not in failed["html_message"]
        assert time.monotonic() - queued_at >= max_wait
        await eventually(lambda: _gone(sim, "carol"), within=30)
        assert (await api.get("users/carol")).json()["servers"] == {}


async def _gone(sim, user: str) -> bool:
    return await pod_of(sim, user) is None
