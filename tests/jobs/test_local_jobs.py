"""The queue with jobs as real processes on this machine, on a real SQLite database: they
run, stream, end by themselves or are ended, and outlive a restart of the service."""

from __future__ import annotations

import asyncio
import os
import textwrap

import psutil
import pytest
from sqlalchemy import create_engine

from hub_service.jobs.local import LocalJobs
from hub_service.jobs.manager import JobQueue, QueueSettings
from hub_service.jobs.spec import check_submission
from hub_service.jobs.store import JobStore
from hub_service.local import machine_document
from tests.utils import eventually

HOST = {"hostname": "box", "cores": list(range(4)), "memory_total": 16 << 30}
IMAGES = [{"name": "local", "default": True, "image": "local", "metadata": {}}]


def machine():
    return machine_document(HOST, {"status": "no GPU"}, [])


def start_queue(tmp_path, **settings) -> JobQueue:
    store = JobStore(create_engine(f"sqlite:///{tmp_path / 'service.sqlite'}"))
    holder = {}

    async def ended(entry_id, ending):
        await holder["queue"].ended(entry_id, ending)

    backend = LocalJobs(tmp_path / "jobs", gpus_in_use=set, machine=machine, ended=ended)
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


async def test_a_job_runs_and_its_streams_and_exit_code_are_kept(tmp_path):
    queue = start_queue(tmp_path)
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


async def test_following_a_running_job_sees_lines_as_they_come(tmp_path):
    queue = start_queue(tmp_path)
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


async def test_cancel_and_the_deadline_end_the_process_group(tmp_path):
    queue = start_queue(tmp_path, deadline_factor=2.0)
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


async def test_a_restarted_service_follows_what_runs_and_loses_nothing(tmp_path):
    queue = start_queue(tmp_path)
    await queue.start()
    job = await queue.submit("alice", request("import time; time.sleep(1.5); print('done')"))
    queued_behind = await queue.submit("bob", request("print('later')"))

    async def running():
        return queue.store.get(job["id"])["status"] == "running"

    await eventually(running, within=10)
    await queue.stop()  # the service goes; the job goes on
    pid = queue.store.get(job["id"])["placement"]["pid"]
    assert psutil.pid_exists(pid)

    restarted = start_queue(tmp_path)
    await restarted.start()
    try:
        done = await finished(restarted, job["id"])
        assert (done["status"], done["exit_code"]) == ("completed", 0)
        assert (await finished(restarted, queued_behind["id"]))["status"] == "completed"
    finally:
        await restarted.stop()


async def test_a_job_whose_process_vanished_while_the_service_was_away_is_lost(tmp_path):
    queue = start_queue(tmp_path)
    await queue.start()
    job = await queue.submit("alice", request("import time; time.sleep(60)"))

    async def running():
        return queue.store.get(job["id"])["status"] == "running"

    await eventually(running, within=10)
    await queue.stop()
    pid = queue.store.get(job["id"])["placement"]["pid"]
    os.killpg(pid, 9)  # gone without writing its exit code
    await asyncio.sleep(0.2)
    restarted = start_queue(tmp_path)
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
