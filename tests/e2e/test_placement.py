"""Admin-configured placement end to end, through a real hub, the availability service and
kubesim: in each case the form offers exactly the nodes where kubesim's own scheduler (which
shares no code with the product) binds the pod the spawner submits, and a spawn lands on one
of them.

The oracle: a server is spawned from the form on an offered node of each kind (CPU node, GPU
node), which gives the pod kubespawner really submitted; a copy of it, pinned to each node of
the cluster in turn, is then handed to kubesim's scheduler (as a pod that runs no process),
and the nodes it binds are the ones the form must offer."""

from __future__ import annotations

import copy
import re
import uuid
from html import unescape
from urllib.parse import urljoin

import httpx
import pytest
from kubernetes_asyncio import client

from tests.conftest import api_client_for
from tests.e2e.test_thinkube_spawner import (
    A100,
    assert_no_secret_logged,
    claim,
    form_fields,
    hub_config,
    option,
    pods,
    record_tokens,
    spawn_page,
    stop,
    storage_class,
    submit,
    wait_running,
)
from tests.hub_fixtures import SPAWNER_HUB_ROLES  # noqa: F401 (the hub_config's roles)
from tests.kubesim.generator import make_node
from tests.kubesim.kubelet import RUNTIME_ANNOTATION
from tests.utils import eventually

Z2JH_USER_TOLERATIONS = [
    {
        "key": "hub.jupyter.org/dedicated",
        "operator": "Equal",
        "value": "user",
        "effect": "NoSchedule",
    },
    {
        "key": "hub.jupyter.org_dedicated",
        "operator": "Equal",
        "value": "user",
        "effect": "NoSchedule",
    },
]


def tainted(node: dict, key: str, value: str, effect: str = "NoSchedule") -> dict:
    node["spec"].setdefault("taints", []).append({"key": key, "value": value, "effect": effect})
    return node


def labelled(node: dict, **labels: str) -> dict:
    node["metadata"]["labels"].update(labels)
    return node


def node_options(html: str) -> dict[str, str | None]:
    """Every node the form lists, with the reason it is greyed out (None: offered)."""
    found = {}
    for value, attrs, text in re.findall(
        r'<option value="node:([^"]+)"([^>]*)>([^<]*)</option>', html
    ):
        reason = unescape(text).split(" — ", 1)[1] if " — " in unescape(text) else None
        found[unescape(value)] = reason if "disabled" in attrs else None
    return found


def offered(html: str) -> set[str]:
    return {node for node, reason in node_options(html).items() if reason is None}


async def raw_pod(sim, name: str) -> dict:
    api = await api_client_for(sim.kubeconfig)
    try:
        response = await client.CoreV1Api(api).read_namespaced_pod(
            name, "default", _preload_content=False
        )
        return await response.json()
    finally:
        await api.close()


def pinned_copy(pod: dict, node: str) -> dict:
    """The submitted pod, placed on `node` the way the spawner pins one (the pin replaced),
    as a pod that runs no process."""
    spec = copy.deepcopy(pod["spec"])
    spec.pop("nodeName", None)
    pin = [{"key": "metadata.name", "operator": "In", "values": [node]}]
    affinity = spec.setdefault("affinity", {}).setdefault("nodeAffinity", {})
    required = affinity.setdefault(
        "requiredDuringSchedulingIgnoredDuringExecution", {"nodeSelectorTerms": [{}]}
    )
    for term in required["nodeSelectorTerms"]:
        term["matchFields"] = pin
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": f"probe-{uuid.uuid4().hex[:8]}",
            "namespace": "default",
            "annotations": {RUNTIME_ANNOTATION: "simulated"},
        },
        "spec": spec,
    }


async def binds(sim, pod: dict) -> bool:
    """Whether kubesim's scheduler binds this pod (then it is deleted again)."""
    api = await api_client_for(sim.kubeconfig)
    core = client.CoreV1Api(api)
    name = pod["metadata"]["name"]
    try:
        await core.create_namespaced_pod("default", pod)

        async def decided():
            placed = (await core.read_namespaced_pod(name, "default")).spec.node_name
            if placed:
                return "bound"
            events = await core.list_namespaced_event(
                "default", field_selector=f"involvedObject.name={name}"
            )
            return "refused" if any(e.reason == "FailedScheduling" for e in events.items) else None

        verdict = await eventually(decided, within=15, interval=0.05)
        await core.delete_namespaced_pod(name, "default", grace_period_seconds=0)
        return verdict == "bound"
    finally:
        await api.close()


def kind_of(node: dict) -> str:
    return "gpu" if "nvidia.com/gpu" in node["status"]["allocatable"] else "cpu"


async def scheduler_nodes(sim, submitted: dict[str, dict], nodes: list[dict]) -> set[str]:
    """The nodes where kubesim binds the submitted pod of the node's kind."""
    taking = set()
    for node in nodes:
        name = node["metadata"]["name"]
        if await binds(sim, pinned_copy(submitted[kind_of(node)], name)):
            taking.add(name)
    return taking


async def spawn_on(hub, sim, user: str, where: str, **choice) -> dict:
    """Spawn from the form; the pod kubespawner submitted, once it runs."""
    browser, html = await spawn_page(hub, user)
    fields = form_fields(html)
    fields.update({option("where"): where, option("cpu"): "1", option("memory"): "1"})
    fields.update({option(k): v for k, v in choice.items()})
    response = await submit(browser, hub, fields)
    assert response.status_code == 302, unescape(response.text)[-3000:]
    await wait_running(hub, user)
    (pod,) = [
        p for p in await pods(sim) if p.metadata.annotations.get("hub.jupyter.org/username") == user
    ]
    return await raw_pod(sim, pod.metadata.name)


CASES = {
    # Zero to JupyterHub's dedicated user nodes, with z2jh's default user tolerations and its
    # user scheduler: everything that takes user pods is offered.
    "z2jh dedicated user nodes": (
        lambda: [
            tainted(make_node("user-1", 16, 64, None, 1), "hub.jupyter.org/dedicated", "user"),
            tainted(make_node("user-2", 16, 64, None, 2), "hub.jupyter.org/dedicated", "user"),
            tainted(
                make_node("user-gpu", A100.cpu, A100.memory_gi, A100, 3),
                "hub.jupyter.org/dedicated",
                "user",
            ),
            tainted(make_node("infra-1", 16, 64, None, 4), "dedicated", "infra"),
        ],
        {"tolerations": Z2JH_USER_TOLERATIONS, "scheduler_name": "jupyterhub-user-scheduler"},
        {"user-1", "user-2", "user-gpu"},
    ),
    "node_selector to a labelled pool": (
        lambda: [
            labelled(make_node("pool-1", 16, 64, None, 1), pool="notebooks"),
            labelled(make_node("pool-2", 16, 64, None, 2), pool="notebooks"),
            labelled(make_node("other-1", 16, 64, None, 3), pool="batch"),
            make_node("bare-1", 16, 64, None, 4),
        ],
        {"node_selector": {"pool": "notebooks"}},
        {"pool-1", "pool-2"},
    ),
    "required node affinity": (
        lambda: [
            labelled(make_node("zone-a", 16, 64, None, 1), zone="a"),
            labelled(make_node("zone-b", 16, 64, None, 2), zone="b"),
            labelled(make_node("zone-c", 16, 64, None, 3), zone="c"),
            make_node("zone-less", 16, 64, None, 4),
        ],
        {
            "node_affinity_required": [
                {"matchExpressions": [{"key": "zone", "operator": "In", "values": ["a", "b"]}]}
            ]
        },
        {"zone-a", "zone-b"},
    ),
    "a toleration with Equal and another value": (
        lambda: [
            tainted(make_node("vision-1", 16, 64, None, 1), "team", "vision"),
            tainted(make_node("nlp-1", 16, 64, None, 2), "team", "nlp"),
            make_node("open-1", 16, 64, None, 3),
        ],
        {
            "tolerations": [
                {"key": "team", "operator": "Equal", "value": "nlp", "effect": "NoSchedule"}
            ]
        },
        {"nlp-1", "open-1"},
    ),
    "a PreferNoSchedule taint": (
        lambda: [
            tainted(make_node("soft-1", 16, 64, None, 1), "team", "vision", "PreferNoSchedule"),
            tainted(make_node("hard-1", 16, 64, None, 2), "team", "vision", "NoExecute"),
            make_node("open-1", 16, 64, None, 3),
        ],
        {},
        {"soft-1", "open-1"},
    ),
}


@pytest.mark.parametrize("case", list(CASES))
async def test_the_form_offers_exactly_where_the_scheduler_binds(
    case, make_kubesim, hub_with_service
):
    make_nodes, spawner_config, expected = CASES[case]
    sim = await make_kubesim(process_runtime=True)
    nodes = make_nodes()
    sim.load(nodes)
    hub = await hub_with_service(
        sim=sim, config=hub_config(sim, shared_volumes=[], **spawner_config)
    )
    _, html = await spawn_page(hub, "alice")
    listed = node_options(html)
    assert set(listed) == {n["metadata"]["name"] for n in nodes}
    assert offered(html) == expected, listed
    # every node left out says why, in words
    assert all(reason for node, reason in listed.items() if node not in expected)

    # The pods the spawner submits, one of each kind of node, from the form.
    submitted, users = {}, {"cpu": "alice", "gpu": "bob"}
    for kind, user in users.items():
        first = sorted(
            n["metadata"]["name"]
            for n in nodes
            if kind_of(n) == kind and n["metadata"]["name"] in expected
        )
        if first:
            pod = await spawn_on(hub, sim, user, f"node:{first[0]}")
            assert pod["spec"]["nodeName"] == first[0]
            submitted[kind] = pod
    checked = [n for n in nodes if kind_of(n) in submitted]
    assert {kind_of(n) for n in nodes} == set(submitted)  # every node is checked
    assert await scheduler_nodes(sim, submitted, checked) == expected
    for kind in submitted:
        await stop(hub, users[kind])

    # "Any node (CPU only)" lands where the form said.
    pod = await spawn_on(hub, sim, "carol", "cpu")
    assert pod["spec"]["nodeName"] in expected
    await stop(hub, "carol")


async def test_the_z2jh_gpu_model_lands_on_the_dedicated_gpu_node(make_kubesim, hub_with_service):
    make_nodes, spawner_config, _ = CASES["z2jh dedicated user nodes"]
    sim = await make_kubesim(process_runtime=True)
    sim.load(make_nodes())
    hub = await hub_with_service(
        sim=sim, config=hub_config(sim, shared_volumes=[], **spawner_config)
    )
    _, html = await spawn_page(hub, "dora")
    assert "Any node with a free NVIDIA A100 SXM4 80GB (4 free on 1 node, 80 GiB)" in html
    pod = await spawn_on(hub, sim, "dora", "gpu:nvidia-a100-sxm4-80gb", gpus="2")
    assert pod["spec"]["nodeName"] == "user-gpu"
    assert pod["spec"]["schedulerName"] == "jupyterhub-user-scheduler"
    await stop(hub, "dora")


async def test_a_refused_node_is_refused_at_submit_too(make_kubesim, hub_with_service):
    """A REST caller who names a node the form greys out gets the filter's reason, and no
    pod is created."""
    make_nodes, spawner_config, _ = CASES["a toleration with Equal and another value"]
    sim = await make_kubesim(process_runtime=True)
    sim.load(make_nodes())
    hub = await hub_with_service(
        sim=sim, config=hub_config(sim, shared_volumes=[], **spawner_config)
    )
    admin = hub.token("admin-probe", roles_=["admin"])
    hub.user("mallory")
    async with httpx.AsyncClient(
        base_url=urljoin(hub.url, "hub/api/"), headers={"Authorization": f"token {admin}"}
    ) as api:
        response = await api.post("users/mallory/server", json={"where": "node:vision-1"})
        assert response.status_code == 400
        assert response.json()["message"] == (
            "vision-1 does not take this server: tainted team=vision:NoSchedule, not tolerated."
        )
    assert await pods(sim) == []


async def test_a_missing_shared_claim_is_named_and_nothing_is_created(
    make_kubesim, hub_with_service
):
    sim = await make_kubesim(process_runtime=True)
    sim.load(
        [
            make_node("cpu-1", 16, 64, None, 1),
            storage_class("seaweedfs"),
            claim("thinkube-notebooks"),
        ]
    )
    shared = [
        {"claim": "thinkube-notebooks", "mount_path": "/home/jovyan/notebooks"},
        {"claim": "thinkube-datasets", "mount_path": "/datasets"},
    ]
    hub = await hub_with_service(sim=sim, config=hub_config(sim, shared_volumes=shared))
    browser, html = await spawn_page(hub, "erin")
    missing = "The shared storage claim 'thinkube-datasets' does not exist in namespace 'default'."
    assert missing in unescape(html)
    response = await submit(browser, hub, form_fields(html))
    assert response.status_code == 503
    assert missing in unescape(response.text)
    assert await pods(sim) == []
    # once the claim exists (and binds), the start checks again and goes ahead
    sim.load([claim("thinkube-datasets")])
    response = await submit(browser, hub, form_fields(html))
    assert response.status_code == 302, unescape(response.text)[-2000:]
    await wait_running(hub, "erin")
    await stop(hub, "erin")


async def test_a_claim_waiting_for_its_first_consumer_does_not_block(
    make_kubesim, hub_with_service
):
    sim = await make_kubesim(process_runtime=True)
    late = claim("thinkube-datasets")
    late["spec"]["storageClassName"] = "local-path"
    sim.load(
        [
            make_node("cpu-1", 16, 64, None, 1),
            storage_class("local-path", "WaitForFirstConsumer"),
            late,
        ]
    )
    shared = [{"claim": "thinkube-datasets", "mount_path": "/datasets"}]
    hub = await hub_with_service(sim=sim, config=hub_config(sim, shared_volumes=shared))
    pod = await spawn_on(hub, sim, "fay", "cpu")
    assert pod["spec"]["nodeName"] == "cpu-1"  # the claim bound when the pod was placed
    await stop(hub, "fay")


async def test_an_admin_claim_that_is_missing_fails_fast_with_its_name(
    make_kubesim, hub_with_service, caplog
):
    """Claims the spawner does not know of (the admin's own volumes) fail fast with the
    scheduler's message, instead of waiting out start_timeout."""
    sim = await make_kubesim(process_runtime=True)
    sim.load([make_node("cpu-1", 16, 64, None, 1)])
    config = hub_config(
        sim,
        shared_volumes=[],
        volumes=[{"name": "home", "persistentVolumeClaim": {"claimName": "home-{username}"}}],
        volume_mounts=[{"name": "home", "mountPath": "/home/jovyan/work"}],
    )
    caplog.set_level("DEBUG")
    tokens = record_tokens(config)
    hub = await hub_with_service(sim=sim, config=config)
    admin = hub.token("admin-probe", roles_=["admin"])
    hub.user("gus")
    async with httpx.AsyncClient(
        base_url=urljoin(hub.url, "hub/api/"), headers={"Authorization": f"token {admin}"}
    ) as api:
        response = await api.post("users/gus/server", json={"cpu": 1, "memory": 1})
        if response.status_code == 503:  # failed before the hub's slow-spawn wait ended
            message = response.json()["message"]
        else:  # past it: the failure is in the progress stream
            assert response.status_code == 202, response.text

            async def failed():
                model = (await api.get("users/gus")).json()
                return model if not model["servers"] else None

            await eventually(failed, within=30, interval=0.2)
            message = unescape((await api.get("users/gus/server/progress")).text)
    assert 'persistentvolumeclaim "home-gus" not found' in message.replace('\\"', '"'), message
    assert await pods(sim) == []
    assert_no_secret_logged(caplog.text, tokens)  # the pod that failed fast was logged clean


# A product bug that kubesim must catch: the service counting limits where the scheduler
# counts requests (the mistake of the system this product replaces). Loaded into the
# service's own process only, through Python's sitecustomize hook.
LIMITS_FOR_REQUESTS = """
import thinkube_core.accounting as accounting
accounting.pod_requests = accounting.pod_limits
"""


def busy_node_cluster() -> list[dict]:
    """node-a runs a pod asking 1 CPU with a limit of 20: free by requests, full by limits."""
    return [
        make_node("node-a", 16, 64, None, 1),
        make_node("node-b", 16, 64, None, 2),
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "name": "bursty",
                "namespace": "default",
                "annotations": {RUNTIME_ANNOTATION: "simulated"},
            },
            "spec": {
                "nodeName": "node-a",
                "containers": [
                    {
                        "name": "main",
                        "image": "busybox:1.36",
                        "resources": {
                            "requests": {"cpu": "1", "memory": "1Gi"},
                            "limits": {"cpu": "20", "memory": "1Gi"},
                        },
                    }
                ],
            },
        },
    ]


@pytest.mark.parametrize("mutated", [False, True], ids=["product as built", "limits counted"])
async def test_a_wrong_accounting_rule_in_the_product_is_caught(
    mutated, make_kubesim, hub_with_service, tmp_path
):
    sim = await make_kubesim(process_runtime=True)
    nodes = busy_node_cluster()
    sim.load(nodes)
    env = {}
    if mutated:
        (tmp_path / "sitecustomize.py").write_text(LIMITS_FOR_REQUESTS)
        env["PYTHONPATH"] = str(tmp_path)
    hub = await hub_with_service(
        sim=sim, config=hub_config(sim, shared_volumes=[]), service_env=env
    )
    _, html = await spawn_page(hub, "alice")
    pod = await spawn_on(hub, sim, "alice", "node:node-b")
    oracle = await scheduler_nodes(sim, {"cpu": pod}, nodes[:2])
    await stop(hub, "alice")
    assert oracle == {"node-a", "node-b"}  # the scheduler counts requests
    if mutated:
        # the end-to-end comparison fails: the form greys out a node the scheduler takes
        assert offered(html) != oracle
        assert node_options(html)["node-a"].startswith("needs ")
    else:
        assert offered(html) == oracle
