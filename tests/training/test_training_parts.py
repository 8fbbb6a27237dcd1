"""The pure parts of the training route (hub_service/jobs/training.py): which image trains,
the job's metadata, a cloud offer's cost ceiling, how a request's parts are read."""

from __future__ import annotations

import json

import pytest

from hub_service.bodies import BodyError
from hub_service.jobs.training import (
    TrainingSubmission,
    can_train,
    cost_ceiling,
    dataset_file_name,
    training_image,
    training_metadata,
    where_summary,
)
from thinkube_core.runpod.offers import Offer
from thinkube_train.config import Placement, check_config

IMAGES = [
    {"name": "scipy", "default": True, "metadata": {"gpu_required": False}},
    {"name": "cpu-train", "metadata": {"gpu_required": False, "training": True}},
    {"name": "gpu-train", "metadata": {"gpu_required": True, "training": True}},
    {"name": "gpu-plain", "metadata": {"gpu_required": True}},
]


def test_which_image_a_training_job_runs_in():
    assert [can_train(i) for i in IMAGES] == [False, True, True, False]
    assert training_image(None, IMAGES, gpus=True)["name"] == "gpu-train"
    assert training_image("", IMAGES, gpus=False)["name"] == "cpu-train"
    assert training_image("gpu-plain", IMAGES, gpus=True)["name"] == "gpu-plain"  # refused later
    assert training_image("nope", IMAGES, gpus=True) is None
    assert training_image(None, IMAGES[:1], gpus=False) is None


def test_a_cloud_offers_cost_ceiling_is_price_times_the_longest_run():
    offer = Offer("NVIDIA A100", "A100 80GB", 80, "SECURE", 1.89, 1.05, "High", 1)
    cost = cost_ceiling(offer, spot=False, expected_s=1800, deadline_factor=2.0)
    assert cost["max_cost_usd"] == pytest.approx(1.89)
    assert cost["pricing"] == "on-demand" and cost["offer"] == "SECURE:NVIDIA A100:1"
    spot = cost_ceiling(offer, spot=True, expected_s=3 * 3600, deadline_factor=1.5)
    assert spot["max_cost_usd"] == pytest.approx(1.05 * 4.5)
    unpriced = Offer("X", "X", 24, "COMMUNITY", 0.5, None, None, 1)
    assert cost_ceiling(unpriced, spot=True, expected_s=60, deadline_factor=2) is None


def test_the_metadata_marks_a_training_job():
    config = check_config(
        {"base_model": "org/model", "algorithm": "dora", "dataset": "/d/x.jsonl"},
        Placement(gpu=False, exists=lambda p: True),
    )
    assert training_metadata(config, uploaded=False, extra={"run": "7"}) == {
        "run": "7",
        "kind": "training",
        "algorithm": "dora",
        "base_model": "org/model",
        "dataset": "/d/x.jsonl",
    }
    assert training_metadata(config, uploaded=True)["dataset"] == "(sent with the job)"
    assert dataset_file_name(b'  [{"text": "a"}]') == "dataset.json"
    assert dataset_file_name(b'{"text": "a"}\n') == "dataset.jsonl"
    assert where_summary({"node": "gpu-1"}) == "starts now on gpu-1"
    assert where_summary({"node": None, "position": 3}) == "queued, position 3"


def test_a_request_as_json_and_as_a_form():
    body = {"config": {"algorithm": "lora"}, "expected_time": "1h", "gpus": 1}
    parsed = TrainingSubmission.parse("application/json", json.dumps(body).encode())
    assert parsed.config == {"algorithm": "lora"} and parsed.dataset is None
    assert parsed.options == {"expected_time": "1h", "gpus": 1}
    as_text = TrainingSubmission.parse(
        "application/json", json.dumps({"config": "algorithm: dora\nrank: 4\n"}).encode()
    )
    assert as_text.config == {"algorithm": "dora", "rank": 4}
    form = (
        b'--b\r\nContent-Disposition: form-data; name="config"; filename="c.yaml"\r\n\r\n'
        b'algorithm: ia3\r\n--b\r\nContent-Disposition: form-data; name="dataset"; '
        b'filename="d.jsonl"\r\n\r\n{"text": "x"}\n\r\n--b\r\nContent-Disposition: '
        b'form-data; name="gpus"\r\n\r\n2\r\n--b--\r\n'
    )
    parsed = TrainingSubmission.parse("multipart/form-data; boundary=b", form)
    assert parsed.config == {"algorithm": "ia3"} and parsed.options == {"gpus": "2"}
    assert parsed.dataset == b'{"text": "x"}\n'
    for content_type, raw, field, status in (
        ("application/json", b'{"expected_time": 1}', "config", 400),
        ("application/json", b'{"config": {}, "colour": 1}', "colour", 400),
        ("application/json", b'{"config": [1]}', "config", 400),
        ("application/json", b'{"config": "a: ["}', "config", 400),
        ("application/json", b'{"config": {}, "dataset": "x"}', "dataset", 400),
        ("text/yaml", b"algorithm: lora", None, 415),
    ):
        with pytest.raises(BodyError) as caught:
            TrainingSubmission.parse(content_type, raw)
        assert (caught.value.field, caught.value.status) == (field, status)
