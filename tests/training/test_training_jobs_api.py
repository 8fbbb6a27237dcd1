"""Fine-tuning jobs through a real hub (`thinkube hub`: JupyterHub, its proxy and the service
it manages, jobs as processes on this machine, as root each under its person's account):
`POST api/v1/training-jobs` with a tiny model and dataset the test makes, its log followed
with step and loss lines, the job completed, the adapter downloaded through the artifacts API
and loaded back with PEFT; a dataset file sent as a form; the dry run (the queue, and a RunPod offer's
cost through the RunPod stand-in); refusals naming their field, with nothing queued."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import sys
import tempfile
from pathlib import Path
from urllib.parse import urljoin

import httpx
import pytest
import pytest_asyncio
import yaml

from tests.jobs.test_jobs_api import SERVICE, sse_events, token_of
from tests.local.hubproc import local_hub
from tests.runpod_fake import RunPodFake
from tests.training.tiny import EXAMPLES, build_model, dataset_records, write_dataset

pytest.importorskip("torch")
pytest.importorskip("transformers")
peft = pytest.importorskip("peft")

pytestmark = pytest.mark.asyncio(loop_scope="module")

STEP_LINE = re.compile(r"^step (\d+)/(\d+) loss (\d+\.\d+) lr \S+ samples/s \S+ eta \S+$")
RTX4090 = "cloud:SECURE:NVIDIA GeForce RTX 4090:1"


@pytest.fixture(scope="module")
def shared_volumes():
    """The shared models and datasets folders, readable by every account (pytest's own
    temporary folders are closed to them)."""
    root = Path(tempfile.mkdtemp(prefix="thinkube-training-"))
    os.chmod(root, 0o755)
    models, datasets = root / "models", root / "datasets"
    datasets.mkdir(mode=0o755)
    os.chmod(datasets, 0o755)
    models.mkdir(mode=0o755)
    os.chmod(models, 0o755)
    build_model(models / "tiny-llama")
    write_dataset(datasets / "colours.jsonl")
    try:
        yield models, datasets
    finally:
        shutil.rmtree(root, ignore_errors=True)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def runpod():
    fake = RunPodFake(start_delay_s=0.2)
    await fake.start()
    try:
        yield fake
    finally:
        await fake.stop()


@pytest_asyncio.fixture(autouse=True, loop_scope="module")
async def no_pod_left(runpod):
    """After each test: no pod of the RunPod stand-in left running (a dry run rents none,
    a job's pod is terminated once it has reported)."""
    yield
    left = list(runpod.pods)
    for pod_id in left:
        await runpod.terminate(pod_id)
    assert left == [], f"pods left running: {left}"


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def hub(tmp_path_factory, shared_volumes, runpod):
    models, datasets = shared_volumes
    lines = [
        f"c.ThinkubeService.training_models_path = {str(models)!r}",
        f"c.ThinkubeService.training_datasets_path = {str(datasets)!r}",
        f"c.ThinkubeService.runpod_api_key = {runpod.api_key!r}",
        f"c.ThinkubeService.runpod_api_url = {runpod.url!r}",
        f"c.ThinkubeService.runpod_rest_url = {runpod.rest_url!r}",
        "c.ThinkubeService.cloud_reaper_interval_seconds = 0",
        "c.ThinkubeService.cloud_price_cap = 1.0",
        # the stand-in's pods run on this machine: with this Python (torch, peft, the trainer)
        f"c.ThinkubeService.jobs_runpod_python = {sys.executable!r}",
        "c.ThinkubeService.jobs_runpod_status_interval_seconds = 0.2",
        # an image that cannot train, beside the machine's own Python
        "c.ThinkubeService.seed_images.append({'name': 'plain', 'image': 'python:3.12'})",
    ]
    config = tmp_path_factory.mktemp("training-config") / "hub_config.py"
    # The hub's own configuration has just written the service's; this adds to it.
    config.write_text(
        "import json, os, pathlib\n"
        "settings = json.loads(pathlib.Path(os.environ['THINKUBE_HUB_SETTINGS']).read_text())\n"
        "with open(pathlib.Path(settings['data_dir']) / 'service_config.py', 'a') as f:\n"
        f"    f.write({chr(10).join(lines) + chr(10)!r})\n"
        # where the pods send the adapter back: the service, through the hub's proxy
        "    public = f\"http://127.0.0.1:{settings['port']}/services/thinkube-resources/\"\n"
        "    f.write(f'c.ThinkubeService.jobs_public_url = {public!r}\\n')\n"
    )
    async with local_hub(tmp_path_factory.mktemp("training-hub"), config=config) as hub:
        yield hub


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def alice(hub):
    token = await token_of(hub, "alice")
    async with httpx.AsyncClient(
        base_url=urljoin(hub.url, SERVICE), headers={"Authorization": f"token {token}"}, timeout=60
    ) as client:
        yield client


def config_of(shared_volumes, **changes) -> dict:
    models, datasets = shared_volumes
    return {
        "base_model": str(models / "tiny-llama"),
        "algorithm": "lora",
        "rank": 4,
        "alpha": 8,
        "target_modules": "all-linear",
        "dataset": {"path": str(datasets / "colours.jsonl"), "text_field": "text"},
        "max_steps": 10,
        "batch_size": 8,
        "learning_rate": 0.01,
        "logging_steps": 2,
        "project": "colours",
        **changes,
    }


async def followed(client, job_id: str) -> list[dict]:
    """The job's log, followed (Server-Sent Events) until its end event."""
    response = await client.get(f"api/v1/jobs/{job_id}/logs", timeout=240)
    assert response.status_code == 200, response.text
    return sse_events(response.text)


async def downloaded(client, job_id: str, folder: Path) -> Path:
    """The job's artifacts, listed and downloaded through the service's artifacts API into
    `folder`, each checked against the sha256 the list gives."""
    listing = await client.get(f"api/v1/jobs/{job_id}/artifacts")
    assert listing.status_code == 200, listing.text
    document = listing.json()
    assert document["complete"] is True
    names = {f["path"] for f in document["files"]}
    assert {"adapter_model.safetensors", "adapter_config.json", "metrics.json"} <= names
    for entry in document["files"]:
        response = await client.get(f"api/v1/jobs/{job_id}/artifacts/{entry['path']}")
        assert response.status_code == 200, response.text
        assert hashlib.sha256(response.content).hexdigest() == entry["sha256"]
        target = folder / entry["path"]
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(response.content)
    return folder


def check_adapter(folder: Path, algorithm: str, base: Path) -> None:
    import torch
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    for name in ("adapter_config.json", "tokenizer.json", "metrics.json"):
        assert (folder / name).is_file(), name
    metrics = json.loads((folder / "metrics.json").read_text())
    assert metrics["algorithm"] == algorithm and metrics["steps"] == 10
    assert metrics["examples"] == EXAMPLES
    assert json.loads((folder / "adapter_config.json").read_text())["use_dora"] is (
        algorithm == "dora"
    )
    tensors = load_file(str(folder / "adapter_model.safetensors"))
    lora_b = [t for name, t in tensors.items() if "lora_B" in name]
    assert lora_b and all(t.abs().sum() > 0 for t in lora_b)  # trained away from zero
    tuned = peft.PeftModel.from_pretrained(
        AutoModelForCausalLM.from_pretrained(str(base)), str(folder)
    )
    ids = torch.tensor([[2, 5, 6, 7]])
    with torch.no_grad():
        adapted = tuned(input_ids=ids).logits
        with tuned.disable_adapter():
            plain = tuned(input_ids=ids).logits
    assert not torch.allclose(adapted, plain)


def step_lines(events: list[dict]) -> list[tuple[int, int, float]]:
    found = []
    for event in events:
        match = STEP_LINE.match(event.get("data", "")) if event.get("event") == "stdout" else None
        if match:
            found.append((int(match.group(1)), int(match.group(2)), float(match.group(3))))
    return found


async def test_a_lora_job_runs_streams_its_progress_and_leaves_its_adapter(
    hub, alice, shared_volumes, tmp_path
):
    response = await alice.post(
        "api/v1/training-jobs",
        json={"config": config_of(shared_volumes, name="first-lora"), "expected_time": "5m"},
    )
    assert response.status_code == 201, response.text
    job = response.json()
    assert response.headers["Location"].endswith(f"api/v1/jobs/{job['id']}")
    assert job["metadata"]["kind"] == "training" and job["metadata"]["algorithm"] == "lora"
    assert job["name"] == "first-lora" and job["project"] == "colours"
    assert job["image"] == "local" and job["script_name"] == "thinkube_train_job.py"

    events = await followed(alice, job["id"])
    steps = step_lines(events)
    assert [s for s, _, _ in steps] == [2, 4, 6, 8, 10] and {t for _, t, _ in steps} == {10}
    assert all(loss > 0 for _, _, loss in steps)
    end = events[-1]
    assert end["event"] == "end", events[-3:]
    assert json.loads(end["data"])["status"] == "completed", events

    view = (await alice.get(f"api/v1/jobs/{job['id']}")).json()
    assert (view["status"], view["exit_code"]) == ("completed", 0)
    listed = (await alice.get("api/v1/jobs", params={"metadata": "kind=training"})).json()
    assert job["id"] in [j["id"] for j in listed["jobs"]]
    adapter = await downloaded(alice, job["id"], tmp_path / "lora")
    check_adapter(adapter, "lora", shared_volumes[0] / "tiny-llama")


async def test_a_dora_job_with_its_dataset_sent_as_a_form(hub, alice, shared_volumes, tmp_path):
    config = config_of(
        shared_volumes,
        algorithm="dora",
        dataset={"prompt_field": "prompt", "response_field": "response"},
    )
    sent = "".join(json.dumps(r) + "\n" for r in dataset_records())
    response = await alice.post(
        "api/v1/training-jobs",
        data={"expected_time": "5m", "metadata": json.dumps({"run": "dora-1"})},
        files={
            "config": ("dora.yaml", json.dumps(config).encode(), "application/yaml"),
            "dataset": ("colours.jsonl", sent.encode(), "application/jsonl"),
        },
    )
    assert response.status_code == 201, response.text
    job = response.json()
    assert job["metadata"] == {
        "run": "dora-1",
        "kind": "training",
        "algorithm": "dora",
        "base_model": config["base_model"],
        "dataset": "(sent with the job)",
    }
    events = await followed(alice, job["id"])
    assert len(step_lines(events)) == 5
    assert json.loads(events[-1]["data"])["status"] == "completed", events[-5:]
    adapter = await downloaded(alice, job["id"], tmp_path / "dora")
    check_adapter(adapter, "dora", shared_volumes[0] / "tiny-llama")


async def jobs_total(client) -> int:
    return (await client.get("api/v1/jobs", params={"limit": 1})).json()["total"]


async def test_a_dry_run_says_where_it_would_run_and_queues_nothing(alice, shared_volumes):
    before = await jobs_total(alice)
    response = await alice.post(
        "api/v1/training-jobs",
        params={"dry_run": "1"},
        json={"config": config_of(shared_volumes), "expected_time": "10m", "cpu": 1},
    )
    assert response.status_code == 200, response.text
    preview = response.json()
    assert preview["dry_run"] is True and preview["queued"] is False
    where = preview["where"]
    assert where["placement"] == "queue" and preview["cost"] is None
    if where["node"]:
        assert where["summary"] == f"starts now on {where['node']}"
    else:
        assert where["summary"] == f"queued, position {where['position']}"
    assert preview["config"]["rank"] == 4 and preview["config"]["seed"] == 42
    assert preview["metadata"]["kind"] == "training"
    assert await jobs_total(alice) == before


async def test_a_dry_run_behind_a_job_that_holds_every_core(alice, shared_volumes):
    cores = len(os.sched_getaffinity(0))
    holder = await alice.post(
        "api/v1/jobs",
        json={"script": "import time\ntime.sleep(120)\n", "expected_time": "2m", "cpu": cores},
    )
    assert holder.status_code == 201, holder.text
    holder_id = holder.json()["id"]
    try:

        async def running():
            view = (await alice.get(f"api/v1/jobs/{holder_id}")).json()
            return view["status"] == "running"

        from tests.utils import eventually

        await eventually(running, within=30, interval=0.2)
        response = await alice.post(
            "api/v1/training-jobs",
            params={"dry_run": "1"},
            json={"config": config_of(shared_volumes), "expected_time": "10m", "cpu": 1},
        )
        where = response.json()["where"]
        assert (where["node"], where["position"]) == (None, 1), where
        assert where["summary"] == "queued, position 1"
        assert where["eta"]["estimate"] is True and where["eta"]["starts_in_seconds"] > 0
    finally:
        await alice.post(f"api/v1/jobs/{holder_id}/cancel")


async def test_a_dry_run_on_a_cloud_offer_says_the_most_it_may_cost(alice, shared_volumes):
    async def priced():
        response = await alice.post(
            "api/v1/training-jobs",
            params={"dry_run": "true"},
            json={
                "config": config_of(shared_volumes, algorithm="qlora"),
                "expected_time": "30m",
                "where": RTX4090,
            },
        )
        return response if response.status_code == 200 else None

    from tests.utils import eventually

    response = await eventually(priced, within=30, interval=0.5)  # the offers are fetched
    preview = response.json()
    assert preview["where"]["placement"] == "cloud"
    assert "RTX 4090" in preview["where"]["summary"]
    # $0.69/h on demand, for at most twice the expected half hour; qlora is fine on a GPU
    assert preview["cost"]["price_per_hour"] == 0.69
    assert preview["cost"]["max_cost_usd"] == pytest.approx(0.69)
    assert preview["config"]["quantization"] == "int4" and preview["gpus"] == 1
    spot = await alice.post(
        "api/v1/training-jobs",
        params={"dry_run": "1"},
        json={
            "config": config_of(shared_volumes),
            "expected_time": "1h",
            "where": RTX4090,
            "pricing": "spot",
        },
    )
    assert spot.json()["cost"]["max_cost_usd"] == pytest.approx(0.35 * 2)
    two = await alice.post(
        "api/v1/training-jobs",
        params={"dry_run": "1"},
        json={
            "config": config_of(shared_volumes),
            "expected_time": 60,
            "where": RTX4090,
            "gpus": 2,
        },
    )
    assert (two.status_code, two.json()["field"]) == (400, "gpus")


@pytest.mark.parametrize("algorithm", ["lora", "dora"])
async def test_a_job_on_a_runpod_pod_sends_its_adapter_back_and_the_pod_ends(
    alice, shared_volumes, runpod, tmp_path, algorithm
):
    """The same training job on a cloud offer: a pod of the RunPod stand-in (a process on
    this machine) trains, uploads the adapter and its exit code to the service with its
    job-scoped token, and is terminated."""
    response = await alice.post(
        "api/v1/training-jobs",
        json={
            "config": config_of(shared_volumes, algorithm=algorithm),
            "expected_time": "5m",
            "where": RTX4090,
        },
    )
    assert response.status_code == 201, response.text
    job = response.json()

    async def ended():
        view = (await alice.get(f"api/v1/jobs/{job['id']}")).json()
        return view if view["status"] not in ("queued", "running") else None

    from tests.utils import eventually

    view = await eventually(ended, within=180, interval=0.5)
    assert (view["status"], view["exit_code"], view["node"]) == ("completed", 0, "runpod"), view
    result = (await alice.get(f"api/v1/jobs/{job['id']}/result")).json()
    assert "step 10/10 loss" in result["stdout"], result
    adapter = await downloaded(alice, job["id"], tmp_path / "cloud")
    check_adapter(adapter, algorithm, shared_volumes[0] / "tiny-llama")
    pods = [*runpod.pods.values(), *runpod.terminated.values()]
    mine = [p for p in pods if p.env.get("THINKUBE_JOB_ID") == job["id"]]
    assert len(mine) == 1 and mine[0].id in runpod.terminated  # rented once, then ended

    async def none_left():
        return not runpod.pods

    await eventually(none_left, within=30, interval=0.2)


def without(config: dict, key: str) -> dict:
    return {k: v for k, v in config.items() if k != key}


@pytest.mark.parametrize(
    ("change", "field"),
    [
        (
            lambda c: {"config": {**c, "algorithm": "lora-xl"}, "expected_time": 60},
            "config.algorithm",
        ),
        (lambda c: {"config": {**c, "rank": 0}, "expected_time": 60}, "config.rank"),
        (lambda c: {"config": {**c, "dropout": 1.5}, "expected_time": 60}, "config.dropout"),
        (
            lambda c: {"config": {**c, "quantization": "int4"}, "expected_time": 60},
            "config.quantization",
        ),
        (
            lambda c: {"config": {**c, "algorithm": "qlora"}, "expected_time": 60},
            "config.algorithm",
        ),
        (
            lambda c: {
                "config": {**c, "dataset": {"path": "/nowhere/x.jsonl"}},
                "expected_time": 60,
            },
            "config.dataset.path",
        ),
        (
            lambda c: {
                "config": {**c, "base_model": c["base_model"] + "-gone"},
                "expected_time": 60,
            },
            "config.base_model",
        ),
        (lambda c: {"config": {**c, "colour": "red"}, "expected_time": 60}, "config.colour"),
        (lambda c: {"config": c, "expected_time": 60, "image": "plain"}, "image"),
        (lambda c: {"config": c, "expected_time": 60, "image": "nope"}, "image"),
        (lambda c: {"config": c}, "expected_time"),
        (lambda c: {"config": c, "expected_time": 60, "gpus": 99}, "gpus"),
        (lambda c: {"config": c, "expected_time": 60, "priority": 5}, "priority"),
        (lambda c: {"config": c, "expected_time": 60, "metadata": {"kind": "x"}}, "metadata"),
        (lambda c: {"config": c, "expected_time": 60, "where": "cloud:nope"}, "where"),
        (lambda c: {"config": c, "expected_time": 60, "where": "gpu-1"}, "where"),
        (lambda c: {"config": c, "expected_time": 60, "dataset": "x"}, "dataset"),
        (lambda c: {"expected_time": 60}, "config"),
        (lambda c: {"config": "rank: [", "expected_time": 60}, "config"),
        (lambda c: {"config": 5, "expected_time": 60}, "config"),
    ],
)
async def test_refusals_name_their_field_and_queue_nothing(alice, shared_volumes, change, field):
    before = await jobs_total(alice)
    for dry_run in ("0", "1"):
        response = await alice.post(
            "api/v1/training-jobs",
            params={"dry_run": dry_run},
            json=change(config_of(shared_volumes)),
        )
        assert response.status_code == 400, response.text
        body = response.json()
        assert body["field"] == field, body
        assert body["error"] and "Traceback" not in body["error"] and "Error(" not in body["error"]
    assert await jobs_total(alice) == before


async def test_a_dataset_file_that_does_not_fit_the_config(alice, shared_volumes):
    config = without(config_of(shared_volumes), "dataset")
    for data, says in (
        (b'{"body": "no text field"}\n', "no field 'text'"),
        (b"not json at all\n", "Line 1"),
        (b"", "no examples"),
    ):
        response = await alice.post(
            "api/v1/training-jobs",
            data={"expected_time": "1m"},
            files={
                "config": ("c.json", json.dumps(config).encode(), "application/json"),
                "dataset": ("d.jsonl", data, "application/jsonl"),
            },
        )
        assert (response.status_code, response.json()["field"]) == (400, "dataset"), response.text
        assert says in response.json()["error"]
    both = await alice.post(
        "api/v1/training-jobs",
        data={"expected_time": "1m", "config": json.dumps(config_of(shared_volumes))},
        files={"dataset": ("d.jsonl", b'{"text": "a b"}\n', "application/jsonl")},
    )
    assert (both.status_code, both.json()["field"]) == (400, "config.dataset.path")


async def test_bodies_the_route_does_not_take(alice):
    wrong_type = await alice.post(
        "api/v1/training-jobs", content=b"rank: 4", headers={"Content-Type": "text/yaml"}
    )
    assert wrong_type.status_code == 415
    not_json = await alice.post(
        "api/v1/training-jobs", content=b"{", headers={"Content-Type": "application/json"}
    )
    assert not_json.status_code == 400
    too_large = await alice.post(
        "api/v1/training-jobs",
        data={"expected_time": "1m", "config": "{}"},
        files={"dataset": ("d.jsonl", b"x" * (17 << 20), "application/jsonl")},
    )
    assert too_large.status_code == 413
    nameless = b'--b\r\nContent-Disposition: form-data; name=""\r\n\r\n1\r\n--b--\r\n'
    unreadable = await alice.post(
        "api/v1/training-jobs",
        content=nameless,
        headers={"Content-Type": "multipart/form-data; boundary=b"},
    )
    assert unreadable.status_code == 400 and "could not be read" in unreadable.json()["error"]
    not_a_list = await alice.get("api/v1/training-jobs")
    assert not_a_list.status_code == 405 and not_a_list.headers["allow"] == "POST"


def answers_as_documented(base_url: str, token: str, bodies: list[tuple[dict, dict, int]]):
    """Each (query, body, status) sent through schemathesis, its answer checked against
    hub_service/openapi.json; the failures."""
    import requests
    import schemathesis

    from hub_service.handlers import OPENAPI_PATH
    from tests.service.test_openapi import CHECKS

    operation = schemathesis.openapi.from_path(OPENAPI_PATH)["/api/v1/training-jobs"]["POST"]
    headers = {"Authorization": f"token {token}"}
    failures = []
    with requests.Session() as session:
        for query, body, status in bodies:
            case = operation.Case(body=body, query=query, media_type="application/json")
            response = case.call(base_url=base_url, session=session, headers=headers, timeout=60)
            if response.status_code != status:
                failures.append(f"{query} {body}: {response.status_code} {response.text[:300]}")
            try:
                case.validate_response(response, checks=CHECKS, headers=headers)
            except (Exception, BaseExceptionGroup) as err:
                failures.append(f"{query}: {err}")
    return failures


async def test_the_answers_match_the_openapi_document(hub, alice, shared_volumes):
    import asyncio

    config = config_of(shared_volumes, max_steps=2)
    bodies = [
        ({"dry_run": "1"}, {"config": config, "expected_time": 60}, 200),
        ({"dry_run": "1"}, {"config": config, "expected_time": 60, "where": RTX4090}, 200),
        ({}, {"config": {**config, "rank": 0}, "expected_time": 60}, 400),
        ({}, {"config": config, "expected_time": 60}, 201),
    ]
    base_url = str(alice.base_url).rstrip("/")
    token = alice.headers["Authorization"].split(" ", 1)[1]
    failures = await asyncio.to_thread(answers_as_documented, base_url, token, bodies)
    assert not failures, "\n\n".join(failures)
    listed = (await alice.get("api/v1/jobs", params={"status": "queued,running"})).json()
    for job in listed["jobs"]:
        await followed(alice, job["id"])  # it ends before the hub stops


async def test_the_cli_asks_queues_and_follows(hub, alice, shared_volumes, tmp_path):
    from tests.jobs.test_jobs_clients import thinkube

    token = alice.headers["Authorization"].split(" ", 1)[1]
    config = without(config_of(shared_volumes, max_steps=4), "dataset")
    config["dataset"] = {"text_field": "text"}
    config_file = tmp_path / "lora.yaml"
    config_file.write_text(yaml.safe_dump(config))
    data = write_dataset(tmp_path / "colours.jsonl")
    before = await jobs_total(alice)
    code, out, err = await thinkube(
        hub, token, "train", str(config_file), "--dataset", str(data), "--expected-time", "10m",
        "--dry-run",
    )  # fmt: skip
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].startswith("would run: ") and lines[-1] == "nothing was queued (dry run)"
    assert f"lora on {config['base_model']}, image local, 0 GPU(s), expected 10 min" in out
    assert await jobs_total(alice) == before

    code, out, err = await thinkube(
        hub, token, "train", str(config_file), "--dataset", str(data), "--expected-time", "10m",
        "--metadata", "try=cli", "--follow",
    )  # fmt: skip
    assert code == 0, err
    steps = [line.split()[1] for line in out.splitlines() if STEP_LINE.match(line)]
    assert steps == ["2/4", "4/4"], out
    assert " completed: Completed, exit code 0" in err

    refused = config_file.with_name("bad.yaml")
    refused.write_text(yaml.safe_dump({**config, "rank": 0}))
    code, out, err = await thinkube(
        hub, token, "train", str(refused), "--dataset", str(data), "--expected-time", "10m"
    )
    assert code == 1 and len(err.strip().splitlines()) == 1, err
    assert "rank must be from 1 to 4096" in err and "(config.rank)" in err
    assert await jobs_total(alice) == before + 1


async def test_the_python_api(alice, shared_volumes, tmp_path):
    import asyncio

    from thinkube_core import jobs

    token = alice.headers["Authorization"].split(" ", 1)[1]
    client = jobs.Client(str(alice.base_url), token)
    config = config_of(shared_volumes, algorithm="dora", max_steps=4, name="from-python")
    try:
        preview = await asyncio.to_thread(
            client.train, config, expected_time="5m", dry_run=True, where=RTX4090, pricing="spot"
        )
        assert preview["queued"] is False and preview["cost"]["pricing"] == "spot"
        with pytest.raises(jobs.JobsError) as refused:
            await asyncio.to_thread(client.train, {**config, "dropout": 1}, expected_time="5m")
        assert refused.value.status == 400 and refused.value.field == "config.dropout"
        job = await asyncio.to_thread(client.train, config, expected_time="5m")
        assert job.metadata["kind"] == "training" and job.name == "from-python"
        lines = await asyncio.to_thread(lambda: list(job.logs(follow=True)))
        assert len([line for line in lines if STEP_LINE.match(line)]) == 2  # steps 2 and 4
        finished = await asyncio.to_thread(job.wait, 0.2, False)
        assert finished.status == "completed"
    finally:
        client.close()


async def test_the_hub_logged_no_server_error(hub):
    log = "".join(hub.output)
    assert " 500 " not in log and "Uncaught exception" not in log, log[-3000:]
