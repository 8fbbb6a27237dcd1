"""The stand-in's pods end as containers do: every process in them, also one that left the
pod's process group (a program that starts its children in sessions of their own, as the
job runner does), and one that holds the pod's output open."""

from __future__ import annotations

import psutil

from tests.runpod.test_fake_logs import create_pod, reaches
from tests.utils import eventually


async def test_terminating_a_pod_ends_the_processes_that_left_its_group(runpod_fake, tmp_path):
    pid_file = tmp_path / "child.pid"
    pod_id = await create_pod(
        runpod_fake,
        f"""
        import signal, subprocess, sys, time
        child = subprocess.Popen(
            [sys.executable, "-c", "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(300)"],
            start_new_session=True,
        )
        open({str(pid_file)!r}, "w").write(str(child.pid))
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        print("started", flush=True)
        time.sleep(300)
        """,
    )
    await reaches(runpod_fake, pod_id, "RUNNING")

    async def child_started():
        return pid_file.exists() and pid_file.read_text()

    child = psutil.Process(int(await eventually(child_started, within=20)))
    assert child.is_running()
    await runpod_fake.terminate(pod_id)  # both ignore SIGTERM: the grace, then SIGKILL
    assert pod_id in runpod_fake.terminated and runpod_fake.pods == {}
    assert not child.is_running() or child.status() == psutil.STATUS_ZOMBIE
