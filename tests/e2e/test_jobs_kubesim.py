"""GPU jobs through a real hub on kubesim (its process runtime runs the Jobs' pods as real
processes): submitted over the API, run as Kubernetes Jobs on the free GPU, followed, ended
at the deadline, cancelled; and the same under Kueue, which admits in its own order."""

from __future__ import annotations

import json
import sys

import pytest

from tests.hub_fixtures import ACCESS_SCOPE, running_hub
from tests.kubesim.generator import GPU_MODELS, make_node
from tests.kubesim.kueue import queue_manifests
from tests.utils import eventually

L4 = GPU_MODELS[3]  # one GPU per node


async def hub_on_kubesim(make_kubesim, tmp_path, kueue_queue: str = ""):
    sim = await make_kubesim(
        process_runtime=True, kueue=bool(kueue_queue), job_backoff_s=0.1, restart_backoff_s=0.1
    )
    sim.load([make_node("gpu-0", 16, 64, L4, 0)])
    if kueue_queue:
        quota = {"cpu": 16, "memory": "64Gi", "nvidia.com/gpu": 1}
        sim.load(queue_manifests(quota, local_queues={"default": kueue_queue}))
    settings = {
        "jobs_python": sys.executable,
        "jobs_namespace": "default",
        "jobs_kueue_queue": kueue_queue,
    }
    return sim, running_hub(tmp_path / "hub", sim=sim, config={"ThinkubeService": settings})


async def submit(client, script: str, **options) -> dict:
    body = {"script": script, "gpus": 1, "cpu": 1, "memory": "1Gi", **options}
    response = await client.post("api/v1/jobs", json=body)
    assert response.status_code == 201, response.text
    return response.json()


async def ended(client, job_id: str, within: float = 60) -> dict:
    async def done():
        view = (await client.get(f"api/v1/jobs/{job_id}")).json()
        return view if view["status"] not in ("queued", "running") else None

    return await eventually(done, within=within, interval=0.2)


def jobs_in(sim) -> list[str]:
    from tests.kubesim.resources import BY_PATH

    return [
        o["metadata"]["name"]
        for o in sim.store.objects(BY_PATH[("batch", "v1", "jobs")])
        if (o["metadata"].get("labels") or {}).get("app.kubernetes.io/managed-by") == "thinkube"
    ]


def sse(text: str) -> list[tuple[str, str]]:
    found = []
    for block in text.split("\n\n"):
        fields = dict(
            line.split(": ", 1) for line in block.splitlines() if ": " in line and line[0] != ":"
        )
        if "event" in fields:
            found.append((fields["event"], fields.get("data", "")))
    return found


@pytest.mark.asyncio
async def test_jobs_run_as_kubernetes_jobs_on_the_free_gpu(make_kubesim, tmp_path):
    sim, hub_context = await hub_on_kubesim(make_kubesim, tmp_path)
    async with hub_context as hub:
        alice = hub.client(hub.token("alice", [ACCESS_SCOPE]))
        first = await submit(
            alice,
            "import time\nfor n in range(3):\n    print('step', n, flush=True)\n"
            "    time.sleep(0.3)\n",
            expected_time=60,
        )
        second = await submit(alice, "print('second')\n", expected_time=60)
        assert second["status"] == "queued" and second["position"] == 1
        assert second["expected_node"] == "gpu-0" and second["eta"]["estimate"] is True

        stream = await alice.get(f"api/v1/jobs/{first['id']}/logs", timeout=60)
        events = sse(stream.text)
        assert [d for e, d in events if e == "combined"] == ["step 0", "step 1", "step 2"]
        assert events[-1][0] == "end" and json.loads(events[-1][1])["exit_code"] == 0
        assert (await ended(alice, first["id"]))["reason"] == "Completed"
        done = await ended(alice, second["id"])
        result = (await alice.get(f"api/v1/jobs/{second['id']}/result")).json()
        assert (done["status"], result["streams"], result["stdout"]) == (
            "completed",
            "combined",
            "second",
        )
        assert result["node"] == "gpu-0"

        # the deadline: twice the expected time, then Kubernetes ends it
        slow = await submit(alice, "import time\ntime.sleep(60)\n", expected_time=1)
        assert (await ended(alice, slow["id"], within=90))["reason"] == "DeadlineExceeded"

        # cancel while running: the Job goes, the GPU is free for the next
        running = await submit(alice, "import time\ntime.sleep(60)\n", expected_time=120)

        async def started():
            view = (await alice.get(f"api/v1/jobs/{running['id']}")).json()
            return view["status"] == "running"

        await eventually(started, within=30, interval=0.2)
        assert any(running["id"] in name for name in jobs_in(sim))
        cancelled = (await alice.post(f"api/v1/jobs/{running['id']}/cancel")).json()
        assert cancelled["reason"] == "Cancelled"

        async def gone():
            return not any(running["id"] in name for name in jobs_in(sim))

        await eventually(gone, within=15, interval=0.2)
        after = await submit(alice, "print('free again')\n", expected_time=30)
        assert (await ended(alice, after["id"]))["status"] == "completed"

        bob = hub.client(hub.token("bob", [ACCESS_SCOPE]))
        assert (await bob.get(f"api/v1/jobs/{after['id']}")).status_code == 404


@pytest.mark.asyncio
async def test_under_kueue_admission_and_positions_are_kueues(make_kubesim, tmp_path):
    sim, hub_context = await hub_on_kubesim(make_kubesim, tmp_path, kueue_queue="gpu-jobs")
    async with hub_context as hub:
        alice = hub.client(hub.token("alice", [ACCESS_SCOPE]))
        first = await submit(alice, "import time\ntime.sleep(2)\nprint('one')\n", expected_time=60)
        second = await submit(alice, "print('two')\n", expected_time=60)

        async def positioned():
            view = (await alice.get(f"api/v1/jobs/{second['id']}")).json()
            return view if view["status"] == "queued" and view["position"] == 1 else None

        await eventually(positioned, within=30, interval=0.2)
        for job in (first, second):
            assert (await ended(alice, job["id"], within=90))["status"] == "completed"
        output = (await alice.get(f"api/v1/jobs/{second['id']}/result")).json()["stdout"]
        assert output == "two"
