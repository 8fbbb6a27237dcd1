"""The jobs clients through a real hub: the `thinkube jobs` and `thinkube token` commands
as a person runs them, the Python API from inside a notebook server with the server's own
$JUPYTERHUB_API_TOKEN, and a jobs admin who sees everyone's jobs."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from urllib.parse import urljoin

import httpx
import pytest
import pytest_asyncio

from tests.local.hubproc import REPO_ROOT, local_hub, run_in_terminal
from tests.local.test_hub_accounts import start_server

pytestmark = pytest.mark.asyncio(loop_scope="module")


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def hub(tmp_path_factory):
    config = tmp_path_factory.mktemp("jobs-config") / "admins.py"
    config.write_text(
        "c = get_config()  # noqa: F821\n"
        "c.JupyterHub.load_groups = {'jobs-admins': {'users': ['carol']}}\n"
    )
    async with local_hub(tmp_path_factory.mktemp("jobs-clients"), config=config) as hub:
        yield hub


async def page_token(hub, user: str) -> str:
    """A token as the hub's Token page makes one (all of the person's permissions)."""
    browser = await hub.login(user)
    try:
        response = await hub.api(browser, "POST", f"users/{user}/tokens", json={})
        return response.json()["token"]
    finally:
        await browser.aclose()


async def thinkube(hub, token: str, *args: str, stdin: bytes | None = None):
    env = {
        **os.environ,
        "THINKUBE_HUB_URL": hub.url,
        "THINKUBE_TOKEN": token,
    }
    env.pop("JUPYTERHUB_API_TOKEN", None)
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "thinkube_spawner.cli",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env,
        cwd=str(REPO_ROOT),
    )
    out, err = await asyncio.wait_for(process.communicate(stdin), 120)
    return process.returncode, out.decode(), err.decode()


async def test_the_cli_submits_follows_and_manages_tokens(hub, tmp_path):
    first = await page_token(hub, "dora")
    code, out, err = await thinkube(hub, first, "token", "create", "--expires-in", "1h")
    assert code == 0, err
    token = out.strip()
    assert token and token not in err and "expires" in err

    script = tmp_path / "count.py"
    script.write_text(
        "import sys, time\n"
        "for n in range(3):\n"
        "    print('count', n, flush=True)\n"
        "    time.sleep(0.2)\n"
        "print('done counting', file=sys.stderr)\n"
        "sys.exit(4)\n"
    )
    code, out, err = await thinkube(
        hub,
        token,
        "jobs",
        "submit",
        str(script),
        "--expected-time",
        "1m",
        "--follow",
        "--project",
        "cli",
    )
    assert code == 4, (out, err)
    assert out.splitlines()[1:] == ["count 0", "count 1", "count 2"]
    assert "done counting" in err and "Failed, exit code 4" in err
    job_id = out.split()[0]

    code, out, _ = await thinkube(hub, token, "jobs", "ls", "--project", "cli")
    assert code == 0 and job_id in out
    code, out, _ = await thinkube(hub, token, "jobs", "result", job_id, "--json")
    result = json.loads(out)
    assert (result["exit_code"], result["stdout"]) == (4, "count 0\ncount 1\ncount 2")
    code, out, _ = await thinkube(hub, token, "jobs", "logs", job_id)
    assert "count 2" in out and "done counting" in out
    code, out, _ = await thinkube(hub, token, "jobs", "nodes")
    assert code == 0 and "GPUs free" in out
    code, out, _ = await thinkube(hub, token, "jobs", "queue")
    assert code == 0 and "queued" in out

    code, out, err = await thinkube(hub, token, "jobs", "status", "j-000000000000")
    assert code == 1 and "no job 'j-000000000000' of yours" in err and "Traceback" not in err
    code, _, err = await thinkube(hub, token, "jobs", "submit", str(script), "--expected-time", "0")
    assert code == 1 and "expected_time" in err

    code, out, _ = await thinkube(hub, first, "token", "list", "--json")
    made = [t for t in json.loads(out) if t.get("note") == "thinkube jobs"]
    assert len(made) == 1 and made[0]["expires_at"]
    scopes = made[0]["scopes"]
    assert "access:services!service=thinkube-resources" in scopes
    assert not [s for s in scopes if s.split("!")[0] in ("inherit", "tokens", "admin:users")]
    code, out, _ = await thinkube(hub, first, "token", "revoke", made[0]["id"])
    assert code == 0
    await asyncio.sleep(6)  # the service's token cache
    code, _, err = await thinkube(hub, token, "jobs", "ls")
    assert code == 1 and "authentication required" in err


async def test_a_notebook_server_submits_with_its_own_token(hub):
    browser = await start_server(hub, "erin")
    try:
        program = (
            f'{sys.executable} -c "from thinkube_core import jobs; '
            "job = jobs.submit('print(6 * 7)', expected_time=30, cpu=1); "
            "print('RESULT', job.wait(poll_s=0.3, progress=False).result()['stdout'], job.user)\""
        )
        printed = await run_in_terminal(hub, browser, "erin", program)
        assert "RESULT 42 erin" in printed, printed
    finally:
        await hub.stop_server(browser, "erin")
        await browser.aclose()


async def test_a_jobs_admin_sees_and_cancels_everyones_jobs(hub):
    owner = await page_token(hub, "frank")
    admin = await page_token(hub, "carol")
    service = urljoin(hub.url, "services/thinkube-resources/")
    async with httpx.AsyncClient(base_url=service, timeout=30) as client:
        submitted = await client.post(
            "api/v1/jobs",
            json={"script": "import time\ntime.sleep(60)\n", "expected_time": 120},
            headers={"Authorization": f"token {owner}"},
        )
        job_id = submitted.json()["id"]
        as_admin = {"Authorization": f"token {admin}"}
        listed = await client.get("api/v1/jobs", params={"user": "frank"}, headers=as_admin)
        assert [j["id"] for j in listed.json()["jobs"]] == [job_id]
        cancelled = await client.post(f"api/v1/jobs/{job_id}/cancel", headers=as_admin)
        assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled"


async def test_the_jobs_notebook_runs_against_the_hub(hub, tmp_path):
    from tests.notebooks.test_notebooks import output_text, run

    token = await page_token(hub, "gina")
    env = {"THINKUBE_HUB_URL": hub.url, "THINKUBE_TOKEN": token}
    notebook = await asyncio.to_thread(run, "gpu-jobs.ipynb", env, tmp_path, 180)
    text = output_text(notebook)
    assert "step 1\nstep 2\nstep 3" in text
    assert "completed Completed exit code 0" in text
    assert "first-job" in text and "waiting" in text
