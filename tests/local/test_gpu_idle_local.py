"""Idle GPUs on one machine: the servers' GPUs (by the UUIDs ThinkubeLocalSpawner gave
them) with NVML's utilisation, from recorded NVML values, into the idle policy's decision;
and, marked `gpu`, the same with this machine's real NVML."""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path

import pytest

from hub_service.gpu_idle import ACTIVE, NO_DATA, WARNED, IdlePolicy, UsageWindow, decide
from hub_service.local import allocations_from_users, server_gpus_from
from hub_service.nvml import gpus_from_records, read_nvml
from tests.local.test_local_inventory import user
from thinkube_core.device_claims import Claim

RECORDS = json.loads((Path(__file__).parent / "data" / "nvml_records.json").read_text())
WORKSTATION = RECORDS["workstation_two_models"]
RTX4090_A = WORKSTATION["devices"][0]["uuid"]  # 37 %
RTX4090_B = WORKSTATION["devices"][1]["uuid"]  # 0 %
RTX3090 = WORKSTATION["devices"][2]["uuid"]  # 4 %
POLICY = IdlePolicy(enabled=True, threshold_percent=5, idle_seconds=60, grace_seconds=30)
STEP = 10.0


def servers_of(users: list[dict], nvml: dict, claims=()) -> dict:
    found = server_gpus_from(allocations_from_users(users), claims, nvml, "workstation")
    return {(s["user"], s["server"]): s for s in found}


USERS = [
    user("alice", {"gpus": "2"}, allocation={"cores": [0], "gpus": [RTX4090_B, RTX3090]}),
    user("bob", {"gpus": "1"}, allocation={"cores": [1], "gpus": [RTX4090_A]}),
    user("carol", {"gpus": "1"}, allocation={"cores": [2], "gpus": ["GPU-gone-0000-0000"]}),
    user("dan", {"cpu": "1"}, allocation={"cores": [3], "gpus": []}),  # no GPU
]


def test_each_servers_gpus_with_nvmls_utilisation():
    # a job holding a GPU is never among them: jobs have their deadline
    job = Claim("job", "j-1", "erin", 1, 1, (4,), (RTX4090_B,))
    servers = servers_of(USERS, WORKSTATION, claims=[job])
    assert sorted(servers) == [("alice", ""), ("bob", ""), ("carol", "")]
    alice = servers[("alice", "")]
    assert alice["gpus"] == 2 and alice["node"] == "workstation"
    assert [(r.label, r.utilization) for r in alice["readings"]] == [
        ("GPU 1 (GeForce RTX 4090)", 0),
        ("GPU 2 (GeForce RTX 3090)", 4),
    ]
    assert [r.utilization for r in servers[("bob", "")]["readings"]] == [37]
    # a GPU NVML does not show (lost, driver gone) has no utilisation: no data, never idle
    (gone,) = servers[("carol", "")]["readings"]
    assert gone.utilization is None and gone.label == "GPU-gone-0000-0000"
    # no NVML at all: every server's GPUs without data
    without = servers_of(USERS, RECORDS["no_library"])
    assert all(r.utilization is None for s in without.values() for r in s["readings"])


def test_recorded_samples_decide_as_on_kubernetes():
    """The window filled from recorded NVML readings over time: alice's two idle GPUs are
    warned after the idle time, bob's busy one never, carol's missing one is no data; when
    alice's GPU gets busy her clock starts again."""
    windows = {key: UsageWindow(keep_seconds=600) for key in [("alice", ""), ("bob", "")]}
    windows[("carol", "")] = UsageWindow(keep_seconds=600)
    now = 1_800_000_000.0
    for _ in range(8):
        now += STEP
        for key, server in servers_of(USERS, WORKSTATION).items():
            windows[key].add(now, server["readings"])
    states = {key: decide(w.samples, POLICY, now, max_gap=3 * STEP) for key, w in windows.items()}
    assert states[("alice", "")].state == WARNED
    assert states[("alice", "")].reason.startswith(
        "GPU 1 (GeForce RTX 4090) at 0 %, GPU 2 (GeForce RTX 3090) at 4 % for the last 1 min;"
    )
    assert states[("bob", "")].state == ACTIVE and states[("bob", "")].idle_since is None
    assert states[("carol", "")].state == NO_DATA

    busy = copy.deepcopy(WORKSTATION)
    busy["devices"][2]["utilization"]["gpu"] = 88
    now += STEP
    windows[("alice", "")].add(now, servers_of(USERS, busy)[("alice", "")]["readings"])
    assert decide(windows[("alice", "")].samples, POLICY, now, max_gap=3 * STEP).state == ACTIVE


def test_a_gb10_at_96_percent_is_busy():
    gb10 = RECORDS["gb10_memory_not_supported"]
    uuid = gb10["devices"][0]["uuid"]
    users = [user("alice", {"gpus": "1"}, allocation={"cores": [0], "gpus": [uuid]})]
    window = UsageWindow(keep_seconds=600)
    for n in range(10):
        window.add(1000.0 + n * STEP, servers_of(users, gb10)[("alice", "")]["readings"])
    decision = decide(window.samples, POLICY, 1000.0 + 9 * STEP, max_gap=3 * STEP)
    assert decision.state == ACTIVE and decision.ranges == {}


GPUS = gpus_from_records(read_nvml()) if shutil.which("nvidia-smi") else []


@pytest.mark.gpu
@pytest.mark.skipif(not GPUS, reason="needs an NVIDIA GPU (nvidia-smi, NVML)")
def test_this_machines_gpu_through_real_nvml():
    """A server holding this machine's first GPU: NVML gives a utilisation, the label names
    the card, and the decision is made on data (never `no-data`)."""
    first = GPUS[0]
    users = [user("alice", {"gpus": "1"}, allocation={"cores": [0], "gpus": [first["uuid"]]})]
    window = UsageWindow(keep_seconds=600)
    for n in range(3):
        servers = servers_of(users, read_nvml())
        (reading,) = servers[("alice", "")]["readings"]
        assert reading.utilization is not None and 0 <= reading.utilization <= 100
        assert reading.label.startswith(f"GPU {first['index']} (")
        window.add(1000.0 + n, [reading])
    decision = decide(window.samples, IdlePolicy(enabled=True, idle_seconds=1), 1002.0, max_gap=5)
    assert decision.state != NO_DATA
