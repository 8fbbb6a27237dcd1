"""kubesim through the real kubectl binary, the client people use to look at a cluster."""

from __future__ import annotations

import asyncio
import json
import shutil

import pytest

from tests.kubesim.generator import GPU_MODELS, make_node

pytestmark = pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl is not installed")


async def kubectl(sim, *args: str, stdin: str | None = None, check: bool = True) -> str:
    process = await asyncio.create_subprocess_exec(
        "kubectl",
        "--kubeconfig",
        str(sim.kubeconfig),
        *args,
        stdin=asyncio.subprocess.PIPE if stdin is not None else None,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(stdin.encode() if stdin else None), 60)
    if check and process.returncode != 0:
        pytest.fail(f"kubectl {' '.join(args)} failed ({process.returncode}): {err.decode()}")
    return out.decode() + (err.decode() if not check else "")


def scenario_pods() -> list[dict]:
    """On gpu-a: a notebook asking for 2 GPUs, a finished job (not counted), and a pod with
    an init container larger than its app container."""

    def pod(name, requests, limits=None, phase=None, init=None, node="gpu-a"):
        container = {
            "name": "main",
            "image": "busybox",
            "resources": {"requests": requests, "limits": limits or requests},
        }
        spec = {
            "nodeName": node,
            "containers": [container],
            "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists"}],
        }
        if init:
            spec["initContainers"] = [
                {
                    "name": "init",
                    "image": "busybox",
                    "resources": {"requests": init, "limits": init},
                }
            ]
        manifest = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": name, "namespace": "default"},
            "spec": spec,
        }
        if phase:
            manifest["status"] = {"phase": phase}
        return manifest

    return [
        pod(
            "notebook",
            {"cpu": "4", "memory": "16Gi", "nvidia.com/gpu": "2"},
            {"cpu": "8", "memory": "16Gi", "nvidia.com/gpu": "2"},
        ),
        pod("finished", {"cpu": "10", "memory": "100Gi"}, phase="Succeeded"),
        pod("initial", {"cpu": "500m", "memory": "1Gi"}, init={"cpu": "3", "memory": "2Gi"}),
        pod("elsewhere", {"cpu": "1", "memory": "1Gi"}, node="cpu-a"),
    ]


@pytest.fixture
async def populated(kubesim):
    a100 = GPU_MODELS[0]
    kubesim.load(
        [make_node("gpu-a", a100.cpu, a100.memory_gi, a100, 0), make_node("cpu-a", 16, 64, None, 1)]
    )
    kubesim.load(scenario_pods())
    return kubesim


async def test_get_nodes_and_pods_by_node(populated):
    table = await kubectl(populated, "get", "nodes")
    lines = table.strip().splitlines()
    assert lines[0].split()[:2] == ["NAME", "STATUS"]
    assert sorted(line.split()[0] for line in lines[1:]) == ["cpu-a", "gpu-a"]
    assert all(line.split()[1] == "Ready" for line in lines[1:])

    listed = json.loads(
        await kubectl(
            populated, "get", "pods", "-A", "--field-selector", "spec.nodeName=gpu-a", "-o", "json"
        )
    )
    assert sorted(p["metadata"]["name"] for p in listed["items"]) == [
        "finished",
        "initial",
        "notebook",
    ]
    wide = await kubectl(populated, "get", "pods", "-A", "--field-selector", "spec.nodeName=cpu-a")
    assert "elsewhere" in wide and "notebook" not in wide


async def test_describe_node_allocated_resources(populated):
    """kubectl computes these totals itself from the pods kubesim lists. Worked by hand:
    cpu requests = notebook 4 + initial max(0.5, init 3) = 7 of 63.9 allocatable -> 10%;
    cpu limits 8 + 3 = 11 -> 17%; memory requests 16Gi + 2Gi = 18Gi of 511Gi -> 3%;
    nvidia.com/gpu 2 of 4. The finished pod is not counted."""
    out = await kubectl(populated, "describe", "node", "gpu-a")
    allocated = out.split("Allocated resources:")[1]
    rows = {
        line.split()[0]: line.split()[1:]
        for line in allocated.splitlines()
        if line.strip() and not line.strip().startswith(("(", "Resource", "--------"))
    }
    assert rows["cpu"][:4] == ["7", "(10%)", "11", "(17%)"]
    assert rows["memory"][:4] == ["18Gi", "(3%)", "18Gi", "(3%)"]
    assert rows["nvidia.com/gpu"][:2] == ["2", "2"]
    assert "nvidia.com/gpu.product=NVIDIA-A100-SXM4-80GB" in out
    assert "nvidia.com/gpu:NoSchedule" in out or "nvidia.com/gpu=present:NoSchedule" in out
    assert "Non-terminated Pods:          (2 in total)" in out


async def test_apply_delete_and_events(populated):
    manifest = """
apiVersion: v1
kind: Pod
metadata:
  name: applied
  labels: {app: demo}
spec:
  containers:
  - name: main
    image: busybox:1.36
    resources:
      requests: {cpu: 100m, memory: 64Mi}
      limits: {cpu: 200m, memory: 64Mi}
"""
    out = await kubectl(populated, "apply", "-f", "-", stdin=manifest)
    assert "pod/applied created" in out
    for _ in range(100):
        phase = await kubectl(populated, "get", "pod", "applied", "-o", "jsonpath={.status.phase}")
        if phase == "Running":
            break
        await asyncio.sleep(0.1)
    assert phase == "Running"
    # Applying a change patches the live object.
    out = await kubectl(
        populated, "apply", "-f", "-", stdin=manifest.replace("app: demo", "app: demo2")
    )
    assert "pod/applied configured" in out
    labels = await kubectl(
        populated, "get", "pod", "applied", "-o", "jsonpath={.metadata.labels.app}"
    )
    assert labels == "demo2"

    events = await kubectl(
        populated, "get", "events", "--field-selector", "involvedObject.name=applied"
    )
    assert "Scheduled" in events and "Successfully assigned default/applied to cpu-a" in events
    assert "Started" in events

    out = await kubectl(populated, "delete", "pod", "applied", "--grace-period=1")
    assert 'pod "applied" deleted' in out
    missing = await kubectl(populated, "get", "pod", "applied", check=False)
    assert 'pods "applied" not found' in missing


async def test_invalid_gpu_request_is_rejected_by_kubectl_too(populated):
    manifest = """
apiVersion: v1
kind: Pod
metadata: {name: no-limit}
spec:
  containers:
  - name: main
    image: busybox
    resources:
      requests: {nvidia.com/gpu: 1}
"""
    out = await kubectl(populated, "apply", "-f", "-", stdin=manifest, check=False)
    assert 'The Pod "no-limit" is invalid' in out
    assert "Limit must be set for non overcommitable resources" in out
