"""ThinkubeSpawner's form with RunPod offers beside the lab's nodes, end to end: a real
JupyterHub behind the real configurable-http-proxy, the managed availability service
watching kubesim and holding the RunPod stand-in's offers, and a cloud choice that rents a
"pod" whose dockerArgs run a real jupyterhub-singleuser, reached through the hub's proxy.
"""

from __future__ import annotations

import logging
from html import unescape
from urllib.parse import urljoin

import httpx
import pytest

from tests.e2e.test_thinkube_spawner import form_fields, hub_config, option, pods, submit
from tests.hub_fixtures import running_hub
from tests.kubesim.generator import make_node
from tests.kubesim.sim import free_port
from tests.runpod.cloud_hub import admin_api, progress_messages, wait_gone, wait_ready
from tests.runpod.test_spawner_hub import LogLines, leaks
from tests.utils import eventually

RTX4090 = "cloud:SECURE:NVIDIA GeForce RTX 4090:1"


@pytest.fixture
async def lab(make_kubesim):
    sim = await make_kubesim(process_runtime=True)
    sim.load([make_node("cpu-1", 16, 64, None, 1)])
    return sim


def cloud_config(sim, fake, port: int, **spawner) -> dict:
    config = hub_config(
        sim,
        runpod_api_key=fake.api_key,
        runpod_api_url=fake.url,
        runpod_proxy_url_template=fake.proxy_url_template,
        cloud_price_cap=1.0,
        cloud_poll_interval=0.1,
        cloud_start_timeout=60,
        shared_volumes=[],
        **spawner,
    )
    public = f"http://127.0.0.1:{port}/"
    config["JupyterHub"].update(bind_url=public, public_url=public)
    # RunPod's proxy routes by host name: send it the pod's (see tests/runpod/test_spawner_hub)
    config["ConfigurableHTTPProxy"] = {"command": ["configurable-http-proxy", "--change-origin"]}
    return config


async def test_a_cloud_offer_from_the_thinkube_form(lab, make_runpod_fake, tmp_path, caplog):
    caplog.set_level("DEBUG")
    hub_log = LogLines()
    logging.getLogger().addHandler(hub_log)
    fake = await make_runpod_fake(start_delay_s=0.3)
    pages: list[str] = []
    try:
        async with running_hub(
            tmp_path / "hub",
            sim=lab,
            config=cloud_config(lab, fake, free_port()),
            service_env=fake.env(),
        ) as hub:
            browser = await hub.login("alice")

            async def form_with_offers():
                page = await browser.get(urljoin(hub.url, "hub/spawn"), follow_redirects=True)
                return page.text if "RunPod secure cloud:" in page.text else None

            html = await eventually(form_with_offers, within=20)
            pages.append(html)
            text = unescape(html)
            # the lab's node and the offers within alice's $1/h, in one menu
            assert "cpu-1: " in text
            assert "RunPod secure cloud: RTX 4090 24 GB, $0.69/h on demand, $0.35/h spot" in text
            assert "H100" not in text  # above the cap either way
            assert "does not have the lab's shared storage" in text

            # A tampered choice above the cap is refused; nothing is rented.
            fields = form_fields(html)
            h100 = {**fields, option("where"): "cloud:SECURE:NVIDIA H100 80GB HBM3:1"}
            refused = await submit(browser, hub, h100)
            pages.append(refused.text)
            assert refused.status_code == 400 or "over your cloud limit" in unescape(refused.text)
            assert "over your cloud limit of $1.00/h" in unescape(refused.text)
            assert not fake.requests_for("podFindAndDeployOnDemand")

            fields.update({option("where"): RTX4090, option("pricing"): "on-demand"})
            response = await submit(browser, hub, fields)
            assert response.status_code == 302, response.text[:1000]
            async with admin_api(hub) as api:
                messages = await progress_messages(api, "alice")
                pages.append("\n".join(messages))
                assert any(m.startswith("Asking RunPod for RTX 4090") for m in messages)
                await wait_ready(api, "alice")
                (pod,) = fake.pods.values()
                assert pod.input["gpuTypeId"] == "NVIDIA GeForce RTX 4090"
                assert pod.input["cloudType"] == "SECURE" and pod.pod_type == "RESERVED"
                assert pod.env["THINKUBE_USER"] == "alice"
                assert pod.env["JUPYTERHUB_API_URL"] == f"{hub.url}hub/api"
                # the catalog's default image has no cloud_image: the spawner's cloud image
                assert pod.image_name.startswith("runpod/pytorch")
                # no Kubernetes pod was made for it
                assert await pods(lab) == []

                token = hub.token("alice")
                async with httpx.AsyncClient(headers={"Authorization": f"token {token}"}) as http:
                    status = await http.get(urljoin(hub.url, "user/alice/api/status"))
                    assert status.status_code == 200, status.text[:300]

                # the hub restarts nothing here; stopping terminates the pod
                stopped = await api.delete("users/alice/server")
                assert stopped.status_code in (202, 204)
                await wait_gone(api, "alice")
                assert pod.id in fake.terminated and not fake.pods

                # A lab server of the same hub, behind the same --change-origin proxy,
                # still takes the browser's API calls from the hub's pages.
                bob = await hub.login("bob")
                page = await bob.get(urljoin(hub.url, "hub/spawn"), follow_redirects=True)
                fields = form_fields(page.text)
                fields.update({option("where"): "cpu", option("cpu"): "1", option("memory"): "1"})
                started = await submit(bob, hub, fields)
                assert started.status_code == 302, started.text[:1000]
                await wait_ready(api, "bob")
                (kube_pod,) = await pods(lab)
                assert kube_pod.spec.containers[0].args[-1] == (
                    f"--ServerApp.allow_origin={hub.url.rstrip('/')}"
                )
                lab_page = await bob.get(urljoin(hub.url, "user/bob/"), follow_redirects=True)
                assert lab_page.status_code == 200, lab_page.text[:300]
                xsrf = next(
                    c.value
                    for c in bob.cookies.jar
                    if c.name == "_xsrf" and c.path.startswith("/user/bob")
                )
                created = await bob.post(
                    urljoin(hub.url, "user/bob/api/contents"),
                    json={"type": "notebook"},
                    headers={"Origin": hub.url.rstrip("/"), "X-XSRFToken": xsrf},
                )
                assert created.status_code == 201, created.text[:300]
                assert (await api.delete("users/bob/server")).status_code in (202, 204)
                await wait_gone(api, "bob")
    finally:
        logging.getLogger().removeHandler(hub_log)
    secrets = {fake.api_key} | {
        p.env["JUPYTERHUB_API_TOKEN"]
        for p in [*fake.pods.values(), *fake.terminated.values()]
        if p.env.get("JUPYTERHUB_API_TOKEN")
    }
    assert len(secrets) == 2
    service_log = (tmp_path / "hub" / "service.log").read_text()
    haystacks = {
        "hub log": "\n".join(hub_log.lines),
        "service log": service_log,
        **{f"page[{i}]": p for i, p in enumerate(pages)},
    }
    assert len(hub_log.lines) > 50
    assert leaks(haystacks, secrets) == []
