"""The queue with jobs as real processes on this machine, on a real SQLite database: they
run, stream, end by themselves or are ended, and outlive a restart of the service. Each
holds its cores and GPUs in the claims folder and runs as a server would: pinned, its GPUs
by UUID, never as root (run as root, the tests give people accounts of a prefix of their
own, deleted afterwards)."""

from __future__ import annotations

import asyncio
import json
import os
import pwd
import shutil
import tempfile
import textwrap
from dataclasses import replace
from pathlib import Path

import psutil
import pytest
from sqlalchemy import create_engine

from hub_service.jobs.local import LocalJobs, LocalJobSettings
from hub_service.jobs.manager import JobQueue, QueueSettings
from hub_service.jobs.spec import JobRequest, check_submission
from hub_service.jobs.store import JobStore
from hub_service.local import machine_document
from tests.local.hubproc import AS_ROOT, delete_accounts, unique_account_prefix
from tests.local.test_gpu_isolation import shared_tree  # noqa: F401 (a fixture)
from tests.utils import eventually
from thinkube_core.accounts import account_name
from thinkube_core.device_claims import Claim, DeviceClaims

# The cores this process may run on: jobs are pinned to them.
HOST = {"hostname": "box", "cores": sorted(os.sched_getaffinity(0)), "memory_total": 16 << 30}
IMAGES = [{"name": "local", "default": True, "image": "local", "metadata": {}}]


def machine():
    return machine_document(HOST, {"status": "no GPU"}, [])


RECORDS = json.loads(
    (Path(__file__).parents[1] / "local" / "data" / "nvml_records.json").read_text()
)


@pytest.fixture
def job_settings():
    """As root: an account prefix and a home folder of the test's own, deleted afterwards."""
    if not AS_ROOT:
        yield LocalJobSettings()
        return
    prefix = unique_account_prefix()
    homes = Path(tempfile.mkdtemp(prefix="thinkube-job-homes-"))
    homes.chmod(0o755)
    try:
        yield LocalJobSettings(account_prefix=prefix, account_home_root=str(homes))
    finally:
        delete_accounts(prefix)
        shutil.rmtree(homes, ignore_errors=True)


def start_queue(tmp_path, job_settings=None, **settings) -> JobQueue:
    store = JobStore(create_engine(f"sqlite:///{tmp_path / 'service.sqlite'}"))
    holder = {}

    async def ended(entry_id, ending):
        await holder["queue"].ended(entry_id, ending)

    backend = LocalJobs(
        tmp_path / "jobs",
        gpus_in_use=set,
        machine=machine,
        ended=ended,
        claims=DeviceClaims(tmp_path / "claims"),
        settings=job_settings or LocalJobSettings(),
    )
    queue = JobQueue(
        store, backend, lambda: [machine()], QueueSettings(debounce_s=0.01, **settings)
    )
    holder["queue"] = queue
    return queue


def request(script: str, expected="60s"):
    return check_submission(
        {"expected_time": expected}, textwrap.dedent(script), IMAGES, [machine()], []
    )


async def finished(queue, entry_id, within=20):
    async def ended():
        entry = queue.store.get(entry_id)
        return entry if entry["status"] not in ("queued", "running") else None

    return await eventually(ended, within=within, interval=0.05)


async def test_a_job_runs_and_its_streams_and_exit_code_are_kept(tmp_path, job_settings):
    queue = start_queue(tmp_path, job_settings)
    await queue.start()
    try:
        job = await queue.submit(
            "alice",
            request(
                """
                import sys
                print("step 1 loss 0.9")
                print("oops", file=sys.stderr)
                print("step 2 loss 0.5")
                sys.exit(3)
                """
            ),
        )
        done = await finished(queue, job["id"])
        assert (done["status"], done["reason"], done["exit_code"]) == ("failed", "Failed", 3)
        assert done["node"] == "box"
        lines = [line async for line in queue.backend.logs(done, None, follow=False)]
        assert lines == [
            ("1.0", "stdout", "step 1 loss 0.9"),
            ("2.0", "stdout", "step 2 loss 0.5"),
            ("2.1", "stderr", "oops"),
        ]
        # resumed after the first line: nothing lost, nothing repeated
        rest = [line async for line in queue.backend.logs(done, "1.0", follow=False)]
        assert rest == lines[1:]
    finally:
        await queue.stop()


async def test_following_a_running_job_sees_lines_as_they_come(tmp_path, job_settings):
    queue = start_queue(tmp_path, job_settings)
    await queue.start()
    try:
        job = await queue.submit(
            "alice",
            request(
                """
                import time
                for i in range(3):
                    print("line", i, flush=True)
                    time.sleep(0.3)
                """
            ),
        )

        async def running():
            entry = queue.store.get(job["id"])
            return entry if entry["status"] == "running" else None

        entry = await eventually(running, within=10)
        seen = [text async for _, _, text in queue.backend.logs(entry, None, follow=True)]
        assert seen == ["line 0", "line 1", "line 2"]
        assert (await finished(queue, job["id"]))["reason"] == "Completed"
    finally:
        await queue.stop()


async def test_cancel_and_the_deadline_end_the_process_group(tmp_path, job_settings):
    queue = start_queue(tmp_path, job_settings, deadline_factor=2.0)
    await queue.start()
    try:
        sleeper = await queue.submit(
            "alice", request("import subprocess; subprocess.run(['sleep', '60'])")
        )

        async def placed():
            entry = queue.store.get(sleeper["id"])
            return entry if entry["status"] == "running" else None

        running = await eventually(placed, within=10)
        pid = running["placement"]["pid"]
        children = psutil.Process(pid).children(recursive=True)
        cancelled = await queue.cancel(running)
        assert (cancelled["status"], cancelled["reason"]) == ("cancelled", "Cancelled")
        assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
        assert not any(c.is_running() and c.status() != psutil.STATUS_ZOMBIE for c in children)
        again = await queue.cancel(queue.store.get(sleeper["id"]))  # idempotent
        assert again["status"] == "cancelled"

        late = await queue.submit("bob", request("import time; time.sleep(60)", expected="1s"))
        ended = await finished(queue, late["id"], within=30)
        assert (ended["status"], ended["reason"]) == ("failed", "DeadlineExceeded")
        assert ended["finished_at"] - ended["started_at"] >= 2.0
    finally:
        await queue.stop()


async def test_a_restarted_service_follows_what_runs_and_loses_nothing(tmp_path, job_settings):
    queue = start_queue(tmp_path, job_settings)
    await queue.start()
    job = await queue.submit("alice", request("import time; time.sleep(1.5); print('done')"))
    queued_behind = await queue.submit("bob", request("print('later')"))

    async def running():
        return queue.store.get(job["id"])["status"] == "running"

    await eventually(running, within=10)
    await queue.stop()  # the service goes; the job goes on
    pid = queue.store.get(job["id"])["placement"]["pid"]
    assert psutil.pid_exists(pid)

    restarted = start_queue(tmp_path, job_settings)
    await restarted.start()
    try:
        done = await finished(restarted, job["id"])
        assert (done["status"], done["exit_code"]) == ("completed", 0)
        assert (await finished(restarted, queued_behind["id"]))["status"] == "completed"
    finally:
        await restarted.stop()


async def test_a_job_whose_process_vanished_while_the_service_was_away_is_lost(
    tmp_path, job_settings
):
    queue = start_queue(tmp_path, job_settings)
    await queue.start()
    job = await queue.submit("alice", request("import time; time.sleep(60)"))

    async def running():
        return queue.store.get(job["id"])["status"] == "running"

    await eventually(running, within=10)
    await queue.stop()
    pid = queue.store.get(job["id"])["placement"]["pid"]
    os.killpg(pid, 9)  # gone without writing its exit code
    await asyncio.sleep(0.2)
    restarted = start_queue(tmp_path, job_settings)
    await restarted.start()
    try:
        lost = await finished(restarted, job["id"])
        assert (lost["status"], lost["reason"]) == ("lost", "Lost")
    finally:
        await restarted.stop()


@pytest.mark.parametrize("field", ["script"])
def test_nothing_is_queued_for_a_refused_submission(tmp_path, field):
    from hub_service.jobs.spec import JobError

    with pytest.raises(JobError):
        request("")
    store = JobStore(create_engine(f"sqlite:///{tmp_path / 's.sqlite'}"))
    assert store.active() == []


# --- a job as a server runs: its own cores and GPUs, the person's account, isolated ---------

JOB_PROBE = """
import json, os, sys
devices = {}
for minor in range(3):
    try:
        open(os.path.join(DEV, f"nvidia{minor}")).close()
        devices[f"nvidia{minor}"] = "opens"
    except OSError as err:
        devices[f"nvidia{minor}"] = type(err).__name__
print(json.dumps({
    "argv0": sys.argv[0],
    "uid": os.getuid(),
    "euid": os.geteuid(),
    "cores": sorted(os.sched_getaffinity(0)),
    "cuda": os.environ.get("CUDA_VISIBLE_DEVICES"),
    "job_id": os.environ.get("THINKUBE_JOB_ID"),
    "environment": sorted(os.environ),
    "cwd": os.getcwd(),
    "devices": devices,
    "driver_gpus": sorted(os.listdir(GPUS)),
}))
"""


def gpu_machine(uuids):
    """This machine's node document with the sample driver tree's GPUs as NVML would list
    them (two of one model)."""
    records = {
        "status": "NVML found 2 GPU(s)",
        "devices": [
            {**device, "uuid": uuid}
            for device, uuid in zip(
                RECORDS["workstation_two_models"]["devices"][:2], uuids, strict=True
            )
        ],
    }
    return machine_document(HOST, records, [])


def gpu_request(script: str, gpus: int = 1) -> JobRequest:
    return JobRequest(
        script=script,
        script_name="train.py",
        expected_s=60,
        gpus=gpus,
        gpu_model=None,
        gpu_resource="nvidia.com/gpu",
        cpu=1,
        memory=2 << 30,
        image={"name": "local"},
        name="",
        project="",
    )


async def test_a_job_gets_a_gpu_no_server_holds_and_runs_isolated_as_its_person(
    tmp_path,
    job_settings,
    shared_tree,  # noqa: F811 (the imported fixture)
    monkeypatch,
):
    from tests.local.test_gpu_isolation import UUIDS

    monkeypatch.setenv("RUNPOD_API_KEY", "secret-of-the-service")
    monkeypatch.setenv("JUPYTERHUB_API_TOKEN", "token-of-the-service")
    claims = DeviceClaims(tmp_path / "claims")
    endings = []

    async def ended(entry_id, ending):
        endings.append((entry_id, ending))

    settings = LocalJobSettings(
        account_prefix=job_settings.account_prefix,
        account_home_root=job_settings.account_home_root,
        gpu_isolation="required",
        nvidia_proc_dir=str(shared_tree.gpus),
        nvidia_dev_dir=str(shared_tree.dev),
    )
    backend = LocalJobs(
        tmp_path / "jobs",
        gpus_in_use=set,
        machine=lambda: gpu_machine(UUIDS[:2]),
        ended=ended,
        claims=claims,
        settings=settings,
    )
    # A notebook server holds the first GPU and the highest core.
    server = Claim(
        "server", "alice/", "alice", os.getpid(), None, (HOST["cores"][-1],), (UUIDS[0],)
    )
    claims.keep(server)
    probe = (
        f"DEV, GPUS = {str(shared_tree.dev)!r}, {str(shared_tree.gpus)!r}\n"
        + JOB_PROBE
        + "import time; time.sleep(1)\n"
    )
    record = await backend.start({"id": "j-gpu", "user": "bob"}, gpu_request(probe), "box")
    try:
        held = claims.get("job", "j-gpu")
        assert (held.pid, held.gpus, held.user) == (record["pid"], (UUIDS[1],), "bob")
        assert record["gpus"] == [UUIDS[1]] and record["cores"] == list(held.cores)
        assert not set(held.cores) & set(server.cores) or len(HOST["cores"]) == 1

        async def done():
            return endings or None

        await eventually(done, within=30, interval=0.05)
    finally:
        await backend.close()
    assert endings == [("j-gpu", endings[0][1])] and endings[0][1].reason == "Completed", (
        tmp_path / "jobs" / "j-gpu" / "stderr.log"
    ).read_text()
    seen = json.loads((tmp_path / "jobs" / "j-gpu" / "stdout.log").read_text())
    if AS_ROOT:
        account = pwd.getpwnam(account_name("bob", job_settings.account_prefix))
        assert seen["uid"] == seen["euid"] == account.pw_uid != 0
        assert seen["cwd"] == account.pw_dir
        assert record["account"] == account.pw_name
    else:
        assert seen["uid"] == os.geteuid() and record["account"] is None
    assert seen["argv0"] == "train.py"
    assert seen["cores"] == record["cores"]
    assert seen["cuda"] == UUIDS[1] and seen["job_id"] == "j-gpu"
    # Only its own GPU's device file opens; the driver folder lists only its GPU.
    assert seen["devices"] == {"nvidia0": "PermissionError", "nvidia1": "opens",
                               "nvidia2": "PermissionError"}  # fmt: skip
    assert seen["driver_gpus"] == ["0000:19:00.0"]
    assert not {"RUNPOD_API_KEY", "JUPYTERHUB_API_TOKEN"} & set(seen["environment"])
    assert claims.get("job", "j-gpu") is None  # released when it ended
    assert claims.current() == [claims.get("server", "alice/")]


async def test_a_job_finding_every_gpu_held_does_not_start_and_claims_nothing(
    tmp_path, job_settings
):
    claims = DeviceClaims(tmp_path / "claims")
    uuids = ["GPU-aaaaaaaa-0000-4000-8000-000000000000", "GPU-bbbbbbbb-1111-4111-8111-111111111111"]
    claims.keep(Claim("server", "alice/", "alice", os.getpid(), None, (), tuple(uuids)))

    async def ended(entry_id, ending):
        raise AssertionError("nothing started, nothing ends")

    backend = LocalJobs(
        tmp_path / "jobs",
        gpus_in_use=set,
        machine=lambda: gpu_machine(uuids),
        ended=ended,
        claims=claims,
        settings=job_settings,
    )
    with pytest.raises(RuntimeError, match="1 GPU\\(s\\) asked for, fewer free now"):
        await backend.start({"id": "j-none", "user": "bob"}, gpu_request("print(1)"), "box")
    assert claims.get("job", "j-none") is None
    assert not (tmp_path / "jobs" / "j-none" / "stdout.log").exists()


async def test_a_restarted_service_keeps_a_running_jobs_claim(tmp_path, job_settings):
    queue = start_queue(tmp_path, job_settings)
    await queue.start()
    job = await queue.submit("alice", request("import time; time.sleep(2)"))

    async def running():
        entry = queue.store.get(job["id"])
        return entry if entry["status"] == "running" else None

    entry = await eventually(running, within=10)
    await queue.stop()
    claims = queue.backend.claims
    claims.release("job", job["id"])  # as if the claims folder had been lost meanwhile
    restarted = start_queue(tmp_path, job_settings)
    await restarted.start()
    try:
        held = claims.get("job", job["id"])
        assert held.pid == entry["placement"]["pid"]
        assert list(held.cores) == entry["placement"]["cores"]
        assert (await finished(restarted, job["id"]))["status"] == "completed"
        assert claims.get("job", job["id"]) is None
    finally:
        await restarted.stop()


async def test_a_job_whose_cores_a_server_took_since_the_plan_keeps_its_place(
    tmp_path, job_settings
):
    """The plan saw free cores; a server claimed them all before the job started: the job
    waits, queued, and starts once they are free again."""
    queue = start_queue(tmp_path, job_settings)
    claims = queue.backend.claims
    server = Claim("server", "alice/", "alice", os.getpid(), None, tuple(HOST["cores"]), ())
    claims.keep(server)
    await queue.start()
    try:
        job = await queue.submit("bob", request("print('ran')"))
        await asyncio.sleep(0.5)
        queue.poke()
        await asyncio.sleep(0.3)
        waiting = queue.store.get(job["id"])
        assert (waiting["status"], waiting["reason"]) == ("queued", None)
        claims.release("server", "alice/")
        queue.poke()
        done = await finished(queue, job["id"])
        assert (done["status"], done["exit_code"]) == ("completed", 0)
    finally:
        await queue.stop()


async def test_submissions_between_plans_have_the_places_the_next_plan_gives(tmp_path):
    """While a plan is being made, submissions answer from the last one: each new entry's
    place in its order (fair share, priority) is the one the next plan gives it."""
    queue = start_queue(tmp_path)
    queue.documents = list  # no node: nothing starts, everything waits
    users = ["ann", "ben", "ann", "cat", "ann", "ben"]
    first = [await queue.submit(u, request("print(1)")) for u in users]
    await queue.replan()
    assert queue.where(first[0])["position"] == 1

    later = [
        await queue.submit(user, replace(request("print(2)"), priority=priority))
        for user, priority in [("cat", 0), ("ann", 0), ("dan", 0), ("eve", 3), ("dan", 0)]
    ]
    provisional = {e["id"]: queue.where(e)["position"] for e in first + later}
    order = queue.waiting_order()
    assert [queue.where(e)["expected_node"] for e in later] == [None] * len(later)
    await queue.replan()
    planned = {e["id"]: queue.where(e)["position"] for e in first + later}
    assert provisional == planned
    assert order == queue.plan.order
    assert planned[later[3]["id"]] == 1  # eve's priority-3 entry first
    await queue.backend.close()


async def test_a_submission_that_could_not_start_waits_for_the_refresh_not_a_plan(tmp_path):
    """Behind one of its kind that already waits, a submission is planned with the next
    refresh (its estimates), not at once; one that could start is planned at once."""
    queue = start_queue(tmp_path, refresh_s=0.5)
    everything = len(HOST["cores"])
    await queue.start()
    try:
        holder = await queue.submit("ann", request("import time; time.sleep(30)", "5m"))
        holder_waits = replace(request("print(0)"), cpu=everything)
        await queue.next_plan(5)
        first = await queue.submit("ann", holder_waits)  # no core is free for it: it waits
        await queue.next_plan(5)
        assert queue.where(first)["position"] == 1
        plans = queue.plans_made
        second = await queue.submit("ann", holder_waits)
        await asyncio.sleep(0.2)
        assert queue.plans_made == plans  # no plan for a submission that cannot start
        assert queue.where(second) == {"position": 2, "expected_node": None, "eta": None}
        await asyncio.sleep(0.6)
        assert queue.plans_made == plans + 1  # the refresh
        assert queue.where(second)["expected_node"] is not None

        await queue.cancel(queue.store.get(holder["id"]))
        await finished(queue, first["id"], within=20)  # room again: it ran
        assert queue.store.get(first["id"])["status"] == "completed"
    finally:
        await queue.stop()


async def test_submissions_that_come_in_together_are_stored_in_one_transaction(tmp_path):
    queue = start_queue(tmp_path)
    transactions = []
    add_many = queue.store.add_many

    def counted(entries):
        transactions.append(len(entries))
        return add_many(entries)

    queue.store.add_many = counted
    users = [f"u{n % 4}" for n in range(20)]
    stored = await asyncio.gather(*(queue.submit(u, request("print(1)")) for u in users))
    assert [e["user"] for e in stored] == users  # each submission gets its own entry back
    assert len({e["id"] for e in stored}) == 20
    assert sum(transactions) == 20 and len(transactions) < 20
    assert {e["id"] for e in queue.store.active()} == {e["id"] for e in stored}
    await queue.backend.close()


def real(path) -> Path:
    return Path(os.path.realpath(path))


async def test_a_job_writes_its_artifacts_where_the_backend_reads_them(tmp_path, job_settings):
    queue = start_queue(tmp_path, job_settings)
    await queue.start()
    try:
        job = await queue.submit(
            "alice",
            request(
                """
                import os, pathlib
                out = pathlib.Path(os.environ["THINKUBE_ARTIFACTS_DIR"])
                (out / "adapter").mkdir()
                (out / "adapter" / "weights.bin").write_bytes(b"\\x00" * 1000)
                print(out)
                """
            ),
        )
        done = await finished(queue, job["id"])
        assert done["status"] == "completed", tmp_path / "jobs" / job["id"] / "stderr.log"
        folder = queue.backend.artifacts_dir(done)
        printed = (tmp_path / "jobs" / job["id"] / "stdout.log").read_text().strip()
        assert Path(printed) == folder
        assert (folder / "adapter" / "weights.bin").read_bytes() == b"\x00" * 1000
        info = folder.stat()
        if AS_ROOT:
            # In the person's own home, made by (and only open to) their account.
            account = pwd.getpwnam(account_name("alice", job_settings.account_prefix))
            home = real(account.pw_dir)
            assert folder == home / "thinkube-jobs" / job["id"]
            assert info.st_uid == account.pw_uid and info.st_mode & 0o777 == 0o700
        else:
            assert folder == real(tmp_path) / "jobs" / job["id"] / "artifacts"
            assert info.st_uid == os.geteuid() and info.st_mode & 0o777 == 0o700
        # Where a job run as the service's own user keeps them, whoever runs this test.
        assert queue.backend.artifacts_location("j-x", None) == (
            real(tmp_path) / "jobs" / "j-x" / "artifacts"
        )
    finally:
        await queue.stop()
