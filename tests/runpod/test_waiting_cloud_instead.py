"""If the lab stays full while a person waits: their waiting page offers the cheapest RunPod
offer that runs the same choice within their cap, and its one click leaves the queue and
rents it through the hub's one-click cloud start (the spawn form's refusal's link). A
person whose cap is below every fitting offer is offered nothing. End to end: a real
JupyterHub behind the real configurable-http-proxy, the managed service watching kubesim
and holding the RunPod stand-in's offers, the rented "pod" reached through the proxy.
"""

from __future__ import annotations

import re
from html import unescape
from urllib.parse import parse_qs, urljoin, urlsplit

import httpx

from tests.e2e.test_thinkube_spawner import form_fields, option, pods, submit
from tests.hub_fixtures import running_hub
from tests.kubesim.generator import make_node
from tests.kubesim.sim import free_port
from tests.runpod.cloud_hub import admin_api, wait_gone, wait_ready
from tests.runpod.test_cloud_instead import CATALOG, RTX4090, fill_the_lab
from tests.runpod.test_thinkube_cloud import cloud_config
from tests.utils import eventually

HTML = {"Accept": "text/html"}
OFFER_FORM = re.compile(r'<div class="cloud" id="cloud-offer">(.*?)</div>', re.S)


def hidden_fields(html: str) -> dict[str, str]:
    return {
        unescape(name): unescape(value)
        for name, value in re.findall(r'<input type="hidden" name="([^"]+)" value="([^"]*)"', html)
    }


async def test_the_waiting_page_offers_a_cloud_gpu_within_the_cap_and_rents_it(
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

        async def wait_for_4090(user: str) -> tuple[httpx.AsyncClient, str]:
            """`user` chooses to wait for the next free RTX 4090; their waiting page."""
            browser = await hub.login(user)

            async def full_form():
                page = await browser.get(urljoin(hub.url, "hub/spawn"), follow_redirects=True)
                full = "RTX 4090 (0 free" in page.text and "Wait for the next free" in page.text
                return page.text if full else None

            html = await eventually(full_form, within=30)
            where = re.search(r'<option value="(wait:gpu:[^"]*4090[^"]*)"', html).group(1)
            fields = {
                **form_fields(html),
                option("where"): where,
                option("gpus"): "1",
                option("cpu"): "1",
                option("memory"): "1",
            }
            answer = await submit(browser, hub, fields)
            assert answer.status_code == 303, answer.text[:1000]
            assert "/waiting/s-" in answer.headers["location"]
            return browser, urljoin(hub.url, answer.headers["location"])

        # bob waits; his page offers the cheapest offer of 24 GB or more within his $0.60/h
        bob, page_url = await wait_for_4090("bob")
        page = await bob.get(page_url, headers=HTML)
        assert page.status_code == 200, page.text[:500]
        assert 'id="position">#1<' in page.text
        (offer_html,) = OFFER_FORM.findall(page.text)
        assert unescape(re.sub(r"<[^>]+>", "", offer_html)).split("\n")[1].strip() == (
            "An RTX A6000 on RunPod is free now at $0.49/h — start there instead."
        )
        action = unescape(re.search(r'<form method="post" action="([^"]+)"', offer_html).group(1))
        fields = hidden_fields(offer_html)
        assert fields["offer"] == "SECURE:NVIDIA RTX A6000:1"
        assert not fake.requests_for("podFindAndDeployOnDemand")

        # one click: out of the queue, on to the hub's one-click cloud start
        clicked = await bob.post(urljoin(hub.url, action), data=fields, follow_redirects=False)
        assert clicked.status_code == 303, clicked.text[:500]
        link = urlsplit(clicked.headers["location"])
        assert link.path == "/hub/spawn/bob"
        options = parse_qs(link.query)
        assert options["opt-where"] == ["cloud:SECURE:NVIDIA RTX A6000:1"]
        assert options["opt-gpus"] == ["1"] and options["opt-pricing"] == ["on-demand"]
        bob_api = hub.client(hub.token("bob"))
        (left,) = (await bob_api.get("api/v1/waiting")).json()["waiting"]
        assert left["status"] == "cancelled"
        assert (await bob_api.get("api/v1/queue")).json()["jobs"] == []
        started = await bob.get(urljoin(hub.url, clicked.headers["location"]))
        assert started.status_code == 302, started.text[:500]
        async with admin_api(hub) as api:
            await wait_ready(api, "bob")
            (rented,) = fake.pods.values()
            assert rented.input["gpuTypeId"] == "NVIDIA RTX A6000"
            async with httpx.AsyncClient(
                headers={"Authorization": f"token {hub.token('bob')}"}
            ) as http:
                status = await http.get(urljoin(hub.url, "user/bob/api/status"))
            assert status.status_code == 200, status.text[:300]
            # the page of the request he left says so, and offers nothing more
            after = await bob.get(page_url, headers=HTML)
            assert "You left the queue" in after.text and "cloud-offer" not in after.text
            assert (await api.delete("users/bob/server")).status_code in (202, 204)
            await wait_gone(api, "bob")
        assert not fake.pods
        assert len(fake.requests_for("podFindAndDeployOnDemand")) == 1

        # carol's cap of $0.40/h is below every offer that fits: her page offers nothing,
        # and a made-up click changes nothing
        carol, carol_page = await wait_for_4090("carol")
        page = await carol.get(carol_page, headers=HTML)
        assert 'id="position">#1<' in page.text and "cloud-offer" not in page.text
        xsrf = hidden_fields(page.text)["_xsrf"]
        for offer in ("SECURE:NVIDIA RTX A6000:1", "SECURE:NVIDIA RTX A4000:1", ""):
            tampered = await carol.post(
                carol_page + "/cloud", data={"_xsrf": xsrf, "offer": offer}, follow_redirects=False
            )
            assert tampered.status_code == 303 and tampered.headers["location"].endswith(
                urlsplit(carol_page).path
            ), tampered.text[:300]
        carol_api = hub.client(hub.token("carol"))
        (waiting,) = (await carol_api.get("api/v1/waiting")).json()["waiting"]
        assert (waiting["status"], waiting["position"]) == ("waiting", 1)
        # carol's request is hers alone
        theirs = await bob.post(
            carol_page + "/cloud",
            data={"_xsrf": fields["_xsrf"], "offer": "SECURE:NVIDIA RTX A6000:1"},
            follow_redirects=False,
        )
        assert theirs.status_code == 404, theirs.text[:300]
        assert (await carol_api.delete(f"api/v1/waiting/{waiting['id']}")).status_code == 200
        assert len(fake.requests_for("podFindAndDeployOnDemand")) == 1
        assert [p.metadata.name for p in await pods(sim)] == []
