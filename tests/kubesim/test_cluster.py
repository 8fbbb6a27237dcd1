"""kubesim's scheduler and kubelet, seen through the real client."""

from __future__ import annotations

import asyncio
import json
import sys

import httpx
import pytest
from kubernetes_asyncio import client
from kubernetes_asyncio.client.exceptions import ApiException

from tests.conftest import api_client_for
from tests.kubesim.__main__ import parse_args
from tests.kubesim.generator import GPU_MODELS, make_node
from tests.kubesim.scheduler import feasible_nodes_to_find
from tests.utils import eventually


def gpu_pod(name: str, gpus: int, **spec) -> dict:
    resources = {
        "requests": {"cpu": "1", "memory": "1Gi", "nvidia.com/gpu": str(gpus)},
        "limits": {"cpu": "2", "memory": "1Gi", "nvidia.com/gpu": str(gpus)},
    }
    return {
        "metadata": {"name": name},
        "spec": {
            "containers": [
                {
                    "name": "notebook",
                    "image": "quay.io/jupyter/base-notebook:2025-01-06",
                    "resources": resources,
                }
            ],
            "tolerations": [
                {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
            ],
            **spec,
        },
    }


async def events_of(core, namespace: str, name: str) -> list:
    listed = await core.list_namespaced_event(
        namespace, field_selector=f"involvedObject.kind=Pod,involvedObject.name={name}"
    )
    return listed.items


async def test_gpu_pod_too_big_stays_pending_with_scheduler_reason(cluster):
    core, ns = cluster.core, cluster.namespace
    await core.create_namespaced_pod(ns, gpu_pod("greedy", 64))

    async def failed():
        return [e for e in await events_of(core, ns, "greedy") if e.reason == "FailedScheduling"]

    failures = await eventually(failed)
    assert failures[0].type == "Warning"
    assert "Insufficient nvidia.com/gpu" in failures[0].message
    assert failures[0].message.startswith("0/")
    pod = await core.read_namespaced_pod("greedy", ns)
    assert pod.status.phase == "Pending" and not pod.spec.node_name
    scheduled = [c for c in pod.status.conditions if c.type == "PodScheduled"][0]
    assert scheduled.status == "False" and scheduled.reason == "Unschedulable"


async def test_scheduler_message_form_and_placement(kubesim):
    """Four nodes: two A100 nodes with 4 GPUs each, two CPU nodes. kube-scheduler's message
    lists each node's first failing filter, sorted, then the preemption postscript."""
    a100 = GPU_MODELS[0]
    kubesim.load(
        [
            make_node("gpu-a", a100.cpu, a100.memory_gi, a100, 0),
            make_node("gpu-b", a100.cpu, a100.memory_gi, a100, 1),
            make_node("cpu-a", 16, 64, None, 2),
            make_node("cpu-b", 16, 64, None, 3),
        ]
    )
    api = await api_client_for(kubesim.kubeconfig)
    core = client.CoreV1Api(api)
    affinity = {
        "nodeAffinity": {
            "requiredDuringSchedulingIgnoredDuringExecution": {
                "nodeSelectorTerms": [
                    {
                        "matchExpressions": [
                            {
                                "key": "nvidia.com/gpu.product",
                                "operator": "In",
                                "values": [a100.product],
                            }
                        ]
                    }
                ]
            }
        }
    }
    await core.create_namespaced_pod("default", gpu_pod("five", 5, affinity=affinity))
    failures = await eventually(lambda: _failed(core, "five"))
    assert failures[0].message == (
        "0/4 nodes are available: 2 Insufficient nvidia.com/gpu, 2 node(s) didn't match Pod's node affinity/selector. "
        "preemption: 0/4 nodes are available: 2 No preemption victims found for incoming pod, "
        "2 Preemption is not helpful for scheduling."
    )

    # Without the toleration the GPU nodes' taint rules them out first.
    untolerated = gpu_pod("no-toleration", 1)
    del untolerated["spec"]["tolerations"]
    await core.create_namespaced_pod("default", untolerated)
    failures = await eventually(lambda: _failed(core, "no-toleration"))
    assert "2 node(s) had untolerated taint {nvidia.com/gpu: present}" in failures[0].message
    assert "2 Insufficient nvidia.com/gpu" in failures[0].message

    # A fitting pod lands on a GPU node and the scheduler says so.
    await core.create_namespaced_pod("default", gpu_pod("fits", 3, affinity=affinity))
    pod = await eventually(lambda: _bound(core, "fits"))
    assert pod.spec.node_name in ("gpu-a", "gpu-b")
    messages = [e.message for e in await events_of(core, "default", "fits")]
    assert f"Successfully assigned default/fits to {pod.spec.node_name}" in messages

    # 3 of 4 GPUs are taken there: a 2-GPU pod goes to the other node.
    await core.create_namespaced_pod("default", gpu_pod("two", 2, affinity=affinity))
    other = await eventually(lambda: _bound(core, "two"))
    assert other.spec.node_name != pod.spec.node_name

    # Freeing GPUs lets the waiting 5-GPU pod... still not fit (4 per node): it stays Pending.
    await core.delete_namespaced_pod("fits", "default", grace_period_seconds=0)
    await asyncio.sleep(0.3)
    assert not (await core.read_namespaced_pod("five", "default")).spec.node_name
    await api.close()


async def _failed(core, name):
    return [e for e in await events_of(core, "default", name) if e.reason == "FailedScheduling"]


async def _bound(core, name):
    pod = await core.read_namespaced_pod(name, "default")
    return pod if pod.spec.node_name else None


async def test_pending_pod_is_scheduled_when_capacity_frees(kubesim):
    model = GPU_MODELS[3]  # one L4
    kubesim.load([make_node("l4", model.cpu, model.memory_gi, model, 0)])
    api = await api_client_for(kubesim.kubeconfig)
    core = client.CoreV1Api(api)
    await core.create_namespaced_pod("default", gpu_pod("first", 1))
    await eventually(lambda: _bound(core, "first"))
    await core.create_namespaced_pod("default", gpu_pod("second", 1))
    await eventually(lambda: _failed(core, "second"))
    await core.delete_namespaced_pod("first", "default", grace_period_seconds=0)
    pod = await eventually(lambda: _bound(core, "second"))
    assert pod.spec.node_name == "l4"
    await api.close()


async def test_cordoned_and_not_ready_nodes_get_no_pods(kubesim):
    cordoned = make_node("cordoned", 16, 64, None, 0)
    cordoned["spec"]["unschedulable"] = True
    not_ready = make_node("sick", 16, 64, None, 1)
    for condition in not_ready["status"]["conditions"]:
        if condition["type"] == "Ready":
            condition["status"] = "False"
    kubesim.load([cordoned, not_ready])
    api = await api_client_for(kubesim.kubeconfig)
    core = client.CoreV1Api(api)
    # The node lifecycle controller's part: a NotReady node gets the not-ready taint.
    sick = await eventually(lambda: _tainted(core, "sick"))
    assert any(
        t.key == "node.kubernetes.io/not-ready" and t.effect == "NoSchedule"
        for t in sick.spec.taints
    )
    await core.create_namespaced_pod(
        "default",
        {"metadata": {"name": "p"}, "spec": {"containers": [{"name": "c", "image": "busybox"}]}},
    )
    failures = await eventually(lambda: _failed(core, "p"))
    assert failures[0].message.startswith(
        "0/2 nodes are available: 1 node(s) had untolerated taint {node.kubernetes.io/not-ready: }, 1 node(s) were unschedulable."
    )
    await api.close()


async def _tainted(core, name):
    node = await core.read_node(name)
    return node if node.spec.taints else None


async def test_kubelet_status_and_events(kubesim):
    kubesim.load([make_node("worker", 16, 64, None, 0)])
    api = await api_client_for(kubesim.kubeconfig)
    core = client.CoreV1Api(api)
    await core.create_namespaced_pod(
        "default",
        {
            "metadata": {"name": "web"},
            "spec": {"containers": [{"name": "nginx", "image": "nginx:1.27"}]},
        },
    )
    pod = await eventually(lambda: _running(core, "web"))
    assert pod.status.pod_ip.startswith("127.") and pod.status.pod_ip != "127.0.0.1"
    status = pod.status.container_statuses[0]
    assert status.ready and status.started and status.state.running.started_at
    assert {c.type for c in pod.status.conditions} >= {
        "Ready",
        "ContainersReady",
        "Initialized",
        "PodScheduled",
    }
    reasons = [
        e.reason
        for e in sorted(
            await events_of(core, "default", "web"), key=lambda e: int(e.metadata.resource_version)
        )
    ]
    assert reasons == ["Scheduled", "Pulling", "Pulled", "Created", "Started"]
    await api.close()


async def _running(core, name, namespace="default"):
    pod = await core.read_namespaced_pod(name, namespace)
    return pod if pod.status.phase == "Running" else None


SERVER = "import http.server, os, sys; print('serving', flush=True); http.server.HTTPServer((sys.argv[1], 8000), type('H', (http.server.BaseHTTPRequestHandler,), {'do_GET': lambda s: (s.send_response(200), s.end_headers(), s.wfile.write(os.environ['GREETING'].encode() + b' ' + os.environ['POD_NAME'].encode() + b' ' + os.environ['TOKEN'].encode()))})).serve_forever()"


async def test_process_runtime_serves_on_pod_ip(make_kubesim):
    sim = await make_kubesim(process_runtime=True)
    sim.load([make_node("worker", 16, 64, None, 0)])
    api = await api_client_for(sim.kubeconfig)
    core = client.CoreV1Api(api)
    await core.create_namespaced_secret(
        "default", {"metadata": {"name": "creds"}, "stringData": {"token": "s3cret"}}
    )
    env = [
        {"name": "GREETING", "value": "hello"},
        {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
        {"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "creds", "key": "token"}}},
    ]
    for name in ("one", "two"):  # two pods, same port, each on its own address
        await core.create_namespaced_pod(
            "default",
            {
                "metadata": {"name": name},
                "spec": {
                    "containers": [
                        {
                            "name": "srv",
                            "image": "python:3.12",
                            "command": [sys.executable, "-c", SERVER, "0.0.0.0"],
                            "env": env,
                            "ports": [{"containerPort": 8000}],
                        }
                    ]
                },
            },
        )
    pods = [await eventually(lambda n=n: _running(core, n)) for n in ("one", "two")]
    assert pods[0].status.pod_ip != pods[1].status.pod_ip
    async with httpx.AsyncClient() as http:
        for pod in pods:

            async def answers(pod=pod):
                try:
                    return (await http.get(f"http://{pod.status.pod_ip}:8000/")).text
                except httpx.TransportError:
                    return None

            assert await eventually(answers) == f"hello {pod.metadata.name} s3cret"
    logs = await core.read_namespaced_pod_log("one", "default")
    assert "serving" in logs

    # Deleting the pod stops its process.
    await core.delete_namespaced_pod("one", "default", grace_period_seconds=2)
    await eventually(lambda: _gone(core, "one"))
    async with httpx.AsyncClient() as http:
        with pytest.raises(httpx.TransportError):
            await http.get(f"http://{pods[0].status.pod_ip}:8000/", timeout=2)
    await api.close()


async def _gone(core, name):
    try:
        await core.read_namespaced_pod(name, "default")
    except ApiException as err:
        return err.status == 404
    return False


@pytest.mark.parametrize(("code", "phase"), [(0, "Succeeded"), (3, "Failed")])
async def test_process_exit_ends_the_pod(make_kubesim, code, phase):
    sim = await make_kubesim(process_runtime=True)
    sim.load([make_node("worker", 16, 64, None, 0)])
    api = await api_client_for(sim.kubeconfig)
    core = client.CoreV1Api(api)
    await core.create_namespaced_pod(
        "default",
        {
            "metadata": {"name": "job"},
            "spec": {
                "restartPolicy": "Never",
                "containers": [
                    {
                        "name": "c",
                        "image": "python",
                        "command": [sys.executable, "-c", f"raise SystemExit({code})"],
                    }
                ],
            },
        },
    )

    async def finished():
        pod = await core.read_namespaced_pod("job", "default")
        return pod if pod.status.phase in ("Succeeded", "Failed") else None

    pod = await eventually(finished)
    assert pod.status.phase == phase
    assert pod.status.container_statuses[0].state.terminated.exit_code == code
    await api.close()


async def test_faults_latency_errors_drops_and_restart(make_kubesim):
    sim = await make_kubesim()
    api = await api_client_for(sim.kubeconfig)
    core = client.CoreV1Api(api)
    first = await core.create_namespaced_config_map(
        "default", {"metadata": {"name": "a"}, "data": {}}
    )

    sim.faults.latency_s = 0.2
    loop = asyncio.get_running_loop()
    started = loop.time()
    await core.read_namespaced_config_map("a", "default")
    assert loop.time() - started >= 0.2
    sim.faults.latency_s = 0

    sim.faults.error_rate = 1.0
    codes = set()
    for _ in range(20):
        with pytest.raises(ApiException) as err:
            await core.read_namespaced_config_map("a", "default")
        codes.add(err.value.status)
        assert json.loads(err.value.body)["kind"] == "Status"
    assert codes == {500, 429}
    sim.faults.error_rate = 0

    # A dropped watch ends the client's stream.
    response = await core.list_namespaced_config_map(
        "default",
        watch=True,
        resource_version=first.metadata.resource_version,
        _preload_content=False,
    )
    await asyncio.sleep(0.1)
    assert sim.drop_watches() == 1
    assert [line async for line in response.content] == []

    # A restart keeps the objects but forgets the watch history: clients must relist.
    await sim.go_down()
    with pytest.raises(Exception):  # noqa: B017 - connection refused, whatever the client calls it
        await core.read_namespaced_config_map("a", "default", _request_timeout=2)
    sim.come_back()
    assert (await core.read_namespaced_config_map("a", "default")).metadata.name == "a"
    response = await core.list_namespaced_config_map(
        "default",
        watch=True,
        resource_version=first.metadata.resource_version,
        _preload_content=False,
    )
    lines = [json.loads(line) async for line in response.content]
    assert lines[0]["type"] == "ERROR" and lines[0]["object"]["code"] == 410
    await api.close()


def plain_pod(name: str, **spec) -> dict:
    return {
        "metadata": {"name": name},
        "spec": {"containers": [{"name": "c", "image": "busybox"}], **spec},
    }


async def test_pod_slots_and_sidecar_requests_are_accounted(kubesim):
    node = make_node("small", 4, 16, None, 0)  # 3900m allocatable
    node["status"]["allocatable"]["pods"] = "2"
    kubesim.load([node])
    api = await api_client_for(kubesim.kubeconfig)
    core = client.CoreV1Api(api)

    def cpu(amount):
        return {"requests": {"cpu": amount}, "limits": {"cpu": amount}}

    # app 1500m + sidecar 1000m run together (2500m); the classic init container runs alone
    # before the sidecar starts and needs 3000m: the pod holds 3000m.
    staged = plain_pod(
        "staged",
        initContainers=[
            {"name": "init", "image": "busybox", "resources": cpu("3")},
            {
                "name": "sidecar",
                "image": "busybox",
                "restartPolicy": "Always",
                "resources": cpu("1"),
            },
        ],
    )
    staged["spec"]["containers"][0]["resources"] = cpu("1500m")
    await core.create_namespaced_pod("default", staged)
    await eventually(lambda: _bound(core, "staged"))

    one_cpu = plain_pod("one-cpu")
    one_cpu["spec"]["containers"][0]["resources"] = cpu("1")
    await core.create_namespaced_pod("default", one_cpu)
    failures = await eventually(lambda: _failed(core, "one-cpu"))
    assert failures[0].message == (
        "0/1 nodes are available: 1 Insufficient cpu. preemption: 0/1 nodes are available: "
        "1 No preemption victims found for incoming pod."
    )

    # pods without requests fit until the node's pod slots run out
    for name in ("free-1", "free-2"):
        await core.create_namespaced_pod("default", plain_pod(name))
    await eventually(lambda: _bound(core, "free-1"))
    failed = await eventually(lambda: _failed(core, "free-2"))
    assert failed[0].message.startswith("0/1 nodes are available: 1 Too many pods.")

    # pods that go away give their room back
    for name in ("staged", "free-1"):
        await core.delete_namespaced_pod(name, "default", grace_period_seconds=0)
    assert (await eventually(lambda: _bound(core, "free-2"))).spec.node_name == "small"
    assert (await eventually(lambda: _bound(core, "one-cpu"))).spec.node_name == "small"
    await api.close()


async def test_gated_pods_wait_untouched_and_other_schedulers_pods_too(kubesim):
    kubesim.load([make_node("worker", 16, 64, None, 0)])
    api = await api_client_for(kubesim.kubeconfig)
    core = client.CoreV1Api(api)
    await core.create_namespaced_pod(
        "default", plain_pod("gated", schedulingGates=[{"name": "example.com/wait"}])
    )
    await core.create_namespaced_pod("default", plain_pod("other", schedulerName="my-scheduler"))
    await core.create_namespaced_pod("default", plain_pod("mine"))
    await eventually(lambda: _bound(core, "mine"))
    await asyncio.sleep(0.3)
    for name in ("gated", "other"):
        pod = await core.read_namespaced_pod(name, "default")
        assert not pod.spec.node_name
        assert await events_of(core, "default", name) == []
    # The apiserver marks a pod created with gates; the scheduler leaves it alone.
    [gated] = (await core.read_namespaced_pod("gated", "default")).status.conditions
    assert (gated.type, gated.status, gated.reason) == ("PodScheduled", "False", "SchedulingGated")
    assert gated.message == "Scheduling is blocked due to non-empty scheduling gates"
    assert not (await core.read_namespaced_pod("other", "default")).status.conditions
    # Removing the last gate hands the pod to the scheduler.
    await core.patch_namespaced_pod(
        "gated", "default", [{"op": "remove", "path": "/spec/schedulingGates"}]
    )
    assert (await eventually(lambda: _bound(core, "gated"))).spec.node_name == "worker"
    await api.close()


async def test_pods_of_each_configured_scheduler_are_placed_in_its_name(make_kubesim):
    default = await make_kubesim()
    custom = await make_kubesim(scheduler_names=("my-scheduler",))
    for sim in (default, custom):
        sim.load([make_node("worker", 16, 64, None, 0)])
    api = await api_client_for(default.kubeconfig)
    core = client.CoreV1Api(api)
    # z2jh's user-scheduler name is served by default, next to default-scheduler
    await core.create_namespaced_pod(
        "default", plain_pod("user", schedulerName="jupyterhub-user-scheduler")
    )
    await eventually(lambda: _bound(core, "user"))
    [scheduled] = [e for e in await events_of(core, "default", "user") if e.reason == "Scheduled"]
    assert scheduled.source.component == "jupyterhub-user-scheduler"
    assert scheduled.reporting_component == "jupyterhub-user-scheduler"
    await api.close()

    api = await api_client_for(custom.kubeconfig)
    core = client.CoreV1Api(api)
    await core.create_namespaced_pod("default", plain_pod("theirs", schedulerName="my-scheduler"))
    await core.create_namespaced_pod("default", plain_pod("unserved"))  # default-scheduler
    await eventually(lambda: _bound(core, "theirs"))
    unschedulable = plain_pod("too-big", schedulerName="my-scheduler")
    unschedulable["spec"]["containers"][0]["resources"] = {"requests": {"cpu": "64"}}
    await core.create_namespaced_pod("default", unschedulable)
    failures = await eventually(lambda: _failed(core, "too-big"))
    assert failures[0].source.component == "my-scheduler"
    await asyncio.sleep(0.3)
    unserved = await core.read_namespaced_pod("unserved", "default")
    assert not unserved.spec.node_name and not unserved.status.conditions
    await api.close()


def test_scheduler_names_on_the_command_line():
    assert parse_args([]).scheduler_names == (
        "default-scheduler",
        "user-scheduler",
        "jupyterhub-user-scheduler",
    )
    assert parse_args(["--scheduler-names", "a, b"]).scheduler_names == ("a", "b")
    with pytest.raises(SystemExit):
        parse_args(["--scheduler-names", ","])


def test_large_clusters_are_searched_in_part_like_kube_scheduler_does():
    assert feasible_nodes_to_find(1) == 1
    assert feasible_nodes_to_find(99) == 99  # small clusters: every node
    assert feasible_nodes_to_find(100) == 100
    assert feasible_nodes_to_find(250) == 120  # 48%
    assert feasible_nodes_to_find(1000) == 420  # 42%
    assert feasible_nodes_to_find(5000) == 500  # 10%
    assert feasible_nodes_to_find(6000) == 300  # never under 5%


async def test_in_a_large_cluster_each_search_starts_where_the_last_one_stopped(kubesim):
    kubesim.load([make_node(f"n-{i:03d}", 16, 64, None, i) for i in range(250)])
    api = await api_client_for(kubesim.kubeconfig)
    core = client.CoreV1Api(api)
    placed = []
    for name in ("first", "second"):
        pod = plain_pod(name)
        pod["spec"]["containers"][0]["resources"] = {"requests": {"cpu": "1"}}
        await core.create_namespaced_pod("default", pod)
        placed.append((await eventually(lambda name=name: _bound(core, name))).spec.node_name)
    # The first search looks at n-000..n-119 (120 feasible nodes are enough), the next one
    # starts at n-120; with one search over all nodes the second pod would take n-001.
    assert placed == ["n-000", "n-120"]
    await api.close()
