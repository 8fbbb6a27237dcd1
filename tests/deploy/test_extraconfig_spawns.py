"""The hub configuration Zero to JupyterHub builds from helm-values/values.yaml alone (the
minimal install) and from values.yaml + lab.yaml (singleuser.* mapped to KubeSpawner
traits, hub.config passed through, then the hub.extraConfig snippets in order) spawns a GPU
server in kubesim: a real hub behind the real proxy, the managed availability service
(checked the way the README checks it: its ready route, with its own token), and the pod
running as a real `jupyterhub-singleuser` process. For the lab, its storage manifests are
loaded and the server mounts their claims; the minimal install mounts no claim.

The files are merged without the chart's defaults (those live in ../shared, which this test
does without): the defaults add tolerations, labels, a uid and timeouts that none of the
checks here depend on. Only what a local run cannot take from the files is overridden, each
with its reason.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path
from urllib.parse import urljoin

import httpx
import pytest
from kubernetes_asyncio import client

from tests.conftest import api_client_for
from tests.deploy.z2jh import (
    LAB,
    LAB_MANIFESTS,
    VALUES,
    environment,
    get_path,
    hub_config,
    hub_env,
    manifest_documents,
    manifest_files,
    overlay_values,
)
from tests.hub_fixtures import SPAWNER_HUB_ROLES
from tests.kubesim.generator import GPU_MODELS, make_node
from tests.utils import eventually

SINGLEUSER = str(Path(sys.executable).parent / "jupyterhub-singleuser")
A100 = GPU_MODELS[0]
# The placement the spawn form and the REST API take for "any node with this GPU model".
WHERE = f"gpu:{A100.product.lower()}"
# The lab's storage manifests put their claims here, so the user servers run here too.
NAMESPACE = "jupyterhub"
# What each install loads into the cluster besides its nodes (the RBAC manifest is not
# needed: kubesim does not enforce RBAC).
INSTALLS = {
    "minimal": ((VALUES,), []),
    "minimal+lab": ((VALUES, LAB), manifest_files(LAB_MANIFESTS)),
}


def spawner_config(values: dict, sim) -> dict:
    """The spawner part of the hub configuration the chart builds from `values`, with the
    few settings a local run needs."""
    # The lab's extraConfig reads the hub's environment (its realm URL).
    with environment(hub_env(values)):
        c, _ = hub_config(values)
    spawner_class = c.JupyterHub.spawner_class
    kubespawner = dict(c.KubeSpawner)  # singleuser.* (tolerations, image, env, ...)
    thinkube = dict(c.ThinkubeSpawner)  # hub.config.ThinkubeSpawner
    # The values point the spawner at the service on the hub pod's loopback port 8181,
    # where z2jh runs it; the harness runs the managed service on a free port, and without
    # availability_url the spawner takes it (and the token) from the service's entry.
    thinkube.pop("availability_url", None)
    thinkube.update(
        {
            # kubesim is the cluster (in the hub pod, kubespawner uses the in-cluster config).
            "k8s_api_host": sim.url,
            # The namespace of the storage manifests' claims (the chart's is the release's).
            "namespace": NAMESPACE,
            # kubesim runs pods as local processes and pulls no image: run the venv's
            # jupyterhub-singleuser, which the values' image would provide.
            "cmd": [SINGLEUSER],
            # The interpreter lives under /root and the processes run as this test's user
            # (root): jupyter-server refuses root unless told, and the chart's uid 1000
            # (singleuser.uid) could not read the interpreter.
            "args": ["--allow-root"],
            "uid": None,
        }
    )
    return {
        "JupyterHub": {
            "spawner_class": spawner_class,
            # The harness's service and roles stay (its service runs against kubesim); the
            # spawner calls the service with the service's own token, as the values'
            # hub.loadRoles thinkube-resources role allows.
            "load_roles": SPAWNER_HUB_ROLES,
        },
        "KubeSpawner": kubespawner,
        "ThinkubeSpawner": thinkube,
    }


async def claim_names(sim) -> list[str]:
    api = await api_client_for(sim.kubeconfig)
    try:
        claims = await client.CoreV1Api(api).list_namespaced_persistent_volume_claim(NAMESPACE)
        return [claim.metadata.name for claim in claims.items]
    finally:
        await api.close()


async def server_pods(sim) -> list:
    api = await api_client_for(sim.kubeconfig)
    try:
        return (
            await client.CoreV1Api(api).list_namespaced_pod(
                NAMESPACE, label_selector="component=singleuser-server"
            )
        ).items
    finally:
        await api.close()


@pytest.mark.parametrize("install", INSTALLS, ids=INSTALLS.keys())
async def test_values_config_spawns_a_gpu_server_in_kubesim(
    install, make_kubesim, hub_with_service
):
    from thinkube_spawner import ThinkubeSpawner

    files, manifests = INSTALLS[install]
    values = overlay_values(*files)
    settings = get_path(values, "hub.config.ThinkubeSpawner")
    sim = await make_kubesim(process_runtime=True)
    sim.load(
        [
            make_node("gpu-a", A100.cpu, A100.memory_gi, A100, 0),
            make_node("cpu-1", 16, 64, None, 1),
            # README step 2: the hub's namespace exists before anything is installed there.
            {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}},
            *(doc for path in manifests for doc in manifest_documents(path)),
        ]
    )
    config = spawner_config(values, sim)
    assert config["JupyterHub"]["spawner_class"] is ThinkubeSpawner  # from hub.extraConfig
    hub = await hub_with_service(sim=sim, config=config)
    # The README's health check: the ready route, asked with the service's own token.
    assert (await hub.wait_ready(hub.service_token))["ready"] is True

    # What the values offer: 2 CPUs (so the guarantee ratio shows), the smallest memory
    # choice, one GPU.
    cpu, memory, gpus = settings["cpu_choices"][1], settings["memory_choices"][0], 1
    assert gpus in settings["gpu_choices"]
    admin = hub.token("admin-probe", roles_=["admin"])
    hub.user("alice")
    async with httpx.AsyncClient(
        base_url=urljoin(hub.url, "hub/api/"),
        headers={"Authorization": f"token {admin}"},
        timeout=30,
    ) as api:
        response = await api.post(
            "users/alice/server",
            json={"where": WHERE, "gpus": gpus, "cpu": cpu, "memory": memory},
        )
        assert response.status_code in (201, 202), response.text

        async def ready():
            model = (await api.get("users/alice")).json()
            server = model["servers"].get("")
            return model if server and server["ready"] else None

        await eventually(ready, within=90, interval=0.2)

        (pod,) = await server_pods(sim)
        container = pod.spec.containers[0]
        assert pod.spec.node_name == "gpu-a"
        resources = container.resources
        assert resources.limits["nvidia.com/gpu"] == resources.requests["nvidia.com/gpu"] == "1"
        assert resources.limits["cpu"] == str(cpu)
        assert float(resources.requests["cpu"]) == cpu * settings["cpu_guarantee_ratio"]
        gib = 1024**3
        assert int(resources.limits["memory"]) == memory * gib
        assert int(resources.requests["memory"]) == memory * gib * settings["mem_guarantee_ratio"]
        # The files' storage: the scratch, and the lab's shared claims, which exist in the
        # cluster (manifests/lab/storage.yaml); the minimal install mounts no claim.
        mounts = {m.mount_path: m.name for m in container.volume_mounts}
        volumes = {v.name: v for v in pod.spec.volumes}
        scratch = volumes[mounts[settings["scratch_path"]]]
        assert scratch.empty_dir.size_limit == settings["scratch_size_limit"]
        claims = {
            mount: volumes[name].persistent_volume_claim.claim_name
            for mount, name in mounts.items()
            if volumes[name].persistent_volume_claim
        }
        assert claims == {v["mount_path"]: v["claim"] for v in settings["shared_volumes"]}
        assert set(claims.values()) == set(await claim_names(sim))
        if install == "minimal":
            assert claims == {}
        # The GPU taint the values tolerate, and the placement on the chosen model.
        assert any(
            t.key == "nvidia.com/gpu" and t.operator == "Exists" for t in pod.spec.tolerations
        )
        terms = pod.spec.affinity.node_affinity.required_during_scheduling_ignored_during_execution
        assert terms.node_selector_terms[0].match_expressions[0].values == [A100.product]
        # singleuser.* from the values: the image and the environment.
        image = get_path(values, "singleuser.image")
        assert container.image == f"{image['name']}:{image['tag']}"
        env = {e.name: e for e in container.env}
        # where the server's own token submits GPU jobs: the service, reached directly (the
        # test's service stands in for hub:8181)
        jobs_url = env.pop("THINKUBE_JOBS_URL").value
        assert re.fullmatch(r"http://[^/]+/services/thinkube-resources/", jobs_url), jobs_url
        if install == "minimal+lab":
            assert env["THINKUBE_DATASETS_BUCKET"].value == "datasets"
            assert env["AWS_ACCESS_KEY_ID"].value_from.secret_key_ref.name == "thinkube-s3"
        else:
            assert not [name for name in env if name.startswith(("AWS_", "THINKUBE_"))]

        # The real jupyterhub-singleuser answers through the hub's proxy.
        token = hub.token("alice")
        async with httpx.AsyncClient(headers={"Authorization": f"token {token}"}) as http:
            answer = await http.get(urljoin(hub.url, "user/alice/api/status"))
        assert answer.status_code == 200, answer.text[:300]

        response = await api.delete("users/alice/server")
        assert response.status_code in (202, 204), response.text

        async def stopped():
            return (await api.get("users/alice")).json()["servers"] == {}

        await eventually(stopped, within=60, interval=0.2)
    assert await server_pods(sim) == []
