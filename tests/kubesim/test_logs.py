"""GET pods/{name}/log: options, errors worded as the apiserver and kubelet word them, and
following a running container's output (kubernetes_asyncio and kubectl)."""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import sys
import textwrap

import httpx
import pytest
from kubernetes_asyncio import client
from kubernetes_asyncio.client.exceptions import ApiException

from tests.conftest import api_client_for
from tests.kubesim.generator import make_node
from tests.kubesim.logs import (
    LogBuffer,
    LogOptions,
    LogRequestError,
    check_container_state,
    choose_container,
    parse_options,
    rfc3339_nano,
    select,
    stream,
)
from tests.utils import eventually

PY = sys.executable
STAMP = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{9}Z"


def refused(call, *args) -> LogRequestError:
    with pytest.raises(LogRequestError) as err:
        call(*args)
    return err.value


def test_options_are_checked_like_the_apiserver():
    options = parse_options(
        {"follow": "true", "timestamps": "1", "tailLines": "3", "limitBytes": "10"}, "p"
    )
    assert options == LogOptions(follow=True, timestamps=True, tail_lines=3, limit_bytes=10)
    assert parse_options({"sinceSeconds": "5"}, "p", now_ns=10**10).since_ns == 5 * 10**9
    since = parse_options({"sinceTime": "2024-05-01T12:00:00Z"}, "p").since_ns
    assert since == 1714564800 * 10**9
    err = refused(parse_options, {"tailLines": "-1"}, "p")
    assert (err.code, err.reason) == (422, "Invalid")
    assert err.message == (
        'PodLogOptions "p" is invalid: tailLines: Invalid value: -1: must be greater than or '
        "equal to 0"
    )
    err = refused(parse_options, {"sinceSeconds": "0", "limitBytes": "0"}, "p")
    assert err.message == (
        'PodLogOptions "p" is invalid: [limitBytes: Invalid value: 0: must be greater than 0, '
        "sinceSeconds: Invalid value: 0: must be greater than 0]"
    )
    err = refused(parse_options, {"sinceSeconds": "5", "sinceTime": "2024-05-01T12:00:00Z"}, "p")
    assert err.message.endswith(
        ": Forbidden: at most one of `sinceTime` or `sinceSeconds` may be specified"
    )
    err = refused(parse_options, {"tailLines": "many"}, "p")
    assert (err.code, err.message) == (400, 'tailLines must be a whole number, not "many"')
    assert refused(parse_options, {"follow": "maybe"}, "p").code == 400
    assert refused(parse_options, {"sinceTime": "yesterday"}, "p").code == 400


def test_which_container_and_whether_it_has_a_log():
    pod = {
        "metadata": {"name": "p"},
        "spec": {
            "initContainers": [{"name": "setup"}],
            "containers": [{"name": "main"}, {"name": "side"}],
        },
        "status": {
            "containerStatuses": [
                {"name": "main", "state": {"waiting": {"reason": "ContainerCreating"}}},
                {
                    "name": "side",
                    "state": {"running": {}},
                    "lastState": {"terminated": {"exitCode": 1, "containerID": "containerd://1"}},
                },
            ]
        },
    }
    assert refused(choose_container, pod, None).message == (
        "a container name must be specified for pod p, choose one of: [setup main side]"
    )
    assert refused(choose_container, pod, "nope").message == "container nope is not valid for pod p"
    assert choose_container(pod, "side") == "side"
    assert refused(check_container_state, pod, "main", False).message == (
        'container "main" in pod "p" is waiting to start: ContainerCreating'
    )
    assert refused(check_container_state, pod, "main", True).message == (
        'previous terminated container "main" in pod "p" not found'
    )
    assert refused(check_container_state, pod, "setup", False).message == (
        'container "setup" in pod "p" is not available'
    )
    check_container_state(pod, "side", True)  # a previous instance exists
    check_container_state(pod, "side", False)


def test_tail_then_since_then_timestamps():
    lines = [(n * 10**9, f"line {n}\n".encode()) for n in range(5)]
    assert select(lines, LogOptions(tail_lines=2)) == lines[3:]
    assert select(lines, LogOptions(tail_lines=0)) == []
    assert select(lines, LogOptions(tail_lines=3, since_ns=4 * 10**9)) == lines[4:]
    assert rfc3339_nano(1714564800 * 10**9 + 42) == "2024-05-01T12:00:00.000000042Z"


async def test_a_stream_follows_until_the_buffer_closes_within_its_byte_limit():
    buffer = LogBuffer()
    buffer.append(b"one\n")

    async def read(options):
        return b"".join([chunk async for chunk in stream(buffer, options)])

    follower = asyncio.ensure_future(read(LogOptions(follow=True)))
    await asyncio.sleep(0.05)
    assert not follower.done()
    buffer.append(b"two\n")
    buffer.close()
    assert await follower == b"one\ntwo\n"
    assert await read(LogOptions(limit_bytes=5)) == b"one\nt"
    timestamped = await read(LogOptions(timestamps=True, tail_lines=1))
    assert re.fullmatch(rf"{STAMP} two\n".encode(), timestamped)


# -- through the API ----------------------------------------------------------------------------


@pytest.fixture
async def logged(make_kubesim):
    sim = await make_kubesim(process_runtime=True, restart_backoff_s=0.05)
    sim.load([make_node("worker", 16, 64, None, 0)])
    api = await api_client_for(sim.kubeconfig)
    sim.core = client.CoreV1Api(api)
    yield sim
    await api.close()


def pod(name: str, code: str, restart: str = "Never", **spec) -> dict:
    return {
        "metadata": {"name": name},
        "spec": {
            "restartPolicy": restart,
            "containers": [{"name": "main", "image": "python:3.12", "command": [PY, "-c", code]}],
            **spec,
        },
    }


async def phase_is(sim, name: str, *phases: str):
    found = await sim.core.read_namespaced_pod(name, "default")
    return found if found.status.phase in phases else None


def error_of(err: ApiException) -> tuple[int, str]:
    return err.status, json.loads(err.body)["message"]


async def test_unknown_unscheduled_and_starting_pods(logged):
    core = logged.core
    with pytest.raises(ApiException) as missing:
        await core.read_namespaced_pod_log("ghost", "default")
    assert error_of(missing.value) == (404, 'pods "ghost" not found')

    await core.create_namespaced_pod(
        "default", pod("unplaced", "pass", nodeName=None, schedulerName="elsewhere")
    )
    assert await core.read_namespaced_pod_log("unplaced", "default") == ""

    # A ConfigMap volume that does not exist keeps the container being created.
    waiting = pod("creating", "pass")
    waiting["spec"]["volumes"] = [{"name": "cfg", "configMap": {"name": "absent"}}]
    waiting["spec"]["containers"][0]["volumeMounts"] = [{"name": "cfg", "mountPath": "/cfg"}]
    await core.create_namespaced_pod("default", waiting)

    async def creating():
        found = await core.read_namespaced_pod("creating", "default")
        statuses = found.status.container_statuses or []
        return statuses and statuses[0].state.waiting

    await eventually(creating)
    with pytest.raises(ApiException) as starting:
        await core.read_namespaced_pod_log("creating", "default")
    assert error_of(starting.value) == (
        400,
        'container "main" in pod "creating" is waiting to start: ContainerCreating',
    )


async def test_stdout_and_stderr_interleaved_and_the_options(logged):
    code = textwrap.dedent(
        """
        import sys, time
        for n in range(3):
            print("out", n, flush=True)
            print("err", n, file=sys.stderr, flush=True)
        time.sleep(1.2)
        print("late", flush=True)
        """
    )
    await logged.core.create_namespaced_pod("default", pod("talk", code))
    await eventually(lambda: phase_is(logged, "talk", "Succeeded"), within=15)
    core = logged.core
    text = await core.read_namespaced_pod_log("talk", "default")
    assert text == "out 0\nerr 0\nout 1\nerr 1\nout 2\nerr 2\nlate\n"
    assert await core.read_namespaced_pod_log("talk", "default", tail_lines=2) == "err 2\nlate\n"
    assert await core.read_namespaced_pod_log("talk", "default", limit_bytes=8) == "out 0\ner"
    assert await core.read_namespaced_pod_log("talk", "default", container="main") == text
    stamped = await core.read_namespaced_pod_log("talk", "default", timestamps=True)
    assert all(re.fullmatch(rf"{STAMP} \S+( \d)?", line) for line in stamped.splitlines())
    # The last line came over a second after the others: sinceTime at its second.
    late = stamped.splitlines()[-1].split(" ")[0]
    async with httpx.AsyncClient(base_url=logged.url) as http:
        answer = await http.get(
            "/api/v1/namespaces/default/pods/talk/log", params={"sinceTime": late[:19] + "Z"}
        )
    assert answer.status_code == 200 and answer.text.endswith("late\n")
    assert "out 0" not in answer.text
    recent = await core.read_namespaced_pod_log("talk", "default", since_seconds=3600)
    assert recent == text


async def test_follow_streams_while_the_container_runs(logged):
    code = "import time\nfor n in range(4):\n    print('tick', n, flush=True)\n    time.sleep(0.3)"
    await logged.core.create_namespaced_pod("default", pod("ticker", code))
    await eventually(lambda: phase_is(logged, "ticker", "Running"))
    response = await logged.core.read_namespaced_pod_log(
        "ticker", "default", follow=True, _preload_content=False
    )
    assert response.headers.get("Transfer-Encoding") == "chunked"
    first = await response.content.readline()
    assert first == b"tick 0\n"
    # The first line came while the container was still running.
    assert (await logged.core.read_namespaced_pod("ticker", "default")).status.phase == "Running"
    rest = await asyncio.wait_for(response.content.read(), 10)
    assert rest == b"tick 1\ntick 2\ntick 3\n"  # and the stream ended with the container
    response.release()


async def test_previous_instance_after_a_restart(logged):
    code = textwrap.dedent(
        """
        import os, pathlib
        mark = pathlib.Path(os.environ["HOME"], "ran")
        if mark.exists():
            print("second")
        else:
            mark.write_text("x")
            print("first")
            raise SystemExit(1)
        """
    )
    await logged.core.create_namespaced_pod("default", pod("again", code, "OnFailure"))
    await eventually(lambda: phase_is(logged, "again", "Succeeded"))
    core = logged.core
    assert await core.read_namespaced_pod_log("again", "default") == "second\n"
    assert await core.read_namespaced_pod_log("again", "default", previous=True) == "first\n"
    await core.create_namespaced_pod("default", pod("once", "print('only')"))
    await eventually(lambda: phase_is(logged, "once", "Succeeded"))
    with pytest.raises(ApiException) as err:
        await core.read_namespaced_pod_log("once", "default", previous=True)
    assert error_of(err.value) == (
        400,
        'previous terminated container "main" in pod "once" not found',
    )


async def test_several_containers_need_a_name(logged):
    two = pod("two", "print('a')")
    two["spec"]["containers"].append(
        {"name": "b", "image": "python:3.12", "command": [PY, "-c", "print('b')"]}
    )
    await logged.core.create_namespaced_pod("default", two)
    await eventually(lambda: phase_is(logged, "two", "Succeeded"))
    with pytest.raises(ApiException) as err:
        await logged.core.read_namespaced_pod_log("two", "default")
    assert error_of(err.value) == (
        400,
        "a container name must be specified for pod two, choose one of: [main b]",
    )
    assert await logged.core.read_namespaced_pod_log("two", "default", container="b") == "b\n"


async def test_pretend_containers_have_an_empty_log(kubesim):
    kubesim.load([make_node("worker", 16, 64, None, 0)])
    api = await api_client_for(kubesim.kubeconfig)
    core = client.CoreV1Api(api)
    await core.create_namespaced_pod(
        "default",
        {"metadata": {"name": "quiet"}, "spec": {"containers": [{"name": "c", "image": "x"}]}},
    )
    await eventually(lambda: _running(core, "quiet"))
    assert await core.read_namespaced_pod_log("quiet", "default") == ""
    # A follower waits for output that never comes, until the pod goes.
    response = await core.read_namespaced_pod_log(
        "quiet", "default", follow=True, _preload_content=False
    )
    await core.delete_namespaced_pod("quiet", "default", grace_period_seconds=0)
    assert await asyncio.wait_for(response.content.read(), 5) == b""
    response.release()
    await api.close()


async def _running(core, name):
    return (await core.read_namespaced_pod(name, "default")).status.phase == "Running"


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl is not installed")
async def test_kubectl_logs_follow(logged):
    from tests.kubesim.test_kubectl import kubectl

    code = "import time\nfor n in range(3):\n    print('step', n, flush=True)\n    time.sleep(0.2)"
    await logged.core.create_namespaced_pod("default", pod("steps", code))
    await eventually(lambda: phase_is(logged, "steps", "Running", "Succeeded"))
    out = await kubectl(logged, "logs", "-f", "steps")
    assert out == "step 0\nstep 1\nstep 2\n"
    stamped = await kubectl(logged, "logs", "--timestamps", "--tail=1", "steps")
    assert re.fullmatch(rf"{STAMP} step 2\n", stamped)
