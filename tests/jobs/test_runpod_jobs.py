"""Jobs on RunPod through the real service: a real hub (MockHub and its proxy) whose managed
service runs the queue on kubesim (one local GPU) and rents pods from the RunPod stand-in,
whose pods run their command on this machine and call back to the service through the hub's
public URL.

Every test ends with no pod of the stand-in left (`no_pod_left`)."""

from __future__ import annotations

import json
import os
import secrets
import sys
import textwrap
import time
from pathlib import Path

import httpx
import pytest
import pytest_asyncio

from tests.hub_fixtures import ACCESS_SCOPE
from tests.kubesim.generator import GPU_MODELS, make_node
from tests.kubesim.sim import free_port
from tests.runpod_fake import RunPodFake
from tests.utils import eventually

pytestmark = pytest.mark.asyncio(loop_scope="module")

L4 = GPU_MODELS[3]  # one GPU per node
RTX_4090 = "cloud:SECURE:NVIDIA GeForce RTX 4090:1"  # $0.69/h on demand
RESULT_GRACE_S = 3


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def fake():
    fake = RunPodFake(start_delay_s=0.2)
    await fake.start()
    yield fake
    await fake.stop()


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def artifacts(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("job-artifacts")


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def hub(fake, artifacts, module_kubesim, module_hub_factory, tmp_path_factory):
    sim = await module_kubesim(process_runtime=True, job_backoff_s=0.1, restart_backoff_s=0.1)
    sim.load([make_node("gpu-0", 16, 64, L4, 0)])
    port = free_port()
    config = tmp_path_factory.mktemp("service-config") / "service_config.py"
    config.write_text(
        "c = get_config()  # noqa: F821\n"
        f"c.ThinkubeService.jobs_python = {sys.executable!r}\n"
        "c.ThinkubeService.jobs_namespace = 'default'\n"
        "c.ThinkubeService.cloud_price_cap = 1.0\n"
        "c.ThinkubeService.cloud_user_price_caps = {'carol': 0.0}\n"
        "c.ThinkubeService.cloud_reaper_interval_seconds = 0\n"
        f"c.ThinkubeService.jobs_runpod_artifacts_folder = {str(artifacts)!r}\n"
        f"c.ThinkubeService.jobs_runpod_result_grace_seconds = {RESULT_GRACE_S}\n"
        "c.ThinkubeService.jobs_runpod_status_interval_seconds = 0.2\n"
    )
    hub = await module_hub_factory(
        sim=sim,
        service_args=["--config", str(config)],
        service_env=fake.env(),
        # The public URL is what the service tells its pods to call back on.
        config={
            "JupyterHub": {
                "bind_url": f"http://127.0.0.1:{port}/",
                "public_url": f"http://127.0.0.1:{port}/",
            }
        },
    )
    client = hub.client(hub.token("offers-probe", [ACCESS_SCOPE]))

    async def offers_known():
        cloud = (await client.get("api/v1/cloud/offers")).json()
        return cloud if cloud.get("offers") else None

    await eventually(offers_known, within=30, interval=0.2)
    return hub


@pytest_asyncio.fixture(loop_scope="module")
async def alice(hub):
    return hub.client(hub.token("alice", [ACCESS_SCOPE]), timeout=30)


@pytest_asyncio.fixture(autouse=True, loop_scope="module")
async def no_pod_left(fake):
    """After each test: every pod of the stand-in gone (terminated), the faults cleared."""
    yield
    fake.faults.clear()

    async def none_left():
        return not fake.pods

    try:
        await eventually(none_left, within=30, interval=0.1)
    finally:
        left = list(fake.pods)
        for pod_id in left:
            await fake.terminate(pod_id)
    assert left == [], f"pods left running: {left}"


def script(text: str) -> str:
    return textwrap.dedent(text).lstrip()


async def submit(client, text: str, **options) -> dict:
    body = {"script": script(text), "expected_time": "1m", "where": RTX_4090, **options}
    response = await client.post("api/v1/jobs", json=body)
    assert response.status_code == 201, response.text
    return response.json()


async def ended(client, job_id: str, within: float = 60) -> dict:
    async def done():
        view = (await client.get(f"api/v1/jobs/{job_id}")).json()
        return view if view["status"] not in ("queued", "running") else None

    return await eventually(done, within=within, interval=0.1)


def pod_of(fake: RunPodFake, job_id: str):
    """The stand-in's pod of this job (running or terminated), by the job's mark."""
    pods = [*fake.pods.values(), *fake.terminated.values()]
    found = [p for p in pods if p.env.get("THINKUBE_JOB_ID") == job_id]
    return found[0] if found else None


async def pod_running(fake: RunPodFake, job_id: str):
    async def running():
        pod = pod_of(fake, job_id)
        return pod if pod is not None and pod.process is not None else None

    return await eventually(running, within=30, interval=0.05)


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


# -- a job from submission to its artifacts -------------------------------------------------


async def test_a_cloud_job_rents_a_pod_streams_its_log_returns_its_files_and_ends_it(
    hub, fake, alice, artifacts
):
    # The local GPU is taken by a local job: the cloud job does not wait for it.
    local = (
        await alice.post(
            "api/v1/jobs",
            json={"script": "import time\ntime.sleep(60)\n", "expected_time": "2m", "gpus": 1},
        )
    ).json()
    # RunPod's log stream to the service is cut after 4 lines: it must resume after them.
    fake.inject(field="getPodLogs", drop_after_events=4)
    job = await submit(
        alice,
        """
        import os, sys, time
        for n in range(12):
            print(f"step {n}", flush=True)
            time.sleep(0.1)
        print("a warning", file=sys.stderr, flush=True)
        folder = os.environ["THINKUBE_ARTIFACTS_DIR"]
        os.makedirs(os.path.join(folder, "adapter"))
        with open(os.path.join(folder, "adapter", "weights.bin"), "wb") as f:
            f.write(bytes(range(256)) * 4000)
        with open(os.path.join(folder, "metrics.json"), "w") as f:
            f.write('{"loss": 0.25}')
        """,
        name="on-runpod",
    )
    assert job["status"] in ("queued", "running")
    assert (await alice.get(f"api/v1/jobs/{local['id']}")).json()["node"] == "gpu-0"
    view = await eventually(lambda: _view_running(alice, job["id"]), within=30, interval=0.05)
    assert view["node"] == "runpod" and view["gpu_model"] == "RTX 4090" and view["gpus"] == 1

    # A follower of the job's log drops after step 4 and resumes from its last event id.
    seen: list[dict] = []
    async with alice.stream("GET", f"api/v1/jobs/{job['id']}/logs", timeout=60) as response:
        buffer = ""
        async for chunk in response.aiter_text():
            buffer += chunk
            while "\n\n" in buffer:
                block, buffer = buffer.split("\n\n", 1)
                seen.extend(sse_events(block + "\n\n"))
            if any(e.get("data") == "step 4" for e in seen):
                break
    lines = [e for e in seen if e.get("event") == "combined"]
    resumed = await alice.get(
        f"api/v1/jobs/{job['id']}/logs", headers={"Last-Event-ID": lines[-1]["id"]}, timeout=60
    )
    rest = sse_events(resumed.text)
    assert rest[-1]["event"] == "end"
    assert json.loads(rest[-1]["data"])["status"] == "completed"
    whole = [e["data"] for e in lines] + [e["data"] for e in rest if e.get("event") == "combined"]
    assert whole == [f"step {n}" for n in range(12)] + [
        "a warning",
        "[thinkube] 2 artifact(s) uploaded",
    ]

    view = await ended(alice, job["id"])
    assert (view["status"], view["reason"], view["exit_code"]) == ("completed", "Completed", 0)
    result = (await alice.get(f"api/v1/jobs/{job['id']}/result")).json()
    assert result["streams"] == "combined" and result["stderr"] is None
    assert result["stdout"].splitlines()[:13] == [f"step {n}" for n in range(12)] + ["a warning"]

    # What the job wrote came back to the service's folder for it.
    folder = artifacts / job["id"]
    assert (folder / "adapter" / "weights.bin").read_bytes() == bytes(range(256)) * 4000
    assert (folder / "metrics.json").read_text() == '{"loss": 0.25}'

    # The pod: rented for this job, its log read again after the cut, terminated at the end.
    pod = pod_of(fake, job["id"])
    assert pod.id in fake.terminated and pod.id not in fake.pods
    assert pod.gpu_type.id == "NVIDIA GeForce RTX 4090" and pod.cloud_type == "SECURE"
    assert pod.env["THINKUBE_JOB_HUB"] == "thinkube" and pod.env["THINKUBE_JOB_USER"] == "alice"
    assert pod.terminate_at is not None
    assert pod.terminate_at - time.time() < 2 * 60 + RESULT_GRACE_S + 300 + 5
    log_requests = [r for r in fake.requests_for("getPodLogs") if r.status == 200]
    resumes = [r for r in log_requests if "Last-Event-ID" in r.variables]
    assert resumes, "the service never resumed RunPod's log stream"
    token = pod.env["TK_JOB_TOKEN"]
    assert token not in hub.service_log()
    assert not any(token in r.query for r in fake.requests)
    # No RunPod pod for the local job; it runs on the local GPU until cancelled.
    assert pod_of(fake, local["id"]) is None
    assert (await alice.post(f"api/v1/jobs/{local['id']}/cancel")).json()["status"] == "cancelled"


async def _view_running(client, job_id: str) -> dict | None:
    view = (await client.get(f"api/v1/jobs/{job_id}")).json()
    return view if view["status"] == "running" else None


async def test_the_cheapest_offer_within_the_cap_runs_spot_and_an_exit_code_fails_it(fake, alice):
    # RunPod's log endpoint fails three times: the service polls until it answers again.
    fake.inject(field="getPodLogs", status=503, times=3)
    job = await submit(
        alice,
        """
        import sys
        for n in range(5):
            print("line", n)
        sys.exit(3)
        """,
        where="runpod",
        gpu_model="A5000",
        pricing="spot",
    )
    view = await ended(alice, job["id"])
    assert (view["status"], view["reason"], view["exit_code"]) == ("failed", "Failed", 3)
    pod = pod_of(fake, job["id"])
    assert pod.gpu_type.id == "NVIDIA RTX A5000"
    assert pod.pod_type == "INTERRUPTABLE" and pod.cloud_type == "COMMUNITY"  # the cheaper
    logs = await alice.get(f"api/v1/jobs/{job['id']}/logs", params={"follow": "false"})
    assert logs.text.splitlines()[:5] == [f"line {n}" for n in range(5)]
    assert [r.status for r in fake.requests_for("getPodLogs")].count(503) == 3


async def test_at_its_deadline_the_pod_stops_the_script_and_reports_deadline_exceeded(
    fake, alice, artifacts
):
    job = await submit(
        alice,
        """
        import os, time
        open(os.path.join(os.environ["THINKUBE_ARTIFACTS_DIR"], "checkpoint"), "w").write("1")
        print("training", flush=True)
        time.sleep(120)
        """,
        expected_time=1,  # ended 2 s after the pod is rented
    )
    view = await ended(alice, job["id"])
    assert (view["status"], view["reason"], view["exit_code"]) == (
        "failed",
        "DeadlineExceeded",
        143,
    )
    assert view["message"] == "ran past its deadline"
    assert (artifacts / job["id"] / "checkpoint").read_text() == "1"  # what it made came back


# -- failures -----------------------------------------------------------------------------


async def test_a_refused_rental_fails_the_job_plainly_and_leaves_nothing_rented(fake, alice):
    fake.inject(field="podFindAndDeployOnDemand", error="capacity", times=-1)
    job = await submit(alice, "print('never')\n")
    view = await ended(alice, job["id"])
    assert view["status"] == "failed" and "out of stock" in view["message"]
    fake.faults.clear()

    fake.inject(field="podFindAndDeployOnDemand", status=502, times=-1)
    job = await submit(alice, "print('never')\n")
    view = await ended(alice, job["id"])
    assert view["status"] == "failed" and "RunPod did not answer" in view["message"]
    fake.faults.clear()

    key = fake.api_key
    user = fake.keys.pop(key)
    try:
        job = await submit(alice, "print('never')\n")
        view = await ended(alice, job["id"])
    finally:
        fake.keys[key] = user
    assert view["status"] == "failed"
    assert view["message"] == "could not start: RunPod refused this hub's API key"
    assert key not in json.dumps(view)
    assert pod_of(fake, job["id"]) is None


async def test_a_pod_that_vanishes_ends_its_job_lost(fake, alice):
    fake.inject(field="podFindAndDeployOnDemand", vanish_after_s=1.0)
    job = await submit(alice, "import time\nprint('working', flush=True)\ntime.sleep(60)\n")
    view = await ended(alice, job["id"])
    assert (view["status"], view["reason"]) == ("lost", "Lost")
    assert "vanished" in view["message"]
    result = (await alice.get(f"api/v1/jobs/{job['id']}/result")).json()
    assert "working" in result["stdout"]  # what it wrote before is kept


async def test_a_pod_that_never_reports_is_lost_at_the_deadline_and_terminated(hub, fake, alice):
    # The job stops its own runner: the pod runs on, and nothing reports.
    job = await submit(
        alice,
        """
        import os, signal, time
        print("stopping the runner", flush=True)
        os.kill(os.getppid(), signal.SIGSTOP)
        time.sleep(120)
        """,
        expected_time=1,  # a deadline 2 s after the pod is rented
    )
    began = time.monotonic()
    await pod_running(fake, job["id"])
    view = await ended(alice, job["id"], within=60)
    assert (view["status"], view["reason"]) == ("lost", "Lost")
    assert view["message"] == "the job did not report a result by its deadline"
    assert time.monotonic() - began >= RESULT_GRACE_S
    pod = pod_of(fake, job["id"])
    assert pod.id in fake.terminated


# -- the upload routes --------------------------------------------------------------------


async def test_uploads_take_only_the_jobs_own_token_and_stay_in_its_folder(
    hub, fake, alice, artifacts
):
    wait = "import time\ntime.sleep(120)\n"
    first, second = await submit(alice, wait), await submit(alice, wait)
    first_pod, second_pod = (
        await pod_running(fake, first["id"]),
        await pod_running(fake, second["id"]),
    )
    first_token, second_token = first_pod.env["TK_JOB_TOKEN"], second_pod.env["TK_JOB_TOKEN"]
    assert first_token != second_token
    upload = first_pod.env["TK_JOB_UPLOAD_URL"]
    assert upload == f"{hub.url}services/thinkube-resources/api/v1/jobs/{first['id']}/upload/"
    folder = artifacts / first["id"]

    async with httpx.AsyncClient(timeout=30) as http:

        async def put(path: str, token: str | None, body: bytes = b"data"):
            headers = {"Authorization": f"Bearer {token}"} if token else {}
            return await http.put(upload + "artifacts/" + path, content=body, headers=headers)

        for token in (second_token, "not-a-token", first_token + "x"):
            refused = await put("stolen.txt", token)
            assert refused.status_code == 403, refused.text
            assert refused.json()["error"].startswith("this upload is not allowed")
        anonymous = await put("stolen.txt", None)
        assert anonymous.status_code == 401 and anonymous.headers["www-authenticate"] == "Bearer"
        result = await http.post(
            upload + "result",
            json={"exit_code": 0},
            headers={"Authorization": f"Bearer {second_token}"},
        )
        assert result.status_code == 403
        assert not folder.exists()

        for escape in ("..%2F..%2Fescape.txt", "%2Fetc%2Fescape.txt", "a%2F.%2Fb", "a%5Cb"):
            refused = await put(escape, first_token)
            assert refused.status_code == 400, (escape, refused.text)
        assert not folder.exists() and not (artifacts / "escape.txt").exists()
        assert not (artifacts.parent / "escape.txt").exists()

        kept = await put("notes/one.txt", first_token, b"one")
        assert kept.status_code == 201, kept.text
        assert kept.json()["size"] == 3
        damaged = await http.put(
            upload + "artifacts/two.txt",
            content=b"two",
            headers={"Authorization": f"Bearer {first_token}", "X-Content-SHA256": "0" * 64},
        )
        assert damaged.status_code == 400 and "damaged" in damaged.json()["error"]
        assert sorted(p.name for p in folder.rglob("*")) == ["notes", "one.txt"]
        bad = await http.post(
            upload + "result",
            json={"exit_code": "zero"},
            headers={"Authorization": f"Bearer {first_token}"},
        )
        assert bad.status_code == 400 and bad.json()["field"] == "exit_code"

        for job in (first, second):
            assert (await alice.post(f"api/v1/jobs/{job['id']}/cancel")).json()[
                "status"
            ] == "cancelled"
        # The token ends with its job.
        late = await put("late.txt", first_token)
        assert late.status_code == 403
        assert not (folder / "late.txt").exists()
    log = hub.service_log()
    assert first_token not in log and second_token not in log


async def test_a_result_ends_the_job_at_once_and_terminates_its_pod(fake, alice):
    """A result sent by someone holding the job's token (here the test, for a job whose
    script would run for minutes) ends it with that exit code, and the pod goes."""
    job = await submit(alice, "import time\ntime.sleep(120)\n")
    pod = await pod_running(fake, job["id"])
    async with httpx.AsyncClient(timeout=30) as http:
        answer = await http.post(
            pod.env["TK_JOB_UPLOAD_URL"] + "result",
            json={"exit_code": 7, "message": "stopped early"},
            headers={"Authorization": f"Bearer {pod.env['TK_JOB_TOKEN']}"},
        )
    assert answer.status_code == 200, answer.text
    assert answer.json() == {
        "status": "accepted",
        "exit_code": 7,
        "reason": "Failed",
        "message": "stopped early",
    }
    view = await ended(alice, job["id"])
    assert (view["status"], view["exit_code"], view["message"]) == ("failed", 7, "stopped early")


# -- submissions the service refuses --------------------------------------------------------


async def test_cloud_submissions_outside_what_a_person_may_rent_are_refused(hub, fake, alice):
    creates = len(fake.requests_for("podFindAndDeployOnDemand"))

    async def refused(client, **body) -> dict:
        body = {"script": "print(1)\n", "expected_time": "1m", **body}
        response = await client.post("api/v1/jobs", json=body)
        assert response.status_code == 400, response.text
        return response.json()

    over = await refused(alice, where="cloud:SECURE:NVIDIA H100 80GB HBM3:1")
    assert over["field"] == "where" and "over your cloud limit of $1.00/h" in over["error"]
    many = await refused(alice, where=RTX_4090, gpus=2)  # $1.38/h for two
    assert many["field"] == "where" and "$1.38/h" in many["error"]
    assert (await refused(alice, where="cloud:SECURE:No Such GPU:1"))["field"] == "where"
    assert (await refused(alice, where="runpod", gpu_model="H100"))["field"] == "gpu_model"
    assert (await refused(alice, where="runpod", gpus=0))["field"] == "gpus"
    assert (await refused(alice, where="runpod", pricing="cheap"))["field"] == "pricing"
    assert (await refused(alice, where="the moon"))["field"] == "where"
    large = secrets.token_hex(60 * 1024)  # incompressible: 120 KiB of text
    too_large = await refused(alice, where=RTX_4090, script=large)
    assert too_large["field"] == "script" and "too large for a RunPod job" in too_large["error"]
    carol = hub.client(hub.token("carol", [ACCESS_SCOPE]))
    capped = await refused(carol, where=RTX_4090)
    assert capped["error"] == "Cloud GPUs are not available to you on this hub."
    assert len(fake.requests_for("podFindAndDeployOnDemand")) == creates


# -- a restart of the service ---------------------------------------------------------------


async def test_a_restarted_service_follows_its_running_pod_to_the_end(hub, fake, alice, artifacts):
    go = artifacts / f"go-{secrets.token_hex(4)}"
    job = await submit(
        alice,
        f"""
        import os, time
        print("before the restart", flush=True)
        while not os.path.exists({str(go)!r}):
            time.sleep(0.05)
        print("after the restart", flush=True)
        open(os.path.join(os.environ["THINKUBE_ARTIFACTS_DIR"], "done.txt"), "w").write("done")
        """,
    )
    pod = await pod_running(fake, job["id"])
    old_pid = hub.service_pid
    os.kill(old_pid, 15)  # the hub starts its managed service again

    async def restarted():
        pid = hub.service_pid
        if pid in (None, old_pid):
            return None
        try:
            return (await alice.get("api/v1/health")).status_code == 200
        except httpx.HTTPError:
            return None

    await eventually(restarted, within=60, interval=0.2)
    assert pod.id in fake.pods  # the pod ran on while the service was away
    go.write_text("")
    view = await ended(alice, job["id"])
    assert (view["status"], view["exit_code"]) == ("completed", 0)
    assert (artifacts / job["id"] / "done.txt").read_text() == "done"
    result = (await alice.get(f"api/v1/jobs/{job['id']}/result")).json()
    assert "after the restart" in result["stdout"]
    assert pod.id in fake.terminated


async def test_a_pod_of_this_hub_that_no_job_owns_is_terminated_at_start(hub, fake, alice):
    """A pod marked as one of this hub's jobs, whose job the database does not run (a
    service that died while renting it, say), is ended when the service starts."""
    answer = await _graphql(
        fake,
        "mutation Deploy($input: PodFindAndDeployOnDemandInput!) "
        "{ podFindAndDeployOnDemand(input: $input) { id } }",
        {
            "input": {
                "gpuTypeId": "NVIDIA RTX A4000",
                "imageName": "runpod/base:latest",
                "env": [
                    {"key": "THINKUBE_JOB_HUB", "value": "thinkube"},
                    {"key": "THINKUBE_JOB_ID", "value": "j-000000000000"},
                ],
            }
        },
    )
    stray = answer["data"]["podFindAndDeployOnDemand"]["id"]
    other = await _graphql(
        fake,
        "mutation Deploy($input: PodFindAndDeployOnDemandInput!) "
        "{ podFindAndDeployOnDemand(input: $input) { id } }",
        {"input": {"gpuTypeId": "NVIDIA RTX A4000", "imageName": "runpod/base:latest"}},
    )
    unmarked = other["data"]["podFindAndDeployOnDemand"]["id"]
    old_pid = hub.service_pid
    os.kill(old_pid, 15)

    async def stray_gone():
        return stray not in fake.pods

    await eventually(stray_gone, within=60, interval=0.2)
    assert unmarked in fake.pods  # not this hub's job: left alone
    await fake.terminate(unmarked)

    async def answering():
        try:
            return (await alice.get("api/v1/health")).status_code == 200
        except httpx.HTTPError:
            return None

    await eventually(answering, within=60, interval=0.2)


async def _graphql(fake, query: str, variables: dict) -> dict:
    async with httpx.AsyncClient(timeout=10) as http:
        response = await http.post(
            fake.url,
            json={"query": query, "variables": variables},
            headers={"Authorization": f"Bearer {fake.api_key}"},
        )
    response.raise_for_status()
    return response.json()


async def test_odd_requests_to_the_upload_routes_get_plain_4xx_answers(hub, fake, alice):
    job = await submit(alice, "import time\ntime.sleep(120)\n")
    pod = await pod_running(fake, job["id"])
    token = {"Authorization": f"Bearer {pod.env['TK_JOB_TOKEN']}"}
    upload = pod.env["TK_JOB_UPLOAD_URL"]
    # configurable-http-proxy itself answers 500 to a path whose percent-encoding is not
    # UTF-8: that one goes to the service's own port.
    direct = f"{hub.service_direct_url}api/v1/jobs/{job['id']}/upload/"
    odd = [
        ("PUT", direct + "artifacts/%ff", token, b"x"),
        ("PUT", "artifacts/a%00b", token, b"x"),
        ("PUT", "artifacts/" + "n" * 5000, token, b"x"),
        ("PUT", "artifacts/x.txt", {**token, "X-Content-SHA256": "\u00e9".encode("latin-1")}, b"x"),
        ("GET", "artifacts/x.txt", token, b""),
        ("DELETE", "result", token, b""),
        ("POST", "result", {**token, "Content-Type": "application/json"}, b"{"),
        ("POST", "result", {**token, "Content-Type": "text/plain"}, b"0"),
        ("POST", "result", {**token, "Content-Type": "application/json"}, b"x" * 100_000),
        ("POST", "result", {"Authorization": "Bearer \u00ff\u00ff".encode("latin-1")}, b"{}"),
        ("POST", "result", {"Authorization": "Bearer"}, b"{}"),
    ]
    async with httpx.AsyncClient(timeout=30) as http:
        for method, path, headers, body in odd:
            url = path if path.startswith("http") else upload + path
            response = await http.request(method, url, headers=headers, content=body)
            assert 400 <= response.status_code < 500, (method, path, response.status_code)
            assert "error" in response.json(), (method, path, response.text)
    assert (await alice.post(f"api/v1/jobs/{job['id']}/cancel")).json()["status"] == "cancelled"
    assert " 500 " not in hub.service_log() and "Uncaught exception" not in hub.service_log()
