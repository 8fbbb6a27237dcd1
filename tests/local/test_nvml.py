"""NVML readings into GPU entries, from recorded nvidia-ml-py values (no GPU needed), and
the real read on this machine (no GPU here: zero GPUs, said plainly, no error)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from hub_service.nvml import NVML_STATUS, gpus_from_records, read_nvml

RECORDS = json.loads((Path(__file__).parent / "data" / "nvml_records.json").read_text())
MIB = 1024 * 1024


def test_a_workstation_with_two_models():
    gpus = gpus_from_records(RECORDS["workstation_two_models"])
    assert [g["index"] for g in gpus] == [0, 1, 2]
    first = gpus[0]
    assert first == {
        "index": 0,
        "uuid": "GPU-5a3c1e2f-8b1d-4c7e-9f2a-6d0e4b7c1a90",
        "name": "NVIDIA GeForce RTX 4090",
        "memory_total": 25757220864 // MIB,  # 24564 MiB, as nvidia-smi shows it
        "memory_used": 1245708288 // MIB,
        "memory_free": 24511512576 // MIB,
        "utilization": 37,
        "memory_utilization": 12,
        "processes": 2,  # pid 4121 is compute and graphics: counted once
    }
    assert first["memory_total"] == 24564
    assert gpus[1]["processes"] == 0
    # Graphics processes unsupported, compute known: the compute count stands.
    assert gpus[2]["name"] == "NVIDIA GeForce RTX 3090" and gpus[2]["processes"] == 0


def test_gb10_without_memory_reports_none_not_a_guess():
    (gpu,) = gpus_from_records(RECORDS["gb10_memory_not_supported"])
    assert gpu["memory_total"] is None and gpu["memory_used"] is None
    assert gpu["memory_free"] is None
    assert gpu["utilization"] == 96 and gpu["processes"] == 1


def test_a_gpu_without_handle_or_uuid_is_left_out():
    gpus = gpus_from_records(RECORDS["device_without_handle"])
    assert [(g["index"], g["name"]) for g in gpus] == [(1, "NVIDIA H100 80GB HBM3")]


def test_no_library_is_zero_gpus():
    assert gpus_from_records(RECORDS["no_library"]) == []


@pytest.mark.parametrize(
    "device, field, expected",
    [
        ({"name": b"Tesla V100-SXM2-16GB"}, "name", "Tesla V100-SXM2-16GB"),  # pynvml < 11.515
        ({"uuid": b"GPU-1e2d3c4b-5a69-4788-9a0b-c1d2e3f4a5b6"}, "uuid", None),
        ({"memory": {"total": 1024 * MIB, "free": 1000 * MIB}}, "memory_used", 24),
        ({"memory": {"total": -1}}, "memory_total", None),
        ({"memory": {"total": float("nan")}}, "memory_total", None),
        ({"memory": "N/A"}, "memory_total", None),
        ({"utilization": {"gpu": 250}}, "utilization", None),
        ({"utilization": {"gpu": True}}, "utilization", None),
        ({}, "processes", None),
        ({"index": None}, "index", 0),
    ],
)
def test_odd_values_read_as_unknown(device, field, expected):
    raw = {"uuid": "GPU-1e2d3c4b-5a69-4788-9a0b-c1d2e3f4a5b6", **device}
    (gpu,) = gpus_from_records({"devices": [raw]})
    if field == "uuid":
        assert gpu["uuid"] == "GPU-1e2d3c4b-5a69-4788-9a0b-c1d2e3f4a5b6"
    else:
        assert gpu[field] == expected


@pytest.mark.parametrize("uuid", ["", "0", "not-a-uuid", None, 7])
def test_devices_without_a_usable_uuid_are_skipped(uuid):
    assert gpus_from_records({"devices": [{"uuid": uuid, "name": "NVIDIA A100"}]}) == []


@pytest.mark.skipif(shutil.which("nvidia-smi") is not None, reason="this machine has a GPU")
def test_this_machine_without_a_gpu_reads_zero_gpus_plainly():
    record = read_nvml()
    assert record["devices"] == [] and gpus_from_records(record) == []
    assert record["available"] is False
    assert record["status"] == NVML_STATUS["LibraryNotFound"]


@pytest.mark.gpu
@pytest.mark.skipif(shutil.which("nvidia-smi") is None, reason="needs an NVIDIA GPU")
def test_real_nvml_matches_nvidia_smi():
    import subprocess

    listed = subprocess.run(
        ["nvidia-smi", "--query-gpu=index,uuid,memory.total", "--format=csv,noheader,nounits"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    expected = [
        (int(i), u.strip(), int(m)) for i, u, m in (line.split(",") for line in listed.splitlines())
    ]
    gpus = gpus_from_records(read_nvml())
    assert [(g["index"], g["uuid"], g["memory_total"]) for g in gpus] == expected
