"""kubespawner's own KubeSpawner against kubesim: it creates a pod, sees it running through
its reflectors, and stops it."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

from jupyterhub.objects import Hub
from kubernetes_asyncio import client
from kubespawner import KubeSpawner

from tests.conftest import api_client_for
from tests.hub_fixtures import stop_kubespawner_reflectors
from tests.kubesim.generator import make_node


async def test_kubespawner_starts_and_stops_a_pod(kubesim):
    kubesim.load([make_node("worker", 16, 64, None, 0)])
    # The parts of a hub User that KubeSpawner reads.
    user = SimpleNamespace(name="alice", id=7, url="/user/alice/")
    spawner = KubeSpawner(
        hub=Hub(),
        user=user,
        api_token="not-a-real-token",
        oauth_client_id="jupyterhub-user-alice",
        _mock=True,
        k8s_api_host=kubesim.url,
        namespace="default",
        image="quay.io/jupyter/base-notebook:2025-01-06",
        cpu_limit=1.0,
        cpu_guarantee=0.5,
        mem_limit="1G",
        mem_guarantee="1G",
        start_timeout=30,
        http_timeout=30,
    )
    url = await asyncio.wait_for(spawner.start(), 60)
    api = await api_client_for(kubesim.kubeconfig)
    core = client.CoreV1Api(api)
    pod = await core.read_namespaced_pod(spawner.pod_name, "default")
    assert pod.status.phase == "Running" and pod.spec.node_name == "worker"
    assert url == f"http://{pod.status.pod_ip}:8888"
    # kubespawner sends "0.5" and 1G as bytes; the apiserver stores them canonically.
    assert pod.spec.containers[0].resources.requests == {"cpu": "500m", "memory": "1073741824"}
    assert pod.metadata.labels["hub.jupyter.org/username"] == "alice"
    assert await spawner.poll() is None

    await asyncio.wait_for(spawner.stop(), 60)
    listed = await core.list_namespaced_pod("default", label_selector="component=singleuser-server")
    assert listed.items == []
    assert await spawner.poll() is not None
    await api.close()
    await stop_kubespawner_reflectors()
