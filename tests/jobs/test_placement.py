"""Where a job runs, checked at submission (pure): a RunPod offer within the person's cloud
limit, or this hub's nodes; the paths and results a RunPod job's pod may send back."""

from __future__ import annotations

import secrets

import pytest

from hub_service.bodies import BodyError
from hub_service.jobs.manager import request_of, stored_request
from hub_service.jobs.placement import (
    MAX_SCRIPT_ENV_BYTES,
    CloudChoices,
    cloud_placement,
    offers_of,
    wants_cloud,
)
from hub_service.jobs.routing import RoutedJobs, placed_on_runpod
from hub_service.jobs.runpod import RunPodJobs, RunPodJobSettings
from hub_service.jobs.spec import JobError, check_submission
from hub_service.jobs.uploads import ArtifactPathError, artifact_path, check_result
from thinkube_core.job_runner import encode_script
from thinkube_core.runpod import RunPodClient
from thinkube_core.runpod.offers import Offer

OFFERS = (
    Offer("NVIDIA GeForce RTX 4090", "RTX 4090", 24, "SECURE", 0.69, 0.35, "High"),
    Offer("NVIDIA GeForce RTX 4090", "RTX 4090", 24, "COMMUNITY", 0.34, 0.20, "Low"),
    Offer("NVIDIA RTX A5000", "RTX A5000", 24, "COMMUNITY", 0.22, 0.11, None),
    Offer("NVIDIA RTX A5000", "RTX A5000", 24, "SECURE", 0.29, 0.15, "Medium"),
    Offer("NVIDIA H100 80GB HBM3", "H100 SXM", 80, "SECURE", 2.69, None, "High"),
)
CHOICES = CloudChoices(offers=OFFERS, cap=1.0, unavailable=None, default_image="runpod/x:1")
IMAGES = [
    {"name": "cpu", "default": True, "image": "quay.io/cpu:1", "metadata": {}},
    {"name": "gpu", "image": "quay.io/gpu:1", "metadata": {"gpu_required": True}},
]


def place(**fields):
    return cloud_placement(fields, "print(1)\n", CHOICES)


def test_where_names_this_hubs_nodes_or_runpod_and_nothing_else():
    assert not wants_cloud({}) and not wants_cloud({"where": "local"})
    assert wants_cloud({"where": "runpod"}) and wants_cloud({"where": "cloud:SECURE:x:1"})
    for bad in ("moon", 3, ["runpod"]):
        with pytest.raises(ValueError) as refused:
            wants_cloud({"where": bad})
        assert refused.value.field == "where"


def test_an_offer_named_as_the_form_names_it_is_that_offer_at_that_many_gpus():
    placement = place(where="cloud:SECURE:NVIDIA GeForce RTX 4090:1")
    assert placement["kind"] == "runpod" and placement["gpus"] == 1 and not placement["spot"]
    assert [o.key for o in offers_of(placement)] == ["SECURE:NVIDIA GeForce RTX 4090:1"]
    # The price checked is the one for the GPUs asked for: two are over the limit.
    with pytest.raises(ValueError, match=r"\$1\.38/h on demand, over your cloud limit"):
        place(where="cloud:SECURE:NVIDIA GeForce RTX 4090:1", gpus=2)
    spot = place(where="cloud:SECURE:NVIDIA GeForce RTX 4090:1", gpus=2, pricing="spot")
    [offer] = offers_of(spot)
    assert offer.gpu_count == 2 and offer.spot_price_per_hour == 0.7 and spot["spot"]


def test_runpod_tries_the_cheapest_offers_in_stock_within_the_limit():
    placement = place(where="runpod")
    keys = [o.key for o in offers_of(placement)]
    # The A5000 community offer is cheapest but has no stock; H100 is over the limit.
    assert keys == [
        "SECURE:NVIDIA RTX A5000:1",
        "COMMUNITY:NVIDIA GeForce RTX 4090:1",
        "SECURE:NVIDIA GeForce RTX 4090:1",
    ]
    assert placement["gpu_model"] == "RTX A5000"
    only = place(where="runpod", gpu_model="4090", gpus=2)
    assert [o.key for o in offers_of(only)] == ["COMMUNITY:NVIDIA GeForce RTX 4090:2"]


@pytest.mark.parametrize(
    ("fields", "field", "words"),
    [
        ({"where": "cloud:SECURE:No GPU:1"}, "where", "no offer"),
        ({"where": "cloud:SECURE:NVIDIA H100 80GB HBM3:1"}, "where", "over your cloud limit"),
        ({"where": "runpod", "gpu_model": "H100"}, "gpu_model", "within your cloud limit"),
        ({"where": "runpod", "gpu_model": "TPU"}, "gpu_model", "no GPU called"),
        ({"where": "runpod", "gpus": 0}, "gpus", "from 1 to 8"),
        ({"where": "runpod", "gpus": True}, "gpus", "from 1 to 8"),
        ({"where": "runpod", "pricing": "free"}, "pricing", "on-demand"),
    ],
)
def test_what_cannot_be_rented_is_refused_naming_the_field(fields, field, words):
    with pytest.raises(ValueError) as refused:
        place(**fields)
    assert refused.value.field == field and words in str(refused.value)


def test_no_cap_or_no_runpod_means_no_cloud_jobs():
    with pytest.raises(ValueError, match="not available to you"):
        cloud_placement({"where": "runpod"}, "x", CloudChoices(offers=OFFERS, unavailable=None))
    with pytest.raises(ValueError, match="cannot run on this hub now: no key"):
        cloud_placement({"where": "runpod"}, "x", CloudChoices(cap=5, unavailable="no key"))


def test_a_script_larger_than_the_pods_environment_takes_is_refused():
    fits = "x = 1\n" * 100_000  # 600 KB that compresses well
    assert len(encode_script(fits)) < MAX_SCRIPT_ENV_BYTES
    place_script = cloud_placement({"where": "runpod"}, fits, CHOICES)
    assert place_script["gpus"] == 1
    noise = secrets.token_hex(MAX_SCRIPT_ENV_BYTES)  # hex: about half of it compresses away
    with pytest.raises(ValueError, match="too large for a RunPod job") as refused:
        cloud_placement({"where": "runpod"}, noise, CHOICES)
    assert refused.value.field == "script"


def test_a_checked_cloud_submission_looks_at_no_node_of_the_hub():
    # No node here has a GPU: a local GPU job is refused, the cloud one is not.
    fields = {"expected_time": "10m", "gpus": 1}
    with pytest.raises(JobError, match="No node here has 1 GPUs"):
        check_submission(fields, "print(1)\n", IMAGES, [], [], cloud=CHOICES)
    request = check_submission(
        {**fields, "where": "runpod", "gpu_model": "4090"},
        "print(1)\n",
        IMAGES,
        [],
        [],
        cloud=CHOICES,
    )
    assert request.gpus == 1 and request.gpu_model == "RTX 4090"
    assert request.image["image"] == "runpod/x:1"  # no image named: the hub's RunPod image
    named = check_submission(
        {**fields, "where": "runpod", "image": "gpu"}, "print(1)\n", IMAGES, [], [], cloud=CHOICES
    )
    assert named.image["image"] == "quay.io/gpu:1"
    with pytest.raises(JobError) as refused:
        check_submission({**fields, "where": "runpod"}, "print(1)\n", IMAGES, [], [])
    assert refused.value.field == "where"  # without cloud choices: not set up


def test_a_stored_request_says_where_it_runs():
    request = check_submission(
        {"expected_time": 60, "where": "runpod"}, "print(1)\n", IMAGES, [], [], cloud=CHOICES
    )
    entry = {
        "request": stored_request(request),
        "script": request.script,
        "expected_s": 60,
    }
    assert placed_on_runpod(entry)
    assert request_of(entry).placement == request.placement
    local = check_submission({"expected_time": 60}, "print(1)\n", IMAGES, [], [])
    assert not placed_on_runpod({"request": stored_request(local)})


@pytest.mark.parametrize(
    "path", ["model/adapter.safetensors", "a", "é/ü.txt", "x" * 255, "/".join(["d"] * 32)]
)
def test_artifact_paths_inside_the_jobs_folder_are_taken(path):
    assert str(artifact_path(path)) == path


@pytest.mark.parametrize(
    "path",
    [
        "",
        "/etc/passwd",
        "../x",
        "a/../../x",
        "a/./b",
        "a//b",
        "a/",
        "a\\b",
        "a\x00b",
        "a\nb",
        "x" * 256,
        "/".join(["d"] * 33),
    ],
)
def test_artifact_paths_that_leave_or_bend_the_folder_are_refused(path):
    with pytest.raises(ArtifactPathError):
        artifact_path(path)


def test_a_result_is_an_exit_code_and_the_reason_follows_it():
    assert check_result({"exit_code": 0}) == {"exit_code": 0, "reason": "Completed", "message": ""}
    assert check_result({"exit_code": 3, "reason": "Completed"})["reason"] == "Failed"
    assert check_result({"exit_code": 143, "reason": "DeadlineExceeded"})["reason"] == (
        "DeadlineExceeded"
    )
    for bad, field in (
        ({"exit_code": "0"}, "exit_code"),
        ({"exit_code": True}, "exit_code"),
        ({"exit_code": 2**40}, "exit_code"),
        ({"exit_code": 0, "reason": "Cancelled"}, "reason"),
        ({"exit_code": 0, "message": "x" * 3000}, "message"),
        ({"exit_code": 0, "extra": 1}, "extra"),
    ):
        with pytest.raises(BodyError) as refused:
            check_result(bad)
        assert refused.value.field == field
    with pytest.raises(BodyError):
        check_result([0])


def test_a_runpod_jobs_artifacts_are_in_its_folder_with_links_resolved(tmp_path):
    real = tmp_path / "real"
    real.mkdir()
    (tmp_path / "link").symlink_to(real)
    client = RunPodClient("rpa_test", api_url="http://127.0.0.1:9/graphql", environ={})
    runpod = RunPodJobs(
        client,
        RunPodJobSettings(public_url="http://hub/", artifacts_folder=tmp_path / "link"),
        ended=None,  # type: ignore[arg-type]
        record=None,  # type: ignore[arg-type]
        lookup=None,  # type: ignore[arg-type]
    )
    request = check_submission(
        {"expected_time": 60, "where": "runpod"}, "print(1)\n", IMAGES, [], [], cloud=CHOICES
    )
    entry = {"id": "j-1", "request": stored_request(request)}
    assert runpod.artifacts_dir(entry) == real / "j-1"  # need not exist yet
    routed = RoutedJobs(type("Local", (), {"name": "local"})(), runpod)
    assert routed.artifacts_dir(entry) == real / "j-1"
    assert routed.artifacts_dir({"id": "j-2", "request": {}}) is None  # the local one keeps none
    assert routed.runs_cloud_jobs
    local_only = RoutedJobs(type("Local", (), {"name": "local"})())
    assert local_only.artifacts_dir(entry) is None and not local_only.runs_cloud_jobs
