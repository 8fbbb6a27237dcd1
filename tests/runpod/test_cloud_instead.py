"""If the lab stays full: the form's refusal for lack of room offers the cheapest RunPod offer
that runs the same choice within the person's cap, and its one-click link rents it. End to
end: a real JupyterHub behind the real configurable-http-proxy, the managed availability
service watching kubesim and holding the RunPod stand-in's offers, and the rented "pod"
running a real jupyterhub-singleuser reached through the hub's proxy.
"""

from __future__ import annotations

import re
import sys
from html import unescape
from urllib.parse import parse_qs, urljoin, urlsplit

import httpx
from kubernetes_asyncio import client

from tests.conftest import api_client_for
from tests.e2e.test_thinkube_spawner import form_fields, option, pods, submit
from tests.hub_fixtures import running_hub
from tests.kubesim.generator import GPU_MODELS, make_node
from tests.kubesim.sim import free_port
from tests.runpod.cloud_hub import admin_api, wait_gone, wait_ready
from tests.runpod.test_thinkube_cloud import cloud_config
from tests.runpod_fake.catalog import GpuTypeSpec
from tests.utils import eventually

RTX4090 = GPU_MODELS[2]  # 24 GB, two per node
CATALOG = (
    GpuTypeSpec("NVIDIA RTX A4000", "RTX A4000", 16, 0.17, None),  # cheapest, too small
    GpuTypeSpec("NVIDIA RTX A6000", "RTX A6000", 48, 0.49, None),
    GpuTypeSpec("NVIDIA GeForce RTX 4090", "RTX 4090", 24, 0.69, None),
    GpuTypeSpec("NVIDIA H100 80GB HBM3", "H100 SXM", 80, 2.69, None),
)
NOTICE = re.compile(
    r'<p class="alert alert-info" id="thinkube-cloud-instead-notice">(.*?)</p>', re.S
)


async def fill_the_lab(sim) -> None:
    """Someone else's pod takes both of the lab's GPUs."""
    api = await api_client_for(sim.kubeconfig)
    try:
        await client.CoreV1Api(api).create_namespaced_pod(
            "default",
            {
                "metadata": {"name": "training-run"},
                "spec": {
                    "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists"}],
                    "containers": [
                        {
                            "name": "main",
                            "image": "python:3.12",
                            "command": [sys.executable, "-c", "import time; time.sleep(600)"],
                            "resources": {"limits": {"nvidia.com/gpu": "2"}},
                        }
                    ],
                },
            },
        )
    finally:
        await api.close()


async def test_a_full_lab_offers_the_cheapest_cloud_gpu_within_the_cap(
    make_kubesim, make_runpod_fake, tmp_path
):
    sim = await make_kubesim(process_runtime=True)
    sim.load(
        [
            make_node("gpu-4090", RTX4090.cpu, RTX4090.memory_gi, RTX4090, 0),
            make_node("cpu-1", 16, 64, None, 1),
        ]
    )
    fake = await make_runpod_fake(gpu_types=CATALOG, start_delay_s=0.3)
    config = cloud_config(sim, fake, free_port(), cloud_user_price_caps={"bob": 0.6, "carol": 0.4})
    async with running_hub(tmp_path / "hub", sim=sim, config=config, service_env=fake.env()) as hub:
        await fill_the_lab(sim)

        async def form_of(browser):
            page = await browser.get(urljoin(hub.url, "hub/spawn"), follow_redirects=True)
            full = "RTX 4090 (0 free" in page.text and "RunPod secure cloud:" in page.text
            return page.text if full else None

        bob = await hub.login("bob")
        html = await eventually(lambda: form_of(bob), within=30)
        where = re.search(r'<option value="(gpu:[^"]*4090[^"]*)"', html).group(1)
        choice = {
            option("where"): where,
            option("gpus"): "1",
            option("cpu"): "1",
            option("memory"): "1",
        }

        # bob's choice does not fit: the form comes back with the refusal and the offer.
        refused = await submit(bob, hub, {**form_fields(html), **choice})
        assert refused.status_code == 409, refused.text[:1000]
        page = unescape(refused.text)
        assert "No RTX 4090 is free now." in page
        (notice,) = NOTICE.findall(refused.text)
        assert unescape(re.sub(r"<[^>]+>", "", notice)) == (
            "The lab has no room for this choice now. An RTX A6000 on RunPod is free now at "
            "$0.49/h — start there instead."
        )
        link = unescape(re.search(r'id="thinkube-cloud-instead" href="([^"]+)"', notice).group(1))
        parts = urlsplit(link)
        assert parts.path == "/hub/spawn/bob"
        assert parse_qs(parts.query) == {
            "opt-profile": ["thinkube"],
            "opt-image": [form_fields(html)[option("image")]],
            "opt-cpu": ["1"],
            "opt-memory": ["1"],
            "opt-where": ["cloud:SECURE:NVIDIA RTX A6000:1"],
            "opt-pricing": ["on-demand"],
            "opt-gpus": ["1"],
        }
        assert "H100" not in notice and "4090 on RunPod" not in notice
        assert not fake.requests_for("podFindAndDeployOnDemand")
        assert [p.metadata.name for p in await pods(sim)] == []

        # One click: the same choice, rented on that offer, reached through the hub's proxy.
        clicked = await bob.get(urljoin(hub.url, link.lstrip("/")), follow_redirects=False)
        assert clicked.status_code == 302, clicked.text[:1000]
        async with admin_api(hub) as api:
            await wait_ready(api, "bob")
            (rented,) = fake.pods.values()
            assert rented.input["gpuTypeId"] == "NVIDIA RTX A6000"
            assert rented.input["cloudType"] == "SECURE" and rented.pod_type == "RESERVED"
            token = hub.token("bob")
            async with httpx.AsyncClient(headers={"Authorization": f"token {token}"}) as http:
                status = await http.get(urljoin(hub.url, "user/bob/api/status"))
            assert status.status_code == 200, status.text[:300]
            assert (await api.delete("users/bob/server")).status_code in (202, 204)
            await wait_gone(api, "bob")

        # carol's cap is below every offer that fits: the refusal offers nothing.
        carol = await hub.login("carol")
        html = await eventually(lambda: form_of(carol), within=30)
        assert "RTX A4000" in unescape(html)  # within her cap, in the form
        refused = await submit(carol, hub, {**form_fields(html), **choice})
        assert refused.status_code == 409, refused.text[:1000]
        assert "No RTX 4090 is free now." in unescape(refused.text)
        assert "start there instead" not in refused.text
        assert not NOTICE.findall(refused.text)
        # A link made up for an offer over her cap, or with a value the form would not
        # offer, is refused with the reason; nothing is rented.
        for query, reason in (
            (
                "opt-where=cloud%3ASECURE%3ANVIDIA+H100+80GB+HBM3%3A1&opt-gpus=1",
                "H100 SXM costs $2.69/h on demand, over your cloud limit of $0.40/h.",
            ),
            ("opt-where=cpu&opt-cpu=lots", "CPUs must be one of 1, 2, 4; got 'lots'."),
            ("opt-where=cpu&opt-colour=red", "Unknown server option(s): colour."),
        ):
            tampered = await carol.get(urljoin(hub.url, f"hub/spawn/carol?{query}"))
            assert tampered.status_code == 400, tampered.text[:1000]
            assert reason in unescape(tampered.text)
        assert len(fake.requests_for("podFindAndDeployOnDemand")) == 1
