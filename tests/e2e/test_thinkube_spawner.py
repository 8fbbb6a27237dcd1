"""ThinkubeSpawner end to end: a real JupyterHub behind the real configurable-http-proxy, the
managed availability service, and kubesim running pods as real `jupyterhub-singleuser`
processes.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import sys
from html import unescape
from pathlib import Path
from urllib.parse import urljoin

import httpx
import pytest
from kubernetes_asyncio import client

from tests.conftest import api_client_for
from tests.hub_fixtures import SPAWNER_HUB_ROLES
from tests.kubesim.generator import GPU_MODELS, make_node
from tests.utils import eventually

SINGLEUSER = str(Path(sys.executable).parent / "jupyterhub-singleuser")
A100 = GPU_MODELS[0]
CLAIMS = ("thinkube-notebooks", "thinkube-datasets", "thinkube-models")


def claim(name: str) -> dict:
    return {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {
            "accessModes": ["ReadWriteMany"],
            "storageClassName": "seaweedfs",
            "resources": {"requests": {"storage": "100Gi"}},
        },
    }


def record_tokens(config: dict) -> list[str]:
    """The servers' hub tokens, as each spawn gets one (the hub forgets a failed one's): for
    the checks that no log line carries them."""
    tokens: list[str] = []
    config["ThinkubeSpawner"]["pre_spawn_hook"] = lambda spawner: tokens.append(spawner.api_token)
    return tokens


def assert_no_secret_logged(text: str, tokens: list[str]) -> None:
    assert tokens and all(tokens)
    leaks = [
        line.replace(token, "<TOKEN>")[:400]
        for token in tokens
        for line in text.splitlines()
        if token in line
    ]
    assert leaks == []


def storage_class(name: str, binding: str = "Immediate") -> dict:
    """A class kubesim provisions claims of (binding now, or when a pod first uses one)."""
    return {
        "apiVersion": "storage.k8s.io/v1",
        "kind": "StorageClass",
        "metadata": {"name": name},
        "provisioner": "seaweedfs-csi-driver",
        "volumeBindingMode": binding,
    }


def hub_config(sim, **spawner) -> dict:
    return {
        "JupyterHub": {
            "spawner_class": "thinkube",
            "load_roles": SPAWNER_HUB_ROLES,
        },
        "ThinkubeSpawner": {
            "k8s_api_host": sim.url,
            "namespace": "default",
            "cmd": [SINGLEUSER],
            # Servers run as this test's user (root here: the interpreter lives under /root),
            # which jupyter-server refuses unless told.
            "args": ["--allow-root"],
            "start_timeout": 60,
            "http_timeout": 60,
            "fail_fast_seconds": 3,
            "cpu_choices": [1, 2, 4],
            "memory_choices": [1, 2, 4],
            "gpu_choices": [0, 1, 2, 4],
            **spawner,
        },
    }


@pytest.fixture
async def lab(make_kubesim):
    sim = await make_kubesim(process_runtime=True)
    sim.load(
        [
            make_node("gpu-a", A100.cpu, A100.memory_gi, A100, 0),
            make_node("gpu-b", A100.cpu, A100.memory_gi, A100, 1),
            make_node("cpu-1", 16, 64, None, 2),
            storage_class("seaweedfs"),
            *[claim(name) for name in CLAIMS],
        ]
    )
    return sim


async def pods(sim, selector: str = "component=singleuser-server") -> list:
    api = await api_client_for(sim.kubeconfig)
    try:
        return (
            await client.CoreV1Api(api).list_namespaced_pod("default", label_selector=selector)
        ).items
    finally:
        await api.close()


def form_fields(html: str) -> dict[str, str]:
    """The values a browser would submit: each select's selected option, hidden inputs."""
    fields = {}
    for name, body in re.findall(r'<select name="([^"]+)"[^>]*>(.*?)</select>', html, re.S):
        selected = re.search(r'<option value="([^"]*)" selected', body)
        fields[name] = unescape(selected.group(1)) if selected else ""
    for name, value in re.findall(r'<input type="hidden" name="([^"]+)" value="([^"]*)"', html):
        fields[name] = unescape(value)
    return fields


async def spawn_page(hub, user: str) -> tuple[httpx.AsyncClient, str]:
    browser = await hub.login(user)
    page = await browser.get(urljoin(hub.url, "hub/spawn"), follow_redirects=True)
    assert page.status_code == 200, page.text[:500]
    return browser, page.text


def hub_xsrf(browser: httpx.AsyncClient) -> str:
    """The hub's XSRF cookie (the service sets one of its own, on its own path)."""
    return next(
        c.value for c in browser.cookies.jar if c.name == "_xsrf" and c.path.startswith("/hub")
    )


async def submit(browser, hub, fields: dict[str, str]) -> httpx.Response:
    data = {**fields, "_xsrf": hub_xsrf(browser)}
    return await browser.post(urljoin(hub.url, "hub/spawn"), data=data, follow_redirects=False)


def option(name: str) -> str:
    return f"profile-option-thinkube--{name}"


async def wait_running(hub, user: str, within: float = 60) -> dict:
    admin = hub.token("admin-probe", roles_=["admin"]) if not hasattr(hub, "_admin") else hub._admin
    hub._admin = admin
    async with httpx.AsyncClient(
        base_url=urljoin(hub.url, "hub/api/"), headers={"Authorization": f"token {admin}"}
    ) as api:

        async def ready():
            model = (await api.get(f"users/{user}")).json()
            server = model.get("servers", {}).get("")
            if server and server.get("ready"):
                return model
            if (
                server is None
                and model.get("pending") is None
                and (await api.get(f"users/{user}")).json().get("servers") == {}
            ):
                return None
            return None

        return await eventually(ready, within=within, interval=0.2)


async def stop(hub, user: str) -> None:
    async with httpx.AsyncClient(
        base_url=urljoin(hub.url, "hub/api/"), headers={"Authorization": f"token {hub._admin}"}
    ) as api:
        response = await api.delete(f"users/{user}/server")
        assert response.status_code in (202, 204), response.text

        async def stopped():
            return (await api.get(f"users/{user}")).json()["servers"] == {}

        await eventually(stopped, within=60, interval=0.2)


async def test_form_spawn_gpu_server_through_proxy_and_stop(lab, hub_with_service, caplog):
    caplog.set_level("DEBUG")
    config = hub_config(lab)
    tokens = record_tokens(config)
    hub = await hub_with_service(sim=lab, config=config)
    browser, html = await spawn_page(hub, "alice")
    # The form shows the kubesim nodes with the right free counts.
    assert "Any node with a free NVIDIA A100 SXM4 80GB (8 free on 2 nodes, 80 GiB)" in html
    assert "gpu-a: 64/64 CPU, 511/511 GiB, 4/4 × NVIDIA A100 SXM4 80GB free" in html
    assert "cpu-1: 16/16 CPU, 63/63 GiB" in html
    fields = form_fields(html)
    assert fields["profile"] == "thinkube"
    fields.update(
        {
            option("where"): "gpu:nvidia-a100-sxm4-80gb",
            option("gpus"): "1",
            option("cpu"): "2",
            option("memory"): "2",
        }
    )
    response = await submit(browser, hub, fields)
    assert response.status_code == 302, response.text[:2000]
    assert "spawn-pending" in response.headers["location"]
    await wait_running(hub, "alice")

    (pod,) = await pods(lab)
    container = pod.spec.containers[0]
    assert pod.spec.node_name in ("gpu-a", "gpu-b")
    assert container.resources.limits["nvidia.com/gpu"] == "1"
    assert container.resources.requests["nvidia.com/gpu"] == "1"
    assert container.resources.limits["cpu"] == "2" and container.resources.requests["cpu"] == "1"
    # kubespawner sends bytes; the apiserver keeps a plain integer as it is.
    assert (
        container.resources.limits["memory"]
        == container.resources.requests["memory"]
        == str(2 * 1024**3)
    )
    terms = pod.spec.affinity.node_affinity.required_during_scheduling_ignored_during_execution.node_selector_terms
    assert terms[0].match_expressions[0].key == "nvidia.com/gpu.product"
    assert terms[0].match_expressions[0].values == ["NVIDIA-A100-SXM4-80GB"]
    assert any(t.key == "nvidia.com/gpu" and t.operator == "Exists" for t in pod.spec.tolerations)
    mounts = {m.mount_path: m.name for m in container.volume_mounts}
    assert {"/home/jovyan/notebooks", "/datasets", "/models", "/home/jovyan/scratch"} <= set(mounts)
    volumes = {v.name: v for v in pod.spec.volumes}
    assert volumes["scratch"].empty_dir.size_limit == "100Gi"
    assert volumes["thinkube-datasets"].persistent_volume_claim.claim_name == "thinkube-datasets"

    # The real jupyterhub-singleuser answers through the hub's proxy.
    token = hub.token("alice")
    async with httpx.AsyncClient(headers={"Authorization": f"token {token}"}) as http:
        answer = await http.get(urljoin(hub.url, "user/alice/api/status"))
    assert answer.status_code == 200, answer.text[:300]

    # The next form remembers the choice.
    page = await browser.get(urljoin(hub.url, "hub/spawn"), follow_redirects=False)
    await stop(hub, "alice")
    assert await pods(lab) == []
    page = await browser.get(urljoin(hub.url, "hub/spawn"), follow_redirects=True)
    remembered = form_fields(page.text)
    assert (
        remembered[option("where")] == "gpu:nvidia-a100-sxm4-80gb"
        and remembered[option("gpus")] == "1"
    )
    assert_no_secret_logged(caplog.text, tokens)


async def test_rest_api_user_options_pin_a_node(lab, hub_with_service, caplog):
    hub = await hub_with_service(sim=lab, config=hub_config(lab))
    hub._admin = hub.token("admin-probe", roles_=["admin"])
    hub.user("bob")
    async with httpx.AsyncClient(
        base_url=urljoin(hub.url, "hub/api/"),
        headers={"Authorization": f"token {hub._admin}"},
        timeout=30,
    ) as api:
        response = await api.post(
            "users/bob/server", json={"where": "node:cpu-1", "cpu": 2, "memory": 1}
        )
        assert response.status_code in (201, 202), response.text
    await wait_running(hub, "bob")
    (pod,) = await pods(lab)
    assert pod.spec.node_name == "cpu-1"
    (term,) = (
        pod.spec.affinity.node_affinity.required_during_scheduling_ignored_during_execution.node_selector_terms
    )
    assert (term.match_fields[0].key, term.match_fields[0].values) == ("metadata.name", ["cpu-1"])
    assert "nvidia.com/gpu" not in (pod.spec.containers[0].resources.limits or {})
    token = hub.token("bob")
    async with httpx.AsyncClient(headers={"Authorization": f"token {token}"}) as http:
        assert (await http.get(urljoin(hub.url, "user/bob/api/status"))).status_code == 200
    await stop(hub, "bob")
    assert await pods(lab) == []
    # the options are the spawner's own: JupyterHub has nothing to warn about
    assert "Received unhandled user_options" not in caplog.text
    assert "Spawning bob: scipy on cpu-1" in caplog.text


@pytest.mark.parametrize(
    ("user_options", "message"),
    [
        (
            {"where": "node:does-not-exist", "cpu": 1, "memory": 1},
            "There is no schedulable node named 'does-not-exist'.",
        ),
        ({"where": "cpu", "cpu": 1000, "memory": 1}, "CPUs must be one of 1, 2, 4; got '1000'."),
        (
            {"where": "gpu:nvidia-a100-sxm4-80gb", "cpu": 1, "memory": 1, "gpus": -1},
            "GPUs must be one of 0, 1, 2, 4; got '-1'.",
        ),
        (
            {"where": "gpu:x,nvidia.com/gpu.product notin (a)", "cpu": 1, "memory": 1},
            "Unknown placement",
        ),
        ({"profile": "admin-only", "cpu": 1, "memory": 1}, "Unknown profile 'admin-only'"),
    ],
)
async def test_tampered_rest_options_are_rejected_and_nothing_is_created(
    lab, hub_with_service, user_options, message
):
    hub = await hub_with_service(sim=lab, config=hub_config(lab))
    admin = hub.token("admin-probe", roles_=["admin"])
    hub.user("mallory")
    async with httpx.AsyncClient(
        base_url=urljoin(hub.url, "hub/api/"),
        headers={"Authorization": f"token {admin}"},
        timeout=30,
    ) as api:
        response = await api.post("users/mallory/server", json=user_options)
        assert response.status_code == 400 and message in response.json()["message"], response.text
        assert (await api.get("users/mallory")).json()["servers"] == {}
        assert (await api.get("")).status_code == 200  # the hub is fine
    assert await pods(lab) == []


async def test_stale_choice_rerenders_the_form_with_where_there_is_room(lab, hub_with_service):
    hub = await hub_with_service(sim=lab, config=hub_config(lab))
    browser, html = await spawn_page(hub, "carol")
    fields = form_fields(html)
    fields.update(
        {
            option("where"): "node:gpu-a",
            option("gpus"): "1",
            option("cpu"): "1",
            option("memory"): "1",
        }
    )
    # Between the render and the submit, someone takes every GPU on gpu-a.
    lab.load(
        [
            {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {"name": "training", "namespace": "default"},
                "spec": {
                    "nodeName": "gpu-a",
                    "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists"}],
                    "containers": [
                        {
                            "name": "train",
                            "image": "busybox",
                            "command": ["sleep", "1"],
                            "resources": {"limits": {"nvidia.com/gpu": "4"}},
                        }
                    ],
                },
            }
        ]
    )
    await asyncio.sleep(0.5)  # the service sees it within its debounce
    response = await submit(browser, hub, fields)
    assert response.status_code == 409, response.status_code
    assert (
        "gpu-a has no room for 0.5 CPU and 1 GiB with 1 GPU (needs 1 GPU, 0 free). 4 are free on gpu-b."
        in unescape(response.text)
    )
    # the message is the person's own, without the exception's "409 SpawnException(...)"
    assert "SpawnException" not in response.text
    # and the form comes back with their choice
    again = form_fields(response.text)
    assert (again[option("gpus")], again[option("cpu")], again[option("memory")]) == ("1", "1", "1")
    assert 'name="profile-option-thinkube--where"' in response.text  # the form again
    assert await pods(lab) == []


async def test_service_down_offers_nothing_and_the_hub_stays_up(lab, hub_with_service):
    hub = await hub_with_service(sim=lab, config=hub_config(lab))
    browser, _ = await spawn_page(hub, "dave")
    os.kill(hub.service_pid, signal.SIGTERM)
    await asyncio.sleep(0.5)
    page = await browser.get(urljoin(hub.url, "hub/spawn"), follow_redirects=True)
    assert page.status_code == 200
    assert "The availability service cannot be reached" in page.text
    assert 'name="profile-option-thinkube--where"' not in page.text
    response = await submit(browser, hub, {"profile": "thinkube"})
    assert "The availability service cannot be reached" in unescape(response.text)
    assert await pods(lab) == []
    async with httpx.AsyncClient() as http:
        assert (await http.get(urljoin(hub.url, "hub/api/"))).status_code == 200


async def test_a_selector_no_node_matches_is_known_to_the_form(lab, hub_with_service):
    # The admin restricts servers to nodes labelled for users, and no node carries the label:
    # the form greys every place out with the reason, and a submit creates nothing.
    config = hub_config(lab, node_selector={"hub.jupyter.org/node-purpose": "user"})
    hub = await hub_with_service(sim=lab, config=config)
    browser, html = await spawn_page(hub, "erin")
    assert "nodeSelector hub.jupyter.org/node-purpose=user not matched" in unescape(html)
    fields = form_fields(html)
    fields.update({option("where"): "cpu", option("cpu"): "1", option("memory"): "1"})
    response = await submit(browser, hub, fields)
    assert response.status_code == 400
    assert "CPU-only servers cannot start here: no node takes this server" in unescape(
        response.text
    )
    assert await pods(lab) == []


async def test_a_pod_the_cluster_refuses_is_said_in_words_and_no_secret_is_logged(
    lab, hub_with_service, caplog
):
    caplog.set_level("DEBUG")
    lab.faults.refuse.append(("POST", r"/api/v1/namespaces/[^/]+/pods$", 500))
    config = hub_config(lab)
    tokens = record_tokens(config)
    hub = await hub_with_service(sim=lab, config=config)
    browser, html = await spawn_page(hub, "hank")
    fields = form_fields(html)
    fields.update({option("where"): "cpu", option("cpu"): "1", option("memory"): "1"})
    response = await submit(browser, hub, fields)
    if response.status_code == 302:  # past the hub's slow-spawn wait: the progress says it
        progress = await browser.get(urljoin(hub.url, "hub/api/users/hank/server/progress"))
        text = unescape(progress.text)
    else:
        text = unescape(response.text)
    assert (
        "The cluster refused to create your server (HTTP 500 from the Kubernetes API); "
        "nothing was left behind; try again in a moment." in text
    )
    assert "Traceback" not in text and "ApiException" not in text
    assert await pods(lab) == []
    # kubespawner logged the pod it could not create, without the server's token
    assert "Failed for" in caplog.text  # kubespawner logged the pod it could not create
    assert_no_secret_logged(caplog.text, tokens)
    assert "'value': '[secret]'" in caplog.text
    lab.faults.refuse.clear()
    async with httpx.AsyncClient() as http:  # the hub is fine
        assert (await http.get(urljoin(hub.url, "hub/api/"))).status_code == 200
