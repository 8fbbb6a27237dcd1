"""The local inventory's documents (pure), their fit with the shared menu, and
LocalInventory itself on this machine."""

from __future__ import annotations

import json
import os
from pathlib import Path

import psutil

from hub_service.local import (
    LocalInventory,
    allocations_from_users,
    allocations_with_claims,
    host_snapshot,
    machine_document,
)
from hub_service.nodes import summary_document
from thinkube_core.allocation import STATE_KEY as ALLOCATION_STATE
from thinkube_core.device_claims import Claim, DeviceClaims
from thinkube_spawner.menu import MenuSettings, build_menu, check_choice
from thinkube_spawner.shaping import PodSettings, PodTemplate

GIB = 1024**3
RECORDS = json.loads((Path(__file__).parent / "data" / "nvml_records.json").read_text())
HOST = {
    "hostname": "workstation",
    "cores": list(range(8)),
    "load_average": [0.5, 0.4, 0.3],
    "cpu_percent": 3.0,
    "memory_total": 64 * GIB,
    "memory_available": 60 * GIB,
}
SETTINGS = MenuSettings(
    cpu_choices=(1, 2, 4, 8),
    memory_choices_gib=(2, 4, 8, 16, 32),
    gpu_choices=(0, 1, 2),
    cpu_guarantee_ratio=1.0,
    mem_guarantee_ratio=1.0,
    max_nodes_listed=1,
    pod=PodTemplate(PodSettings(match_gpu_product=False)),  # as ThinkubeLocalSpawner's
)
IMAGES = [{"name": "local", "display_name": "Local", "default": True, "metadata": {}}]


def user(
    name: str, options: dict | None, stopped: bool = False, allocation: dict | None = None
) -> dict:
    """A hub API user model; `allocation` is what the spawner recorded in the server's state."""
    server = {"stopped": stopped, "user_options": options}
    if allocation is not None:
        server["state"] = {ALLOCATION_STATE: allocation}
    return {"name": name, "servers": {"": server}}


def test_allocations_read_from_the_hubs_servers():
    users = [
        user(
            "alice",
            {"cpu": "2", "memory": "8", "gpus": "1"},
            allocation={"cores": [6, 7], "gpus": ["GPU-a"], "memory_gib": 8},
        ),
        user("bob", {"cpu": "4", "memory": "16", "gpus": "0"}),  # still starting: no pick yet
        user("carol", {"cpu": "1", "memory": "2"}, stopped=True),
        user("eve", {}, allocation={"cores": [-1, "x", True, 3], "gpus": [1, "GPU-b"]}),
        # what a user writes in their options is not an allocation
        user("mallory", {"allocation": {"cores": [0], "gpus": ["GPU-a"]}}),
        {"name": "no-servers"},
        "not a user",
    ]
    assert allocations_from_users(users) == [
        {
            "user": "alice",
            "server": "",
            "cores": [6, 7],
            "gpus": ["GPU-a"],
            "memory": 8 * GIB,
            "cpu_unpinned": 0,
            "gpus_unpinned": 0,
        },
        {
            "user": "bob",
            "server": "",
            "cores": [],
            "gpus": [],
            "memory": 16 * GIB,
            "cpu_unpinned": 4,
            "gpus_unpinned": 0,
        },
        {
            "user": "eve",
            "server": "",
            "cores": [3],
            "gpus": ["GPU-b"],
            "memory": 0,
            "cpu_unpinned": 0,
            "gpus_unpinned": 0,
        },
        {
            "user": "mallory",
            "server": "",
            "cores": [],
            "gpus": [],
            "memory": 0,
            "cpu_unpinned": 0,
            "gpus_unpinned": 0,
        },
    ]


def test_no_gpu_machine_document_and_menu():
    node = machine_document(HOST, RECORDS["no_library"], [])
    assert node["capacity"] == {"cpu": 8.0, "memory": 64 * GIB, "gpu": 0}
    assert node["available"] == node["capacity"] and node["gpu"] is None
    assert node["local"]["gpu_status"].startswith("no NVIDIA GPU: the NVML library")
    menu = build_menu([node], summary_document([node]), IMAGES, SETTINGS)
    assert [p.key for p in menu.placements] == ["cpu", "node:workstation"]
    choice = check_choice({"cpu": "8", "memory": "32", "gpus": "0"}, menu)
    assert choice.cpu_request == 8


def test_taken_cores_memory_and_gpus_are_subtracted():
    nvml = RECORDS["workstation_two_models"]
    allocations = allocations_from_users(
        [
            user(
                "alice",
                {"memory": "8"},
                allocation={
                    "cores": [6, 7],
                    "gpus": ["GPU-5a3c1e2f-8b1d-4c7e-9f2a-6d0e4b7c1a90"],
                    "memory_gib": 8,
                },
            ),
            user("bob", {"cpu": "2", "memory": "4", "gpus": "1"}),  # starting
        ]
    )
    node = machine_document(HOST, nvml, allocations)
    assert node["allocated"] == {"cpu": 4.0, "memory": 12 * GIB, "gpu": 2}
    assert node["available"] == {"cpu": 4.0, "memory": 52 * GIB, "gpu": 1}
    assert node["local"]["cores_taken"] == [6, 7]
    resources = {
        r["name"]: (r["model"], r["allocatable"], r["free"]) for r in node["gpu"]["resources"]
    }
    assert resources == {
        "nvidia.com/gpu.nvidia-geforce-rtx-4090": ("NVIDIA GeForce RTX 4090", 2, 0),
        "nvidia.com/gpu.nvidia-geforce-rtx-3090": ("NVIDIA GeForce RTX 3090", 1, 1),
    }
    assert [d["available"] for d in node["gpu_details"]] == [False, True, True]
    summary = summary_document([node])
    assert summary["gpus"] == {"physical": 3, "schedulable": 3, "free": 1}
    menu = build_menu([node], summary, IMAGES, SETTINGS)
    placements = {p.key: p for p in menu.placements}
    assert placements["gpu:nvidia-geforce-rtx-4090@gpu-nvidia-geforce-rtx-4090"].disabled
    three = placements["gpu:nvidia-geforce-rtx-3090@gpu-nvidia-geforce-rtx-3090"]
    assert not three.disabled
    choice = check_choice({"where": three.key, "cpu": "4", "memory": "16", "gpus": "1"}, menu)
    assert choice.placement.gpu_model == "NVIDIA GeForce RTX 3090"


def test_one_model_uses_the_plain_gpu_resource():
    nvml = {"devices": RECORDS["workstation_two_models"]["devices"][:2]}
    node = machine_document(HOST, nvml, [])
    assert [r["name"] for r in node["gpu"]["resources"]] == ["nvidia.com/gpu"]
    menu = build_menu([node], summary_document([node]), IMAGES, SETTINGS)
    assert "gpu:nvidia-geforce-rtx-4090" in [p.key for p in menu.placements]


def test_overbooked_allocation_never_goes_negative():
    allocations = [
        {
            "user": "x",
            "server": "",
            "cores": [],
            "gpus": [],
            "memory": 100 * GIB,
            "cpu_unpinned": 99,
            "gpus_unpinned": 5,
        }
    ]
    node = machine_document(HOST, RECORDS["gb10_memory_not_supported"], allocations)
    assert node["available"] == {"cpu": 0.0, "memory": 0, "gpu": 0}


RTX4090 = "GPU-5a3c1e2f-8b1d-4c7e-9f2a-6d0e4b7c1a90"
RTX4090_B = "GPU-0f6e2d41-77c2-4b8a-a1d3-2c5e9b8f3e11"
RTX3090 = "GPU-c2b7a9e4-1d3f-4e55-8a6b-7f0c3d2e1b48"


def test_claims_add_jobs_and_the_picks_of_starting_servers():
    allocations = allocations_from_users(
        [
            user("alice", {"memory": "8"}, allocation={"cores": [7], "gpus": [], "memory_gib": 8}),
            user("bob", {"cpu": "2", "memory": "4", "gpus": "1"}),  # starting, no pick in state
        ]
    )
    claims = [
        Claim("server", "alice/", "alice", 10, None, (7,), (), 8 * GIB),  # the same as the API's
        Claim("server", "bob/", "bob", 11, None, (5, 6), (RTX3090,), 4 * GIB),
        Claim("server", "carol/gpu", "carol", 12, None, (4,), (), 2 * GIB),  # not in the API yet
        Claim("job", "j-1", "dan", 13, None, (3,), (RTX4090,), 16 * GIB),
    ]
    merged = allocations_with_claims(allocations, claims)
    assert [(a["user"], a["server"], a.get("job"), a["cores"], a["gpus"]) for a in merged] == [
        ("alice", "", None, [7], []),
        ("bob", "", None, [5, 6], [RTX3090]),
        ("carol", "gpu", None, [4], []),
        ("dan", "", "j-1", [3], [RTX4090]),
    ]
    assert merged[1]["cpu_unpinned"] == merged[1]["gpus_unpinned"] == 0
    assert allocations[1]["cores"] == []  # the API's list is left as it was

    node = machine_document(HOST, RECORDS["workstation_two_models"], merged)
    # cores 3..7 pinned; memory 8 + 4 + 2 + 16; the job's and bob's GPUs taken, once each
    assert node["allocated"] == {"cpu": 5.0, "memory": 30 * GIB, "gpu": 2}
    assert node["local"]["cores_taken"] == [3, 4, 5, 6, 7]
    assert {g["uuid"]: g["taken"] for g in node["local"]["gpus"]} == {
        RTX4090: True,
        RTX4090_B: False,
        RTX3090: True,
    }
    assert (node["local"]["servers"], node["local"]["jobs"]) == (3, 1)


async def test_the_inventory_counts_live_claims_and_names_the_jobs_it_counts(tmp_path):
    claims = DeviceClaims(tmp_path / "claims")
    claims.claim("job", "j-7", "dan", os.getpid(), lambda c, g: ((1,), (), 2 * GIB))
    claims.keep(Claim("job", "j-gone", "eve", 2**22 + 3, 1, (2,), ()))  # its process is gone
    inventory = LocalInventory(
        hub_api_url="http://127.0.0.1:9/hub/api", api_token="t", refresh_s=60, claims=claims
    )
    await inventory.start()
    try:
        (node,) = inventory.published.documents
        # the job's core, where this process may run on core 1; the gone one's never
        assert node["local"]["cores_taken"] == ([1] if 1 in node["local"]["cores"] else [])
        assert node["local"]["jobs"] == 1
        assert dict(inventory.published.counted_jobs) == {"j-7": node["name"]}
        claims.release("job", "j-7")
        await inventory.refresh()
        assert dict(inventory.published.counted_jobs) == {}
        assert inventory.published.documents[0]["local"]["jobs"] == 0
    finally:
        await inventory.stop()


def test_this_machine():
    host = host_snapshot()
    assert host["cores"] == sorted(os.sched_getaffinity(0))
    assert host["memory_total"] == psutil.virtual_memory().total


async def test_inventory_without_the_hub_serves_this_machine_marked_stale():
    inventory = LocalInventory(
        hub_api_url="http://127.0.0.1:9/hub/api", api_token="t", refresh_s=60
    )
    await inventory.start()
    try:
        assert not inventory.ready
        assert inventory.stale_since() is not None
        assert "hub API unreachable" in inventory.not_ready_reason
        (node,) = json.loads(inventory.published.resources)
        assert node["capacity"]["cpu"] == len(os.sched_getaffinity(0))
        assert json.loads(inventory.published.summary)["nodes"]["total"] == 1
    finally:
        await inventory.stop()


def test_documents_match_the_services_openapi_schemas():
    import jsonschema

    from hub_service.handlers import OPENAPI_PATH

    components = json.loads(OPENAPI_PATH.read_text())["components"]
    allocations = allocations_from_users(
        [user("alice", {"memory": "8"}, allocation={"cores": [1], "gpus": [], "memory_gib": 8})]
    )
    for nvml in ("no_library", "workstation_two_models", "gb10_memory_not_supported"):
        node = machine_document(HOST, RECORDS[nvml], allocations)
        jsonschema.validate(node, {"$ref": "#/components/schemas/Node", "components": components})
        summary = {
            **summary_document([node]),
            "generated_at": "2026-11-23T07:00:00.000Z",
            "resource_version": "1",
            "stale": False,
            "age_seconds": 0.0,
            "metrics": {"status": "off"},
            "skipped_objects": {},
        }
        jsonschema.validate(
            summary, {"$ref": "#/components/schemas/Summary", "components": components}
        )
