"""menu.build_menu and menu.check_choice on documents built by the availability service's own
pure functions (node_document / summary_document) from realistic node manifests."""

from __future__ import annotations

import random

import pytest

from tests.kubesim.generator import GPU_MODELS, generate_nodes, generate_pods, make_node
from tests.spawner_unit.cluster import (
    A100,
    GIB,
    H100,
    L4,
    RTX3090_SHARED,
    RTX4090,
    cordon,
    documents,
    images,
    lab_menu,
    lab_pods,
    mig_node,
    not_ready,
    pod,
    renamed_time_sliced_node,
    taint,
)
from thinkube_spawner.menu import ChoiceError, MenuSettings, build_menu, check_choice
from thinkube_spawner.shaping import PodSettings, PodTemplate

A100_KEY = "gpu:nvidia-a100-sxm4-80gb"
BASE_IMAGE = {
    "name": "base",
    "display_name": "Base notebook",
    "description": "No limits of its own.",
    "default": False,
    "image": "quay.io/jupyter/base-notebook:2025-08-18",
    "pull_policy": "Always",
    "metadata": {"gpu_required": False, "cpu_limit": None, "mem_limit": None},
}


def by_key(menu):
    return {p.key: p for p in menu.placements}


def nodes_offered(menu):
    return [p.node for p in menu.placements if p.kind == "node"]


def rejected(options, menu) -> str:
    with pytest.raises(ChoiceError) as caught:
        check_choice(options, menu)
    return str(caught.value)


@pytest.fixture
def menu():
    return lab_menu()


# --- what the form offers ------------------------------------------------------------------


def test_placements_in_order_anywhere_then_models_then_nodes_grouped_by_model(menu):
    assert [p.key for p in menu.placements] == [
        "cpu",
        A100_KEY,
        "gpu:nvidia-gb10",
        "gpu:nvidia-geforce-rtx-3090-shared",
        "gpu:nvidia-geforce-rtx-4090",
        "gpu:nvidia-l4",
        # nodes: by GPU model, roomiest first inside a model, CPU nodes last
        "node:gpu-b",
        "node:gpu-a",
        "node:spark-1",
        "node:ts-3090",
        "node:gpu-node-3",
        "node:gpu-l4",
        "node:infra-1",
        "node:cpu-node-1",
    ]
    groups = [(p.key, p.group) for p in menu.placements]
    assert groups[0] == ("cpu", "Anywhere")
    assert {g for k, g in groups if k.startswith("gpu:")} == {"GPU models"}
    assert dict(groups)["node:gpu-b"] == "Nodes with NVIDIA A100 SXM4 80GB"
    assert dict(groups)["node:gpu-node-3"] == "Nodes with NVIDIA GeForce RTX 4090"
    assert dict(groups)["node:cpu-node-1"] == "CPU nodes"
    assert menu.nodes_hidden == 0 and menu.unlisted_nodes == frozenset()


def test_node_labels_show_free_over_allocatable_cpu_memory_and_gpus(menu):
    labels = {p.key: p.label for p in menu.placements}
    # allocatable is capacity less the kubelet's reserve (31.9 CPU, 127 GiB); free is
    # allocatable less the requests of the pods that count there.
    assert (
        labels["node:gpu-node-3"]
        == "gpu-node-3: 12/32 CPU, 40/127 GiB, 1/2 × NVIDIA GeForce RTX 4090 free"
    )
    assert labels["node:cpu-node-1"] == "cpu-node-1: 12/16 CPU, 40/63 GiB"
    assert labels["node:gpu-a"] == "gpu-a: 56/64 CPU, 447/511 GiB, 0/4 × NVIDIA A100 SXM4 80GB free"
    # the Succeeded pod on gpu-b does not count
    assert labels["node:gpu-b"] == "gpu-b: 64/64 CPU, 511/511 GiB, 4/4 × NVIDIA A100 SXM4 80GB free"
    # GB10 (DGX Spark) has no memory label: no memory is made up
    assert labels["node:spark-1"] == "spark-1: 20/20 CPU, 127/127 GiB, 1/1 × NVIDIA GB10 free"
    # time-sliced: schedulable slots and the physical GPU behind them
    assert (
        labels["node:ts-3090"]
        == "ts-3090: 15/16 CPU, 59/63 GiB, 3/4 × NVIDIA GeForce RTX 3090 free (1 GPU shared 4 ways)"
    )


def test_model_placements_count_free_gpus_over_every_schedulable_node(menu):
    placements = by_key(menu)
    a100 = placements[A100_KEY]
    assert a100.label == "Any node with a free NVIDIA A100 SXM4 80GB (4 free on 1 node, 80 GiB)"
    assert (a100.kind, a100.gpu_resource, a100.gpu_product) == (
        "gpu",
        "nvidia.com/gpu",
        "NVIDIA-A100-SXM4-80GB",
    )
    assert a100.gpu_product_label == "nvidia.com/gpu.product"
    # both A100 nodes take the pod; gpu-b has more of everything, so it alone is kept as
    # the room any A100 server could need
    assert (a100.taking, a100.gpus_free, a100.gpu_nodes_free) == (2, 4, 1)
    assert [(r["node"], r["free"]["nvidia.com/gpu"]) for r in a100.frontier] == [("gpu-b", 4)]
    assert not a100.disabled
    assert (
        placements["gpu:nvidia-gb10"].label == "Any node with a free NVIDIA GB10 (1 free on 1 node)"
    )
    assert placements["gpu:nvidia-geforce-rtx-3090-shared"].label == (
        "Any node with a free NVIDIA GeForce RTX 3090 (3 free on 1 node, 24 GiB, shared)"
    )
    assert placements["gpu:nvidia-geforce-rtx-4090"].label == (
        "Any node with a free NVIDIA GeForce RTX 4090 (1 free on 1 node, 24 GiB)"
    )


def test_cordoned_and_notready_nodes_are_never_offered(menu):
    assert "cpu-cordoned" not in nodes_offered(menu)
    assert "h100-down" not in nodes_offered(menu)
    # the only H100 node is NotReady: no H100 placement at all
    assert not any("h100" in p.key for p in menu.placements)
    assert all("cpu-cordoned" not in [r["node"] for r in p.frontier] for p in menu.placements)
    assert by_key(menu)["cpu"].refusals["cordoned"] == 1
    assert by_key(menu)["cpu"].refusals["not ready"] == 1
    assert (
        rejected({"where": "node:cpu-cordoned"}, menu)
        == "There is no schedulable node named 'cpu-cordoned'."
    )
    assert (
        rejected({"where": "node:h100-down"}, menu)
        == "There is no schedulable node named 'h100-down'."
    )


def test_full_and_tainted_nodes_are_listed_disabled_with_the_reason(menu):
    placements = by_key(menu)
    assert (placements["node:gpu-l4"].disabled, placements["node:gpu-l4"].reason) == (
        True,
        "needs 0.5 CPU, 0 free",  # the smallest server: 1 CPU at the 0.5 guarantee ratio
    )
    assert (placements["node:infra-1"].disabled, placements["node:infra-1"].reason) == (
        True,
        "tainted dedicated=infra:NoSchedule, not tolerated",
    )
    # a GPU node whose GPUs are all taken still has room for a CPU-only server
    assert not placements["node:gpu-a"].disabled
    assert rejected({"where": "node:gpu-l4"}, menu) == (
        "gpu-l4 has no room for 1 CPU and 8 GiB (needs 1 CPU, 0 free)."
    )
    assert rejected({"where": "node:infra-1"}, menu) == (
        "infra-1 does not take this server: tainted dedicated=infra:NoSchedule, not tolerated."
    )


def test_a_model_whose_free_gpus_sit_on_full_nodes_is_disabled(menu):
    l4 = by_key(menu)["gpu:nvidia-l4"]
    # the L4 is free, but its node has no CPU left: picking it could never start
    assert l4.label == "Any node with a free NVIDIA L4 (1 free on 1 node, 22 GiB)"
    assert (l4.disabled, l4.reason) == (True, "full (gpu-l4: needs 0.5 CPU, 0 free)")


def test_a_model_with_none_free_is_disabled():
    nodes = [make_node("cpu-1", 16, 64, None, 1), make_node("l4-1", 16, 64, L4, 2)]
    menu = lab_menu(nodes=nodes, pods=[pod("l4-1", "p", "1", "1Gi", gpus=1)])
    l4 = by_key(menu)["gpu:nvidia-l4"]
    assert l4.label == "Any node with a free NVIDIA L4 (0 free on 0 nodes, 22 GiB)"
    assert (l4.disabled, l4.reason) == (True, "none free right now")


def test_a_node_at_its_pod_limit_or_with_a_sliver_of_cpu_is_full():
    crowded = make_node("crowded", 16, 64, None, 1)
    crowded["status"]["allocatable"]["pods"] = "2"
    sliver = make_node("sliver", 16, 64, None, 2)
    pods = [
        pod("crowded", "a", "100m", "1Gi"),
        pod("crowded", "b", "100m", "1Gi"),
        pod("sliver", "c", "15600m", "1Gi"),  # 0.3 CPU left; the smallest server asks 0.5
    ]
    menu = lab_menu(nodes=[crowded, sliver, make_node("roomy", 16, 64, None, 3)], pods=pods)
    placements = by_key(menu)
    assert (placements["node:crowded"].disabled, placements["node:crowded"].reason) == (
        True,
        "2/2 pods",
    )
    assert (placements["node:sliver"].disabled, placements["node:sliver"].reason) == (
        True,
        "needs 0.5 CPU, 0.3 free",
    )
    assert not placements["node:roomy"].disabled


def test_a_cluster_of_gpu_nodes_only_has_no_cpu_only_placement():
    menu = lab_menu(nodes=[make_node("gpu-1", 64, 512, A100, 1)], pods=[])
    anywhere = by_key(menu)["cpu"]
    assert (anywhere.disabled, anywhere.reason) == (
        True,
        "no node takes this server (1 node: tainted nvidia.com/gpu=present:NoSchedule, not tolerated)",
    )
    assert rejected({}, menu) == (
        "CPU-only servers cannot start here: no node takes this server "
        "(1 node: tainted nvidia.com/gpu=present:NoSchedule, not tolerated)."
    )


def test_images_default_first_then_by_name(menu):
    assert [i["name"] for i in menu.images] == ["scipy", "minimal", "pytorch-cuda"]


def test_freshness_is_carried():
    menu = lab_menu(
        freshness={"generated_at": "2026-01-02T03:04:05Z", "stale": True, "age_seconds": 42.5}
    )
    assert (menu.generated_at, menu.stale, menu.age_seconds) == ("2026-01-02T03:04:05Z", True, 42.5)
    assert (lab_menu().stale, lab_menu().age_seconds) == (False, 0.0)


# --- MIG and time-slicing ------------------------------------------------------------------


def test_mig_profiles_and_renamed_time_slicing_are_placements_with_their_resource():
    nodes = [
        mig_node("mig-1", 1),
        renamed_time_sliced_node("ts-renamed", 2),
        make_node("cpu-1", 16, 64, None, 3),
    ]
    pods = [pod("mig-1", "m", "1", "1Gi", gpus=3, resource="nvidia.com/mig-1g.10gb")]
    menu = lab_menu(nodes=nodes, pods=pods)
    placements = by_key(menu)
    expected = {
        A100_KEY: ("nvidia.com/gpu", "NVIDIA-A100-SXM4-80GB", "nvidia.com/gpu.product"),
        "gpu:nvidia-a100-sxm4-80gb-mig-1g-10gb@mig-1g-10gb": (
            "nvidia.com/mig-1g.10gb",
            "NVIDIA-A100-SXM4-80GB-MIG-1g.10gb",
            "nvidia.com/mig-1g.10gb.product",
        ),
        "gpu:nvidia-a100-sxm4-80gb-mig-3g-40gb@mig-3g-40gb": (
            "nvidia.com/mig-3g.40gb",
            "NVIDIA-A100-SXM4-80GB-MIG-3g.40gb",
            "nvidia.com/mig-3g.40gb.product",
        ),
        "gpu:nvidia-geforce-rtx-3090@gpu-shared": (
            "nvidia.com/gpu.shared",
            "NVIDIA-GeForce-RTX-3090",
            "nvidia.com/gpu.product",
        ),
    }
    assert {
        k: (p.gpu_resource, p.gpu_product, p.gpu_product_label)
        for k, p in placements.items()
        if p.kind == "gpu"
    } == expected
    assert placements["gpu:nvidia-a100-sxm4-80gb-mig-1g-10gb@mig-1g-10gb"].label == (
        "Any node with a free NVIDIA A100 SXM4 80GB MIG 1g.10gb (4 free on 1 node, 10 GiB)"
    )
    # MIG slices are not A100s: the node label counts each kind apart
    assert placements["node:mig-1"].label == (
        "mig-1: 63/64 CPU, 510/511 GiB, 2/2 × NVIDIA A100 SXM4 80GB, 4/7 × MIG 1g.10gb, 2/2 × MIG 3g.40gb free"
    )
    assert placements["node:ts-renamed"].label == (
        "ts-renamed: 16/16 CPU, 63/63 GiB, 4/4 × NVIDIA GeForce RTX 3090 free (1 GPU shared 4 ways)"
    )
    assert placements["node:ts-renamed"].gpu_resource == "nvidia.com/gpu.shared"

    mig = check_choice(
        {
            "image": "pytorch-cuda",
            "where": "gpu:nvidia-a100-sxm4-80gb-mig-1g-10gb@mig-1g-10gb",
            "gpus": "4",
        },
        menu,
    )
    assert (mig.gpus, mig.placement.gpu_resource, mig.node) == (4, "nvidia.com/mig-1g.10gb", None)
    assert rejected(
        {
            "image": "pytorch-cuda",
            "where": "gpu:nvidia-a100-sxm4-80gb-mig-1g-10gb@mig-1g-10gb",
            "gpus": "8",
        },
        menu,
    ) == (
        "No node has room for 1 CPU and 8 GiB with 8 GPUs on A100 SXM4 80GB MIG 1g.10gb now (4 free in all). "
        "No GPU node has room for 1 CPU and 8 GiB with 8 GPUs right now."
    )
    shared = check_choice(
        {"image": "pytorch-cuda", "where": "gpu:nvidia-geforce-rtx-3090@gpu-shared", "gpus": "2"},
        menu,
    )
    assert (shared.gpus, shared.placement.gpu_resource) == (2, "nvidia.com/gpu.shared")


def test_time_sliced_slots_are_counted_as_schedulable_gpus(menu):
    choice = check_choice(
        {"image": "pytorch-cuda", "where": "gpu:nvidia-geforce-rtx-3090-shared", "gpus": "2"}, menu
    )
    assert (choice.placement.gpu_resource, choice.gpus) == ("nvidia.com/gpu", 2)
    assert rejected({"image": "pytorch-cuda", "where": "node:ts-3090", "gpus": "4"}, menu) == (
        "ts-3090 has no room for 1 CPU and 8 GiB with 4 GPUs (needs 4 GPUs, 3 free). "
        "NVIDIA A100 SXM4 80GB has room: choose it, or fewer GPUs."
    )


# --- 1,000 nodes ---------------------------------------------------------------------------


def big_cluster(nodes: int = 1000, gpu_nodes: int = 120, pods: int = 20000):
    rng = random.Random(7)
    manifests = generate_nodes(nodes, gpu_nodes, rng)
    manifests[7] = cordon(manifests[7])  # an H100 node, cordoned
    manifests[nodes // 2] = not_ready(manifests[nodes // 2])
    return documents(manifests, generate_pods(manifests, pods, rng))


def room(doc):
    return (
        -(doc["available"]["gpu"]),
        -doc["available"]["cpu"],
        -doc["available"]["memory"],
        doc["name"],
    )


def test_a_thousand_nodes_list_the_roomiest_capped_while_models_cover_every_node():
    node_docs, summary = big_cluster()
    menu = build_menu(node_docs, summary, images(), MenuSettings())
    usable = [d for d in node_docs if d["schedulable"]]
    assert len(usable) == 998
    listed = nodes_offered(menu)
    assert len(listed) == 50
    assert menu.nodes_hidden == 948 and len(menu.unlisted_nodes) == 948
    assert set(listed) | menu.unlisted_nodes == {d["name"] for d in usable}
    # the listed nodes are the roomiest: most free GPUs, then CPU, then memory
    docs = {d["name"]: d for d in usable}
    worst_listed = max(room(docs[n]) for n in listed)
    assert all(room(docs[n]) > worst_listed for n in menu.unlisted_nodes)
    # grouped by model, each group contiguous and roomiest first
    node_placements = [p for p in menu.placements if p.kind == "node"]
    groups = [p.group for p in node_placements]
    assert groups == sorted(groups, key=groups.index)  # contiguous
    for group in set(groups):
        members = [docs[p.node] for p in node_placements if p.group == group]
        assert members == sorted(members, key=room)
    # "any node with a free <model>" sees every schedulable node with that model, listed or not
    for model in GPU_MODELS:
        placement = by_key(menu)["gpu:" + model.product.lower()]
        expected = {d["name"] for d in usable if (d["gpu"] or {}).get("product") == model.product}
        assert placement.taking == len(expected)
        assert {r["node"] for r in placement.frontier} <= expected
        assert len(expected) in (19, 20)  # 120 GPU nodes over six models, less the cordoned H100
    assert "gpu-node-08" not in {r["node"] for p in menu.placements for r in p.frontier}


def test_the_cap_is_configurable_and_a_node_left_out_gets_a_plain_message():
    node_docs, summary = big_cluster(nodes=300, gpu_nodes=30, pods=3000)
    menu = build_menu(node_docs, summary, images(), MenuSettings(max_nodes_listed=10))
    assert len(nodes_offered(menu)) == 10
    hidden = sorted(menu.unlisted_nodes)[0]
    assert rejected({"where": f"node:{hidden}"}, menu) == (
        f"{hidden} is not offered right now: only the 10 roomiest nodes are listed. "
        "Choose a GPU model or 'Any node (CPU only)' instead."
    )
    # "Any node" placements reach the nodes that are not listed
    anywhere = check_choice({}, menu).placement
    cpu_nodes = {d["name"] for d in node_docs if d["schedulable"] and not d["gpu"]}
    assert anywhere.taking == len(cpu_nodes) and len(cpu_nodes & menu.unlisted_nodes) > 250


# --- checking a choice ---------------------------------------------------------------------


def test_an_empty_choice_takes_the_forms_defaults(menu):
    choice = check_choice({}, menu)
    assert (
        choice.image["name"],
        choice.placement.key,
        choice.cpu,
        choice.memory_gib,
        choice.gpus,
        choice.node,
    ) == (
        "scipy",
        "cpu",
        2.0,
        8,
        0,
        None,
    )
    assert (choice.cpu_request, choice.memory_request) == (1.0, 8 * GIB)
    assert choice.as_user_options() == {
        "profile": "thinkube",
        "image": "scipy",
        "where": "cpu",
        "cpu": "2",
        "memory": "8",
        "gpus": "0",
    }


def test_a_gpu_choice_on_a_model_and_on_a_pinned_node(menu):
    choice = check_choice(
        {
            "profile": "thinkube",
            "image": "pytorch-cuda",
            "where": A100_KEY,
            "cpu": "8",
            "memory": "32",
            "gpus": "2",
        },
        menu,
    )
    assert (
        choice.placement.key,
        choice.node,
        choice.gpus,
        choice.cpu_request,
        choice.memory_request,
    ) == (
        A100_KEY,
        None,
        2,
        4.0,
        32 * GIB,
    )
    pinned = check_choice(
        {
            "image": "pytorch-cuda",
            "where": "node:gpu-node-3",
            "cpu": "8",
            "memory": "32",
            "gpus": "1",
        },
        menu,
    )
    assert (pinned.node, pinned.placement.gpu_resource, pinned.gpus) == (
        "gpu-node-3",
        "nvidia.com/gpu",
        1,
    )


def test_the_guarantee_ratios_set_the_requests_that_must_fit():
    settings = MenuSettings(cpu_guarantee_ratio=1.0, mem_guarantee_ratio=0.5)
    menu = lab_menu(settings=settings)
    menu.images.append(BASE_IMAGE)
    choice = check_choice(
        {"image": "base", "where": "node:cpu-node-1", "cpu": "8", "memory": "64"}, menu
    )
    assert (choice.cpu_request, choice.memory_request) == (8.0, 32 * GIB)
    # 16 CPUs at ratio 1.0 is 16 requested; cpu-node-1 has 12 free
    assert rejected({"image": "base", "where": "node:cpu-node-1", "cpu": "16"}, menu) == (
        "cpu-node-1 has no room for 16 CPU and 4 GiB (needs 16 CPU, 12 free)."
    )


@pytest.mark.parametrize(
    ("raw", "canonical"),
    [(4, "4"), (4.0, "4"), ("4.0", "4"), (" 4 ", "4"), ("4e0", "4"), ("4", "4")],
)
def test_equal_numbers_are_accepted_and_canonicalised(menu, raw, canonical):
    choice = check_choice({"cpu": raw, "memory": 8, "gpus": 0}, menu)
    assert choice.cpu == 4.0
    assert choice.as_user_options()["cpu"] == canonical
    assert choice.as_user_options()["memory"] == "8"
    assert choice.as_user_options()["gpus"] == "0"


TAMPERED = [
    ({"where": "node:nope"}, "There is no schedulable node named 'nope'."),
    ({"where": "node:"}, "There is no schedulable node named ''."),
    ({"cpu": "1000"}, "CPUs must be one of 1, 2, 4, 8, 16, 32; got '1000'."),
    ({"cpu": 1000}, "CPUs must be one of 1, 2, 4, 8, 16, 32; got '1000'."),
    ({"cpu": "3"}, "CPUs must be one of 1, 2, 4, 8, 16, 32; got '3'."),
    ({"cpu": "0x10"}, "CPUs must be one of 1, 2, 4, 8, 16, 32; got '0x10'."),
    ({"cpu": True}, "CPUs must be one of 1, 2, 4, 8, 16, 32; got 'True'."),
    ({"cpu": ["2"]}, "CPUs must be one of 1, 2, 4, 8, 16, 32; got \"['2']\"."),
    ({"memory": "NaN"}, "Memory (GiB) must be one of 2, 4, 8, 16, 32, 64, 128; got 'NaN'."),
    (
        {"memory": "Infinity"},
        "Memory (GiB) must be one of 2, 4, 8, 16, 32, 64, 128; got 'Infinity'.",
    ),
    ({"memory": "8Gi"}, "Memory (GiB) must be one of 2, 4, 8, 16, 32, 64, 128; got '8Gi'."),
    ({"gpus": "-1"}, "GPUs must be one of 0, 1, 2, 4, 8; got '-1'."),
    ({"gpus": -1}, "GPUs must be one of 0, 1, 2, 4, 8; got '-1'."),
    ({"gpus": "1; rm -rf /"}, "GPUs must be one of 0, 1, 2, 4, 8; got '1; rm -rf /'."),
    ({"gpus": "1.5"}, "GPUs must be one of 0, 1, 2, 4, 8; got '1.5'."),
    ({"gpus": "9" * 100}, "GPUs must be one of 0, 1, 2, 4, 8; got '" + "9" * 40 + "'."),
    (
        {"where": "gpu:x,nvidia.com/gpu.product notin (a)"},
        "Unknown placement 'gpu:x,nvidia.com/gpu.product notin (a)'.",
    ),
    (
        {"where": A100_KEY + ",nvidia.com/gpu.product notin (a)"},
        "Unknown placement 'gpu:nvidia-a100-sxm4-80gb,nvidia.com/gpu.product notin (a)'.",
    ),
    ({"where": "gpu:NVIDIA-A100-SXM4-80GB"}, "Unknown placement 'gpu:NVIDIA-A100-SXM4-80GB'."),
    (
        {"where": "node:gpu-b\nkubernetes.io/hostname"},
        "There is no schedulable node named 'gpu-b\\nkubernetes.io/hostname'.",
    ),
    ({"profile": "gpu-large"}, "Unknown profile 'gpu-large': this hub offers 'thinkube'."),
    ({"profile": ""}, "Unknown profile '': this hub offers 'thinkube'."),
    ({"profile": None}, "Unknown profile 'None': this hub offers 'thinkube'."),
    (
        {"image--unlisted-choice": "evil/miner:latest"},
        "Unknown server option(s): image--unlisted-choice.",
    ),
    (
        {"node_selector": {"a": "b"}, "cpu_limit": 99},
        "Unknown server option(s): cpu_limit, node_selector.",
    ),
    ({"image": "evil"}, "Unknown image 'evil'."),
    (
        {"image": "quay.io/jupyter/scipy-notebook:2025-08-18"},
        "Unknown image 'quay.io/jupyter/scipy-notebook:2025-08-18'.",
    ),
]


@pytest.mark.parametrize(("options", "message"), TAMPERED)
def test_tampered_values_are_rejected_with_a_plain_message(menu, options, message):
    assert rejected(options, menu) == message


@pytest.mark.parametrize("options", [[], "cpu=4", None, 42, [("cpu", "4")]])
def test_options_that_are_not_an_object_are_rejected(menu, options):
    assert rejected(options, menu) == "The server options must be an object."


def test_gpu_counts_and_images_must_suit_the_placement(menu):
    assert rejected({"gpus": "1"}, menu) == (
        "'Any node (CPU only)' has no GPUs: choose a GPU model or a GPU node, or 0 GPUs."
    )
    assert rejected({"where": "node:cpu-node-1", "gpus": "1"}, menu) == (
        "cpu-node-1 has no GPUs: choose 0 GPUs or another place."
    )
    assert rejected({"where": A100_KEY, "gpus": "0"}, menu) == (
        "'Any node with a free NVIDIA A100 SXM4 80GB' is for GPU servers: choose at least 1 GPU, "
        "or 'Any node (CPU only)'."
    )
    assert rejected({"image": "pytorch-cuda"}, menu) == (
        "PyTorch (CUDA 12) needs a GPU: choose a GPU placement and at least one GPU."
    )
    assert rejected({"image": "pytorch-cuda", "where": "node:gpu-b", "gpus": "0"}, menu) == (
        "PyTorch (CUDA 12) needs a GPU: choose a GPU placement and at least one GPU."
    )


def test_the_images_cpu_and_memory_limits_are_upper_bounds(menu):
    assert (
        rejected({"image": "scipy", "cpu": "8"}, menu)
        == "Data science (SciPy) allows at most 4 CPUs."
    )
    assert (
        rejected({"image": "scipy", "memory": "16"}, menu)
        == "Data science (SciPy) allows at most 8Gi of memory."
    )
    assert (
        rejected({"image": "minimal", "cpu": "4"}, menu) == "Minimal Python allows at most 2 CPUs."
    )
    at_limit = check_choice({"image": "scipy", "cpu": "4", "memory": "8"}, menu)
    assert (at_limit.cpu, at_limit.memory_gib) == (4.0, 8)


# --- a choice that no longer fits ----------------------------------------------------------


def test_a_pinned_node_that_filled_up_says_where_there_is_room():
    options = {
        "image": "pytorch-cuda",
        "where": "node:gpu-a",
        "cpu": "8",
        "memory": "32",
        "gpus": "2",
    }
    before = lab_menu(pods=[p for p in lab_pods() if p["metadata"]["name"] != "train-big"])
    assert check_choice(options, before).node == "gpu-a"
    fresh = lab_menu()  # train-big took all four A100s of gpu-a meanwhile
    assert rejected(options, fresh) == (
        "gpu-a has no room for 4 CPU and 32 GiB with 2 GPUs (needs 2 GPUs, 0 free). "
        "4 are free on gpu-b."
    )


def test_a_model_that_filled_up_names_a_model_with_room():
    options = {
        "image": "pytorch-cuda",
        "where": "gpu:nvidia-geforce-rtx-4090",
        "cpu": "4",
        "memory": "16",
        "gpus": "1",
    }
    assert check_choice(options, lab_menu()).placement.key == "gpu:nvidia-geforce-rtx-4090"
    fresh = lab_menu(pods=[*lab_pods(), pod("gpu-node-3", "train-2", "1", "1Gi", gpus=1)])
    assert rejected(options, fresh) == (
        "No RTX 4090 is free now. NVIDIA A100 SXM4 80GB has room: choose it, or fewer GPUs."
    )


def test_a_pinned_node_short_of_gpus_points_to_another_node_of_the_model():
    options = {"image": "pytorch-cuda", "where": "node:gpu-a", "gpus": "4"}
    pods = [p for p in lab_pods() if p["metadata"]["name"] != "train-big"]
    pods += [pod("gpu-a", "one", "1", "1Gi", gpus=1), pod("gpu-b", "two", "1", "1Gi", gpus=2)]
    assert rejected(options, lab_menu(pods=pods)) == (
        "gpu-a has no room for 1 CPU and 8 GiB with 4 GPUs (needs 4 GPUs, 3 free). "
        "No GPU node has room for 1 CPU and 8 GiB with 4 GPUs right now."
    )
    pods = [p for p in lab_pods() if p["metadata"]["name"] != "train-big"] + [
        pod("gpu-a", "one", "1", "1Gi", gpus=1)
    ]
    assert (
        rejected(options, lab_menu(pods=pods))
        == "gpu-a has no room for 1 CPU and 8 GiB with 4 GPUs (needs 4 GPUs, 3 free). "
        "4 are free on gpu-b."
    )


def test_cpu_and_memory_that_fit_nowhere_are_rejected_with_the_room_there_is():
    menu = lab_menu(nodes=[make_node("cpu-node-1", 16, 64, None, 1)], pods=lab_pods())
    menu.images.append(BASE_IMAGE)
    assert rejected({"image": "base", "cpu": "32"}, menu) == (
        "No node has room for 16 CPU and 8 GiB right now; choose fewer CPUs or less memory."
    )
    assert rejected({"image": "base", "memory": "128"}, menu) == (
        "No node has room for 1 CPU and 128 GiB right now; choose fewer CPUs or less memory."
    )
    assert check_choice({"image": "base", "cpu": "16", "memory": "32"}, menu).cpu == 16.0


def test_gpu_taint_is_the_only_one_tolerated_for_gpu_servers():
    nodes = [
        taint(make_node("gpu-dedicated", 64, 512, H100, 1), "team", "vision"),
        make_node("gpu-open", 64, 512, A100, 2),
        make_node("rtx", 32, 128, RTX4090, 3),
        make_node("ts", 16, 64, RTX3090_SHARED, 4),
    ]
    menu = lab_menu(nodes=nodes, pods=[])
    placements = by_key(menu)
    assert (placements["node:gpu-dedicated"].disabled, placements["node:gpu-dedicated"].reason) == (
        True,
        "tainted team=vision:NoSchedule, not tolerated",
    )
    h100 = placements["gpu:nvidia-h100-80gb-hbm3"]
    assert (h100.taking, h100.frontier, h100.disabled) == (0, [], True)
    assert h100.reason == (
        "no node takes this server (1 node: tainted team=vision:NoSchedule, not tolerated)"
    )
    assert rejected(
        {"image": "pytorch-cuda", "where": "gpu:nvidia-h100-80gb-hbm3", "gpus": "1"}, menu
    ) == (
        "NVIDIA H100 80GB HBM3 servers cannot start here: no node takes this server "
        "(1 node: tainted team=vision:NoSchedule, not tolerated)."
    )
    tolerant = lab_menu(
        nodes=nodes,
        pods=[],
        settings=MenuSettings(
            pod=PodTemplate(PodSettings(gpu_taint_keys=("nvidia.com/gpu", "team")))
        ),
    )
    assert not by_key(tolerant)["node:gpu-dedicated"].disabled
    assert (
        check_choice(
            {"image": "pytorch-cuda", "where": "gpu:nvidia-h100-80gb-hbm3", "gpus": "8"}, tolerant
        ).gpus
        == 8
    )
    # GPU nodes carry the GPU taint: no CPU-only placement reaches them
    assert placements["cpu"].frontier == [] and placements["cpu"].taking == 0


def test_the_admins_own_tolerations_open_a_dedicated_pool():
    """z2jh's dedicated user nodes: tainted hub.jupyter.org/dedicated=user:NoSchedule, which
    z2jh's default user tolerations tolerate. Every placement there is offered."""
    dedicated = {
        "key": "hub.jupyter.org/dedicated",
        "operator": "Equal",
        "value": "user",
        "effect": "NoSchedule",
    }
    nodes = [
        taint(make_node("user-1", 16, 64, None, 1), "hub.jupyter.org/dedicated", "user"),
        taint(make_node("user-gpu", 64, 512, A100, 2), "hub.jupyter.org/dedicated", "user"),
    ]
    bare = by_key(lab_menu(nodes=nodes, pods=[]))
    assert all(p.disabled for p in bare.values())
    template = PodTemplate.of({"tolerations": [dedicated]}, PodSettings())
    menu = lab_menu(nodes=nodes, pods=[], settings=MenuSettings(pod=template))
    placements = by_key(menu)
    assert not any(p.disabled for p in placements.values())
    assert [r["node"] for r in placements["cpu"].frontier] == ["user-1"]
    assert check_choice({"image": "pytorch-cuda", "where": A100_KEY, "gpus": "4"}, menu).gpus == 4
