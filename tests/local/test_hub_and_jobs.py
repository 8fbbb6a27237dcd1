"""A GPU-queue job and notebook servers on one machine, through a real `thinkube hub`: a job
run by LocalJobs holds its cores in the claims folder the hub shares with the service, and
a spawn gets another core, or is told that none is free. (This machine's NVML lists no
GPU, so the service offers none: cores are the devices shared here; GPUs go through the
same claims, tested in tests/jobs/test_local_jobs.py.)"""

from __future__ import annotations

import os
import shutil
import tempfile
from html import unescape
from pathlib import Path
from urllib.parse import urljoin

import pytest

from hub_service.jobs.local import LocalJobs, LocalJobSettings
from hub_service.jobs.spec import JobRequest
from hub_service.local import host_snapshot, machine_document
from tests.e2e.test_thinkube_spawner import form_fields
from tests.local.hubproc import local_hub, option, server_processes
from tests.utils import eventually
from thinkube_core.device_claims import DeviceClaims

CORES = sorted(os.sched_getaffinity(0))


def job_request(cpu: int) -> JobRequest:
    return JobRequest(
        script="import time; time.sleep(120)",
        script_name="hold.py",
        expected_s=120,
        gpus=0,
        gpu_model=None,
        gpu_resource="nvidia.com/gpu",
        cpu=cpu,
        memory=1 << 30,
        image={"name": "local"},
        name="",
        project="",
    )


@pytest.mark.skipif(len(CORES) < 2, reason="needs at least 2 CPU cores to share")
async def test_a_spawn_never_gets_a_core_a_job_holds(tmp_path):
    async with local_hub(tmp_path / "hub") as hub:
        claims = DeviceClaims(hub.data_dir / "claims")  # what `thinkube hub` gives both
        # As root, the job's account is made with the hub's test prefix (deleted with the
        # hub's accounts), its home in a folder other accounts may pass through.
        homes = Path(tempfile.mkdtemp(prefix="thinkube-job-homes-"))
        os.chmod(homes, 0o755)
        jobs = LocalJobs(
            tmp_path / "jobs",
            gpus_in_use=set,
            machine=lambda: machine_document(host_snapshot(), {}, []),
            ended=lambda entry_id, ending: _nothing(),
            claims=claims,
            settings=LocalJobSettings(
                account_prefix=hub.account_prefix or "jupyter-", account_home_root=str(homes)
            ),
        )
        entry = {"id": "j-holds", "user": "judy"}
        record = {}
        try:
            record = await jobs.start(entry, job_request(len(CORES) - 1), "this-machine")
            held = set(record["cores"])
            assert len(held) == len(CORES) - 1

            # The form shows them taken once the service has read the claims ...
            erin = await hub.login("erin")

            async def counted():
                html = await hub.form(erin)
                return html if f"{len(CORES)} CPUs (1 free)" in unescape(html) else None

            html = await eventually(counted, within=30, interval=0.5)
            # ... and the spawn gets the one core no job holds.
            fields = {**form_fields(html), option("cpu"): "1", option("memory"): "2"}
            response = await erin.post(
                urljoin(hub.url, "hub/spawn"), data={**fields, "_xsrf": hub.xsrf(erin)}
            )
            assert response.status_code == 200
            await hub.server(erin, "erin")
            cores = set((await hub.allocation("erin"))["cores"])
            assert cores == set(CORES) - held
            assert set(server_processes(hub, "erin")[0].cpu_affinity()) == cores
            server_claim = claims.get("server", "erin/")
            assert server_claim.pid == server_processes(hub, "erin")[0].pid

            # Every core held (the job's and erin's): the next spawn is told so.
            frank = await hub.login("frank")
            response = await frank.post(
                urljoin(hub.url, "hub/spawn"),
                data={**fields, "_xsrf": hub.xsrf(frank)},
            )
            text = unescape(response.text)
            assert "CPU core" in text and "free" in text or "No node has room" in text, text[-2000:]
            assert server_processes(hub, "frank") == []
            assert claims.get("server", "frank/") is None

            # Stopping erin's server releases its core.
            await hub.stop_server(erin, "erin")
            assert claims.get("server", "erin/") is None
            assert [c.id for c in claims.current()] == ["j-holds"]
        finally:
            await jobs.stop({**entry, "placement": record}, "test")
            await jobs.close()
            shutil.rmtree(homes, ignore_errors=True)
        assert claims.get("job", "j-holds") is None


async def _nothing() -> None:
    return None
