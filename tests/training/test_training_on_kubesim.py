"""A training job as a Kubernetes Job, on kubesim with its process runtime: the script the
service makes reaches the pod in the Job's ConfigMap (with the dataset inside it), the pod
(uid 1000, as the Job says) runs the trainer on the tiny model, its log carries the step and
loss lines, the job completes, and its adapter is on the models claim, where the service
reads it."""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from dataclasses import replace
from pathlib import Path

import pytest

from hub_service.jobs.spec import JobRequest
from hub_service.jobs.training import SCRIPT_NAME, training_metadata, training_script
from tests.e2e.test_jobs_kubesim import MODELS_VOLUME, models_claim
from tests.jobs.test_kube_jobs import setup, status_is  # noqa: F401 (the fixture)
from tests.training.test_training_jobs_api import check_adapter
from tests.training.tiny import build_model, dataset_records
from thinkube_train.config import Placement, check_config

pytest.importorskip("torch")
pytest.importorskip("peft")

STEP = re.compile(r"^step (\d+)/10 loss \d+\.\d{4} lr \S+ samples/s \S+ eta \S+$")


@pytest.fixture
def model_folder():
    """The tiny model where the pod's account may read it."""
    root = Path(tempfile.mkdtemp(prefix="thinkube-kube-training-"))
    os.chmod(root, 0o755)
    try:
        yield build_model(root / "tiny-llama")
    finally:
        shutil.rmtree(root, ignore_errors=True)


@pytest.mark.parametrize("algorithm", ["lora", "dora"])
async def test_a_job_with_its_dataset_runs_as_a_kubernetes_job(setup, model_folder, algorithm):  # noqa: F811
    raw = {
        "base_model": str(model_folder),
        "algorithm": algorithm,
        "rank": 4,
        "target_modules": "all-linear",
        "dataset": {"prompt_field": "prompt", "response_field": "response"},
        "max_steps": 10,
        "batch_size": 8,
        "learning_rate": 0.01,
        "logging_steps": 5,
    }
    config = check_config(raw, Placement(gpu=True, uploaded="dataset.jsonl"))
    data = "".join(json.dumps(r) + "\n" for r in dataset_records()).encode()
    request = JobRequest(
        script=training_script(config, data, "dataset.jsonl"),
        script_name=SCRIPT_NAME,
        expected_s=300,
        gpus=1,
        gpu_model=None,
        gpu_resource="nvidia.com/gpu",
        cpu=2,
        memory=4 << 30,
        image={"name": "trainer", "image": "python:3.12", "metadata": {"training": True}},
        name="kube-lora",
        project="colours",
        metadata=training_metadata(config, uploaded=True),
    )
    s = await setup()
    s.sim.load(models_claim())  # the adapter goes to the models claim
    volume = s.sim.kubelet.volume_root / MODELS_VOLUME  # its files, as this machine holds them
    options = {"models_claim": "thinkube-models", "artifacts_root": str(volume)}
    queue = s.make_queue(backend_options=options)
    await queue.start()
    job = await queue.submit("alice", request)
    entry = await status_is(queue, job["id"], "running", within=30)
    [config_map] = s.objects("configmaps")
    assert list(config_map["data"]) == [SCRIPT_NAME]

    texts = [text async for _, _, text in queue.backend.logs(entry, None, follow=True)]
    assert [int(m.group(1)) for m in map(STEP.match, texts) if m] == [5, 10], texts
    done = await status_is(queue, job["id"], "completed", "failed", within=120)
    assert (done["status"], done["exit_code"]) == ("completed", 0), done.get("output")
    assert done["metadata"]["kind"] == "training"
    assert any(t.startswith("thinkube-train: done: 10 steps") for t in texts), texts
    # On the claim, under /models/jobs/alice/<id>/ as the pod saw it: the trained adapter.
    folder = queue.backend.artifacts_dir(done)
    assert folder == volume.resolve() / "jobs" / "alice" / job["id"]
    check_adapter(folder, algorithm, model_folder)


async def test_the_queues_preview_places_a_job_without_queueing_it(setup):  # noqa: F811
    """JobQueue.preview (the dry run's answer): where a job would go now, from a plan made
    with it added; nothing is stored or started."""
    s = await setup()
    queue = s.make_queue()
    await queue.start()
    training = JobRequest(
        script="print('never run')\n",
        script_name=SCRIPT_NAME,
        expected_s=600,
        gpus=1,
        gpu_model=None,
        gpu_resource="nvidia.com/gpu",
        cpu=1,
        memory=1 << 30,
        image={"name": "trainer", "image": "python:3.12"},
        name="",
        project="",
    )
    assert await queue.preview("alice", training) == {
        "node": "gpu-0",
        "position": None,
        "expected_node": "gpu-0",
        "eta": None,
    }
    holder = await queue.submit(
        "bob", replace(training, script="import time\ntime.sleep(60)\n", expected_s=120)
    )
    await status_is(queue, holder["id"], "running", within=30)
    where = await queue.preview("alice", training)
    assert (where["node"], where["position"], where["expected_node"]) == (None, 1, "gpu-0")
    assert where["eta"] > queue.clock()
    assert [e["id"] for e in queue.active.values()] == [holder["id"]]
    assert len(s.objects("jobs")) == 1
    await queue.cancel(queue.active[holder["id"]])
