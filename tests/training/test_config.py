"""The training config's checks (thinkube_train.config): what it takes, the defaults it fills
in, and each refusal naming its field. Pure: no torch here, as in the service."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from thinkube_train.config import (
    ConfigError,
    Placement,
    TrainingConfig,
    check_config,
    check_records,
    parse_config_text,
    read_records,
)

CPU = Placement(gpu=False, models_path="/models", datasets_path="/datasets", exists=lambda p: True)
GPU = Placement(gpu=True, models_path="/models", datasets_path="/datasets", exists=lambda p: True)
BASE = {
    "base_model": "Qwen/Qwen2.5-0.5B",
    "algorithm": "lora",
    "dataset": {"path": "/datasets/chats.jsonl", "text_field": "text"},
}


def with_(**changes) -> dict:
    config = {**BASE, **changes}
    return {k: v for k, v in config.items() if v is not ...}


def refused(config, placement: Placement = CPU) -> ConfigError:
    with pytest.raises(ConfigError) as caught:
        check_config(config, placement)
    assert str(caught.value) and "Error" not in str(caught.value)
    return caught.value


def test_a_small_config_gets_sane_defaults():
    config = check_config(BASE, CPU)
    assert isinstance(config, TrainingConfig)
    assert (config.rank, config.alpha, config.dropout) == (16, 32.0, 0.05)
    assert config.quantization == "none" and config.target_modules is None
    assert (config.epochs, config.max_steps, config.learning_rate) == (1.0, None, 2e-4)
    assert (config.batch_size, config.gradient_accumulation, config.max_seq_length) == (4, 1, 512)
    assert config.seed == 42 and config.dataset.text_field == "text"
    # what the trainer reads back is the same config
    assert check_config(json.loads(json.dumps(config.to_dict())), CPU) == config


def test_yaml_json_and_dict_are_the_same_config():
    yaml_text = """
base_model: Qwen/Qwen2.5-0.5B
algorithm: dora
rank: 8
alpha: 16
target_modules: [q_proj, v_proj]
dataset:
  path: /datasets/qa.jsonl
  prompt_field: question
  response_field: answer
max_steps: 100
project: support-bot
"""
    from_yaml = check_config(yaml_text, CPU)
    from_json = check_config(json.dumps(parse_config_text(yaml_text)), CPU)
    assert from_yaml == from_json == check_config(parse_config_text(yaml_text), CPU)
    assert from_yaml.algorithm == "dora" and from_yaml.target_modules == ("q_proj", "v_proj")
    assert from_yaml.dataset.prompt_field == "question" and from_yaml.dataset.text_field is None
    assert from_yaml.max_steps == 100 and from_yaml.project == "support-bot"


def test_qlora_means_int4_and_all_linear_is_kept():
    config = check_config(with_(algorithm="qlora", target_modules="all-linear"), GPU)
    assert config.quantization == "int4" and config.target_modules == "all-linear"
    assert check_config(with_(algorithm="ia3"), CPU).algorithm == "ia3"


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"algorithm": "lora-plus"}, "algorithm"),
        ({"algorithm": ...}, "algorithm"),
        ({"rank": 0}, "rank"),
        ({"rank": -4}, "rank"),
        ({"rank": 2.5}, "rank"),
        ({"rank": "8"}, "rank"),
        ({"rank": True}, "rank"),
        ({"alpha": 0}, "alpha"),
        ({"dropout": 1.0}, "dropout"),
        ({"dropout": -0.1}, "dropout"),
        ({"learning_rate": 0}, "learning_rate"),
        ({"epochs": "two"}, "epochs"),
        ({"batch_size": 0}, "batch_size"),
        ({"max_steps": 0}, "max_steps"),
        ({"max_seq_length": 4}, "max_seq_length"),
        ({"quantization": "fp8"}, "quantization"),
        ({"target_modules": []}, "target_modules"),
        ({"target_modules": ["q_proj; rm -rf"]}, "target_modules"),
        ({"feedforward_modules": ["down_proj"]}, "feedforward_modules"),
        ({"project": "../etc"}, "project"),
        ({"learning_rte": 0.1}, "learning_rte"),
        ({"base_model": ...}, "base_model"),
        ({"base_model": "not a model id"}, "base_model"),
        ({"base_model": 7}, "base_model"),
        ({"base_model": "/etc/passwd"}, "base_model"),
        ({"base_model": "/models/../etc"}, "base_model"),
        ({"dataset": ...}, "dataset"),
        ({"dataset": 3}, "dataset"),
        ({"dataset": {"path": "/tmp/x.jsonl"}}, "dataset.path"),
        ({"dataset": {"path": "relative.jsonl"}}, "dataset.path"),
        ({"dataset": {"path": "/datasets/a.jsonl", "colour": "red"}}, "dataset.colour"),
        ({"dataset": {"path": "/datasets/a.jsonl", "prompt_field": "q"}}, "dataset.response_field"),
        (
            {
                "dataset": {
                    "path": "/datasets/a.jsonl",
                    "text_field": "t",
                    "prompt_field": "q",
                    "response_field": "a",
                }
            },
            "dataset.text_field",
        ),
    ],
)
def test_each_refusal_names_its_field(changes, field):
    assert refused(with_(**changes)).field == field


def test_paths_must_exist_on_the_shared_volumes():
    nothing_there = Placement(gpu=False, models_path="/models", datasets_path="/datasets")
    error = refused(with_(base_model="/models/not-here"), nothing_there)
    assert error.field == "base_model" and "/models/not-here" in str(error)
    error = refused(BASE, nothing_there)
    assert error.field == "dataset.path" and "/datasets/chats.jsonl" in str(error)


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"algorithm": "qlora"}, "algorithm"),
        ({"algorithm": "qlora", "quantization": "int4"}, "quantization"),
        ({"quantization": "int4"}, "quantization"),
        ({"quantization": "int8"}, "quantization"),
    ],
)
def test_quantization_is_refused_where_there_is_no_gpu(changes, field):
    error = refused(with_(**changes), CPU)
    assert error.field == field and "GPU" in str(error)
    assert check_config(with_(**changes), GPU).quantization in ("int4", "int8")


def test_qlora_is_int4_only():
    assert refused(with_(algorithm="qlora", quantization="int8"), GPU).field == "quantization"


def test_the_admins_catalog_of_models():
    catalog = Placement(
        gpu=False,
        datasets_path="/datasets",
        models={"small": "Qwen/Qwen2.5-0.5B", "local": "/srv/llama"},
        exists=lambda p: True,
    )
    assert check_config(with_(base_model="small"), catalog).base_model == "Qwen/Qwen2.5-0.5B"
    assert check_config(with_(base_model="local"), catalog).base_model == "/srv/llama"
    error = refused(with_(base_model="meta-llama/Llama-3.1-70B"), catalog)
    assert error.field == "base_model" and "local, small" in str(error)


def test_a_dataset_sent_with_the_job():
    sent = Placement(gpu=False, datasets_path="/datasets", uploaded="dataset.jsonl")
    config = check_config(with_(dataset={"text_field": "body"}), sent)
    assert config.dataset.path == "dataset.jsonl" and config.dataset.text_field == "body"
    assert refused(BASE, sent).field == "dataset.path"  # a path and a file: which one?


def test_texts_that_are_not_a_config():
    for text in ("[1, 2]", "a: [", "just words", b"\xff\xfe"):
        with pytest.raises(ConfigError) as caught:
            check_config(text, CPU)
        assert caught.value.field is None


def test_dataset_records_json_lines_and_arrays():
    lines = b'{"text": "a b"}\n\n{"text": "c d"}\n'
    assert read_records(lines) == [{"text": "a b"}, {"text": "c d"}]
    assert read_records(b'[{"text": "a"}]') == [{"text": "a"}]
    for bad, line in ((b'{"text": "a"}\nnot json\n', "Line 2"), (b'{"t": 1}\n[1]\n', "Line 2")):
        with pytest.raises(ConfigError) as caught:
            read_records(bad)
        assert caught.value.field == "dataset" and line in str(caught.value)
    dataset = check_config(BASE, CPU).dataset
    check_records([{"text": "fine"}], dataset)
    for records, message in (
        ([], "no examples"),
        ([{"text": "x"}, {"body": "y"}], "Example 2"),
        ([{"text": 3}], "non-text"),
    ):
        with pytest.raises(ConfigError) as caught:
            check_records(records, dataset)
        assert message in str(caught.value)


def test_the_config_module_imports_no_machine_learning_library():
    code = (
        "import sys, thinkube_train.config, hub_service.jobs.training; "
        "print(sorted(m for m in ('torch', 'transformers', 'peft') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
