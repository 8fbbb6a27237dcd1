"""The process runtime: exit codes, restart policies and the crash back-off, environment from
ConfigMaps and Secrets, and volumes (configMap, secret, emptyDir, persistentVolumeClaim)
seen by the processes at their mountPaths."""

from __future__ import annotations

import asyncio
import json
import sys
import textwrap
from pathlib import Path

import pytest
from kubernetes_asyncio import client

from tests.conftest import api_client_for
from tests.kubesim.generator import make_node
from tests.kubesim.kubelet import exit_code, restart_delay, should_restart
from tests.kubesim.sandbox import Mount, namespaces_work, rewrite
from tests.utils import eventually

PY = sys.executable


def test_restart_rules_and_backoff():
    assert should_restart("Always", 0) and should_restart("Always", 1)
    assert should_restart("OnFailure", 2) and not should_restart("OnFailure", 0)
    assert not should_restart("Never", 1)
    assert [restart_delay(n, 10) for n in range(4)] == [0, 10, 20, 40]
    assert restart_delay(20, 10) == 300  # at most five minutes
    assert exit_code(-15) == 143 and exit_code(-9) == 137 and exit_code(3) == 3


def test_rewriting_mount_paths():
    mounts = [Mount("/tmp/pod/job", "/job", True), Mount("/tmp/pv/a", "/job/out", False)]
    assert rewrite("/job/script.py", mounts) == "/tmp/pod/job/script.py"
    assert rewrite("/job/out/x", mounts) == "/tmp/pv/a/x"  # the deeper mount wins
    assert rewrite("--out=/job/out", mounts) == "--out=/tmp/pv/a"
    assert rewrite("/jobs/x", mounts) == "/jobs/x"  # only whole path components
    assert rewrite("PATH=/usr/bin:/job", mounts) == "PATH=/usr/bin:/tmp/pod/job"


@pytest.fixture
async def runtime(make_kubesim):
    sim = await make_kubesim(process_runtime=True, restart_backoff_s=0.05, job_backoff_s=0.05)
    sim.load(
        [
            make_node("worker", 16, 64, None, 0),
            {
                "apiVersion": "storage.k8s.io/v1",
                "kind": "StorageClass",
                "metadata": {"name": "shared"},
                "provisioner": "example.com/nfs",
            },
        ]
    )
    api = await api_client_for(sim.kubeconfig)
    sim.core = client.CoreV1Api(api)
    sim.batch = client.BatchV1Api(api)
    yield sim
    await api.close()


def python_pod(name: str, code: str, restart: str = "Never", **spec) -> dict:
    container = {"name": "main", "image": "python:3.12", "command": [PY, "-c", code]}
    container.update(spec.pop("container", {}))
    return {
        "metadata": {"name": name},
        "spec": {"restartPolicy": restart, "containers": [container], **spec},
    }


async def pod_json(sim, name: str) -> dict:
    response = await sim.core.read_namespaced_pod(name, "default", _preload_content=False)
    return json.loads(await response.read())


async def phase_is(sim, name: str, *phases: str) -> dict | None:
    pod = await pod_json(sim, name)
    return pod if pod["status"].get("phase") in phases else None


async def test_on_failure_restarts_until_success_and_keeps_the_last_state(runtime):
    # Fails twice, then succeeds; $HOME lives as long as the pod, across restarts.
    code = textwrap.dedent(
        """
        import os, pathlib
        count = pathlib.Path(os.environ["HOME"], "count")
        n = int(count.read_text()) if count.exists() else 0
        count.write_text(str(n + 1))
        print("attempt", n)
        raise SystemExit(0 if n == 2 else 5)
        """
    )
    await runtime.core.create_namespaced_pod("default", python_pod("retry", code, "OnFailure"))
    pod = await eventually(lambda: phase_is(runtime, "retry", "Succeeded"))
    [status] = pod["status"]["containerStatuses"]
    assert status["restartCount"] == 2
    assert status["state"]["terminated"]["exitCode"] == 0
    assert status["state"]["terminated"]["reason"] == "Completed"
    assert status["lastState"]["terminated"]["exitCode"] == 5
    assert status["lastState"]["terminated"]["reason"] == "Error"


async def test_always_restarts_and_backs_off(make_kubesim):
    sim = await make_kubesim(process_runtime=True, restart_backoff_s=30)
    sim.load([make_node("worker", 16, 64, None, 0)])
    api = await api_client_for(sim.kubeconfig)
    sim.core = client.CoreV1Api(api)
    await sim.core.create_namespaced_pod("default", python_pod("loop", "pass", "Always"))

    async def backing_off():
        pod = await pod_json(sim, "loop")
        statuses = pod["status"].get("containerStatuses") or [{}]
        waiting = statuses[0].get("state", {}).get("waiting") or {}
        return pod if waiting.get("reason") == "CrashLoopBackOff" else None

    pod = await eventually(backing_off)
    [status] = pod["status"]["containerStatuses"]
    assert pod["status"]["phase"] == "Running" and status["restartCount"] == 1
    assert status["lastState"]["terminated"]["reason"] == "Completed"
    uid = pod["metadata"]["uid"]
    assert status["state"]["waiting"]["message"] == (
        f"back-off 30s restarting failed container=main pod=loop_default({uid})"
    )
    ready = {c["type"]: c for c in pod["status"]["conditions"]}["Ready"]
    assert (ready["status"], ready["reason"]) == ("False", "ContainersNotReady")
    events = await sim.core.list_namespaced_event("default")
    assert any(e.reason == "BackOff" and e.type == "Warning" for e in events.items)
    await api.close()


async def test_a_job_with_on_failure_counts_restarts_against_its_backoff_limit(runtime):
    job = {
        "metadata": {"name": "crashy"},
        "spec": {
            "backoffLimit": 2,
            "template": {"spec": python_pod("x", "raise SystemExit(1)", "OnFailure")["spec"]},
        },
    }
    await runtime.batch.create_namespaced_job("default", job)

    async def failed():
        found = await runtime.batch.read_namespaced_job_status("crashy", "default")
        kinds = {(c.type, c.reason) for c in found.status.conditions or [] if c.status == "True"}
        return found if ("Failed", "BackoffLimitExceeded") in kinds else None

    job = await eventually(failed)
    assert job.status.failed == 1  # the one pod, killed when the limit was reached


async def test_environment_from_config_maps_and_secrets(runtime):
    core = runtime.core
    await core.create_namespaced_config_map(
        "default", {"metadata": {"name": "settings"}, "data": {"MODEL": "tiny", "STEPS": "3"}}
    )
    await core.create_namespaced_secret(
        "default", {"metadata": {"name": "keys"}, "stringData": {"token": "s3cret"}}
    )
    env = {
        "env": [
            {
                "name": "MODEL_NAME",
                "valueFrom": {"configMapKeyRef": {"name": "settings", "key": "MODEL"}},
            },
            {"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "keys", "key": "token"}}},
            {"name": "COMBINED", "value": "$(MODEL_NAME)-$(CFG_STEPS)"},
        ],
        "envFrom": [{"configMapRef": {"name": "settings"}, "prefix": "CFG_"}],
    }
    code = "import os; print({k: os.environ[k] for k in ('MODEL_NAME', 'CFG_STEPS', 'TOKEN', 'COMBINED')})"
    await core.create_namespaced_pod("default", python_pod("env", code, container=env))
    await eventually(lambda: phase_is(runtime, "env", "Succeeded"))
    output = await core.read_namespaced_pod_log("env", "default")
    assert output.strip() == str(
        {"MODEL_NAME": "tiny", "CFG_STEPS": "3", "TOKEN": "s3cret", "COMBINED": "tiny-3"}
    )


async def shared_claim(sim, name: str = "artifacts") -> None:
    await sim.core.create_namespaced_persistent_volume_claim(
        "default",
        {
            "metadata": {"name": name},
            "spec": {
                "accessModes": ["ReadWriteMany"],
                "storageClassName": "shared",
                "resources": {"requests": {"storage": "1Gi"}},
            },
        },
    )

    async def bound():
        claim = await sim.core.read_namespaced_persistent_volume_claim(name, "default")
        return claim.status.phase == "Bound"

    await eventually(bound)


SCRIPT = textwrap.dedent(
    """
    import os, pathlib, sys
    data = pathlib.Path("/job/data.txt").read_text().strip()
    pathlib.Path("/scratch/tmp.txt").write_text("scratch")
    pathlib.Path("/artifacts/result.txt").write_text(f"{data} from {os.environ['HOSTNAME']}")
    try:
        pathlib.Path("/job/new.txt").write_text("x")
        print("config map writable")
    except OSError:
        print("config map read-only")
    print("args", sys.argv[1:])
    """
)


def volume_pod(name: str, command: list[str], claim: str = "artifacts") -> dict:
    return {
        "metadata": {"name": name},
        "spec": {
            "restartPolicy": "Never",
            "containers": [
                {
                    "name": "main",
                    "image": "python:3.12",
                    "command": command,
                    "volumeMounts": [
                        {"name": "job", "mountPath": "/job"},
                        {"name": "scratch", "mountPath": "/scratch"},
                        {"name": "artifacts", "mountPath": "/artifacts"},
                    ],
                }
            ],
            "volumes": [
                {"name": "job", "configMap": {"name": "job-files"}},
                {"name": "scratch", "emptyDir": {}},
                {"name": "artifacts", "persistentVolumeClaim": {"claimName": claim}},
            ],
        },
    }


async def job_files(sim) -> None:
    await sim.core.create_namespaced_config_map(
        "default",
        {"metadata": {"name": "job-files"}, "data": {"script.py": SCRIPT, "data.txt": "hello"}},
    )


@pytest.mark.skipif(not namespaces_work(), reason="no private mount namespaces on this machine")
async def test_volumes_at_their_mount_paths_in_a_mount_namespace(runtime):
    assert runtime.kubelet.mount_mode() == "namespace"
    await job_files(runtime)
    await shared_claim(runtime)
    await runtime.core.create_namespaced_pod(
        "default", volume_pod("writer", ["python", "/job/script.py", "--out=/artifacts"])
    )
    await eventually(lambda: phase_is(runtime, "writer", "Succeeded", "Failed"))
    output = await runtime.core.read_namespaced_pod_log("writer", "default")
    assert (await pod_json(runtime, "writer"))["status"]["phase"] == "Succeeded", output
    # The arguments are not rewritten: the process sees the mountPath itself.
    assert output.splitlines() == ["config map read-only", "args ['--out=/artifacts']"]

    # Another pod mounting the same claim sees the file; nothing appeared on this machine.
    reader = volume_pod("reader", [PY, "-c", "print(open('/artifacts/result.txt').read())"])
    await runtime.core.create_namespaced_pod("default", reader)
    await eventually(lambda: phase_is(runtime, "reader", "Succeeded", "Failed"))
    assert await runtime.core.read_namespaced_pod_log("reader", "default") == "hello from writer\n"
    for path in ("/job", "/artifacts"):
        assert not await asyncio.to_thread(Path(path).exists)


async def test_volumes_by_rewritten_paths(make_kubesim):
    sim = await make_kubesim(process_runtime=True, volume_mounts="rewrite")
    sim.load(
        [
            make_node("worker", 16, 64, None, 0),
            {
                "apiVersion": "storage.k8s.io/v1",
                "kind": "StorageClass",
                "metadata": {"name": "shared"},
                "provisioner": "example.com/nfs",
            },
        ]
    )
    api = await api_client_for(sim.kubeconfig)
    sim.core = client.CoreV1Api(api)
    await job_files(sim)
    await shared_claim(sim)
    # A script that finds its folders from its arguments and environment.
    script = textwrap.dedent(
        """
        import os, pathlib, sys
        data = pathlib.Path(sys.argv[1]).read_text().strip()
        out = pathlib.Path(os.environ["OUT"], "result.txt")
        out.write_text(data)
        print(out.read_text(), os.environ["OUT"] != "/artifacts")
        """
    )
    await sim.core.patch_namespaced_config_map(
        "job-files", "default", {"data": {"script.py": script}}
    )
    pod = volume_pod("rewritten", [PY, "/job/script.py", "/job/data.txt"])
    pod["spec"]["containers"][0]["env"] = [{"name": "OUT", "value": "/artifacts"}]
    await sim.core.create_namespaced_pod("default", pod)
    await eventually(lambda: phase_is(sim, "rewritten", "Succeeded", "Failed"))
    assert await sim.core.read_namespaced_pod_log("rewritten", "default") == "hello True\n"
    await api.close()


async def test_a_missing_config_map_holds_the_pod_in_container_creating(runtime):
    await runtime.core.create_namespaced_pod(
        "default", volume_pod("waiting", [PY, "-c", "print(open('/job/data.txt').read())"])
    )
    await shared_claim(runtime)

    async def failed_mount():
        events = await runtime.core.list_namespaced_event("default")
        found = [e for e in events.items if e.reason == "FailedMount"]
        return found[0] if found else None

    event = await eventually(failed_mount)
    assert event.message == (
        'MountVolume.SetUp failed for volume "job" : configmap "job-files" not found'
    )
    pod = await pod_json(runtime, "waiting")
    assert pod["status"]["phase"] == "Pending"
    state = pod["status"]["containerStatuses"][0]["state"]
    assert state == {"waiting": {"reason": "ContainerCreating"}}
    await job_files(runtime)
    await eventually(lambda: phase_is(runtime, "waiting", "Succeeded"), within=15)


async def test_every_container_with_a_command_runs(runtime):
    pod = python_pod("pair", "print('main')")
    pod["spec"]["containers"].append(
        {"name": "helper", "image": "python:3.12", "command": [PY, "-c", "raise SystemExit(4)"]}
    )
    await runtime.core.create_namespaced_pod("default", pod)
    found = await eventually(lambda: phase_is(runtime, "pair", "Succeeded", "Failed"))
    assert found["status"]["phase"] == "Failed"  # one container failed
    codes = {
        s["name"]: s["state"]["terminated"]["exitCode"]
        for s in found["status"]["containerStatuses"]
    }
    assert codes == {"main": 0, "helper": 4}


async def test_deleting_a_running_pod_stops_its_process(runtime):
    await runtime.core.create_namespaced_pod(
        "default", python_pod("long", "import time; time.sleep(60)")
    )
    await eventually(lambda: phase_is(runtime, "long", "Running"))
    assert runtime.kubelet.processes
    await runtime.core.delete_namespaced_pod("long", "default")

    async def gone():
        return (
            not runtime.kubelet.processes
            and not (await runtime.core.list_namespaced_pod("default")).items
        )

    await eventually(gone)
    await asyncio.sleep(0)
