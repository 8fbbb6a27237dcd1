"""If the lab stays full: which RunPod offer runs a lab choice instead (the same GPU count,
enough GPU memory, in stock, within the person's cap, the cheapest), the words, the one-click
link and how the hub's spawn URL reads it back. Pure: no servers."""

from __future__ import annotations

from urllib.parse import parse_qs, urlsplit

import pytest

from tests.spawner_unit.test_cloud_menu import cloud_menu
from thinkube_core import cloud_instead as core
from thinkube_core.cloud_instead import (
    cloud_offer_instead,
    cloud_user_options,
    offer_sentence,
    spawn_url,
)
from thinkube_core.runpod.offers import Offer
from thinkube_spawner.choice import CLOUD_PREFIX, ON_DEMAND, SPOT
from thinkube_spawner.form import options_from_querydata
from thinkube_spawner.instead import cloud_instead, error_html, form_notice_html, lab_gpu_request
from thinkube_spawner.menu import check_choice

A4000 = Offer("NVIDIA RTX A4000", "RTX A4000", 16, "SECURE", 0.17, 0.09, "High")
A5000_COMMUNITY = Offer("NVIDIA RTX A5000", "RTX A5000", 24, "COMMUNITY", 0.22, 0.11, "Medium")
A5000_SECURE = Offer("NVIDIA RTX A5000", "RTX A5000", 24, "SECURE", 0.29, 0.15, "High")
RTX_4090 = Offer("NVIDIA GeForce RTX 4090", "RTX 4090", 24, "SECURE", 0.69, 0.35, "High")
SOLD_OUT = Offer("NVIDIA RTX 3090", "RTX 3090", 24, "COMMUNITY", 0.20, 0.10, None)
A100 = Offer("NVIDIA A100 80GB PCIe", "A100 PCIe", 80, "SECURE", 1.64, 0.82, "Low")
TWO_A100 = Offer("NVIDIA A100 80GB PCIe", "A100 PCIe", 80, "SECURE", 3.28, 1.64, "Low", 2)
OFFERS = [RTX_4090, A4000, A100, SOLD_OUT, A5000_SECURE, A5000_COMMUNITY, TWO_A100]
MIB_24GB = 24564  # a lab RTX 4090's memory as the GPU Operator labels it
MIB_80GB = 81920


@pytest.mark.parametrize(
    ("gpus", "memory", "cap", "spot", "expected"),
    [
        (1, MIB_24GB, 1.0, False, A5000_COMMUNITY),  # cheapest with 24 GB, in stock
        (1, MIB_24GB, 0.25, False, A5000_COMMUNITY),
        (1, MIB_24GB, 0.21, False, None),  # A4000 is cheaper but has 16 GB; 3090 sold out
        (1, None, 0.21, False, A4000),  # memory unknown: any GPU
        (1, MIB_24GB, 0.12, True, A5000_COMMUNITY),  # spot price against the cap
        (1, MIB_80GB, 1.0, False, None),  # the only 80 GB GPU is over the cap
        (1, MIB_80GB, 2.0, False, A100),
        (2, MIB_80GB, 3.5, False, TWO_A100),  # the same GPU count
        (2, MIB_24GB, 3.0, False, None),
        (0, None, 5.0, False, None),  # a CPU server: RunPod rents GPU machines
        (1, MIB_24GB, 0.0, False, None),  # no cloud for this person
    ],
)
def test_the_cheapest_offer_that_runs_the_same_choice_within_the_cap(
    gpus, memory, cap, spot, expected
):
    assert cloud_offer_instead(gpus, memory, OFFERS, cap, spot=spot) == expected


def test_an_offer_over_the_cap_is_never_chosen():
    for cap in (0.1, 0.17, 0.22, 0.5, 0.69, 1.64, 3.28):
        for gpus in (1, 2):
            offer = cloud_offer_instead(gpus, None, OFFERS, cap)
            assert offer is None or offer.price_per_hour <= cap


def test_the_offer_in_words():
    assert offer_sentence(RTX_4090) == (
        "An RTX 4090 on RunPod is free now at $0.69/h — start there instead."
    )
    assert offer_sentence(A5000_COMMUNITY, spot=True) == (
        "An RTX A5000 on RunPod is free now at $0.11/h spot — start there instead."
    )
    assert offer_sentence(TWO_A100) == (
        "A 2x A100 PCIe on RunPod is free now at $3.28/h — start there instead."
    )
    tesla = Offer("Tesla T4", "Tesla T4", 16, "SECURE", 0.2, None, "High")
    assert offer_sentence(tesla).startswith("A Tesla T4 on RunPod")


def test_the_one_click_link_is_the_same_choice_on_the_offer_and_reads_back():
    lab_choice = {
        "profile": "thinkube",
        "image": "scipy",
        "where": "gpu:nvidia-geforce-rtx-4090",
        "cpu": "4",
        "memory": "16",
        "gpus": "1",
        "pricing": "",
    }
    options = cloud_user_options(lab_choice, RTX_4090)
    assert options == {
        "profile": "thinkube",
        "image": "scipy",
        "cpu": "4",
        "memory": "16",
        "where": "cloud:SECURE:NVIDIA GeForce RTX 4090:1",
        "pricing": ON_DEMAND,
        "gpus": "1",
    }
    assert cloud_user_options(lab_choice, RTX_4090, spot=True)["pricing"] == SPOT
    assert core.CLOUD_PREFIX == CLOUD_PREFIX and (core.ON_DEMAND, core.SPOT) == (ON_DEMAND, SPOT)

    url = spawn_url("/hub/", "eve@lab.org", "big one", options)
    parts = urlsplit(url)
    assert parts.path == "/hub/spawn/eve%40lab.org/big%20one"
    query = parse_qs(parts.query)
    assert query["opt-where"] == ["cloud:SECURE:NVIDIA GeForce RTX 4090:1"]
    assert spawn_url("/prefix/hub", "eve", "", {"gpus": "1"}) == "/prefix/hub/spawn/eve?opt-gpus=1"
    # JupyterHub 6 drops the `opt-` and hands the rest to options_from_query; 5.5 keeps it
    received = {k.removeprefix("opt-"): v for k, v in query.items()}
    assert options_from_querydata(received) == options
    assert options_from_querydata(query) == options
    # the form's own field names are read too, and an unknown key reaches the check
    assert options_from_querydata(
        {"profile-option-thinkube--gpus": ["2"], "where": ["cpu"], "colour": ["red"]}
    ) == {"profile": "thinkube", "gpus": "2", "where": "cpu", "colour": "red"}


def test_the_link_starts_a_choice_the_check_at_submit_takes_within_the_cap():
    menu = cloud_menu()  # offers: RTX 4090 community $0.69, H100 $2.99, A40 spot only
    lab_choice = {"where": "gpu:nvidia-geforce-rtx-4090", "gpus": "1", "cpu": "2", "memory": "4"}
    offer = cloud_instead(lab_choice, menu, cap=1.0)
    assert offer.key == "COMMUNITY:NVIDIA GeForce RTX 4090:1"
    choice = check_choice(cloud_user_options(lab_choice, offer), menu, 1.0)
    assert choice.cloud and choice.placement.offer == offer and not choice.spot
    assert cloud_instead(lab_choice, menu, cap=0.5) is None  # over this person's cap
    a100 = {"where": "gpu:nvidia-a100-sxm4-80gb", "gpus": "1"}
    assert cloud_instead(a100, menu, cap=5.0).display_name == "H100 80GB"


@pytest.mark.parametrize(
    "options",
    [
        {"where": "cloud:COMMUNITY:NVIDIA GeForce RTX 4090:1", "gpus": "1"},
        {"where": "gpu:nvidia-geforce-rtx-4090", "gpus": "0"},
        {"where": "gpu:nvidia-geforce-rtx-4090", "gpus": "x"},
        {"where": "gpu:nvidia-geforce-rtx-4090", "gpus": "1.5"},
        {"where": "gpu:nvidia-geforce-rtx-4090", "gpus": "inf"},
        {"where": "gpu:nvidia-geforce-rtx-4090", "gpus": "-1"},
        {"where": "gpu:no-such-model", "gpus": "1"},
        {"where": "cpu"},
        {},
    ],
)
def test_no_offer_for_a_cloud_or_gpu_less_or_unreadable_choice(options):
    menu = cloud_menu()
    assert cloud_instead(options, menu, cap=10.0) is None


def test_lab_gpu_request_reads_the_chosen_gpus_memory():
    menu = cloud_menu()
    assert lab_gpu_request({"where": "node:gpu-a", "gpus": "2"}, menu) == (2, MIB_80GB)
    assert lab_gpu_request({"where": "gpu:nvidia-gb10", "gpus": " 1 "}, menu) == (1, None)


def test_the_offer_on_the_hubs_pages_is_escaped():
    link = "/hub/spawn/bob?opt-where=cloud%3ASECURE%3AX&opt-gpus=1"
    html = error_html("No <b>RTX</b> is free now.", RTX_4090, link)
    assert html == (
        "No &lt;b&gt;RTX&lt;/b&gt; is free now.<br>An RTX 4090 on RunPod is free now at "
        '$0.69/h — <a id="thinkube-cloud-instead" '
        'href="/hub/spawn/bob?opt-where=cloud%3ASECURE%3AX&amp;opt-gpus=1">start there '
        "instead</a>."
    )
    assert form_notice_html(RTX_4090, link).startswith(
        '<p class="alert alert-info" id="thinkube-cloud-instead-notice">The lab has no room'
    )
