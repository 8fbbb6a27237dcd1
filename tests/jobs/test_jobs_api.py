"""The jobs API through a real hub (`thinkube hub`: JupyterHub, its proxy and the service
it manages), with jobs run as processes on this machine: submit, follow, collect, cancel,
the deadline, what another person may not do, bad input, and the older job server's routes
as its curl commands call them."""

from __future__ import annotations

import asyncio
import json
import textwrap
from urllib.parse import urljoin

import httpx
import psutil
import pytest
import pytest_asyncio

from tests.local.hubproc import local_hub
from tests.utils import eventually

pytestmark = pytest.mark.asyncio(loop_scope="module")

SERVICE = "services/thinkube-resources/"


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def hub(tmp_path_factory):
    async with local_hub(tmp_path_factory.mktemp("jobs-hub")) as hub:
        yield hub


async def token_of(hub, user: str) -> str:
    browser = await hub.login(user)
    try:
        response = await hub.api(browser, "POST", f"users/{user}/tokens", json={})
        assert response.status_code == 201, response.text
        return response.json()["token"]
    finally:
        await browser.aclose()


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def alice(hub):
    token = await token_of(hub, "alice")
    async with httpx.AsyncClient(
        base_url=urljoin(hub.url, SERVICE), headers={"Authorization": f"token {token}"}, timeout=30
    ) as client:
        client.token = token
        yield client


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def bob(hub):
    token = await token_of(hub, "bob")
    async with httpx.AsyncClient(
        base_url=urljoin(hub.url, SERVICE), headers={"Authorization": f"Bearer {token}"}, timeout=30
    ) as client:
        yield client


def script(text: str) -> str:
    return textwrap.dedent(text).lstrip()


async def submit(client, text: str, **options) -> dict:
    response = await client.post("api/v1/jobs", json={"script": script(text), **options})
    assert response.status_code == 201, response.text
    return response.json()


async def finished(client, job_id: str, within: float = 60) -> dict:
    async def ended():
        view = (await client.get(f"api/v1/jobs/{job_id}")).json()
        return view if view["status"] not in ("queued", "running") else None

    return await eventually(ended, within=within, interval=0.2)


async def started(client, job_id: str) -> dict:
    async def running():
        view = (await client.get(f"api/v1/jobs/{job_id}")).json()
        return view if view["status"] == "running" else None

    return await eventually(running, within=30, interval=0.1)


def sse_events(text: str) -> list[dict]:
    events = []
    for block in text.split("\n\n"):
        event: dict = {}
        for line in block.splitlines():
            if line.startswith(":"):
                continue
            key, _, value = line.partition(": ")
            if key == "data":
                event["data"] = event["data"] + "\n" + value if "data" in event else value
            elif key:
                event[key] = value
        if event:
            events.append(event)
    return events


async def job_processes(job_id: str) -> list[psutil.Process]:
    found = []
    for process in psutil.process_iter(["cmdline"]):
        if any(job_id in part for part in process.info["cmdline"] or []):
            found.append(process)
    return found


async def test_a_job_runs_and_its_output_result_and_logs_come_back(alice):
    job = await submit(
        alice,
        """
        import sys
        print("hello from the job")
        print("a warning", file=sys.stderr)
        sys.exit(3)
        """,
        expected_time="1m",
        name="first",
        project="demo",
        metadata={"run": "1"},
    )
    assert job["status"] in ("queued", "running")
    assert job["user"] == "alice" and job["project"] == "demo" and job["metadata"] == {"run": "1"}
    if job["status"] == "queued":
        assert job["position"] >= 1 and job["eta"]["estimate"] is True
    view = await finished(alice, job["id"])
    assert (view["status"], view["reason"], view["exit_code"]) == ("failed", "Failed", 3)

    result = (await alice.get(f"api/v1/jobs/{job['id']}/result")).json()
    assert result["streams"] == "separate"
    assert result["stdout"] == "hello from the job"
    assert result["stderr"] == "a warning"
    assert result["exit_code"] == 3 and result["finished"] is True
    assert result["timings"]["run_seconds"] >= 0

    plain = await alice.get(f"api/v1/jobs/{job['id']}/logs", params={"follow": "false"})
    assert plain.headers["content-type"].startswith("text/plain")
    assert "hello from the job" in plain.text and "a warning" in plain.text

    stream = await alice.get(f"api/v1/jobs/{job['id']}/logs")
    assert stream.headers["content-type"].startswith("text/event-stream")
    events = sse_events(stream.text)
    lines = [(e["event"], e["data"]) for e in events if e["event"] in ("stdout", "stderr")]
    assert ("stdout", "hello from the job") in lines and ("stderr", "a warning") in lines
    end = json.loads(events[-1]["data"])
    assert events[-1]["event"] == "end" and end["exit_code"] == 3

    listed = (await alice.get("api/v1/jobs", params={"project": "demo"})).json()
    assert [j["id"] for j in listed["jobs"]] == [job["id"]] and listed["total"] == 1
    by_metadata = (await alice.get("api/v1/jobs", params={"metadata": "run=1"})).json()
    assert [j["id"] for j in by_metadata["jobs"]] == [job["id"]]
    assert (await alice.get("api/v1/jobs", params={"metadata": "run=2"})).json()["total"] == 0


async def test_logs_follow_a_running_job_and_resume_after_the_last_event(alice):
    job = await submit(
        alice,
        """
        import time
        for n in range(6):
            print(f"line {n}", flush=True)
            time.sleep(0.3)
        """,
        expected_time=60,
    )
    seen = []
    async with alice.stream("GET", f"api/v1/jobs/{job['id']}/logs") as response:
        buffer = ""
        async for chunk in response.aiter_text():
            buffer += chunk
            while "\n\n" in buffer:
                block, buffer = buffer.split("\n\n", 1)
                seen.extend(sse_events(block + "\n\n"))
            if any(e.get("data") == "line 2" for e in seen):
                break
    printed = [e for e in seen if e.get("event") == "stdout"]
    assert [e["data"] for e in printed][:3] == ["line 0", "line 1", "line 2"]
    resumed = await alice.get(
        f"api/v1/jobs/{job['id']}/logs", headers={"Last-Event-ID": printed[2]["id"]}
    )
    rest = [e["data"] for e in sse_events(resumed.text) if e.get("event") == "stdout"]
    assert rest == ["line 3", "line 4", "line 5"]


async def test_multipart_submission_with_a_script_file(alice):
    response = await alice.post(
        "api/v1/jobs",
        files={"script": ("train.py", b"print(6 * 7)\n", "text/x-python")},
        data={"expected_time": "30s", "metadata": json.dumps({"kind": "multipart"})},
    )
    assert response.status_code == 201, response.text
    job = response.json()
    assert job["script_name"] == "train.py" and job["metadata"] == {"kind": "multipart"}
    assert response.headers["location"].endswith(job["id"])
    await finished(alice, job["id"])
    result = (await alice.get(f"api/v1/jobs/{job['id']}/result")).json()
    assert (result["stdout"], result["exit_code"], result["reason"]) == ("42", 0, "Completed")


async def test_a_job_past_twice_its_expected_time_is_ended(alice):
    job = await submit(alice, "import time\ntime.sleep(60)\n", expected_time="1s")
    view = await finished(alice, job["id"], within=30)
    assert (view["status"], view["reason"]) == ("failed", "DeadlineExceeded")
    await eventually(lambda: _none_left(job["id"]), within=10)


async def _none_left(job_id: str) -> bool:
    return not await job_processes(job_id)


async def test_cancel_a_queued_and_a_running_job(alice):
    cores = psutil.cpu_count()
    holder = await submit(alice, "import time\ntime.sleep(120)\n", expected_time="5m", cpu=cores)
    await started(alice, holder["id"])
    waiting = await submit(alice, "print('never')\n", expected_time="1m", cpu=cores)
    assert waiting["status"] == "queued" and waiting["position"] == 1
    assert waiting["eta"]["starts_in_seconds"] > 0 and waiting["eta"]["basis"]
    queue = (await alice.get("api/v1/queue")).json()
    assert [j["id"] for j in queue["jobs"]] == [waiting["id"]] and queue["running"] >= 1
    past_it = (await alice.get("api/v1/queue", params={"offset": "1", "limit": "5"})).json()
    assert (past_it["queued"], past_it["jobs"], past_it["limit"]) == (1, [], 5)

    cancelled = await alice.post(f"api/v1/jobs/{waiting['id']}/cancel")
    assert cancelled.status_code == 200 and cancelled.json()["reason"] == "Cancelled"
    again = await alice.post(f"api/v1/jobs/{waiting['id']}/cancel")
    assert again.status_code == 200 and again.json()["status"] == "cancelled"  # idempotent

    assert await job_processes(holder["id"])
    stopped = (await alice.post(f"api/v1/jobs/{holder['id']}/cancel")).json()
    assert (stopped["status"], stopped["reason"]) == ("cancelled", "Cancelled")
    await eventually(lambda: _none_left(holder["id"]), within=10)


async def test_another_person_can_neither_see_nor_cancel_a_job(alice, bob):
    job = await submit(alice, "import time\ntime.sleep(30)\n", expected_time="1m")
    for response in (
        await bob.get(f"api/v1/jobs/{job['id']}"),
        await bob.get(f"api/v1/jobs/{job['id']}/result"),
        await bob.get(f"api/v1/jobs/{job['id']}/logs"),
        await bob.post(f"api/v1/jobs/{job['id']}/cancel"),
        await bob.get(f"api/status/{job['id']}"),
        await bob.post(f"api/cancel/{job['id']}"),
    ):
        assert response.status_code == 404, response.text
        assert "of yours" in response.json()["error"]
    assert (await bob.get("api/v1/jobs")).json()["total"] == 0
    refused = await bob.get("api/v1/jobs", params={"user": "alice"})
    assert refused.status_code == 403 and "your own" in refused.json()["error"]
    queue = (await bob.get("api/v1/queue")).json()
    assert all(item["id"] is None for item in queue["jobs"] if item["user"] == "alice")
    assert (await alice.get(f"api/v1/jobs/{job['id']}")).json()["status"] in ("queued", "running")
    await alice.post(f"api/v1/jobs/{job['id']}/cancel")


@pytest.mark.parametrize(
    "body, field",
    [
        ({"script": "print(1)", "expected_time": 0}, "expected_time"),
        ({"script": "print(1)", "expected_time": "400d"}, "expected_time"),
        ({"script": "print(1)", "expected_time": "soon"}, "expected_time"),
        ({"script": "print(1)"}, "expected_time"),
        ({"expected_time": 10}, "script"),
        ({"script": "print(1)", "expected_time": 10, "image": "no-such-image"}, "image"),
        ({"script": "print(1)", "expected_time": 10, "gpus": 1, "gpu_model": "Z9"}, "gpu_model"),
        ({"script": "print(1)", "expected_time": 10, "gpus": 7}, "gpus"),
        ({"script": "print(1)", "expected_time": 10, "metadata": {"k": 5}}, "metadata"),
        ({"script": 5, "expected_time": 10}, "script"),
    ],
)
async def test_bad_submissions_are_refused_and_nothing_is_queued(alice, body, field):
    before = (await alice.get("api/v1/jobs")).json()["total"]
    response = await alice.post("api/v1/jobs", json=body)
    assert response.status_code == 400, response.text
    answer = response.json()
    assert answer["field"] == field and answer["error"]
    assert "Error(" not in answer["error"] and "Traceback" not in answer["error"]
    assert (await alice.get("api/v1/jobs")).json()["total"] == before


async def test_bodies_the_route_does_not_take(alice):
    before = (await alice.get("api/v1/jobs")).json()["total"]
    too_large = await alice.post(
        "api/v1/jobs",
        json={"script": "#" * (2 << 20), "expected_time": 10},
    )
    assert too_large.status_code == 413
    not_json = await alice.post(
        "api/v1/jobs", content=b"{nope", headers={"Content-Type": "application/json"}
    )
    assert not_json.status_code == 400
    wrong_type = await alice.post(
        "api/v1/jobs", content=b"x", headers={"Content-Type": "text/plain"}
    )
    assert wrong_type.status_code == 415
    nameless = b'--b\r\nContent-Disposition: form-data; name=""\r\n\r\n1\r\n--b--\r\n'
    for route in ("api/v1/jobs", "api/submit"):
        unreadable = await alice.post(
            route, content=nameless, headers={"Content-Type": "multipart/form-data; boundary=b"}
        )
        assert unreadable.status_code == 400, unreadable.text
        assert "could not be read" in unreadable.json()["error"]
    not_a_list = await alice.get("api/submit")
    assert not_a_list.status_code == 405 and not_a_list.headers["allow"] == "POST"
    bad_page = await alice.get("api/v1/jobs", params={"limit": "0"})
    assert bad_page.status_code == 400 and bad_page.json()["field"] == "limit"
    bad_queue_page = await alice.get("api/v1/queue", params={"limit": "100000"})
    assert bad_queue_page.status_code == 400 and bad_queue_page.json()["field"] == "limit"
    bad_status = await alice.get("api/v1/jobs", params={"status": "sleeping"})
    assert bad_status.status_code == 400 and bad_status.json()["field"] == "status"
    assert (await alice.get("api/v1/jobs")).json()["total"] == before


async def test_the_older_job_servers_routes_as_its_curl_commands_call_them(hub, alice, bob):
    config = "competition_id: comp-7\nproject_id: proj-3\nuser_id: alice\nexpected_time: 30\n"
    submitted = await alice.post(
        "api/submit",
        files={
            "code": ("solution.py", b"print('compat ok')\n"),
            "config_file": ("config.yaml", config.encode()),
        },
    )
    assert submitted.status_code == 201, submitted.text
    answer = submitted.json()
    assert answer["status"] in ("pending", "running") and answer["job_id"]
    job_id = answer["job_id"]

    async def done():
        status = (await alice.get(f"api/status/{job_id}")).json()
        return status if status["status"] == "completed" else None

    status = await eventually(done, within=60, interval=0.2)
    assert status["competition_id"] == "comp-7" and status["project_id"] == "proj-3"
    assert status["node_id"]
    results = (await alice.get(f"api/results/{job_id}")).json()
    assert (results["stdout"], results["stderr"], results["exit_code"]) == ("compat ok", "", 0)
    listed = (
        await alice.get("api/jobs", params={"user_id": "alice", "status": "completed"})
    ).json()
    assert job_id in [j["job_id"] for j in listed]
    nodes = (await alice.get("api/nodes")).json()
    assert nodes and {"node_id", "gpus_free", "total_queued_time"} <= set(nodes[0])
    assert (await alice.post(f"api/cancel/{job_id}")).json()["status"] == "completed"

    # the token in the config file, as the older clients send it, with no header
    async with httpx.AsyncClient(base_url=urljoin(hub.url, SERVICE), timeout=30) as anonymous:
        with_token = await anonymous.post(
            "api/submit",
            files={
                "code": ("s.py", b"print(1)\n"),
                "config_file": ("c.yaml", (config + f"token: {alice.token}\n").encode()),
            },
        )
        assert with_token.status_code == 201, with_token.text
        no_token = await anonymous.post(
            "api/submit", files={"code": ("s.py", b"print(1)\n"), "config_file": config}
        )
        assert no_token.status_code == 401
        assert alice.token not in with_token.text
    # someone else's user_id, YAML that does not parse: refused, nothing queued
    before = (await bob.get("api/v1/jobs")).json()["total"]
    as_alice = await bob.post(
        "api/submit", files={"code": ("s.py", b"print(1)\n"), "config_file": config}
    )
    assert as_alice.status_code == 403 and "user_id" in as_alice.json()["error"]
    broken = await bob.post(
        "api/submit", files={"code": ("s.py", b"x\n"), "config_file": "a: [unclosed\n"}
    )
    assert broken.status_code == 400 and "YAML" in broken.json()["error"]
    assert (await bob.get("api/v1/jobs")).json()["total"] == before


async def test_node_statistics(alice):
    nodes = (await alice.get("api/v1/nodes")).json()["nodes"]
    assert len(nodes) == 1
    node = nodes[0]
    assert set(node["gpus"]) == {"total", "free", "busy"}
    assert node["gpus"]["free"] + node["gpus"]["busy"] == node["gpus"]["total"]
    assert node["running_jobs"] >= 0 and node["work_ahead_seconds"] >= 0


async def test_jobs_survive_a_restart_of_the_service(hub, alice):
    job = await submit(
        alice,
        """
        import time
        time.sleep(3)
        print("outlived the service")
        """,
        expected_time="1m",
    )
    await started(alice, job["id"])
    service = next(
        p
        for p in psutil.process_iter(["cmdline"])
        if "hub_service" in (p.info["cmdline"] or [])
        and str(hub.data_dir) in " ".join(p.info["cmdline"] or [])
    )
    service.kill()

    async def answering():
        try:
            response = await alice.get(f"api/v1/jobs/{job['id']}")
        except httpx.HTTPError:
            return None
        return response.json() if response.status_code == 200 else None

    await asyncio.sleep(1)
    await eventually(answering, within=60, interval=0.5)
    view = await finished(alice, job["id"], within=60)
    assert view["status"] == "completed", view
    result = (await alice.get(f"api/v1/jobs/{job['id']}/result")).json()
    assert result["stdout"] == "outlived the service"


async def test_the_page_shows_the_queue_and_the_persons_own_jobs(hub, alice):
    job = await submit(alice, "import time\ntime.sleep(30)\n", expected_time="1m", name="paged")
    await started(alice, job["id"])
    try:
        for user, sees_it in (("alice", True), ("bob", False)):
            browser = await hub.login(user)
            try:
                page = await browser.get(urljoin(hub.url, SERVICE), headers={"Accept": "text/html"})
            finally:
                await browser.aclose()
            assert page.status_code == 200
            assert "GPU jobs" in page.text and "Your jobs" in page.text
            assert (job["id"] in page.text) is sees_it
            if sees_it:
                assert f"{job['id']}/logs?follow=false" in page.text
                assert f'data-follow="/{SERVICE}api/v1/jobs/{job["id"]}/logs"' in page.text
    finally:
        await alice.post(f"api/v1/jobs/{job['id']}/cancel")
