"""The queue with jobs as Kubernetes Jobs, against kubesim with its process runtime: real
Python scripts run as the Jobs' pods, the inventory watches the same cluster, the store is
a real SQLite database. With Kueue, Kueue admits."""

from __future__ import annotations

import json
import os
import sys
import textwrap
from pathlib import Path

import pytest
from kubernetes_asyncio import client
from sqlalchemy import create_engine

from hub_service.cluster import KubernetesInventory
from hub_service.jobs.kube import KubeJobs, WatchedPods
from hub_service.jobs.manager import ArtifactsUnavailable, JobQueue, QueueSettings
from hub_service.jobs.spec import JobRequest
from hub_service.jobs.store import JobStore
from tests.conftest import api_client_for
from tests.kubesim.generator import GPU_MODELS, make_node
from tests.utils import eventually
from thinkube_core.job_labels import JOB_ID_LABEL

PY = sys.executable
L4 = GPU_MODELS[3]  # one GPU per node
NAMESPACE = "default"
KUEUE = "kueue.x-k8s.io/v1beta2"


def gpu_request(script: str, expected_s: float = 60, gpus: int = 1) -> JobRequest:
    return JobRequest(
        script=textwrap.dedent(script),
        script_name="train.py",
        expected_s=expected_s,
        gpus=gpus,
        gpu_model=L4.product if gpus else None,
        gpu_resource="nvidia.com/gpu",
        cpu=1,
        memory=1 << 30,
        image={"name": "python", "image": "python:3.12"},
        name="run",
        project="vision",
    )


class Setup:
    """kubesim, its inventory, the queue with KubeJobs; `restart()` makes a new queue."""

    def __init__(self, sim, tmp_path, inventory, kueue_queue=""):
        self.sim, self.tmp_path, self.inventory = sim, tmp_path, inventory
        self.kueue_queue = kueue_queue
        self.queue: JobQueue | None = None

    def make_queue(
        self,
        database: str = "service.sqlite",
        connections: int | None = None,
        backend_options: dict | None = None,
        **settings,
    ) -> JobQueue:
        """`connections`: the API client's connection cap (kubernetes_asyncio's is 100);
        `backend_options`: more of KubeJobs' settings."""
        store = JobStore(create_engine(f"sqlite:///{self.tmp_path / database}"))
        holder: dict[str, JobQueue] = {}

        async def ended(entry_id, ending):
            await holder["queue"].ended(entry_id, ending)

        async def started(entry_id, node):
            await holder["queue"].started(entry_id, node)

        async def api_client():
            api = await api_client_for(self.sim.kubeconfig)
            if connections is None:
                return api
            await api.close()
            api.configuration.connection_pool_maxsize = connections
            return client.ApiClient(api.configuration)

        backend = KubeJobs(
            api_client,
            NAMESPACE,
            ended,
            started,
            kueue_queue=self.kueue_queue,
            ttl_s=600,
            python=PY,
            positions_interval_s=0.2,
            **(backend_options or {}),
        )
        self.queue = holder["queue"] = JobQueue(
            store,
            backend,
            lambda: self.inventory.published.documents,
            QueueSettings(debounce_s=0.01, **settings),
            counted=lambda: self.inventory.published.counted_jobs,
        )
        self.inventory.listeners[:] = [self.queue.poke]
        return self.queue

    def job(self, name: str):
        return self.sim.store.find(self.sim_type("jobs"), NAMESPACE, name)

    @staticmethod
    def sim_type(plural):
        from tests.kubesim.resources import BY_PATH

        group = "batch" if plural == "jobs" else ""
        return BY_PATH[(group, "v1", plural)]

    def objects(self, plural: str) -> list[dict]:
        return [
            o
            for o in self.sim.store.objects(self.sim_type(plural))
            if o["metadata"].get("namespace") == NAMESPACE
            and (o["metadata"].get("labels") or {}).get("app.kubernetes.io/managed-by")
            == "thinkube"
        ]


@pytest.fixture
async def setup(make_kubesim, tmp_path):
    made = []

    async def make(kueue=False, nodes=1, **settings) -> Setup:
        sim = await make_kubesim(
            process_runtime=True, kueue=kueue, job_backoff_s=0.1, restart_backoff_s=0.1
        )
        sim.load([make_node(f"gpu-{i}", 16, 64, L4, i) for i in range(nodes)])
        inventory = KubernetesInventory(
            kubeconfig=str(sim.kubeconfig), debounce_s=0.01, max_backoff_s=0.2
        )
        await inventory.start()
        await eventually(lambda: _true(inventory.ready), within=10)
        queue_name = ""
        if kueue:
            queue_name = "gpu-jobs"
            sim.load(
                [
                    {
                        "apiVersion": KUEUE,
                        "kind": "ResourceFlavor",
                        "metadata": {"name": "default"},
                        "spec": {},
                    },
                    {
                        "apiVersion": KUEUE,
                        "kind": "ClusterQueue",
                        "metadata": {"name": "cq"},
                        "spec": {
                            "namespaceSelector": {},
                            "resourceGroups": [
                                {
                                    "coveredResources": ["cpu", "memory", "nvidia.com/gpu"],
                                    "flavors": [
                                        {
                                            "name": "default",
                                            "resources": [
                                                {"name": "cpu", "nominalQuota": "16"},
                                                {"name": "memory", "nominalQuota": "64Gi"},
                                                {"name": "nvidia.com/gpu", "nominalQuota": "1"},
                                            ],
                                        }
                                    ],
                                }
                            ],
                        },
                    },
                    {
                        "apiVersion": KUEUE,
                        "kind": "LocalQueue",
                        "metadata": {"name": queue_name, "namespace": NAMESPACE},
                        "spec": {"clusterQueue": "cq"},
                    },
                ]
            )
        made_setup = Setup(sim, tmp_path, inventory, queue_name)
        made.append(made_setup)
        return made_setup

    yield make
    for made_setup in made:
        if made_setup.queue is not None:
            await made_setup.queue.stop()
        await made_setup.inventory.stop()


async def _true(value):
    return value


async def status_is(queue, entry_id, *statuses, within=20):
    async def check():
        entry = queue.store.get(entry_id)
        return entry if entry["status"] in statuses else None

    return await eventually(check, within=within, interval=0.05)


def free_gpus(setup: Setup, node: str = "gpu-0") -> int:
    [doc] = [d for d in setup.inventory.published.documents if d["name"] == node]
    return doc["free"].get("nvidia.com/gpu", 0)


async def test_a_job_runs_as_a_kubernetes_job_its_log_follows_and_it_completes(setup):
    s = await setup()
    queue = s.make_queue()
    await queue.start()
    job = await queue.submit(
        "Ana María",
        gpu_request(
            """
            import os, sys, time
            print("job", os.environ["THINKUBE_JOB_ID"])
            print("warning", file=sys.stderr)
            for step in range(3):
                print("step", step)
                time.sleep(0.3)
            """
        ),
    )
    entry = await status_is(queue, job["id"], "running")
    assert entry["node"] == "gpu-0"
    assert entry["placement"]["job"] == f"thinkube-{job['id']}"
    [k8s_job] = s.objects("jobs")
    labels = k8s_job["metadata"]["labels"]
    assert labels["thinkube.io/job-id"] == job["id"]
    assert labels["thinkube.io/user"].startswith("Ana-Mar-a---")
    [config_map] = s.objects("configmaps")
    assert config_map["metadata"]["ownerReferences"][0]["uid"] == k8s_job["metadata"]["uid"]

    lines = [line async for line in queue.backend.logs(entry, None, follow=True)]
    texts = [text for _, _, text in lines]
    assert texts[0] == f"job {job['id']}"
    assert set(texts[1:]) == {"warning", "step 0", "step 1", "step 2"}
    assert [number for number, _, _ in lines] == ["1", "2", "3", "4", "5"]
    assert {stream for _, stream, _ in lines} == {"combined"}

    done = await status_is(queue, job["id"], "completed", "failed")
    assert (done["status"], done["reason"], done["exit_code"]) == ("completed", "Completed", 0)
    assert done["output"]["text"].split("\n") == texts
    output = queue.backend.output(done)
    assert output["stdout"].endswith("step 2") and output["stderr"] is None
    # resumed after line 3: the rest, from the stored output, nothing repeated
    rest = [line async for line in queue.backend.logs(done, "3", follow=True)]
    assert rest == lines[3:]


async def test_an_exit_code_fails_the_job_and_is_kept(setup):
    s = await setup()
    queue = s.make_queue()
    await queue.start()
    job = await queue.submit("bob", gpu_request("import sys\nprint('bad input')\nsys.exit(3)\n"))
    done = await status_is(queue, job["id"], "completed", "failed")
    assert (done["status"], done["reason"], done["exit_code"]) == ("failed", "Failed", 3)
    assert done["message"] == "exit code 3"
    assert done["output"]["text"] == "bad input"


async def test_kubernetes_ends_a_job_past_its_deadline(setup):
    s = await setup()
    queue = s.make_queue(deadline_factor=1.0)
    await queue.start()
    job = await queue.submit(
        "bob", gpu_request("import time\nprint('started')\ntime.sleep(60)\n", expected_s=1)
    )
    done = await status_is(queue, job["id"], "completed", "failed")
    assert (done["status"], done["reason"]) == ("failed", "DeadlineExceeded")
    assert "deadline" in done["message"]
    assert s.objects("jobs")[0]["spec"]["activeDeadlineSeconds"] == 1
    assert done["output"]["text"] == "started"  # kept although the pod was deleted
    await eventually(lambda: _true(free_gpus(s) == 1), within=10)


async def test_cancel_deletes_the_job_and_frees_the_gpu_at_once(setup):
    s = await setup()
    queue = s.make_queue()
    await queue.start()
    job = await queue.submit(
        "bob", gpu_request("import time\nprint('working', flush=True)\ntime.sleep(60)\n")
    )
    await status_is(queue, job["id"], "running")
    await eventually(lambda: _true(job["id"] in s.inventory.published.counted_jobs), within=10)
    assert free_gpus(s) == 0

    async def printed():
        return queue.backend._tails.get(job["id"]) and queue.backend._tails[job["id"]].total

    await eventually(printed, within=10)
    cancelled = await queue.cancel(queue.store.get(job["id"]))
    assert (cancelled["status"], cancelled["reason"]) == ("cancelled", "Cancelled")
    assert cancelled["output"]["text"] == "working"
    await eventually(lambda: _true(free_gpus(s) == 1), within=5)
    await eventually(lambda: _true(not s.objects("jobs") and not s.objects("pods")), within=5)
    assert s.objects("configmaps") == []  # deleted with its Job
    assert queue.store.get(job["id"])["status"] == "cancelled"  # not reported Lost after


async def test_more_running_jobs_than_the_clients_connections_all_start_and_log(setup):
    # Each running job's log is followed for as long as it runs; those streams must not
    # take the connections that create the next Jobs.
    s = await setup(nodes=4)
    queue = s.make_queue(connections=3)  # two watches and one more
    await queue.start()
    script = "import time\nprint('up', flush=True)\ntime.sleep(60)\n"
    jobs = [await queue.submit(f"user{i}", gpu_request(script)) for i in range(4)]
    for job in jobs:
        await status_is(queue, job["id"], "running")

    async def all_printed():
        tails = queue.backend._tails
        return all(tails.get(j["id"]) and tails[j["id"]].total for j in jobs)

    await eventually(all_printed, within=15)
    assert len(s.objects("jobs")) == 4
    lines = queue.backend.logs(queue.store.get(jobs[-1]["id"]), None, follow=True)
    assert (await anext(lines))[2] == "up"
    await lines.aclose()


async def test_a_job_deleted_by_someone_else_is_lost(setup):
    s = await setup()
    queue = s.make_queue()
    await queue.start()
    job = await queue.submit("bob", gpu_request("import time\ntime.sleep(60)\n"))
    await status_is(queue, job["id"], "running")
    await eventually(lambda: _true(bool(s.objects("pods"))), within=10)
    [k8s_job] = s.objects("jobs")
    s.sim.delete_object(s.sim_type("jobs"), k8s_job, policy="Background")
    lost = await status_is(queue, job["id"], "lost")
    assert lost["reason"] == "Lost"


async def test_the_queue_is_rebuilt_from_the_jobs_when_the_database_is_lost(setup):
    s = await setup(nodes=2)
    queue = s.make_queue()
    await queue.start()
    quick = await queue.submit("carol", gpu_request("print('done')\n"))
    slow = await queue.submit("dave", gpu_request("import time\ntime.sleep(60)\n", 600))
    await status_is(queue, quick["id"], "completed")
    await status_is(queue, slow["id"], "running")
    await queue.stop()

    fresh = s.make_queue(database="empty.sqlite")
    await fresh.start()
    recovered = fresh.store.get(slow["id"])
    assert recovered["status"] == "running"
    assert recovered["user"] == "dave"
    assert recovered["node"] in ("gpu-0", "gpu-1")
    assert recovered["script"] == "import time\ntime.sleep(60)\n"
    assert recovered["request"] == queue.store.get(slow["id"])["request"]
    assert recovered["deadline_at"] is not None
    finished = fresh.store.get(quick["id"])
    assert (finished["status"], finished["exit_code"]) == ("completed", 0)
    # its output was not in the lost database: the pod's log still has it
    assert [line async for line in fresh.backend.logs(finished, None, follow=False)] == [
        ("1", "combined", "done")
    ]
    # the recovered job is followed: cancelling it ends it in Kubernetes
    await fresh.cancel(recovered)
    await eventually(
        lambda: _true(
            f"thinkube-{slow['id']}" not in {j["metadata"]["name"] for j in s.objects("jobs")}
        ),
        within=5,
    )


async def test_a_refused_start_leaves_nothing_behind_and_says_why(setup):
    s = await setup()
    queue = s.make_queue()
    s.sim.faults.refuse.append(("POST", r"/api/v1/namespaces/[^/]+/configmaps$", 403))
    await queue.start()
    job = await queue.submit("bob", gpu_request("print('never')\n"))
    failed = await status_is(queue, job["id"], "failed")
    assert failed["message"].startswith("could not start: Kubernetes did not store the script: ")
    assert "403" in failed["message"] and "Traceback" not in failed["message"]
    await eventually(lambda: _true(not s.objects("jobs") and not s.objects("pods")), within=5)
    assert s.objects("configmaps") == []

    s.sim.faults.refuse[:] = [("POST", r"/apis/batch/v1/namespaces/[^/]+/jobs$", 422)]
    job = await queue.submit("bob", gpu_request("print('never')\n"))
    failed = await status_is(queue, job["id"], "failed")
    assert failed["message"].startswith("could not start: Kubernetes did not create the Job: ")
    assert s.objects("jobs") == [] and s.objects("configmaps") == []


async def test_with_kueue_jobs_wait_suspended_and_start_when_kueue_admits_them(setup):
    s = await setup(kueue=True)
    queue = s.make_queue()
    assert queue.admits
    await queue.start()
    first = await queue.submit("alice", gpu_request("import time\ntime.sleep(1.5)\nprint('one')\n"))
    second = await queue.submit("bob", gpu_request("print('two')\n"))

    async def both_created():
        return len(s.objects("jobs")) == 2

    await eventually(both_created, within=10)
    for job in s.objects("jobs"):
        assert job["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "gpu-jobs"
        assert "matchFields" not in json.dumps(job["spec"]["template"]["spec"])
    # Kueue admits one (one GPU of quota); the other waits, its position from Kueue
    running = await status_is(queue, first["id"], "running")
    assert running["node"] == "gpu-0"

    async def handed_over():
        return queue.store.get(second["id"])["placement"] or None

    assert (await eventually(handed_over, within=5))["queue"] == "gpu-jobs"
    waiting = queue.store.get(second["id"])
    assert waiting["status"] == "queued"
    second_job = s.job(f"thinkube-{second['id']}")
    assert second_job["spec"]["suspend"] is True

    async def positioned():
        return queue.where(queue.store.get(second["id"]))["position"] == 1

    await eventually(positioned, within=5)
    assert queue.where(waiting)["eta"] is None

    done = await status_is(queue, second["id"], "completed", within=30)
    assert done["output"]["text"] == "two"
    assert queue.store.get(first["id"])["status"] == "completed"
    assert queue.where(done)["position"] is None


async def test_with_kueue_a_waiting_job_can_be_cancelled(setup):
    s = await setup(kueue=True)
    queue = s.make_queue()
    await queue.start()
    first = await queue.submit("alice", gpu_request("import time\ntime.sleep(30)\n"))
    second = await queue.submit("bob", gpu_request("print('two')\n"))
    await status_is(queue, first["id"], "running")

    async def handed_over():
        return queue.store.get(second["id"])["placement"] or None

    await eventually(handed_over, within=5)
    cancelled = await queue.cancel(queue.store.get(second["id"]))
    assert cancelled["status"] == "cancelled"
    await eventually(lambda: _true(s.job(f"thinkube-{second['id']}") is None), within=5)
    await queue.cancel(queue.store.get(first["id"]))
    await eventually(lambda: _true(not s.objects("jobs")), within=5)


async def test_a_job_that_ended_while_the_service_was_away_is_reported_after_a_restart(setup):
    s = await setup()
    queue = s.make_queue()
    await queue.start()
    job = await queue.submit(
        "bob", gpu_request("import time\nprint('begun', flush=True)\ntime.sleep(1)\nprint('end')\n")
    )
    await status_is(queue, job["id"], "running")
    await queue.stop()

    async def job_finished():
        k8s_job = s.job(f"thinkube-{job['id']}")
        conditions = (k8s_job.get("status") or {}).get("conditions") or []
        return any(c["type"] == "Complete" for c in conditions)

    await eventually(job_finished, within=10)
    assert queue.store.get(job["id"])["status"] == "running"
    again = s.make_queue()  # the same database
    await again.start()
    done = await status_is(again, job["id"], "completed")
    assert done["exit_code"] == 0 and done["output"]["text"] == "begun\nend"


def test_artifacts_are_served_from_the_services_mount_of_the_models_claim(tmp_path):
    entry = {"id": "j-1", "user": "ana maría"}

    async def no_api():
        raise AssertionError("not asked")

    def backend(**settings) -> KubeJobs:
        return KubeJobs(no_api, NAMESPACE, ended=None, **settings)

    with pytest.raises(ArtifactsUnavailable, match=r"jobs_models_claim is not set"):
        backend().artifacts_dir(entry)
    with pytest.raises(ArtifactsUnavailable) as off:
        backend(models_claim="thinkube-models").artifacts_dir(entry)
    assert str(off.value) == (
        "job artifacts are kept on the claim thinkube-models (/models/jobs/ana%20mar%C3%ADa/"
        "j-1/ in a notebook server that mounts it), but this service does not serve them "
        "(ThinkubeService.jobs_artifacts_root is not set)"
    )
    (tmp_path / "real").mkdir()
    (tmp_path / "mounted").symlink_to(tmp_path / "real")  # resolved: the admin's own link
    served = backend(models_claim="thinkube-models", artifacts_root=str(tmp_path / "mounted"))
    real = Path(os.path.realpath(tmp_path / "real"))
    assert served.artifacts_dir(entry) == real / "jobs" / "ana%20mar%C3%ADa" / "j-1"


def test_watched_pods_are_found_by_their_job_through_every_watch_event():
    def pod(name: str, job: str | None) -> dict:
        labels = {JOB_ID_LABEL: job} if job else {}
        return {"metadata": {"name": name, "labels": labels}}

    pods = WatchedPods()
    pods.replace([pod("a-1", "a"), pod("b-1", "b"), pod("other", None)])
    assert [p["metadata"]["name"] for p in pods.of_job("a")] == ["a-1"]
    pods.apply("ADDED", pod("a-2", "a"))
    assert sorted(p["metadata"]["name"] for p in pods.of_job("a")) == ["a-1", "a-2"]
    pods.apply("MODIFIED", pod("a-1", "b"))  # relabelled: it moves to the other job
    assert [p["metadata"]["name"] for p in pods.of_job("a")] == ["a-2"]
    assert sorted(p["metadata"]["name"] for p in pods.of_job("b")) == ["a-1", "b-1"]
    pods.apply("DELETED", pod("a-2", "a"))
    assert pods.of_job("a") == [] and len(pods) == 3
    pods.replace([pod("c-1", "c")])  # a relist forgets what it no longer lists
    assert pods.of_job("b") == [] and [p["metadata"]["name"] for p in pods.of_job("c")] == ["c-1"]
    pods.apply("ADDED", {"metadata": {}})  # nameless: ignored
    assert len(pods) == 1
