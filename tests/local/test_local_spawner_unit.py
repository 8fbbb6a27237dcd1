"""ThinkubeLocalSpawner's pure parts: the choice applied to a local process, the form
rendered outside kubespawner, form data as user_options."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from hub_service.local import allocations_from_users, machine_document
from hub_service.nodes import summary_document
from thinkube_core.allocation import STATE_KEY as ALLOCATION_STATE
from thinkube_spawner.form import (
    machine_summary_html,
    menu_profile,
    options_from_formdata,
    render_form,
    unavailable_profile,
)
from thinkube_spawner.local import (
    LocalAllocation,
    memory_enforcement,
    pick_devices,
    process_settings,
    scope_unit_name,
)
from thinkube_spawner.menu import ChoiceError, MenuSettings, build_menu, check_choice
from thinkube_spawner.shaping import PodSettings, PodTemplate

GIB = 1024**3
RECORDS = json.loads((Path(__file__).parent / "data" / "nvml_records.json").read_text())
HOST = {
    "hostname": "ws",
    "cores": [0, 1, 2, 3],
    "memory_total": 32 * GIB,
    "memory_available": 30 * GIB,
}
SETTINGS = MenuSettings(
    cpu_choices=(1, 2, 4),
    memory_choices_gib=(2, 4, 8),
    gpu_choices=(0, 1, 2),
    cpu_guarantee_ratio=1.0,
    mem_guarantee_ratio=1.0,
    max_nodes_listed=1,
    pod=PodTemplate(PodSettings(match_gpu_product=False)),  # as ThinkubeLocalSpawner's
)
IMAGES = [{"name": "local", "display_name": "Local", "default": True, "metadata": {}}]
RTX4090 = ["GPU-5a3c1e2f-8b1d-4c7e-9f2a-6d0e4b7c1a90", "GPU-0f6e2d41-77c2-4b8a-a1d3-2c5e9b8f3e11"]


def machine(nvml="workstation_two_models", allocations=()):
    node = machine_document(HOST, RECORDS[nvml], list(allocations))
    return node, build_menu([node], summary_document([node]), IMAGES, SETTINGS)


def test_cpu_server_gets_free_cores_highest_first_and_no_gpu():
    node, menu = machine()
    choice = check_choice({"cpu": "2", "memory": "4", "gpus": "0"}, menu)
    allocation = pick_devices(choice, node, taken_cores={3}, taken_gpus=set())
    assert allocation == LocalAllocation((1, 2), (), 4, False)
    env, cmd = process_settings(allocation, ["jupyterhub-singleuser"], None, "u")
    assert env == {"CUDA_VISIBLE_DEVICES": ""} and cmd == ["jupyterhub-singleuser"]


def test_two_gpu_servers_never_share_a_gpu():
    node, menu = machine()
    model = "gpu:nvidia-geforce-rtx-4090@gpu-nvidia-geforce-rtx-4090"
    choice = check_choice({"where": model, "cpu": "1", "memory": "2", "gpus": "1"}, menu)
    first = pick_devices(choice, node, set(), set())
    second = pick_devices(choice, node, set(first.cores), set(first.gpus))
    assert first.gpus == (RTX4090[0],) and second.gpus == (RTX4090[1],)
    assert set(first.cores).isdisjoint(second.cores)
    env, _ = process_settings(second, ["x"], None, "u")
    assert env["CUDA_VISIBLE_DEVICES"] == RTX4090[1]
    with pytest.raises(
        ChoiceError, match="0 NVIDIA GeForce RTX 4090s free on this machine now, not 1"
    ) as err:
        pick_devices(choice, node, set(), set(RTX4090))
    assert err.value.capacity


def test_not_enough_cores_is_a_capacity_error():
    node, menu = machine()
    choice = check_choice({"cpu": "4", "memory": "2", "gpus": "0"}, menu)
    with pytest.raises(ChoiceError, match="3 CPU cores are free on this machine now, not 4") as err:
        pick_devices(choice, node, {0}, set())
    assert err.value.capacity


def test_the_service_sees_what_was_picked():
    node, menu = machine()
    choice = check_choice({"where": "node:ws", "cpu": "2", "memory": "8", "gpus": "2"}, menu)
    allocation = pick_devices(choice, node, set(), set())
    users = [
        {
            "name": "a",
            "servers": {
                "": {
                    "user_options": choice.as_user_options(),
                    # what the spawner keeps in its state, as the hub API shows it
                    "state": {ALLOCATION_STATE: allocation.as_dict()},
                }
            },
        }
    ]
    after = machine_document(HOST, RECORDS["workstation_two_models"], allocations_from_users(users))
    assert after["local"]["cores_taken"] == list(allocation.cores)
    assert [g["uuid"] for g in after["local"]["gpus"] if g["taken"]] == list(allocation.gpus)
    assert after["available"]["memory"] == 24 * GIB


def test_memory_is_enforced_with_a_systemd_scope():
    allocation = LocalAllocation((0,), (), 4, True)
    env, cmd = process_settings(
        allocation, ["jupyterhub-singleuser", "--debug"], "systemd-user", "thinkube-a"
    )
    assert cmd == [
        "systemd-run",
        "--user",
        "--scope",
        "--quiet",
        "--collect",
        "--unit=thinkube-a",
        "-p",
        f"MemoryMax={4 * GIB}",
        "-p",
        "MemorySwapMax=0",
        "--",
        "jupyterhub-singleuser",
        "--debug",
    ]


@pytest.mark.parametrize(
    "facts, expected",
    [
        (
            {
                "systemd_run": "/usr/bin/systemd-run",
                "systemd_booted": True,
                "cgroup2_memory": True,
                "is_root": True,
                "user_bus": False,
            },
            "systemd",
        ),
        (
            {
                "systemd_run": "/usr/bin/systemd-run",
                "systemd_booted": True,
                "cgroup2_memory": True,
                "is_root": False,
                "user_bus": True,
            },
            "systemd-user",
        ),
        (
            {
                "systemd_run": "/usr/bin/systemd-run",
                "systemd_booted": True,
                "cgroup2_memory": True,
                "is_root": False,
                "user_bus": False,
            },
            None,
        ),
        (
            {
                "systemd_run": "/usr/bin/systemd-run",
                "systemd_booted": False,
                "cgroup2_memory": True,
                "is_root": True,
                "user_bus": False,
            },
            None,
        ),
        (
            {
                "systemd_run": "/usr/bin/systemd-run",
                "systemd_booted": True,
                "cgroup2_memory": False,
                "is_root": True,
                "user_bus": False,
            },
            None,
        ),
        (
            {
                "systemd_run": "",
                "systemd_booted": True,
                "cgroup2_memory": True,
                "is_root": True,
                "user_bus": True,
            },
            None,
        ),
    ],
)
def test_memory_enforcement_where_the_machine_supports_it(facts, expected):
    assert memory_enforcement(**facts) == expected


def test_this_machine_without_systemd_is_advisory():
    # This CI machine runs without systemd as PID 1, on cgroup v1.
    if Path("/run/systemd/system").is_dir():
        pytest.skip("this machine runs systemd")
    assert memory_enforcement() is None


def test_form_data_becomes_user_options():
    formdata = {
        "profile": ["thinkube"],
        "profile-option-thinkube--cpu": ["2"],
        "profile-option-thinkube--where": ["cpu"],
        "_xsrf": ["x"],
        "profile-option-thinkube--gpus": [],
    }
    assert options_from_formdata(formdata) == {"profile": "thinkube", "cpu": "2", "where": "cpu"}
    assert options_from_formdata({}) == {"profile": "thinkube"}


def test_the_form_renders_outside_kubespawner_with_the_machine_line():
    node, menu = machine("no_library")
    before = machine_summary_html(node, memory_enforced=False)
    html = render_form(menu_profile(menu, {}), {}, before=before)
    assert html.startswith('<p id="thinkube-machine"')
    assert (
        "This machine (ws): 4 CPUs (4 free), 32 GiB memory (32 GiB free), no GPU (no NVIDIA GPU: the NVML library (libnvidia-ml.so.1) is not installed)."
        in html
    )
    assert "Memory is advisory on this machine" in html
    assert re.search(r'<select name="profile-option-thinkube--cpu"', html)
    assert '<input type="hidden" name="profile" value="thinkube">' in html
    # The JSON for the page's script keeps the menu's order, as kubespawner renders it.
    data = json.loads(re.search(r'id="thinkube-data">(.*?)</script>', html, re.S).group(1))
    assert list(data["placements"]) == ["cpu", "node:ws"]


def test_machine_line_with_gpus_and_enforced_memory_escapes_names():
    node, _ = machine()
    node["name"] = "<ws>"
    html = machine_summary_html(node, memory_enforced=True)
    assert "This machine (&lt;ws&gt;)" in html
    assert "3 GPUs (NVIDIA GeForce RTX 4090, NVIDIA GeForce RTX 3090; 3 free)" in html
    assert "Memory is enforced" in html


def test_unavailable_form_offers_nothing():
    html = render_form(
        unavailable_profile("The availability service cannot be reached (ConnectError).")
    )
    assert "The availability service cannot be reached (ConnectError)." in html
    assert "<select" not in html


def test_scope_unit_names_are_valid_for_systemd():
    assert scope_unit_name("alice", "", "42-abc") == "thinkube-alice-default-42-abc"
    assert (
        scope_unit_name("ana@lab.example", "gpu run", "1") == "thinkube-ana-lab.example-gpu-run-1"
    )
    assert len(scope_unit_name("x" * 500, "", "1")) == 200
