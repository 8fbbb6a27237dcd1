"""The RunPod stand-in's REST v2 side, over real HTTP: pods as `GET /v2/pods/{id}` shows
them, and their logs as Server-Sent Events from `GET /v2/pods/{id}/logs`, with the faults
tests switch on (cut streams, 5xx answers, slow starts, pods that vanish)."""

from __future__ import annotations

import asyncio
import json
import sys
import textwrap
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import httpx
import pytest
from tornado import web
from tornado.httpserver import HTTPServer
from tornado.netutil import bind_sockets

from tests.utils import eventually

RTX_4090 = "NVIDIA GeForce RTX 4090"
IMAGE = "runpod/pytorch:2.4.0-py3.11-cuda12.4.1-devel-ubuntu22.04"
DEPLOY = (
    "mutation Deploy($input: PodFindAndDeployOnDemandInput!) "
    "{ podFindAndDeployOnDemand(input: $input) { id } }"
)
SYSTEM_START = [
    "2.4.0-py3.11-cuda12.4.1-devel-ubuntu22.04 Pulling from runpod/pytorch",
    "Digest: sha256:",  # a prefix: the digest differs per pod
    f"Status: Image is up to date for {IMAGE}",
    f"create container {IMAGE}",
    "start container",
]


# -- helpers: GraphQL to make pods, and a small SSE reader ---------------------------


async def graphql(fake, query: str, variables: dict | None = None) -> dict:
    async with httpx.AsyncClient(timeout=10) as http:
        response = await http.post(
            fake.url,
            json={"query": query, "variables": variables or {}},
            headers={"Authorization": f"Bearer {fake.api_key}"},
        )
    response.raise_for_status()
    return response.json()


async def create_pod(fake, script: str | None = None, env: dict | None = None, **extra) -> str:
    """A pod whose command runs `script` with this interpreter (`python -c ...`)."""
    pod_input = {"gpuTypeId": RTX_4090, "imageName": IMAGE, "gpuCount": 1, **extra}
    if script is not None:
        code = textwrap.dedent(script).strip().replace("'", "'\"'\"'")
        pod_input["dockerArgs"] = f"{sys.executable} -u -c '{code}'"
    if env:
        pod_input["env"] = [{"key": k, "value": v} for k, v in env.items()]
    answer = await graphql(fake, DEPLOY, {"input": pod_input})
    return answer["data"]["podFindAndDeployOnDemand"]["id"]


def headers_for(fake, key: str | None = None, **more: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key or fake.api_key}", **more}


async def rest_get(fake, path: str, key: str | None = None, **kwargs) -> httpx.Response:
    async with httpx.AsyncClient(timeout=10) as http:
        return await http.get(f"{fake.rest_url}{path}", headers=headers_for(fake, key), **kwargs)


async def status_of(fake, pod_id: str) -> str | None:
    response = await rest_get(fake, f"/pods/{pod_id}")
    return response.json()["status"] if response.status_code == 200 else None


async def reaches(fake, pod_id: str, status: str, within: float = 20) -> None:
    async def there():
        return await status_of(fake, pod_id) == status

    await eventually(there, within=within, interval=0.05)


@dataclass
class Event:
    id: str
    source: str
    line: str
    ts: str

    @property
    def seq(self) -> int:
        return int(self.id.rpartition("/")[2])


@dataclass
class Stream:
    """What one request to the logs endpoint gave: events in order, the comments, and how
    it ended: "end" (the response completed) or "cut" (the connection closed mid-body)."""

    status: int
    events: list[Event] = field(default_factory=list)
    comments: list[str] = field(default_factory=list)
    ended: str = ""
    body: str = ""

    def lines(self, source: str | None = None) -> list[str]:
        return [e.line for e in self.events if source is None or e.source == source]


async def read_stream(response: httpx.Response, stream: Stream, on_event=None) -> None:
    """Parse Server-Sent Events as a browser's EventSource does (id, data, comments)."""
    event_id, data = None, []
    try:
        async for line in response.aiter_lines():
            if line == "":
                if data:
                    payload = json.loads("\n".join(data))
                    assert set(payload) == {"source", "line", "ts"}
                    event = Event(event_id, payload["source"], payload["line"], payload["ts"])
                    stream.events.append(event)
                    if on_event is not None:
                        await on_event(event)
                event_id, data = None, []
            elif line.startswith(":"):
                stream.comments.append(line[1:].strip())
            elif line.startswith("id:"):
                event_id = line[3:].removeprefix(" ")
            elif line.startswith("data:"):
                data.append(line[5:].removeprefix(" "))
    except httpx.RemoteProtocolError:
        stream.ended = "cut"
    else:
        stream.ended = "end"


async def logs(
    fake, pod_id: str, params=None, last_event_id=None, key=None, on_event=None, read_timeout_s=30
) -> Stream:
    headers = headers_for(fake, key)
    if last_event_id is not None:
        headers["Last-Event-ID"] = last_event_id
    async with httpx.AsyncClient(timeout=httpx.Timeout(10, read=read_timeout_s)) as http:
        url = f"{fake.rest_url}/pods/{pod_id}/logs"
        async with http.stream("GET", url, params=params, headers=headers) as response:
            stream = Stream(response.status_code)
            if response.status_code != 200:
                stream.body = (await response.aread()).decode()
                return stream
            assert response.headers["content-type"] == "text/event-stream"
            assert response.headers["cache-control"] == "no-cache"
            await read_stream(response, stream, on_event)
            return stream


def parse_ts(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def assert_system_start(lines: list[str]) -> None:
    assert len(lines) >= len(SYSTEM_START)
    for line, expected in zip(lines, SYSTEM_START, strict=False):
        assert line.startswith(expected), (line, expected)


# -- streaming --------------------------------------------------------------------------


async def test_a_running_pods_lines_stream_live_and_the_stream_ends_when_it_exits(
    runpod_fake, tmp_path
):
    go = tmp_path / "go"
    pod_id = await create_pod(
        runpod_fake,
        f"""
        import os, sys, time
        print("ready", os.environ["RUNPOD_POD_ID"])
        print("to stderr", file=sys.stderr, flush=True)
        while not os.path.exists({str(go)!r}):
            time.sleep(0.02)
        print("after go")
        """,
    )
    states_while_streaming = []

    async def on_event(event: Event) -> None:
        if event.line == "to stderr":
            # The process still runs: only the stream could have brought this line.
            states_while_streaming.append(await status_of(runpod_fake, pod_id))
            go.write_text("")

    stream = await logs(runpod_fake, pod_id, on_event=on_event)
    assert stream.ended == "end"
    assert states_while_streaming == ["RUNNING"]
    assert stream.lines("container") == [f"ready {pod_id}", "to stderr", "after go"]
    assert_system_start(stream.lines("system"))
    # System lines come first here (the container starts after them); ids count up by one.
    assert [e.source for e in stream.events] == ["system"] * 5 + ["container"] * 3
    assert [e.seq for e in stream.events] == list(range(1, 9))
    stamps = [parse_ts(e.ts) for e in stream.events]
    assert stamps == sorted(stamps)
    for event in stream.events:
        assert event.id == f"{event.ts}/{event.seq:012d}"
    assert await status_of(runpod_fake, pod_id) == "EXITED"
    assert runpod_fake.log_lines(pod_id) == stream.lines()


async def test_stdout_and_stderr_interleave_as_written(runpod_fake):
    pod_id = await create_pod(
        runpod_fake,
        """
        import sys
        for i in range(20):
            print(f"out {i}", file=sys.stdout if i % 2 == 0 else sys.stderr, flush=True)
        """,
    )
    stream = await logs(runpod_fake, pod_id)
    assert stream.lines("container") == [f"out {i}" for i in range(20)]


async def test_tail_and_source(runpod_fake):
    pod_id = await create_pod(runpod_fake, "for i in range(150): print(f'line {i}')")
    await reaches(runpod_fake, pod_id, "EXITED")
    everything = await logs(runpod_fake, pod_id, {"tail": 5000})
    assert everything.lines("container") == [f"line {i}" for i in range(150)]
    assert len(everything.events) == 155

    default = await logs(runpod_fake, pod_id)
    assert default.ended == "end"  # an exited pod: the backfill, then the end
    assert default.events == everything.events[-100:]
    assert (await logs(runpod_fake, pod_id, {"tail": 3})).lines() == [
        "line 147",
        "line 148",
        "line 149",
    ]
    assert (await logs(runpod_fake, pod_id, {"tail": 0})).events == []
    system = await logs(runpod_fake, pod_id, {"source": "system", "tail": 2})
    assert system.lines() == ["create container " + IMAGE, "start container"]
    container = await logs(runpod_fake, pod_id, {"source": "container", "tail": 200})
    assert container.lines() == [f"line {i}" for i in range(150)]
    assert {e.source for e in container.events} == {"container"}


async def test_since_starts_at_a_time_and_wins_over_tail(runpod_fake):
    pod_id = await create_pod(
        runpod_fake,
        """
        import time
        for i in range(10):
            print(f"line {i}")
            time.sleep(0.02)
        """,
    )
    await reaches(runpod_fake, pod_id, "EXITED")
    everything = (await logs(runpod_fake, pod_id, {"tail": 5000})).events
    pivot = next(e for e in everything if e.line == "line 6")
    expected = [e for e in everything if parse_ts(e.ts) >= parse_ts(pivot.ts)]
    assert expected[0].line in ("line 5", "line 6")  # inclusive; "line 5" only on a tie
    assert (await logs(runpod_fake, pod_id, {"since": pivot.ts, "tail": 1})).events == expected
    # The same moment written with an offset.
    shifted = (parse_ts(pivot.ts) + timedelta(hours=2)).strftime("%Y-%m-%dT%H:%M:%S.%f+02:00")
    assert (await logs(runpod_fake, pod_id, {"since": shifted})).events == expected
    future = (datetime.now(UTC) + timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
    assert (await logs(runpod_fake, pod_id, {"since": future})).events == []


async def test_resume_after_a_cut_stream_neither_loses_nor_repeats_a_line(runpod_fake, tmp_path):
    go = tmp_path / "go"
    pod_id = await create_pod(
        runpod_fake,
        f"""
        import os, time
        for i in range(30):
            print(f"early {{i}}")
        while not os.path.exists({str(go)!r}):
            time.sleep(0.02)
        for i in range(30):
            print(f"late {{i}}")
            time.sleep(0.005)
        """,
    )
    await eventually(
        lambda: asyncio.sleep(0, "early 29" in runpod_fake.log_lines(pod_id)), within=20
    )
    runpod_fake.inject(field="getPodLogs", drop_after_events=12)
    first = await logs(runpod_fake, pod_id, {"tail": 5000})
    assert (first.ended, len(first.events)) == ("cut", 12)

    go.write_text("")
    runpod_fake.inject(field="getPodLogs", drop_after_events=20)
    # tail and since are ignored when resuming: the cursor decides.
    second = await logs(
        runpod_fake, pod_id, {"tail": 1, "since": "2000-01-01T00:00:00Z"}, first.events[-1].id
    )
    assert (second.ended, len(second.events)) == ("cut", 20)
    third = await logs(runpod_fake, pod_id, {"tail": 1}, second.events[-1].id)
    assert third.ended == "end"

    joined = first.events + second.events + third.events
    assert [e.seq for e in joined] == list(range(1, len(joined) + 1))
    assert [e.line for e in joined] == runpod_fake.log_lines(pod_id)
    container = [e.line for e in joined if e.source == "container"]
    assert container == [f"early {i}" for i in range(30)] + [f"late {i}" for i in range(30)]


async def test_resume_keeps_to_one_source_and_takes_a_bare_time(runpod_fake):
    pod_id = await create_pod(runpod_fake, "for i in range(6): print(f'line {i}')")
    await reaches(runpod_fake, pod_id, "EXITED")
    runpod_fake.inject(field="getPodLogs", drop_after_events=2)
    first = await logs(runpod_fake, pod_id, {"source": "container"})
    assert (first.ended, first.lines()) == ("cut", ["line 0", "line 1"])
    rest = await logs(runpod_fake, pod_id, {"source": "container"}, first.events[-1].id)
    assert rest.lines() == ["line 2", "line 3", "line 4", "line 5"]
    # A Last-Event-ID that is only a time: the lines after that time.
    everything = (await logs(runpod_fake, pod_id, {"tail": 5000})).events
    start = next(e for e in everything if e.line == "start container")
    after = await logs(runpod_fake, pod_id, {"tail": 5000}, start.ts)
    assert after.events == [e for e in everything if parse_ts(e.ts) > parse_ts(start.ts)]


async def test_a_stopped_pod_ends_its_stream(runpod_fake):
    pod_id = await create_pod(runpod_fake, "import time; print('up'); time.sleep(600)")
    stop = "mutation S($input: PodStopInput!) { podStop(input: $input) { id desiredStatus } }"

    async def on_event(event: Event) -> None:
        if event.line == "up":
            answer = await graphql(runpod_fake, stop, {"input": {"podId": pod_id}})
            assert answer["data"]["podStop"]["desiredStatus"] == "EXITED"

    stream = await logs(runpod_fake, pod_id, on_event=on_event)
    assert stream.ended == "end"
    assert stream.lines()[-2:] == ["up", "stop container"]
    assert await status_of(runpod_fake, pod_id) == "EXITED"


async def test_a_command_that_cannot_start_is_error_with_a_system_line(runpod_fake):
    answer = await graphql(
        runpod_fake,
        DEPLOY,
        {"input": {"gpuTypeId": RTX_4090, "imageName": IMAGE, "dockerArgs": "no-such-command"}},
    )
    pod_id = answer["data"]["podFindAndDeployOnDemand"]["id"]
    await reaches(runpod_fake, pod_id, "ERROR")
    stream = await logs(runpod_fake, pod_id)
    assert stream.ended == "end"
    assert stream.lines()[-1].startswith("error starting container: ")
    assert stream.lines("container") == []


# -- the pod's command: env, a script, a call home ---------------------------------------


class UploadHandler(web.RequestHandler):
    def initialize(self, received: list) -> None:
        self.received = received

    def put(self, name: str) -> None:
        self.received.append((name, self.request.headers.get("Authorization"), self.request.body))
        self.set_status(201)


async def test_a_pods_command_runs_a_script_with_its_env_and_reaches_a_url_from_it(
    runpod_fake, tmp_path
):
    received: list = []
    app = web.Application([(r"/upload/(.+)", UploadHandler, {"received": received})])
    server = HTTPServer(app)
    sockets = bind_sockets(0, "127.0.0.1")
    server.add_sockets(sockets)
    upload_url = f"http://127.0.0.1:{sockets[0].getsockname()[1]}/upload/result.json"
    script = tmp_path / "job.py"
    script.write_text(
        textwrap.dedent(
            """
            import json, os, sys, urllib.request
            epochs = int(sys.argv[sys.argv.index("--epochs") + 1])
            for epoch in range(epochs):
                print(f"epoch {epoch}")
            body = json.dumps({"pod": os.environ["RUNPOD_POD_ID"], "epochs": epochs}).encode()
            request = urllib.request.Request(
                os.environ["UPLOAD_URL"], data=body, method="PUT",
                headers={"Authorization": "Bearer " + os.environ["UPLOAD_TOKEN"]},
            )
            with urllib.request.urlopen(request, timeout=10) as answer:
                print("uploaded", answer.status)
            """
        )
    )
    try:
        answer = await graphql(
            runpod_fake,
            DEPLOY,
            {
                "input": {
                    "gpuTypeId": RTX_4090,
                    "imageName": IMAGE,
                    "dockerArgs": f"python {script} --epochs 3",
                    "env": [
                        {"key": "UPLOAD_URL", "value": upload_url},
                        {"key": "UPLOAD_TOKEN", "value": "tok-123"},
                    ],
                }
            },
        )
        pod_id = answer["data"]["podFindAndDeployOnDemand"]["id"]
        stream = await logs(runpod_fake, pod_id)
    finally:
        server.stop()
    assert stream.lines("container") == ["epoch 0", "epoch 1", "epoch 2", "uploaded 201"]
    assert received == [
        ("result.json", "Bearer tok-123", json.dumps({"pod": pod_id, "epochs": 3}).encode())
    ]
    assert await status_of(runpod_fake, pod_id) == "EXITED"
    assert runpod_fake.pod(pod_id).exit_code == 0  # for tests only: v2 has no exit code


# -- GET /v2/pods/{id} -------------------------------------------------------------------


async def test_v2_pod_status_follows_the_lifecycle(make_runpod_fake):
    fake = await make_runpod_fake(start_delay_s=1.0)
    pod_id = await create_pod(
        fake, "import time; time.sleep(0.5); print('done')", ports="8888/http,22/tcp"
    )
    seen = []

    async def record_until_exited():
        status = await status_of(fake, pod_id)
        if not seen or seen[-1] != status:
            seen.append(status)
        return status == "EXITED"

    await eventually(record_until_exited, within=20, interval=0.02)
    assert seen == ["PROVISIONING", "STARTING", "RUNNING", "EXITED"]
    pod = (await rest_get(fake, f"/pods/{pod_id}")).json()
    assert (pod["status"], pod["runtime"], pod["cost"]) == ("EXITED", None, 0.0)
    assert pod["actions"] == ["start", "terminate"]
    assert "exitCode" not in json.dumps(pod)


async def test_v2_pod_shape_while_running(runpod_fake):
    pod_id = await create_pod(
        runpod_fake,
        "import time; time.sleep(600)",
        env={"MODEL": "llama"},
        ports="8888/http,22/tcp",
        volumeInGb=20,
        name="job-ann-1",
    )
    await reaches(runpod_fake, pod_id, "RUNNING")
    pod = (await rest_get(runpod_fake, f"/pods/{pod_id}")).json()
    fake_pod = runpod_fake.pod(pod_id)
    ssh_port = fake_pod.container.public_ports[22]
    assert pod["id"] == pod_id and pod["name"] == "job-ann-1"
    assert (pod["image"], pod["env"], pod["ports"]) == (
        IMAGE,
        {"MODEL": "llama"},
        ["8888/http", "22/tcp"],
    )
    assert pod["args"].endswith("import time; time.sleep(600)'")
    assert pod["gpu"] == {"id": RTX_4090, "count": 1}
    assert pod["cloud"] in ("SECURE", "COMMUNITY") and pod["cost"] > 0
    assert pod["actions"] == ["stop", "restart", "terminate"]
    assert pod["mounts"] == {"persistent": {"size": 20, "path": "/workspace"}}
    assert pod["runtime"]["ports"] == [
        {"private": 8888, "public": 8888, "type": "http", "ip": fake_pod.address},
        {"private": 22, "public": ssh_port, "type": "tcp", "ip": "127.0.0.1"},
    ]
    assert pod["ssh"]["direct"]["command"] == f"ssh root@127.0.0.1 -p {ssh_port}"
    assert pod["startedAt"].endswith("Z") and pod["createdAt"].endswith("Z")
    listed = (await rest_get(runpod_fake, "/pods")).json()
    assert [p["id"] for p in listed["pods"]] == [pod_id]


async def test_delete_terminates_and_the_pod_is_gone(runpod_fake):
    pod_id = await create_pod(runpod_fake, "import time; time.sleep(600)")
    await reaches(runpod_fake, pod_id, "RUNNING")
    process = runpod_fake.pod(pod_id).last_process
    async with httpx.AsyncClient(timeout=10) as http:
        url = f"{runpod_fake.rest_url}/pods/{pod_id}"
        first = await http.delete(url, headers=headers_for(runpod_fake))
        second = await http.delete(url, headers=headers_for(runpod_fake))
    assert (first.status_code, first.content) == (204, b"")
    assert process.returncode is not None
    assert second.status_code == 404
    assert second.json() == {"title": "Not Found", "status": 404, "detail": "pod not found"}
    assert (await rest_get(runpod_fake, f"/pods/{pod_id}")).status_code == 404


# -- errors -----------------------------------------------------------------------------


async def test_auth_errors_are_problem_json_401(runpod_fake):
    pod_id = await create_pod(runpod_fake, "print('x')")
    async with httpx.AsyncClient(timeout=10) as http:
        for path in (f"/pods/{pod_id}", f"/pods/{pod_id}/logs", "/pods"):
            url = runpod_fake.rest_url + path
            missing = await http.get(url)
            assert missing.status_code == 401
            assert missing.headers["content-type"] == "application/problem+json"
            assert missing.json() == {
                "title": "Unauthorized",
                "status": 401,
                "detail": "missing bearer token",
            }
            wrong = await http.get(url, headers={"Authorization": "Bearer rpa_WRONG"})
            assert wrong.status_code == 401 and wrong.json()["detail"] == "invalid api key"
            # The GraphQL side's old ?api_key= is not taken here.
            by_query = await http.get(url, params={"api_key": runpod_fake.api_key})
            assert by_query.status_code == 401


async def test_another_accounts_pod_is_404_and_a_read_only_key_cannot_delete(runpod_fake):
    pod_id = await create_pod(runpod_fake, "import time; time.sleep(600)")
    runpod_fake.add_key("rpa_OTHER", user="user_other")
    runpod_fake.add_key("rpa_READONLY", user="user_fake_1", read_only=True)
    assert (await rest_get(runpod_fake, f"/pods/{pod_id}", key="rpa_OTHER")).status_code == 404
    other_logs = await logs(runpod_fake, pod_id, key="rpa_OTHER")
    assert other_logs.status == 404
    assert (await rest_get(runpod_fake, f"/pods/{pod_id}", key="rpa_READONLY")).status_code == 200
    async with httpx.AsyncClient(timeout=10) as http:
        response = await http.delete(
            f"{runpod_fake.rest_url}/pods/{pod_id}",
            headers=headers_for(runpod_fake, "rpa_READONLY"),
        )
    assert response.status_code == 403
    assert response.json() == {"title": "Forbidden", "status": 403, "detail": "access denied"}
    assert pod_id in runpod_fake.pods


async def test_unknown_pod_path_and_method(runpod_fake):
    for path in ("/pods/nosuchpod", "/pods/nosuchpod/logs"):
        response = await rest_get(runpod_fake, path)
        assert response.status_code == 404
        assert response.headers["content-type"] == "application/problem+json"
        assert response.json() == {"title": "Not Found", "status": 404, "detail": "pod not found"}
    response = await rest_get(runpod_fake, "/nothing-here")
    assert (response.status_code, response.json()["title"]) == (404, "Not Found")
    async with httpx.AsyncClient(timeout=10) as http:
        response = await http.post(
            f"{runpod_fake.rest_url}/pods/x/logs", headers=headers_for(runpod_fake)
        )
    assert response.status_code == 405 and response.headers["allow"] == "GET"
    assert response.json()["title"] == "Method Not Allowed"


async def test_invalid_log_parameters_are_400(runpod_fake):
    runpod_fake.allow_invalid = True
    pod_id = await create_pod(runpod_fake, "print('x')")
    cases = [
        ({"tail": "5001"}, None, "tail: value must be between 0 and 5000"),
        ({"tail": "-1"}, None, "tail: value must be between 0 and 5000"),
        ({"tail": "ten"}, None, "tail: value must be an integer"),
        ({"source": "stdout"}, None, "source: value must be one of 'container', 'system'"),
        ({"since": "yesterday"}, None, "since: value must be an RFC 3339 date-time"),
        ({}, "nope/12", "Last-Event-ID: value must be an event id or a date-time"),
    ]
    for params, last_event_id, error in cases:
        stream = await logs(runpod_fake, pod_id, params, last_event_id)
        assert stream.status == 400
        assert json.loads(stream.body) == {
            "title": "Bad Request",
            "status": 400,
            "detail": "request could not be processed",
            "errors": [error],
        }
    assert len(runpod_fake.invalid_requests()) == len(cases)


# -- faults -----------------------------------------------------------------------------


async def test_5xx_for_the_first_requests_then_the_stream(runpod_fake):
    pod_id = await create_pod(runpod_fake, "print('hello')")
    await reaches(runpod_fake, pod_id, "EXITED")
    runpod_fake.inject(field="getPodLogs", status=503, times=2)
    for _ in range(2):
        stream = await logs(runpod_fake, pod_id)
        assert stream.status == 503 and "error code: 503" in stream.body
    assert (await logs(runpod_fake, pod_id)).lines("container") == ["hello"]

    runpod_fake.inject(field="getPod", status=500)
    response = await rest_get(runpod_fake, f"/pods/{pod_id}")
    assert response.status_code == 500
    assert response.json() == {
        "title": "Internal Server Error",
        "status": 500,
        "detail": "internal server error",
    }
    runpod_fake.inject(field="getPod", status=429, retry_after=3)
    response = await rest_get(runpod_fake, f"/pods/{pod_id}")
    assert (response.status_code, response.headers["retry-after"]) == (429, "3")
    assert response.json()["title"] == "Too Many Requests"
    assert (await rest_get(runpod_fake, f"/pods/{pod_id}")).status_code == 200
    recorded = runpod_fake.requests_for("getPodLogs")
    assert [r.status for r in recorded] == [503, 503, 200]


async def test_a_graphql_error_fault_leaves_rest_alone(runpod_fake):
    pod_id = await create_pod(runpod_fake, "print('x')")
    fault = runpod_fake.inject(error="generic", times=-1)
    assert (await rest_get(runpod_fake, f"/pods/{pod_id}")).status_code == 200
    assert fault.hits == 0


async def test_slow_start_is_silence_while_provisioning(runpod_fake):
    runpod_fake.log_heartbeat_s = 0.2
    runpod_fake.inject(slow_start_s=1.5)
    created = time.monotonic()
    pod_id = await create_pod(runpod_fake, "print('finally')")
    first_event_after = []
    statuses = []

    async def on_event(event: Event) -> None:
        if not first_event_after:
            first_event_after.append(time.monotonic() - created)

    async def watch():
        while not first_event_after:
            statuses.append(await status_of(runpod_fake, pod_id))
            await asyncio.sleep(0.1)

    watcher = asyncio.ensure_future(watch())
    stream = await logs(runpod_fake, pod_id, on_event=on_event)
    await watcher
    assert first_event_after[0] >= 1.4
    assert statuses and set(statuses[:-1]) == {"PROVISIONING"}
    assert stream.comments and set(stream.comments) == {"keep-alive"}
    assert_system_start(stream.lines("system"))
    assert stream.lines("container") == ["finally"]
    # The fault was for one pod; the next one starts at once.
    assert runpod_fake.pod(pod_id).slow_start_s == 1.5
    other = await create_pod(runpod_fake)
    assert runpod_fake.pod(other).slow_start_s == 0


async def test_a_pod_that_vanishes(runpod_fake):
    pod_id = await create_pod(runpod_fake, "import time; print('up'); time.sleep(600)")

    async def on_event(event: Event) -> None:
        if event.line == "up":
            await runpod_fake.vanish(pod_id)

    stream = await logs(runpod_fake, pod_id, on_event=on_event)
    assert stream.ended == "end" and stream.lines()[-1] == "up"
    response = await rest_get(runpod_fake, f"/pods/{pod_id}")
    assert response.status_code == 404
    assert (await logs(runpod_fake, pod_id)).status == 404
    query = "query P($input: PodFilter) { pod(input: $input) { id } myself { pods { id } } }"
    answer = await graphql(runpod_fake, query, {"input": {"podId": pod_id}})
    assert answer == {"data": {"pod": None, "myself": {"pods": []}}}
    assert runpod_fake.pod(pod_id).last_process.returncode is not None


async def test_a_pod_made_to_vanish_at_creation(runpod_fake):
    runpod_fake.inject(field="podFindAndDeployOnDemand", vanish_after_s=0.3)
    pod_id = await create_pod(runpod_fake, "import time; print('up'); time.sleep(600)")
    stream = await logs(runpod_fake, pod_id)
    assert stream.ended == "end" and "up" in stream.lines()
    assert (await rest_get(runpod_fake, f"/pods/{pod_id}")).status_code == 404
    assert runpod_fake.pod(pod_id).history[-1] == "TERMINATED"


@pytest.mark.parametrize("drop", [0, 1])
async def test_a_cut_right_away_or_after_one_event(runpod_fake, drop):
    pod_id = await create_pod(runpod_fake, "print('a'); print('b')")
    await reaches(runpod_fake, pod_id, "EXITED")
    runpod_fake.inject(field="getPodLogs", drop_after_events=drop)
    stream = await logs(runpod_fake, pod_id)
    assert (stream.ended, len(stream.events)) == ("cut", drop)
    again = await logs(runpod_fake, pod_id, last_event_id=stream.events[-1].id if drop else None)
    assert again.ended == "end"
    assert [e.line for e in stream.events + again.events][-2:] == ["a", "b"]


async def test_a_client_that_leaves_ends_its_stream_on_the_server(runpod_fake):
    pod_id = await create_pod(runpod_fake, "import time; print('up'); time.sleep(600)")
    async with httpx.AsyncClient(timeout=10) as http:
        url = f"{runpod_fake.rest_url}/pods/{pod_id}/logs"
        async with http.stream("GET", url, headers=headers_for(runpod_fake)) as response:
            async for line in response.aiter_lines():
                if '"line": "up"' in line:
                    break
            assert runpod_fake.log_streams == 1
    await eventually(lambda: asyncio.sleep(0, runpod_fake.log_streams == 0), within=10)


async def test_stopping_the_stand_in_ends_open_streams(make_runpod_fake):
    fake = await make_runpod_fake()
    pod_id = await create_pod(fake, "import time; print('up'); time.sleep(600)")

    stopping = []

    async def on_event(event: Event) -> None:
        if event.line == "up":
            stopping.append(asyncio.ensure_future(fake.stop()))

    stream = await logs(fake, pod_id, on_event=on_event, read_timeout_s=15)
    await stopping[0]
    assert stream.ended in ("end", "cut") and stream.lines()[-1] == "up"
    assert fake.log_streams == 0
    assert fake.pod(pod_id).last_process.returncode is not None
