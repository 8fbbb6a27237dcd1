"""hub_service.jobs.spec: a submission checked, and the pod a job runs as."""

from __future__ import annotations

import pytest

from hub_service.jobs.spec import (
    JobError,
    JobLimits,
    check_submission,
    job_pod_spec,
    parse_duration,
)
from thinkube_core.scheduling import PodRules, pod_demand

IMAGES = [
    {"name": "scipy", "default": True, "image": "quay.io/jupyter/scipy-notebook", "metadata": {}},
    {"name": "pytorch-cuda", "image": "pytorch", "metadata": {"gpu_required": True}},
]
NODES = [
    {
        "name": f"gpu-{i}",
        "gpu": {
            "resources": [
                {"name": "nvidia.com/gpu", "product": "NVIDIA-A100-SXM4-80GB", "allocatable": 4}
            ]
        },
    }
    for i in range(2)
]
MODELS = [
    {
        "model": "NVIDIA A100 SXM4 80GB",
        "product": "NVIDIA-A100-SXM4-80GB",
        "resource": "nvidia.com/gpu",
        "schedulable": 8,
        "largest_free_slot": {"gpus": 4},
    }
]


def check(**fields):
    script = fields.pop("script", "print('hi')")
    return check_submission({"expected_time": "10m", **fields}, script, IMAGES, NODES, MODELS)


def refused(**fields) -> tuple[str, str]:
    with pytest.raises(JobError) as caught:
        check(**fields)
    return caught.value.field, str(caught.value)


@pytest.mark.parametrize(
    ("value", "seconds"), [(600, 600), ("600", 600), ("10m", 600), ("1.5h", 5400), ("2d", 172800)]
)
def test_durations(value, seconds):
    assert parse_duration(value) == seconds


def test_a_plain_submission_takes_the_defaults():
    job = check(script="print(1)")
    assert (job.expected_s, job.gpus, job.cpu, job.memory) == (600, 0, 2, 8 << 30)
    assert job.image["name"] == "scipy"
    gpu_job = check(gpus=2, gpu_model="gpu:nvidia-a100-sxm4-80gb")
    assert (gpu_job.gpus, gpu_job.gpu_model) == (2, "NVIDIA-A100-SXM4-80GB")
    assert gpu_job.image["name"] == "pytorch-cuda"  # the GPU image when none is named
    assert check(gpus=1, gpu_model="NVIDIA A100 SXM4 80GB").gpu_model == "NVIDIA-A100-SXM4-80GB"


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"script": ""}, "script"),
        ({"script": "x" * (2 << 20)}, "script"),
        ({"script": b"\xff\xfe"}, "script"),
        ({"expected_time": 0}, "expected_time"),
        ({"expected_time": "-5m"}, "expected_time"),
        ({"expected_time": "8d"}, "expected_time"),
        ({"expected_time": "soon"}, "expected_time"),
        ({"expected_time": None}, "expected_time"),
        ({"gpus": 9}, "gpus"),
        ({"gpus": "1.5"}, "gpus"),
        ({"gpus": True}, "gpus"),
        ({"gpus": 1, "gpu_model": "H100"}, "gpu_model"),
        ({"gpus": 0, "gpu_model": "gpu:nvidia-a100-sxm4-80gb"}, "gpus"),
        ({"image": "evil/miner"}, "image"),
        ({"cpu": "1e308"}, "cpu"),
        ({"cpu": "４"}, "cpu"),
        ({"memory": "1e100"}, "memory"),
        ({"metadata": {"k": 1}}, "metadata"),
        ({"metadata": {f"k{i}": "v" for i in range(33)}}, "metadata"),
        ({"name": "<script>"}, "name"),
    ],
)
def test_bad_submissions_name_the_field(fields, field):
    assert refused(**fields)[0] == field


def test_more_gpus_than_any_node_has_is_refused():
    # eight A100s in all, but four at most on one node: a job's pod needs them on one
    assert check(gpus=4).gpus == 4
    assert refused(gpus=8, gpu_model="gpu:nvidia-a100-sxm4-80gb") == (
        "gpus",
        "No node here has 8 GPUs of that model.",
    )
    with pytest.raises(JobError, match="No node here has 1 GPUs"):
        check_submission({"expected_time": 60, "gpus": 1}, "x", IMAGES, [], [])


def test_the_job_pod_asks_for_what_was_chosen_and_goes_where_it_may():
    job = check(gpus=2, gpu_model="gpu:nvidia-a100-sxm4-80gb", cpu="4", memory=16)
    spec = job_pod_spec(job, node="gpu-b", tolerations=[{"key": "dedicated", "operator": "Exists"}])
    assert pod_demand(spec) == {"cpu": 4000, "memory": 16 << 30, "nvidia.com/gpu": 2}
    rules = PodRules.of_pod_spec(spec)
    assert {t.key for t in rules.tolerations} == {"dedicated", "nvidia.com/gpu"}
    (term,) = rules.required_terms
    assert [r.describe() for r in term.expressions] == [
        "nvidia.com/gpu.product In [NVIDIA-A100-SXM4-80GB]"
    ]
    assert [r.describe() for r in term.fields] == ["metadata.name In [gpu-b]"]
    cpu_only = job_pod_spec(check())
    assert PodRules.of_pod_spec(cpu_only) == PodRules()


def test_limits_are_the_admins():
    strict = JobLimits(max_expected_s=3600)
    with pytest.raises(JobError, match="at most 1 h"):
        check_submission({"expected_time": "2h"}, "x", IMAGES, NODES, MODELS, strict)
