"""Waiting for a GPU through a real hub on kubesim: people fill every A100 with notebook
servers, another chooses "Wait for the next free A100" in the spawn form, sees their place,
and gets their server (the chosen image and size, through the proxy) when one frees; leaving
the queue starts nothing; a request expires; a cap refuses one; nothing waits on the hub's
start_timeout."""

from __future__ import annotations

import json
import time
from html import unescape
from urllib.parse import urljoin

import httpx
from kubernetes_asyncio import client

from hub_service.catalog import DEFAULT_IMAGES
from tests.conftest import api_client_for
from tests.e2e.test_thinkube_spawner import (
    A100,
    CLAIMS,
    claim,
    form_fields,
    hub_config,
    option,
    pods,
    spawn_page,
    stop,
    storage_class,
    submit,
    wait_running,
)
from tests.kubesim.generator import make_node
from tests.utils import eventually

A100_KEY = "gpu:nvidia-a100-sxm4-80gb"
ENTRY_LABEL = "thinkube.io/job-id"
HTML = {"Accept": "text/html"}  # what a browser asks for
# A catalog image other than the default, so that the started server's is the chosen one.
IMAGE = next(i for i in DEFAULT_IMAGES if not i.get("default") and i["kind"] == "jupyter")


async def a100_lab(make_kubesim, nodes: int = 2):
    sim = await make_kubesim(process_runtime=True)
    sim.load(
        [
            *[make_node(f"gpu-{n}", A100.cpu, A100.memory_gi, A100, n) for n in range(nodes)],
            make_node("cpu-1", 16, 64, None, 9),
            storage_class("seaweedfs"),
            *[claim(name) for name in CLAIMS],
        ]
    )
    return sim


def service_args(**settings) -> list[str]:
    """The service's own settings (it is a process of its own: command-line options)."""
    settings = {"server_max_age_seconds": 3600, **settings}
    return [f"--ThinkubeService.{name}={value}" for name, value in settings.items()]


async def fill(hub, user: str) -> None:
    """A server holding every A100 of one node, through the hub's REST API."""
    options = {"where": A100_KEY, "gpus": "4", "cpu": "1", "memory": "1"}
    async with httpx.AsyncClient(
        base_url=urljoin(hub.url, "hub/api/"),
        headers={"Authorization": f"token {hub.token(user)}"},
        timeout=60,
    ) as api:
        response = await api.post(f"users/{user}/server", json=options)
    assert response.status_code in (201, 202), response.text
    await wait_running(hub, user)


async def wait_choice(hub, user: str, gpus: str = "1") -> tuple[httpx.AsyncClient, httpx.Response]:
    """`user` opens the spawn form and chooses to wait for the next free A100."""
    browser, html = await spawn_page(hub, user)
    assert "Wait for the next free A100 SXM4 80GB" in html
    fields = form_fields(html)
    fields.update(
        {
            option("where"): "wait:" + A100_KEY,
            option("image"): IMAGE["name"],
            option("gpus"): gpus,
            option("cpu"): "2",
            option("memory"): "2",
        }
    )
    return browser, await submit(browser, hub, fields)


async def test_a_person_waits_for_the_next_free_a100_and_gets_their_server(
    make_kubesim, hub_with_service
):
    sim = await a100_lab(make_kubesim)
    hub = await hub_with_service(
        sim=sim, config=hub_config(sim), service_args=service_args(gpus_max_per_user=2)
    )
    await fill(hub, "alice")
    await fill(hub, "bob")

    # carol chooses to wait: the hub answers at once, sending her to her place in the queue
    browser, answer = await wait_choice(hub, "carol")
    assert answer.status_code == 303, answer.text[:500]
    page_url = urljoin(hub.url, answer.headers["location"])
    assert "/waiting/s-" in page_url
    page = await browser.get(page_url, headers=HTML)
    assert page.status_code == 200, page.text[:300]
    assert 'id="position">#1<' in page.text
    # alice's and bob's servers may run an hour (server_max_age_seconds): an estimate
    assert "in about 1 h" in page.text and "(estimate)" in page.text
    assert 'action="' in page.text and "/cancel" in page.text
    carol = hub.client(hub.token("carol"))
    (waiting,) = (await carol.get("api/v1/waiting")).json()["waiting"]
    assert (waiting["status"], waiting["position"], waiting["gpus"]) == ("waiting", 1, 1)
    assert waiting["eta"]["estimate"] is True
    assert waiting["user_options"]["image"] == IMAGE["name"]
    # the hub holds no pending spawn for her: nothing waits on its start_timeout
    admin = httpx.AsyncClient(
        base_url=urljoin(hub.url, "hub/api/"),
        headers={"Authorization": f"token {hub._admin}"},
    )
    assert (await admin.get("users/carol")).json()["servers"] == {}
    # the queue shows her request among everything waiting, GPU jobs included
    queue = (await carol.get("api/v1/queue")).json()
    assert [(i["kind"], i["user"]) for i in queue["jobs"]] == [("server", "carol")]
    # one request per server: choosing to wait again sends her to the same place
    _, again = await wait_choice(hub, "carol")
    assert again.status_code == 303 and again.headers["location"] == answer.headers["location"]
    assert "You already wait for this server" in again.text

    # dave waits too, through the REST API; then leaves: nothing of his ever starts
    dave_api = httpx.AsyncClient(
        base_url=urljoin(hub.url, "hub/api/"),
        headers={"Authorization": f"token {hub.token('dave')}"},
    )
    response = await dave_api.post(
        "users/dave/server", json={"where": A100_KEY, "gpus": "1", "wait": "1"}
    )
    assert response.status_code == 303, response.text
    assert (
        "You wait for the next free NVIDIA A100 SXM4 80GB (any node): #2"
        in (response.json()["message"])
    )
    dave = hub.client(hub.token("dave"))
    (dave_waiting,) = (await dave.get("api/v1/waiting")).json()["waiting"]
    assert dave_waiting["position"] == 2
    left = await dave.delete(f"api/v1/waiting/{dave_waiting['id']}")
    assert left.status_code == 200 and left.json()["status"] == "cancelled"
    assert (await carol.get(f"api/v1/waiting/{dave_waiting['id']}")).status_code == 404
    assert (await carol.get(f"api/v1/waiting/{waiting['id']}")).json()["position"] == 1

    # erin's four GPUs are over the cap of two a person may hold: refused, with why
    erin_browser, refused = await wait_choice(hub, "erin", gpus="4")
    assert refused.status_code == 409
    assert "over your limit of 2 GPUs at once" in refused.text

    # alice stops: carol's server starts by itself, with her image and size
    await stop(hub, "alice")
    started = time.monotonic()
    model = await wait_running(hub, "carol", within=60)
    assert model["servers"][""]["ready"]
    (pod,) = [p for p in await pods(sim) if p.metadata.labels.get(ENTRY_LABEL) == waiting["id"]]
    container = pod.spec.containers[0]
    assert container.image == IMAGE["image"]
    assert container.resources.limits["nvidia.com/gpu"] == "1"
    assert container.resources.limits["cpu"] == "2"
    assert pod.spec.node_name == "gpu-0"  # where alice's GPUs freed
    async with httpx.AsyncClient(headers={"Authorization": f"token {hub.token('carol')}"}) as http:
        status = await http.get(urljoin(hub.url, "user/carol/api/status"))
    assert status.status_code == 200, status.text[:300]
    done = (await carol.get(f"api/v1/waiting/{waiting['id']}")).json()
    assert done["status"] == "started" and done["message"].startswith("started on")
    # her page moves on to her server
    moved = await browser.get(page_url, headers=HTML)
    assert moved.status_code == 302 and moved.headers["location"] == "/user/carol/"
    # nothing of dave's was started when GPUs freed
    assert not [p for p in await pods(sim) if "dave" in p.metadata.name]
    assert (await admin.get("users/dave")).json()["servers"] == {}
    assert time.monotonic() - started < 60
    await admin.aclose()
    await dave_api.aclose()


async def test_a_request_that_waits_too_long_expires_and_starts_nothing(
    make_kubesim, hub_with_service
):
    sim = await a100_lab(make_kubesim, nodes=1)
    hub = await hub_with_service(
        sim=sim, config=hub_config(sim), service_args=service_args(waiting_max_seconds=2)
    )
    await fill(hub, "alice")
    browser, answer = await wait_choice(hub, "carol")
    assert answer.status_code == 303, answer.text[:500]
    carol = hub.client(hub.token("carol"))

    async def expired():
        (request,) = (await carol.get("api/v1/waiting")).json()["waiting"]
        return request if request["status"] == "expired" else None

    request = await eventually(expired, within=20, interval=0.3)
    assert request["message"].startswith(
        "Waited 2 s for the next free NVIDIA A100 SXM4 80GB (any node), the longest a request"
    )
    page = await browser.get(urljoin(hub.url, answer.headers["location"]), headers=HTML)
    assert "expired" in page.text and "Back to the spawn form" in page.text
    # freed GPUs start nothing of hers
    await stop(hub, "alice")
    await eventually(lambda: _no_pods(sim), within=10, interval=0.3)
    assert (await carol.get("api/v1/queue")).json()["jobs"] == []


async def _no_pods(sim) -> bool:
    return await pods(sim) == []


async def wait_through_the_api(hub, user: str) -> dict:
    """`user` waits for the next free A100 through the hub's REST API; their request."""
    async with httpx.AsyncClient(
        base_url=urljoin(hub.url, "hub/api/"),
        headers={"Authorization": f"token {hub.token(user)}"},
        timeout=60,
    ) as api:
        response = await api.post(
            f"users/{user}/server",
            json={"where": A100_KEY, "gpus": "1", "cpu": "1", "memory": "1", "wait": "1"},
        )
    assert response.status_code == 303, response.text
    (request,) = (await hub.client(hub.token(user)).get("api/v1/waiting")).json()["waiting"]
    return request


async def server_sent_events(response: httpx.Response):
    """(event, data) of a Server-Sent Events stream, comments skipped."""
    name, data = None, []
    async for line in response.aiter_lines():
        if line.startswith(":"):
            continue
        if not line:
            if name is not None:
                yield name, json.loads("\n".join(data))
            name, data = None, []
        elif line.startswith("event:"):
            name = line[6:].strip()
        elif line.startswith("data:"):
            data.append(line[5:].strip())


async def test_position_changes_are_pushed_until_the_server_starts(make_kubesim, hub_with_service):
    sim = await a100_lab(make_kubesim, nodes=1)
    hub = await hub_with_service(sim=sim, config=hub_config(sim), service_args=service_args())
    await fill(hub, "alice")
    carol = await wait_through_the_api(hub, "carol")
    dave = await wait_through_the_api(hub, "dave")
    events_path = f"api/v1/waiting/{dave['id']}/events"
    # someone else's request is not theirs to follow; nor is one that does not exist
    assert (await hub.client(hub.token("carol")).get(events_path)).status_code == 404
    missing = await hub.client(hub.token("dave")).get("api/v1/waiting/s-000000000000/events")
    assert missing.status_code == 404 and "no waiting request" in missing.json()["error"]

    seen, carol_left = [], False
    async with httpx.AsyncClient(
        base_url=hub.service_url,
        headers={"Authorization": f"token {hub.token('dave')}"},
        timeout=httpx.Timeout(10, read=90),
    ) as http:
        async with http.stream("GET", events_path) as response:
            assert response.status_code == 200
            assert response.headers["content-type"].startswith("text/event-stream")
            async for name, data in server_sent_events(response):
                seen.append((name, data))
                if name == "position" and data["position"] == 2 and not carol_left:
                    # carol, ahead of him, leaves the queue
                    carol_left = True
                    left = await hub.client(hub.token("carol")).delete(
                        f"api/v1/waiting/{carol['id']}"
                    )
                    assert left.status_code == 200
                elif name == "position" and data["position"] == 1:
                    await stop(hub, "alice")  # a GPU frees: his server starts
    names = [name for name, _ in seen]
    assert names[0] == "position" and seen[0][1]["position"] == 2
    assert seen[0][1]["queued"] == 2 and seen[0][1]["eta_text"]
    places = [data["position"] for name, data in seen if name == "position"]
    assert places[-1] == 1 and sorted(places, reverse=True) == places  # it only moved up
    assert names[-1] == "started" and "starting" in names
    assert names.index("starting") < len(names) - 1
    assert seen[-1][1]["url"] == "/user/dave/"
    model = await wait_running(hub, "dave", within=60)
    assert model["servers"][""]["ready"]
    # the stream of a request that ended says so at once, and ends
    async with httpx.AsyncClient(
        base_url=hub.service_url, headers={"Authorization": f"token {hub.token('carol')}"}
    ) as http:
        async with http.stream("GET", f"api/v1/waiting/{carol['id']}/events") as response:
            ended = [event async for event in server_sent_events(response)]
    assert ended == [("ended", {"status": "cancelled", "message": "left the queue"})]


async def test_the_cap_on_gpus_held_counts_notebooks_and_jobs_at_submit_too(
    make_kubesim, hub_with_service
):
    sim = await a100_lab(make_kubesim, nodes=1)
    hub = await hub_with_service(
        sim=sim, config=hub_config(sim), service_args=service_args(gpus_max_per_user=2)
    )
    await fill(hub, "alice")  # her notebook server holds all four A100s
    job = {"script": "print('hi')", "gpus": 1, "cpu": 1, "memory": "1Gi", "expected_time": "10m"}

    # a GPU job over her cap is refused, in words, and nothing is queued
    alice = hub.client(hub.token("alice"))
    refused = await alice.post("api/v1/jobs", json=job)
    assert refused.status_code == 409, refused.text
    assert refused.json() == {
        "status": 409,
        "error": "You hold 4 GPUs (notebook servers and jobs); this job's 1 would make 5, over "
        "your limit of 2 GPUs at once. Stop a server or end a job first.",
        "field": "gpus",
    }
    # a job without GPUs is not counted
    cpu_job = await alice.post("api/v1/jobs", json={**job, "gpus": 0})
    assert cpu_job.status_code == 201, cpu_job.text

    # carol holds nothing: a job of two GPUs waits; one GPU more, as a job or as a waiting
    # server, is over her cap (what she waits for counts), by the same check
    carol = hub.client(hub.token("carol"))
    queued = await carol.post("api/v1/jobs", json={**job, "gpus": 2})
    assert queued.status_code == 201, queued.text
    assert queued.json()["status"] == "queued"
    again = await carol.post("api/v1/jobs", json=job)
    assert again.status_code == 409
    assert again.json()["error"].startswith(
        "You hold 0 GPUs (notebook servers and jobs) and wait for 2 more; this job's 1 would "
        "make 3, over your limit of 2 GPUs at once."
    )
    _, server = await wait_choice(hub, "carol")
    assert server.status_code == 409
    assert "and wait for 2 more; this server's 1 would make 3" in unescape(server.text)
    jobs = (await carol.get("api/v1/queue")).json()["jobs"]
    assert [(j["user"], j["kind"]) for j in jobs if j["user"] == "carol"] == [("carol", "job")]
    assert (await carol.post(f"api/v1/jobs/{queued.json()['id']}/cancel")).status_code == 200
    await alice.post(f"api/v1/jobs/{cpu_job.json()['id']}/cancel")


async def delete_claim(sim, name: str) -> None:
    api = await api_client_for(sim.kubeconfig)
    try:
        await client.CoreV1Api(api).delete_namespaced_persistent_volume_claim(name, "default")
    finally:
        await api.close()


async def claim_gone(sim, name: str) -> bool:
    api = await api_client_for(sim.kubeconfig)
    try:
        await client.CoreV1Api(api).read_namespaced_persistent_volume_claim(name, "default")
    except client.ApiException as err:
        return err.status == 404
    finally:
        await api.close()
    return False


async def test_a_start_that_fails_puts_the_request_back_at_its_place(
    make_kubesim, hub_with_service
):
    sim = await a100_lab(make_kubesim, nodes=1)
    hub = await hub_with_service(sim=sim, config=hub_config(sim), service_args=service_args())
    await fill(hub, "alice")
    request = await wait_through_the_api(hub, "carol")
    carol = hub.client(hub.token("carol"))
    # the storage the servers mount goes away: the spawner's check at submit refuses
    await delete_claim(sim, CLAIMS[1])
    await stop(hub, "alice")  # a GPU frees: the queue asks the hub to start carol's server

    async def back_in_the_queue():
        view = (await carol.get(f"api/v1/waiting/{request['id']}")).json()
        return view if view["status"] == "waiting" and view["message"] else None

    view = await eventually(back_in_the_queue, within=30, interval=0.2)
    assert view["position"] == 1
    assert view["message"].startswith(
        f"Not started yet: The shared storage claim {CLAIMS[1]!r} does not exist"
    )
    assert view["message"].endswith("It waits again, at its place.")
    # the storage is back: the next try starts it
    await eventually(lambda: claim_gone(sim, CLAIMS[1]), within=20, interval=0.2)
    sim.load([claim(CLAIMS[1])])
    model = await wait_running(hub, "carol", within=60)
    assert model["servers"][""]["ready"]
    done = (await carol.get(f"api/v1/waiting/{request['id']}")).json()
    assert done["status"] == "started"


async def test_a_start_that_keeps_failing_ends_with_the_hubs_reason(make_kubesim, hub_with_service):
    sim = await a100_lab(make_kubesim, nodes=1)
    hub = await hub_with_service(sim=sim, config=hub_config(sim), service_args=service_args())
    await fill(hub, "alice")
    request = await wait_through_the_api(hub, "carol")
    carol = hub.client(hub.token("carol"))
    await delete_claim(sim, CLAIMS[1])
    await stop(hub, "alice")

    async def ended():
        view = (await carol.get(f"api/v1/waiting/{request['id']}")).json()
        return view if view["status"] not in ("waiting", "starting") else None

    view = await eventually(ended, within=60, interval=0.2)
    assert view["status"] == "failed"
    assert view["message"] == (
        "The hub was asked 3 times to start it and could not: The shared storage claim "
        f"{CLAIMS[1]!r} does not exist in namespace 'default'. Nothing was started; please "
        "tell the hub's admin. It has left the queue; start again from the spawn form to "
        "wait again."
    )
    # nothing of hers runs, nothing waits
    assert not [p for p in await pods(sim) if "carol" in p.metadata.name]
    async with httpx.AsyncClient(
        base_url=urljoin(hub.url, "hub/api/"), headers={"Authorization": f"token {hub._admin}"}
    ) as admin:
        assert (await admin.get("users/carol")).json()["servers"] == {}
    assert (await carol.get("api/v1/queue")).json()["jobs"] == []
