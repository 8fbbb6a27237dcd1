"""The claims folder the hub and the service share (thinkube_core/device_claims.py): what is
free given the claims (pure), stale claims, and many processes claiming at once."""

from __future__ import annotations

import json
import multiprocessing
import os
import subprocess
import sys

import pytest

from thinkube_core.device_claims import (
    CLAIMS_DIR_ENV,
    Claim,
    DeviceClaims,
    claim_file_name,
    claims_dir,
    held_by,
    live_claims,
    parse_claim,
    pick_cores,
    pick_gpus,
    process_alive,
    process_started,
)

GPUS = [
    {"index": 2, "uuid": "GPU-c", "name": "NVIDIA L40S"},
    {"index": 0, "uuid": "GPU-a", "name": "NVIDIA A100"},
    {"index": 1, "uuid": "GPU-b", "name": "NVIDIA L40S"},
]


# --- pure ---------------------------------------------------------------------------------


def test_cores_are_picked_highest_first_and_never_a_taken_one():
    assert pick_cores(range(8), set(), 2) == (6, 7)
    assert pick_cores(range(8), {7, 5}, 3) == (3, 4, 6)
    assert pick_cores([0, 1], {1}, 2) is None
    assert pick_cores([0, 1], {0, 1}, 0) == ()


def test_gpus_are_picked_lowest_index_first_of_those_accepted():
    assert pick_gpus(GPUS, set(), 2) == ("GPU-a", "GPU-b")
    assert pick_gpus(GPUS, {"GPU-a"}, 1) == ("GPU-b",)
    l40s = lambda g: g["name"] == "NVIDIA L40S"  # noqa: E731
    assert pick_gpus(GPUS, {"GPU-b"}, 1, l40s) == ("GPU-c",)
    assert pick_gpus(GPUS, {"GPU-b"}, 2, l40s) is None
    assert pick_gpus(GPUS, set(GPU["uuid"] for GPU in GPUS), 0) == ()


def test_what_claims_hold_leaves_out_the_holder_asking():
    claims = [
        Claim("server", "alice/", "alice", 10, cores=(6, 7), gpus=("GPU-a",)),
        Claim("job", "j-1", "bob", 11, cores=(5,), gpus=("GPU-b",)),
    ]
    assert held_by(claims) == ({5, 6, 7}, {"GPU-a", "GPU-b"})
    assert held_by(claims, besides=("server", "alice/")) == ({5}, {"GPU-b"})
    # a job and a server may share an id string: the kind tells them apart
    assert held_by(claims, besides=("job", "alice/")) == ({5, 6, 7}, {"GPU-a", "GPU-b"})


def test_stale_claims_are_told_apart_by_the_alive_check():
    claims = [Claim("job", f"j-{pid}", "bob", pid) for pid in (1, 2, 3)]
    live, stale = live_claims(claims, lambda c: c.pid != 2)
    assert [c.pid for c in live] == [1, 3] and [c.pid for c in stale] == [2]


def test_a_claim_file_is_read_back_and_odd_ones_are_refused():
    claim = Claim("job", "j-1", "bob", 42, 7, (1, 2), ("GPU-a",), 1 << 30, 5.0)
    assert parse_claim(json.dumps(claim.as_dict())) == claim
    good = claim.as_dict()
    for broken in (
        "not json",
        "[]",
        json.dumps({**good, "kind": "pod"}),
        json.dumps({**good, "pid": 0}),
        json.dumps({**good, "pid": "42"}),
        json.dumps({**good, "cores": [1, -2]}),
        json.dumps({**good, "cores": [True]}),
        json.dumps({**good, "gpus": "GPU-a"}),
        json.dumps({k: v for k, v in good.items() if k != "user"}),
    ):
        assert parse_claim(broken) is None, broken
    loose = parse_claim(json.dumps({**good, "memory": -1, "pid_started": "x"}))
    assert (loose.memory, loose.pid_started) == (0, None)


def test_file_names_fit_any_holder_id_and_differ_by_kind():
    names = {
        claim_file_name("server", "a.b@x.org/gpu run"),
        claim_file_name("job", "a.b@x.org/gpu run"),
    }
    assert len(names) == 2 and all("/" not in n and n.endswith(".json") for n in names)


def test_the_folder_comes_from_the_environment_or_the_working_directory(tmp_path, monkeypatch):
    assert claims_dir({CLAIMS_DIR_ENV: str(tmp_path / "c")}) == tmp_path / "c"
    monkeypatch.chdir(tmp_path)
    assert claims_dir({}) == tmp_path / "thinkube-claims"


# --- processes ----------------------------------------------------------------------------


def test_a_process_is_known_by_its_pid_and_start_time():
    started = process_started(os.getpid())
    assert isinstance(started, int)
    assert process_alive(Claim("job", "j", "u", os.getpid(), started))
    assert not process_alive(Claim("job", "j", "u", os.getpid(), started + 1))  # pid reused
    done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)  # fmt: skip
    gone = int(done.stdout)
    assert process_started(gone) is None or gone == os.getpid()
    assert not process_alive(Claim("job", "j", "u", gone, None))


def test_claiming_skips_what_others_hold_and_drops_stale_claims(tmp_path):
    claims = DeviceClaims(tmp_path / "claims")

    def two_of_each(cores, gpus):
        return pick_cores(range(4), cores, 2), pick_gpus(GPUS, gpus, 1), 1 << 30

    first = claims.claim("server", "alice/", "alice", os.getpid(), two_of_each)
    second = claims.claim("job", "j-1", "bob", os.getpid(), two_of_each)
    assert (first.cores, first.gpus) == ((2, 3), ("GPU-a",))
    assert (second.cores, second.gpus) == ((0, 1), ("GPU-b",))
    assert oct((tmp_path / "claims").stat().st_mode & 0o777) == "0o700"

    # the same holder claiming again replaces its own claim
    again = claims.claim("server", "alice/", "alice", os.getpid(), two_of_each)
    assert (again.cores, again.gpus) == ((2, 3), ("GPU-a",))
    assert len(claims.current()) == 2

    # a holder whose process is gone holds nothing, and its file goes at the next claim
    done = subprocess.run([sys.executable, "-c", "pass"], check=True)
    assert done.returncode == 0
    dead = Claim("job", "j-dead", "carol", 2**22 + 7, 1, (), ("GPU-c",))
    claims.keep(dead)
    assert claims.get("job", "j-dead") is not None
    assert {c.id for c in claims.current()} == {"alice/", "j-1"}
    third = claims.claim(
        "job", "j-2", "carol", os.getpid(), lambda c, g: ((), pick_gpus(GPUS, g, 1), 0)
    )
    assert third.gpus == ("GPU-c",)
    assert claims.get("job", "j-dead") is None

    # a chooser that raises claims nothing
    with pytest.raises(LookupError):
        claims.claim(
            "job", "j-3", "dan", os.getpid(), lambda c, g: (_ for _ in ()).throw(LookupError())
        )
    assert claims.get("job", "j-3") is None
    # a chooser that ignores what it is told is refused
    with pytest.raises(ValueError, match="held by another"):
        claims.claim("job", "j-4", "dan", os.getpid(), lambda c, g: ((3,), (), 0))

    claims.release("job", "j-1")
    claims.release("job", "j-1")  # twice is fine
    assert {c.id for c in claims.current()} == {"alice/", "j-2"}


def test_a_server_claim_follows_its_process_once_started(tmp_path):
    claims = DeviceClaims(tmp_path)
    claims.claim("server", "alice/", "alice", os.getpid(), lambda c, g: ((1,), (), 0))
    server = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        moved = claims.move_to("server", "alice/", server.pid)
        assert (moved.pid, moved.cores) == (server.pid, (1,))
        assert claims.current() == [moved]
    finally:
        server.kill()
        server.wait()
    assert claims.current() == []  # the server is gone: its claim is stale
    assert claims.move_to("server", "bob/", server.pid) is None


def test_keeping_a_claim_again_reports_clashes(tmp_path):
    claims = DeviceClaims(tmp_path)
    claims.claim("job", "j-1", "bob", os.getpid(), lambda c, g: ((3,), ("GPU-a",), 0))
    clashes = claims.keep(Claim("server", "alice/", "alice", os.getpid(), None, (2,), ("GPU-a",)))
    assert [c.id for c in clashes] == ["j-1"]
    assert claims.keep(Claim("server", "alice/", "alice", os.getpid(), None, (2,), ())) == []


def _claimant(folder: str, number: int, start, results) -> None:
    """One process: wait for the start, then claim one core and one GPU."""
    claims = DeviceClaims(folder)
    gpus = [{"index": i, "uuid": f"GPU-{i}", "name": "G"} for i in range(12)]
    start.wait()

    def choose(cores, taken):
        picked_cores = pick_cores(range(24), cores, 1)
        picked_gpus = pick_gpus(gpus, taken, 1)
        if picked_cores is None or picked_gpus is None:
            raise LookupError("none free")
        return picked_cores, picked_gpus, 0

    try:
        claim = claims.claim("job", f"j-{number}", "u", os.getpid(), choose)
        results.put((number, list(claim.cores), list(claim.gpus)))
    except LookupError:
        results.put((number, None, None))
    start.wait()  # hold the claim (the process lives) until every claimant is done


def test_many_processes_claiming_at_once_never_share_a_device(tmp_path):
    context = multiprocessing.get_context("fork")
    claimants = 20  # more than the 12 GPUs: some must be told none is free
    start = context.Barrier(claimants + 1)
    results = context.Queue()
    processes = [
        context.Process(target=_claimant, args=(str(tmp_path), n, start, results))
        for n in range(claimants)
    ]
    for process in processes:
        process.start()
    start.wait()  # all at once
    got = [results.get(timeout=30) for _ in processes]
    held = DeviceClaims(tmp_path).current()
    start.wait()  # let them end
    for process in processes:
        process.join(timeout=30)
    winners = [g for g in got if g[1] is not None]
    assert len(winners) == 12 and len(got) == claimants
    gpus = [g[2][0] for g in winners]
    cores = [g[1][0] for g in winners]
    assert len(set(gpus)) == 12 and len(set(cores)) == 12
    assert sorted(c.id for c in held) == sorted(f"j-{g[0]}" for g in winners)
    assert DeviceClaims(tmp_path).current() == []  # every claimant ended: all stale
