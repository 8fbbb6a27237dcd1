"""batch/v1 Jobs: the API (defaults, discovery, tables), the Job controller's pods, counts,
conditions, back-off, deadline, suspension, pod failure policy, TTL, and what deleting a Job
does to its pods (garbage collection by ownerReferences)."""

from __future__ import annotations

import asyncio
import json
import sys

import httpx
import pytest
from kubernetes_asyncio import client
from kubernetes_asyncio.client.exceptions import ApiException

from tests.conftest import api_client_for
from tests.kubesim.admission import default_job
from tests.kubesim.generator import make_node
from tests.kubesim.jobs import (
    TRACKING_FINALIZER,
    match_pod_failure_policy,
    restarts_past_backoff_limit,
    wanted_active,
)
from tests.utils import eventually

PY = sys.executable


def job_manifest(name: str, code: str = "print('done')", **spec) -> dict:
    template_spec = {
        "restartPolicy": spec.pop("restartPolicy", "Never"),
        "containers": [{"name": "main", "image": "python:3.12", "command": [PY, "-c", code]}],
    }
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {"template": {"spec": template_spec}, **spec},
    }


@pytest.fixture
async def batch(make_kubesim):
    """A kubesim running pods as processes, with a short pod-replacement back-off."""
    sim = await make_kubesim(process_runtime=True, job_backoff_s=0.05)
    sim.load([make_node("worker", 16, 64, None, 0)])
    api = await api_client_for(sim.kubeconfig)
    sim.api = api
    sim.batch = client.BatchV1Api(api)
    sim.core = client.CoreV1Api(api)
    yield sim
    await api.close()


async def read_job(sim, name: str) -> dict:
    response = await sim.batch.read_namespaced_job(name, "default", _preload_content=False)
    return json.loads(await response.read())


async def job_pods(sim, name: str) -> list[dict]:
    response = await sim.core.list_namespaced_pod(
        "default", label_selector=f"batch.kubernetes.io/job-name={name}", _preload_content=False
    )
    return json.loads(await response.read())["items"]


def conditions(job: dict) -> list[tuple[str, str, str]]:
    return [
        (c["type"], c["status"], c.get("reason", ""))
        for c in (job.get("status") or {}).get("conditions") or []
    ]


async def finished(sim, name: str) -> dict | None:
    job = await read_job(sim, name)
    kinds = {c[0] for c in conditions(job) if c[1] == "True"}
    return job if kinds & {"Complete", "Failed"} else None


# -- pure parts ---------------------------------------------------------------------------


def test_job_defaults_and_generated_selector():
    job = default_job(
        {
            "metadata": {"name": "train", "uid": "u-1"},
            "spec": {"template": {"spec": {"containers": [{"name": "c", "image": "x:1"}]}}},
        }
    )
    spec = job["spec"]
    assert (spec["completions"], spec["parallelism"], spec["backoffLimit"]) == (1, 1, 6)
    assert (spec["suspend"], spec["completionMode"]) == (False, "NonIndexed")
    assert spec["podReplacementPolicy"] == "TerminatingOrFailed"
    assert spec["selector"] == {"matchLabels": {"batch.kubernetes.io/controller-uid": "u-1"}}
    labels = spec["template"]["metadata"]["labels"]
    assert labels == {
        "batch.kubernetes.io/controller-uid": "u-1",
        "batch.kubernetes.io/job-name": "train",
        "controller-uid": "u-1",
        "job-name": "train",
    }
    assert job["metadata"]["labels"] == labels  # a Job without labels reads back the template's
    assert spec["template"]["spec"]["terminationGracePeriodSeconds"] == 30
    # Parallelism alone leaves completions unset (a work queue); a pod failure policy makes
    # only failed pods replaceable.
    queue = default_job({"metadata": {}, "spec": {"parallelism": 3, "podFailurePolicy": {}}})
    assert "completions" not in queue["spec"] and queue["spec"]["parallelism"] == 3
    assert queue["spec"]["podReplacementPolicy"] == "Failed"


def test_wanted_active_pods():
    job = {"spec": {"parallelism": 2, "completions": 5}}
    assert wanted_active(job, succeeded=0, active=0) == 2
    assert wanted_active(job, succeeded=4, active=1) == 1
    assert wanted_active(job, succeeded=5, active=0) == 0
    queue = {"spec": {"parallelism": 3}}
    assert wanted_active(queue, succeeded=0, active=1) == 3
    assert wanted_active(queue, succeeded=1, active=2) == 2  # once one succeeded, no new ones


def failed_pod(code: int, container: str = "main", conditions: list | None = None) -> dict:
    return {
        "metadata": {"name": "p", "namespace": "ns"},
        "status": {
            "phase": "Failed",
            "conditions": conditions or [],
            "containerStatuses": [
                {"name": "side", "state": {"terminated": {"exitCode": 0}}},
                {"name": container, "state": {"terminated": {"exitCode": code}}},
            ],
        },
    }


def test_pod_failure_policy_rules_match_in_order():
    policy = {
        "rules": [
            {
                "action": "Ignore",
                "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}],
            },
            {"action": "FailJob", "onExitCodes": {"operator": "In", "values": [42]}},
            {
                "action": "Count",
                "onExitCodes": {"containerName": "main", "operator": "NotIn", "values": [1]},
            },
        ]
    }
    action, message = match_pod_failure_policy(policy, failed_pod(42))
    assert action == "FailJob"
    assert message == (
        "Container main for pod ns/p failed with exit code 42 matching FailJob rule at index 1"
    )
    assert match_pod_failure_policy(policy, failed_pod(3))[0] == "Count"
    assert match_pod_failure_policy(policy, failed_pod(1)) == (None, None)
    disrupted = failed_pod(1, conditions=[{"type": "DisruptionTarget", "status": "True"}])
    assert match_pod_failure_policy(policy, disrupted)[0] == "Ignore"
    assert match_pod_failure_policy(None, failed_pod(42)) == (None, None)


def test_restarts_count_against_the_backoff_limit_only_with_on_failure():
    def job(policy, limit):
        return {"spec": {"backoffLimit": limit, "template": {"spec": {"restartPolicy": policy}}}}

    running = {
        "status": {"phase": "Running", "containerStatuses": [{"restartCount": 2}]},
    }
    assert restarts_past_backoff_limit(job("OnFailure", 2), [running])
    assert not restarts_past_backoff_limit(job("OnFailure", 3), [running])
    assert not restarts_past_backoff_limit(job("Never", 1), [running])
    assert restarts_past_backoff_limit(job("OnFailure", 0), [running])


# -- through the API ----------------------------------------------------------------------------


async def test_jobs_are_served_with_defaults_status_and_a_table(kubesim):
    api = await api_client_for(kubesim.kubeconfig)
    resources = await client.BatchV1Api(api).get_api_resources()
    names = {r.name: r for r in resources.resources}
    assert names["jobs"].namespaced and "jobs/status" in names
    batch = client.BatchV1Api(api)
    created = await batch.create_namespaced_job("default", job_manifest("hello", suspend=True))
    uid = created.metadata.uid
    assert created.spec.backoff_limit == 6 and created.spec.completions == 1
    assert created.spec.selector.match_labels == {"batch.kubernetes.io/controller-uid": uid}
    assert created.metadata.labels["batch.kubernetes.io/job-name"] == "hello"

    # The status subresource is the only way to write status; a main update keeps it.
    status = await eventually(lambda: _suspended(batch, "hello"))
    assert [c.type for c in status.conditions] == ["Suspended"]
    async with httpx.AsyncClient(base_url=kubesim.url) as http:
        table = await http.get(
            "/apis/batch/v1/namespaces/default/jobs",
            headers={"Accept": "application/json;as=Table;v=v1;g=meta.k8s.io"},
        )
    body = table.json()
    assert [c["name"] for c in body["columnDefinitions"]] == [
        "Name",
        "Status",
        "Completions",
        "Duration",
        "Age",
    ]
    assert body["rows"][0]["cells"][:3] == ["hello", "Suspended", "0/1"]
    await api.close()


async def _suspended(batch, name):
    job = await batch.read_namespaced_job_status(name, "default")
    return job.status if job.status and job.status.conditions else None


async def test_a_job_runs_its_pod_to_completion(batch):
    await batch.batch.create_namespaced_job("default", job_manifest("ok"))
    job = await eventually(lambda: finished(batch, "ok"))
    assert conditions(job) == [
        ("SuccessCriteriaMet", "True", "CompletionsReached"),
        ("Complete", "True", "CompletionsReached"),
    ]
    assert job["status"]["conditions"][1]["message"] == "Reached expected number of succeeded pods"
    status = job["status"]
    assert status["succeeded"] == 1 and "failed" not in status and "active" not in status
    assert status["startTime"] and status["completionTime"]
    assert (status["ready"], status["terminating"], status["uncountedTerminatedPods"]) == (0, 0, {})
    [pod] = await job_pods(batch, "ok")
    meta = pod["metadata"]
    assert meta["name"].startswith("ok-")
    uid = job["metadata"]["uid"]
    assert meta["labels"]["controller-uid"] == meta["labels"]["batch.kubernetes.io/controller-uid"]
    assert meta["labels"]["controller-uid"] == uid and meta["labels"]["job-name"] == "ok"
    assert meta["ownerReferences"] == [
        {
            "apiVersion": "batch/v1",
            "kind": "Job",
            "name": "ok",
            "uid": uid,
            "controller": True,
            "blockOwnerDeletion": True,
        }
    ]
    assert TRACKING_FINALIZER not in (meta.get("finalizers") or [])  # counted, released
    assert pod["status"]["phase"] == "Succeeded"
    reasons = [e.reason for e in (await batch.core.list_namespaced_event("default")).items]
    assert "SuccessfulCreate" in reasons and "Completed" in reasons


async def test_parallel_pods_until_the_completions_are_reached(batch):
    await batch.batch.create_namespaced_job(
        "default",
        job_manifest("many", "import time; time.sleep(0.3)", completions=3, parallelism=2),
    )
    running = await eventually(lambda: _active(batch, "many", 2))
    assert running == 2
    job = await eventually(lambda: finished(batch, "many"), within=20)
    assert job["status"]["succeeded"] == 3
    assert len(await job_pods(batch, "many")) == 3


async def _active(sim, name, count):
    job = await read_job(sim, name)
    return job["status"].get("active") if job["status"].get("active") == count else None


async def test_failed_pods_are_replaced_until_the_backoff_limit(batch):
    await batch.batch.create_namespaced_job(
        "default", job_manifest("flaky", "raise SystemExit(3)", backoffLimit=1)
    )
    job = await eventually(lambda: finished(batch, "flaky"), within=20)
    assert conditions(job) == [
        ("FailureTarget", "True", "BackoffLimitExceeded"),
        ("Failed", "True", "BackoffLimitExceeded"),
    ]
    assert (
        job["status"]["conditions"][1]["message"] == "Job has reached the specified backoff limit"
    )
    assert job["status"]["failed"] == 2 and "completionTime" not in job["status"]
    pods = await job_pods(batch, "flaky")
    assert [p["status"]["phase"] for p in pods] == ["Failed", "Failed"]
    codes = {p["status"]["containerStatuses"][0]["state"]["terminated"]["exitCode"] for p in pods}
    assert codes == {3}
    events = (await batch.core.list_namespaced_event("default")).items
    warning = [e for e in events if e.reason == "BackoffLimitExceeded"]
    assert warning and warning[0].type == "Warning"


async def test_pod_failure_policy_fails_the_job_on_an_exit_code(batch):
    policy = {"rules": [{"action": "FailJob", "onExitCodes": {"operator": "In", "values": [42]}}]}
    await batch.batch.create_namespaced_job(
        "default", job_manifest("fatal", "raise SystemExit(42)", podFailurePolicy=policy)
    )
    job = await eventually(lambda: finished(batch, "fatal"))
    assert conditions(job)[-1] == ("Failed", "True", "PodFailurePolicy")
    [pod] = await job_pods(batch, "fatal")
    assert job["status"]["conditions"][-1]["message"] == (
        f"Container main for pod default/{pod['metadata']['name']} failed with exit code 42 "
        "matching FailJob rule at index 0"
    )
    assert job["status"]["failed"] == 1


async def test_active_deadline_kills_the_pods(batch):
    await batch.batch.create_namespaced_job(
        "default", job_manifest("slow", "import time; time.sleep(60)", activeDeadlineSeconds=1)
    )
    job = await eventually(lambda: finished(batch, "slow"))
    assert conditions(job) == [
        ("FailureTarget", "True", "DeadlineExceeded"),
        ("Failed", "True", "DeadlineExceeded"),
    ]
    assert (
        job["status"]["conditions"][1]["message"] == "Job was active longer than specified deadline"
    )
    assert job["status"]["failed"] == 1
    assert await job_pods(batch, "slow") == []  # killed, counted, gone
    assert not batch.kubelet.processes


async def test_suspension_stops_pods_and_the_deadline_clock(batch):
    await batch.batch.create_namespaced_job(
        "default",
        job_manifest(
            "paused", "import time; time.sleep(60)", suspend=True, activeDeadlineSeconds=2
        ),
    )
    await eventually(lambda: _suspended(batch.batch, "paused"))
    await asyncio.sleep(2.2)  # longer than the deadline, all of it suspended
    job = await read_job(batch, "paused")
    assert "startTime" not in job["status"] and await job_pods(batch, "paused") == []

    await batch.batch.patch_namespaced_job("paused", "default", {"spec": {"suspend": False}})
    assert await eventually(lambda: _active(batch, "paused", 1)) == 1
    job = await read_job(batch, "paused")
    assert ("Suspended", "False", "JobResumed") in conditions(job) and job["status"]["startTime"]

    # Suspending a running Job deletes its pods without counting them as failures.
    await batch.batch.patch_namespaced_job("paused", "default", {"spec": {"suspend": True}})

    async def emptied():
        return await job_pods(batch, "paused") == [] or None

    await eventually(emptied)
    job = await read_job(batch, "paused")
    assert ("Suspended", "True", "JobSuspended") in conditions(job)
    assert "failed" not in job["status"] and "active" not in job["status"]
    await asyncio.sleep(0.3)
    assert not await finished(batch, "paused")  # the deadline clock stopped again
    reasons = [e.reason for e in (await batch.core.list_namespaced_event("default")).items]
    assert {"Suspended", "Resumed", "SuccessfulDelete"} <= set(reasons)


async def test_finished_jobs_go_after_their_ttl(batch):
    await batch.batch.create_namespaced_job(
        "default", job_manifest("brief", ttlSecondsAfterFinished=1)
    )
    await eventually(lambda: finished(batch, "brief"))
    assert len(await job_pods(batch, "brief")) == 1
    await eventually(lambda: _job_gone(batch, "brief"))
    await eventually(lambda: _no_pods(batch, "brief"))


async def _job_gone(sim, name):
    try:
        await sim.batch.read_namespaced_job(name, "default")
    except ApiException as err:
        return err.status == 404
    return False


async def _no_pods(sim, name):
    return await job_pods(sim, name) == []


async def test_deleting_a_job_background_foreground_and_orphan(batch):
    sleeper = "import time; time.sleep(60)"
    for name in ("bg", "fg", "orphan"):
        await batch.batch.create_namespaced_job("default", job_manifest(name, sleeper))
    for name in ("bg", "fg", "orphan"):
        await eventually(lambda name=name: _active(batch, name, 1))

    await batch.batch.delete_namespaced_job(
        "bg", "default", body={"propagationPolicy": "Background"}
    )
    await eventually(lambda: _no_pods(batch, "bg"))

    response = await batch.batch.delete_namespaced_job(
        "fg", "default", body={"propagationPolicy": "Foreground"}, _preload_content=False
    )
    deleted = json.loads(await response.read())
    assert deleted["metadata"]["deletionTimestamp"]
    assert deleted["metadata"]["finalizers"] == ["foregroundDeletion"]
    await eventually(lambda: _no_pods(batch, "fg"))
    await eventually(lambda: _job_gone(batch, "fg"))

    # batch/v1's default keeps the pods, and the apiserver warns about it.
    async with httpx.AsyncClient(base_url=batch.url) as http:
        answer = await http.delete("/apis/batch/v1/namespaces/default/jobs/orphan")
    assert answer.status_code == 200
    assert "child pods are preserved by default" in answer.headers["Warning"]

    async def orphaned():
        pods = await job_pods(batch, "orphan")
        free = pods and not pods[0]["metadata"].get("ownerReferences")
        return pods[0] if free and not pods[0]["metadata"].get("finalizers") else None

    pod = await eventually(orphaned)
    assert pod["status"]["phase"] == "Running"
    await batch.core.delete_namespaced_pod(
        pod["metadata"]["name"], "default", grace_period_seconds=0
    )


async def test_kubectl_shows_and_deletes_jobs(batch):
    import shutil

    if shutil.which("kubectl") is None:
        pytest.skip("kubectl is not installed")
    from tests.kubesim.test_kubectl import kubectl

    await batch.batch.create_namespaced_job("default", job_manifest("shown"))
    await eventually(lambda: finished(batch, "shown"))
    out = await kubectl(batch, "get", "jobs")
    header, row = out.splitlines()[:2]
    assert header.split() == ["NAME", "STATUS", "COMPLETIONS", "DURATION", "AGE"]
    assert row.split()[:3] == ["shown", "Complete", "1/1"]
    await kubectl(batch, "delete", "job", "shown")  # kubectl asks for Background
    await eventually(lambda: _no_pods(batch, "shown"))


async def test_a_failed_pod_is_replaced_after_the_backoff(make_kubesim):
    sim = await make_kubesim(process_runtime=True, job_backoff_s=1.0)
    sim.load([make_node("worker", 16, 64, None, 0)])
    api = await api_client_for(sim.kubeconfig)
    sim.batch, sim.core = client.BatchV1Api(api), client.CoreV1Api(api)
    await sim.batch.create_namespaced_job(
        "default", job_manifest("again", "raise SystemExit(1)", backoffLimit=1)
    )

    async def first_failed():
        pods = await job_pods(sim, "again")
        return pods if [p["status"]["phase"] for p in pods] == ["Failed"] else None

    await eventually(first_failed)
    await asyncio.sleep(0.5)
    assert len(await job_pods(sim, "again")) == 1  # still backing off
    job = await eventually(lambda: finished(sim, "again"))
    assert job["status"]["failed"] == 2
    await api.close()


async def test_garbage_collection_follows_owner_references(kubesim):
    api = await api_client_for(kubesim.kubeconfig)
    core = client.CoreV1Api(api)
    owners = [
        await core.create_namespaced_config_map("default", {"metadata": {"name": n}})
        for n in ("owner-a", "owner-b")
    ]

    def ref(owner):
        return {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "name": owner.metadata.name,
            "uid": owner.metadata.uid,
        }

    await core.create_namespaced_config_map(
        "default", {"metadata": {"name": "single", "ownerReferences": [ref(owners[0])]}}
    )
    await core.create_namespaced_config_map(
        "default", {"metadata": {"name": "shared", "ownerReferences": [ref(o) for o in owners]}}
    )
    await core.delete_namespaced_config_map("owner-a", "default")

    async def collected():
        names = {c.metadata.name for c in (await core.list_namespaced_config_map("default")).items}
        return names if "single" not in names else None

    names = await eventually(collected)
    assert "shared" in names  # another owner still exists: only the dangling reference goes
    shared = await core.read_namespaced_config_map("shared", "default")
    assert [r.name for r in shared.metadata.owner_references] == ["owner-b"]
    await api.close()
