"""The notebooks shipped to users: valid nbformat, and they run.

- gpu-check.ipynb runs on this CPU-only machine and says there is no GPU.
- datasets-and-models.ipynb runs against a local S3 server (moto in server mode) with the
  endpoint and credentials in the environment, as the hub sets them.
- fine-tune-lora.ipynb runs on a tiny GPT-2 model and tokenizer made here (nothing is
  downloaded); skipped when torch, transformers or peft are not installed (the `notebooks`
  extra: pip install torch==2.13.0 -e '.[notebooks]').
"""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

REPO = Path(__file__).resolve().parents[2]
NOTEBOOKS = REPO / "notebooks"
EXPECTED = [
    "datasets-and-models.ipynb",
    "fine-tune-lora.ipynb",
    "gpu-check.ipynb",
    "gpu-jobs.ipynb",
]


def read(name: str) -> nbformat.NotebookNode:
    return nbformat.read(NOTEBOOKS / name, as_version=4)


def run(name: str, env: dict[str, str], cwd: Path, timeout: int = 120) -> nbformat.NotebookNode:
    """Execute a notebook in a fresh python3 kernel that sees `env`; raise on any error."""
    notebook = read(name)
    saved = {key: os.environ.get(key) for key in env}
    os.environ.update(env)  # the kernel inherits the environment it is started with
    try:
        NotebookClient(
            notebook,
            timeout=timeout,
            kernel_name="python3",
            resources={"metadata": {"path": str(cwd)}},
        ).execute()
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    return notebook


def output_text(notebook: nbformat.NotebookNode) -> str:
    parts = []
    for cell in notebook.cells:
        for output in cell.get("outputs", []):
            if output.get("output_type") == "stream" and output.get("name") == "stdout":
                parts.append(output["text"])
            elif output.get("output_type") in ("execute_result", "display_data"):
                parts.append(output.get("data", {}).get("text/plain", ""))
    return "".join(parts)


def test_the_notebooks_are_there():
    assert sorted(p.name for p in NOTEBOOKS.glob("*.ipynb")) == EXPECTED


@pytest.mark.parametrize("name", EXPECTED)
def test_notebook_is_valid_nbformat_without_outputs(name):
    notebook = read(name)
    nbformat.validate(notebook)
    assert notebook.nbformat == 4
    assert notebook.metadata.kernelspec.name == "python3"
    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    assert code and all(not cell.outputs and cell.execution_count is None for cell in code)
    assert notebook.cells[0].cell_type == "markdown"  # says what it is first


def test_lora_notebook_states_its_gpu_needs_up_front():
    intro = read("fine-tune-lora.ipynb").cells[0].source
    assert "GPU needs" in intro and "one GPU" in intro and "GB of GPU memory" in intro


def test_gpu_check_runs_and_says_what_it_found(tmp_path):
    notebook = run("gpu-check.ipynb", {}, tmp_path)
    text = output_text(notebook)
    assert "nvidia-smi" in text and "CPUs visible" in text
    if shutil.which("nvidia-smi") is None:  # a CPU machine, like the dev and CI machines
        assert "nvidia-smi: not found" in text
        assert "No GPU on this server: it runs on the CPU only." in text
    else:
        assert "This server has" in text


# -- S3 -----------------------------------------------------------------------------


@pytest.fixture
def s3_server():
    """A local S3 server (moto in server mode) on a free loopback port."""
    moto_server = pytest.importorskip("moto.server")
    from tests.kubesim.sim import free_port

    port = free_port()
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop()


IRIS = [
    ("sepal_length", "sepal_width", "petal_length", "petal_width", "species"),
    (5.1, 3.5, 1.4, 0.2, "setosa"),
    (4.9, 3.0, 1.4, 0.2, "setosa"),
    (4.7, 3.2, 1.3, 0.2, "setosa"),
    (7.0, 3.2, 4.7, 1.4, "versicolor"),
    (6.4, 3.2, 4.5, 1.5, "versicolor"),
    (6.9, 3.1, 4.9, 1.5, "versicolor"),
    (6.3, 3.3, 6.0, 2.5, "virginica"),
    (5.8, 2.7, 5.1, 1.9, "virginica"),
    (7.1, 3.0, 5.9, 2.1, "virginica"),
]


def test_datasets_and_models_against_a_local_s3(s3_server, tmp_path):
    import boto3

    env = {
        "AWS_ENDPOINT_URL": s3_server,
        "AWS_ACCESS_KEY_ID": "lab-key-id",
        "AWS_SECRET_ACCESS_KEY": "lab-secret",
        "AWS_DEFAULT_REGION": "us-east-1",
        "THINKUBE_DATASETS_BUCKET": "lab-datasets",
        "THINKUBE_MODELS_BUCKET": "lab-models",
        "THINKUBE_DATASET_KEY": "tabular/iris.csv",
        "JUPYTERHUB_USER": "alice",
    }
    s3 = boto3.client(
        "s3",
        endpoint_url=s3_server,
        aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"],
        region_name="us-east-1",
    )
    for bucket in ("lab-datasets", "lab-models"):
        s3.create_bucket(Bucket=bucket)
    buffer = io.StringIO()
    csv.writer(buffer).writerows(IRIS)
    s3.put_object(Bucket="lab-datasets", Key="tabular/iris.csv", Body=buffer.getvalue().encode())

    notebook = run("datasets-and-models.ipynb", env, tmp_path)
    text = output_text(notebook)
    assert "tabular/iris.csv" in text and "9 rows" in text
    assert "training accuracy 100.0%" in text

    saved = s3.list_objects_v2(Bucket="lab-models", Prefix="alice/nearest-centroid/")
    keys = sorted(item["Key"] for item in saved.get("Contents", []))
    assert [key.rsplit("/", 1)[1] for key in keys] == ["README.md", "model.json"]
    model_key = next(key for key in keys if key.endswith("model.json"))
    model = json.loads(s3.get_object(Bucket="lab-models", Key=model_key)["Body"].read())
    assert model["trained_on"] == "s3://lab-datasets/tabular/iris.csv"
    assert sorted(model["centroids"]) == ["setosa", "versicolor", "virginica"]
    assert model["centroids"]["setosa"][0] == pytest.approx((5.1 + 4.9 + 4.7) / 3)


def test_datasets_notebook_says_what_is_missing(s3_server, tmp_path):
    env = {
        "AWS_ENDPOINT_URL": s3_server,
        "AWS_ACCESS_KEY_ID": "k",
        "AWS_SECRET_ACCESS_KEY": "s",
        "THINKUBE_DATASETS_BUCKET": "empty-datasets",
        "THINKUBE_DATASET_KEY": "nope.csv",
    }
    import boto3

    boto3.client(
        "s3",
        endpoint_url=s3_server,
        aws_access_key_id="k",
        aws_secret_access_key="s",
        region_name="us-east-1",
    ).create_bucket(Bucket="empty-datasets")
    from nbclient.exceptions import CellExecutionError

    with pytest.raises(CellExecutionError) as caught:
        run("datasets-and-models.ipynb", env, tmp_path)
    assert "Cannot read s3://empty-datasets/nope.csv" in str(caught.value)


# -- LoRA ----------------------------------------------------------------------------


def make_tiny_model(folder: Path) -> Path:
    """A 2-layer GPT-2 with a word-level tokenizer, saved like any Hugging Face model."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    from tokenizers import Tokenizer, models, pre_tokenizers

    words = (
        "### question answer : ? . , what does the spawn form show cpu memory and gpus "
        "that are free on each node right now where do i keep notebooks in"
    ).split()
    vocab = {token: i for i, token in enumerate(["<pad>", "<unk>", "<eos>", *dict.fromkeys(words)])}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = transformers.PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, unk_token="<unk>", pad_token="<pad>", eos_token="<eos>"
    )
    torch.manual_seed(0)
    config = transformers.GPT2Config(
        vocab_size=len(vocab),
        n_positions=128,
        n_embd=32,
        n_layer=2,
        n_head=2,
        bos_token_id=2,
        eos_token_id=2,
        pad_token_id=0,
    )
    transformers.GPT2LMHeadModel(config).save_pretrained(folder)
    fast.save_pretrained(folder)
    return folder


def test_lora_notebook_on_a_tiny_model(tmp_path):
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    pytest.importorskip("peft")
    base = make_tiny_model(tmp_path / "tiny-gpt2")
    out = tmp_path / "adapter"
    env = {
        "THINKUBE_BASE_MODEL": str(base),
        "THINKUBE_LORA_OUTPUT": str(out),
        "THINKUBE_MAX_STEPS": "3",
        "THINKUBE_BATCH_SIZE": "4",
        "THINKUBE_MAX_LENGTH": "64",
        # Nothing may come from the network.
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "CUDA_VISIBLE_DEVICES": "",
    }
    notebook = run("fine-tune-lora.ipynb", env, tmp_path, timeout=300)
    text = output_text(notebook)
    assert "No GPU: running on the CPU" in text
    assert "trainable params" in text
    assert "step 3/3: loss" in text
    saved = {p.name for p in out.iterdir()}
    assert {"adapter_config.json", "adapter_model.safetensors"} <= saved
    adapter = json.loads((out / "adapter_config.json").read_text())
    assert adapter["peft_type"] == "LORA" and adapter["r"] == 16
    assert adapter["base_model_name_or_path"] == str(base)
    assert "### Question:" in text  # the last cell generated from the reloaded adapter
