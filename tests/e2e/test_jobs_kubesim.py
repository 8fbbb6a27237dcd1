"""GPU jobs through a real hub on kubesim (its process runtime runs the Jobs' pods as real
processes): submitted over the API, run as Kubernetes Jobs on the free GPU, followed, ended
at the deadline, cancelled; the same under Kueue, which admits in its own order; and the
artifacts a job writes to the models claim, listed and served by the service."""

from __future__ import annotations

import hashlib
import json
import random
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
    arguments = [f"--ThinkubeService.{name}={value}" for name, value in settings.items()]
    return sim, running_hub(tmp_path / "hub", sim=sim, service_args=arguments)


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

        # No models claim set: artifacts are not kept, and the API says so.
        kept = await alice.get(f"api/v1/jobs/{after['id']}/artifacts")
        assert kept.status_code == 404
        assert "keeps no job artifacts (ThinkubeService.jobs_models_claim" in kept.json()["error"]


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


MODELS_VOLUME = "models-pv"


def models_claim() -> list[dict]:
    """A ReadWriteMany volume and the claim `thinkube-models` bound to it."""
    return [
        {
            "apiVersion": "v1",
            "kind": "PersistentVolume",
            "metadata": {"name": MODELS_VOLUME},
            "spec": {
                "capacity": {"storage": "10Gi"},
                "accessModes": ["ReadWriteMany"],
                "storageClassName": "",
                "hostPath": {"path": "/srv/models"},
            },
        },
        {
            "apiVersion": "v1",
            "kind": "PersistentVolumeClaim",
            "metadata": {"name": "thinkube-models", "namespace": "default"},
            "spec": {
                "accessModes": ["ReadWriteMany"],
                "storageClassName": "",
                "volumeName": MODELS_VOLUME,
                "resources": {"requests": {"storage": "1Gi"}},
            },
        },
    ]


ARTIFACT_WRITER = """
import os, pathlib, random
out = pathlib.Path(os.environ["THINKUBE_ARTIFACTS_DIR"])
print("artifacts in", os.environ["THINKUBE_ARTIFACTS_DIR"])
(out / "adapter").mkdir()
(out / "adapter" / "adapter_config.json").write_text('{"r": 8}')
(out / "model.bin").write_bytes(random.Random(3).randbytes(2 * 1024 * 1024 + 5))
os.symlink("/etc/passwd", out / "passwd")
"""


@pytest.mark.asyncio
async def test_artifacts_on_the_models_claim_are_listed_and_served(make_kubesim, tmp_path):
    sim = await make_kubesim(process_runtime=True, job_backoff_s=0.1, restart_backoff_s=0.1)
    sim.load([make_node("gpu-0", 16, 64, L4, 0), *models_claim()])
    # The claim's files as this machine holds them: what the service mounts read-only.
    volume = sim.kubelet.volume_root / MODELS_VOLUME
    # The service's own settings, on its command line (the hub's config is not its).
    settings = {
        "jobs_python": sys.executable,
        "jobs_namespace": "default",
        "jobs_models_claim": "thinkube-models",
        "jobs_artifacts_root": str(volume),
    }
    arguments = [f"--ThinkubeService.{name}={value}" for name, value in settings.items()]
    async with running_hub(tmp_path / "hub", sim=sim, service_args=arguments) as hub:
        alice = hub.client(hub.token("alice", [ACCESS_SCOPE]))
        job = await submit(alice, ARTIFACT_WRITER, expected_time=60)
        view = await ended(alice, job["id"])
        result = (await alice.get(f"api/v1/jobs/{job['id']}/result")).json()
        assert view["status"] == "completed", result
        # On the volume, under jobs/<user>/<id>/, written by the job's pod (which sees it at
        # /models, or at the volume's folder where kubesim rewrites paths instead).
        folder = volume / "jobs" / "alice" / job["id"]
        seen = f"/models/jobs/alice/{job['id']}/"
        if sim.kubelet.mount_mode() != "namespace":
            seen = f"{folder}/"
        assert result["stdout"] == f"artifacts in {seen}"
        model = random_bytes(2 * 1024 * 1024 + 5)
        assert (folder / "model.bin").read_bytes() == model

        listing = (await alice.get(f"api/v1/jobs/{job['id']}/artifacts")).json()
        assert [(f["path"], f["size"], f["sha256"]) for f in listing["files"]] == [
            ("adapter/adapter_config.json", 8, hashlib.sha256(b'{"r": 8}').hexdigest()),
            ("model.bin", len(model), hashlib.sha256(model).hexdigest()),
        ]
        assert listing["complete"] is True and listing["skipped"] == 1  # the link

        whole = await alice.get(f"api/v1/jobs/{job['id']}/artifacts/model.bin")
        assert whole.status_code == 200 and whole.content == model
        part = await alice.get(
            f"api/v1/jobs/{job['id']}/artifacts/model.bin", headers={"Range": "bytes=-100"}
        )
        assert part.status_code == 206 and part.content == model[-100:]
        link = await alice.get(f"api/v1/jobs/{job['id']}/artifacts/passwd")
        assert link.status_code == 404 and "root:" not in link.text

        bob = hub.client(hub.token("bob", [ACCESS_SCOPE]))
        assert (await bob.get(f"api/v1/jobs/{job['id']}/artifacts")).status_code == 404


def random_bytes(size: int) -> bytes:
    return random.Random(3).randbytes(size)
