"""The trainer for real, on CPU: LoRA, DoRA and IA3 runs of `python -m thinkube_train` on a
tiny Llama the test builds (no download), its progress lines, its artifacts, the adapter
loaded back with PEFT and trained away from its initialisation; the job script the service
makes, run as a job runs it; failures as one plain line. QLoRA runs where a GPU is."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from hub_service.jobs.training import training_script
from tests.training.tiny import EXAMPLES, build_model, dataset_records, write_dataset
from thinkube_train.config import Placement, check_config
from thinkube_train.trainer import duration_text, lr_factor, progress_line

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
peft = pytest.importorskip("peft")

PROGRESS = re.compile(
    r"^step (\d+)/(\d+) loss (\d+\.\d{4}) lr (\d\.\de[-+]\d\d) samples/s (\d+\.\d) eta (\d+[smh]\S*)$"
)
ADAPTER_FILES = ("adapter_model.safetensors", "adapter_config.json", "tokenizer.json")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("tiny")
    build_model(folder / "model")
    write_dataset(folder / "data.jsonl")
    return folder


def run_trainer(config: dict, folder: Path, artifacts: Path | None, cwd: Path | None = None):
    path = folder / "config.json"
    path.write_text(json.dumps(config))
    env = {k: v for k, v in os.environ.items() if k != "THINKUBE_ARTIFACTS_DIR"}
    if artifacts is not None:
        env["THINKUBE_ARTIFACTS_DIR"] = str(artifacts)
    return subprocess.run(
        [sys.executable, "-m", "thinkube_train", str(path)],
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd or folder,
        timeout=240,
    )


def config_for(tiny: Path, **changes) -> dict:
    return {
        "base_model": str(tiny / "model"),
        "algorithm": "lora",
        "rank": 4,
        "alpha": 8,
        "target_modules": "all-linear",
        "dataset": {"path": str(tiny / "data.jsonl"), "text_field": "text"},
        "max_steps": 12,
        "batch_size": 8,
        "learning_rate": 0.01,
        "logging_steps": 3,
        "seed": 7,
        **changes,
    }


def progress_of(stdout: str) -> list[tuple[int, int, float]]:
    found = []
    for line in stdout.splitlines():
        match = PROGRESS.match(line)
        if match:
            found.append((int(match.group(1)), int(match.group(2)), float(match.group(3))))
    return found


def adapter_tensors(folder: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(folder / "adapter_model.safetensors"))


def check_loads_with_peft(tiny: Path, artifacts: Path):
    """PeftModel.from_pretrained takes the adapter, and it computes something else than
    the base model: the adapter moved away from where it started."""
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(str(tiny / "model"))
    tuned = peft.PeftModel.from_pretrained(base, str(artifacts))
    ids = torch.tensor([[2, 5, 6, 7, 8]])
    with torch.no_grad():
        with_adapter = tuned(input_ids=ids).logits
        with tuned.disable_adapter():
            without = tuned(input_ids=ids).logits
    assert not torch.allclose(with_adapter, without)
    return tuned


@pytest.mark.parametrize(
    ("algorithm", "dataset"),
    [
        ("lora", {"text_field": "text"}),
        ("dora", {"prompt_field": "prompt", "response_field": "response"}),
    ],
)
def test_a_real_run_trains_an_adapter_and_writes_it(tiny, tmp_path, algorithm, dataset):
    artifacts = tmp_path / "artifacts"
    config = config_for(
        tiny, algorithm=algorithm, dataset={"path": str(tiny / "data.jsonl"), **dataset}
    )
    run = run_trainer(config, tmp_path, artifacts)
    assert run.returncode == 0, run.stderr
    assert run.stderr.strip() == "", run.stderr  # no library noise in the job's log

    progress = progress_of(run.stdout)
    assert [step for step, _, _ in progress] == [3, 6, 9, 12]
    assert {total for _, total, _ in progress} == {12}
    losses = [loss for _, _, loss in progress]
    assert all(loss > 0 for loss in losses) and losses[-1] < losses[0]

    for name in (*ADAPTER_FILES, "metrics.json", "training_config.json"):
        assert (artifacts / name).is_file(), name
    metrics = json.loads((artifacts / "metrics.json").read_text())
    assert metrics["algorithm"] == algorithm and metrics["steps"] == 12
    assert metrics["examples"] == EXAMPLES and metrics["device"] == "cpu"
    assert metrics["final_loss"] > 0 and metrics["duration_seconds"] > 0
    assert [entry["step"] for entry in metrics["losses"]] == [3, 6, 9, 12]
    adapter_config = json.loads((artifacts / "adapter_config.json").read_text())
    assert adapter_config["peft_type"] == "LORA" and adapter_config["r"] == 4
    assert adapter_config["use_dora"] is (algorithm == "dora")

    tensors = adapter_tensors(artifacts)
    lora_b = {name: t for name, t in tensors.items() if "lora_B" in name}
    assert lora_b and all(t.abs().sum() > 0 for t in lora_b.values())  # they start at zero
    if algorithm == "dora":
        assert any("lora_magnitude_vector" in name for name in tensors)
    check_loads_with_peft(tiny, artifacts)


def test_an_ia3_run(tiny, tmp_path):
    artifacts = tmp_path / "out"
    run = run_trainer(config_for(tiny, algorithm="ia3", target_modules=None), tmp_path, artifacts)
    assert run.returncode == 0, run.stderr
    assert len(progress_of(run.stdout)) == 4
    assert json.loads((artifacts / "adapter_config.json").read_text())["peft_type"] == "IA3"
    vectors = [t for name, t in adapter_tensors(artifacts).items() if "ia3_l" in name]
    assert vectors and any(not torch.allclose(t, torch.ones_like(t)) for t in vectors)
    check_loads_with_peft(tiny, artifacts)


def test_without_the_variable_the_artifacts_go_to_the_working_folder(tiny, tmp_path):
    run = run_trainer(config_for(tiny, max_steps=2, logging_steps=1), tmp_path, None, tmp_path)
    assert run.returncode == 0, run.stderr
    assert (tmp_path / "artifacts" / "adapter_model.safetensors").is_file()


def test_the_services_job_script_runs_the_trainer_with_the_dataset_it_carries(tiny, tmp_path):
    """What a job runs: the script `POST api/v1/training-jobs` queues, with the dataset
    sent with the job inside it; run from another folder, as a job runs in its account's
    home."""
    data = (tiny / "data.jsonl").read_bytes()
    raw = config_for(tiny, dataset={"prompt_field": "prompt", "response_field": "response"})
    config = check_config(raw, Placement(gpu=False, uploaded="dataset.jsonl"))
    script = tmp_path / "job.py"
    script.write_text(training_script(config, data, "dataset.jsonl"))
    home = tmp_path / "home"
    home.mkdir()
    env = {**os.environ, "THINKUBE_ARTIFACTS_DIR": str(tmp_path / "job-artifacts")}
    run = subprocess.run(
        [sys.executable, str(script)],
        capture_output=True,
        text=True,
        cwd=home,
        env=env,
        timeout=240,
    )
    assert run.returncode == 0, run.stderr
    assert len(progress_of(run.stdout)) == 4
    assert (tmp_path / "job-artifacts" / "adapter_model.safetensors").is_file()
    ran = json.loads((tmp_path / "job-artifacts" / "training_config.json").read_text())
    assert ran["dataset"]["prompt_field"] == "prompt"
    assert list(home.iterdir()) == []  # its private folder is gone


@pytest.mark.parametrize(
    ("changes", "code", "says"),
    [
        ({"dataset": {"path": "/nonexistent/data.jsonl"}}, 2, "dataset.path"),
        ({"quantization": "int4"}, 2, "needs a CUDA GPU"),
        ({"base_model": "/nonexistent/model"}, 2, "There is no model at /nonexistent/model"),
        ({"target_modules": ["no_such_layer"]}, 1, "PEFT cannot apply lora"),
    ],
)
def test_a_failure_is_one_plain_line(tiny, tmp_path, changes, code, says):
    if "quantization" in changes and torch.cuda.is_available():
        pytest.skip("this machine has a GPU: int4 is possible here")
    run = run_trainer(config_for(tiny, **changes), tmp_path, tmp_path / "out")
    assert run.returncode == code
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("thinkube-train: "), run.stderr
    assert says in lines[0] and "Traceback" not in run.stderr
    assert not (tmp_path / "out" / "adapter_model.safetensors").exists()


def test_a_dataset_without_the_named_field(tiny, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text("".join(json.dumps({"body": r["text"]}) + "\n" for r in dataset_records(3)))
    run = run_trainer(config_for(tiny, dataset={"path": str(bad)}), tmp_path, tmp_path / "out")
    assert run.returncode == 2
    assert "Example 1 of the dataset has no field 'text'" in run.stderr


def test_progress_line_and_schedule():
    assert progress_line(5, 20, 2.31414, 1.8e-4, 41.23, 3.2) == (
        "step 5/20 loss 2.3141 lr 1.8e-04 samples/s 41.2 eta 3s"
    )
    assert [duration_text(s) for s in (0, 59, 61, 3599, 3600 * 2 + 7 * 60)] == [
        "0s",
        "59s",
        "1m01s",
        "59m59s",
        "2h07m",
    ]
    assert [lr_factor(i, 10, 0) for i in (0, 9)] == [1.0, 0.1]
    assert [lr_factor(i, 10, 2) for i in (0, 1, 2, 9)] == [0.5, 1.0, 1.0, 0.125]


@pytest.mark.gpu
@pytest.mark.skipif(
    not (torch.cuda.is_available() and shutil.which("nvidia-smi")), reason="needs a CUDA GPU"
)
def test_a_real_qlora_run_on_a_gpu(tiny, tmp_path):
    pytest.importorskip("bitsandbytes")
    artifacts = tmp_path / "artifacts"
    run = run_trainer(config_for(tiny, algorithm="qlora"), tmp_path, artifacts)
    assert run.returncode == 0, run.stderr
    assert len(progress_of(run.stdout)) == 4
    metrics = json.loads((artifacts / "metrics.json").read_text())
    assert metrics["quantization"] == "int4" and metrics["device"] == "cuda"
    lora_b = [t for name, t in adapter_tensors(artifacts).items() if "lora_B" in name]
    assert lora_b and all(t.abs().sum() > 0 for t in lora_b)
