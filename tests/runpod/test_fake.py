"""The RunPod stand-in itself: RunPod's answer shapes, and pods that really run."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import sys
import textwrap
import time
from pathlib import Path

import httpx
import pytest

from tests.runpod.conftest import client_for
from tests.runpod_fake import CAPACITY_MESSAGE
from tests.utils import eventually
from thinkube_core.runpod import PodRequest

ROOT = Path(__file__).resolve().parents[2]
RTX_4090 = "NVIDIA GeForce RTX 4090"

SERVER = textwrap.dedent(
    """
    import http.server, os, sys
    host, port = sys.argv[sys.argv.index("--bind") + 1], int(sys.argv[sys.argv.index("--port") + 1])
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            body = f"{os.environ['GREETING']} from {os.environ['RUNPOD_POD_ID']} on {host}".encode()
            self.send_response(200)
            self.end_headers()
            self.wfile.write(body)
        def log_message(self, *args):
            pass
    print("serving", flush=True)
    http.server.HTTPServer((host, port), Handler).serve_forever()
    """
)


async def post(fake, payload, key=None, params=None):
    headers = {"Authorization": f"Bearer {key or fake.api_key}"} if key is not False else {}
    async with httpx.AsyncClient() as http:
        return await http.post(fake.url, json=payload, headers=headers, params=params)


# -- RunPod's answer shapes -------------------------------------------------------


async def test_unknown_field_is_400_graphql_validation_failed(runpod_fake):
    runpod_fake.allow_invalid = True
    response = await post(runpod_fake, {"query": "query { myself { id nope } }"})
    assert response.status_code == 400
    assert response.json() == {
        "errors": [
            {
                "message": "Cannot query field 'nope' on type 'User'.",
                "locations": [{"line": 1, "column": 21}],
                "extensions": {"code": "GRAPHQL_VALIDATION_FAILED"},
            }
        ]
    }


async def test_unknown_input_field_is_400_graphql_validation_failed(runpod_fake):
    runpod_fake.allow_invalid = True
    query = (
        'mutation { podFindAndDeployOnDemand(input: {gpuTypeId: "NVIDIA L4", '
        'imageName: "x", dataCenters: ["EU-RO-1"]}) { id } }'
    )
    response = await post(runpod_fake, {"query": query})
    assert response.status_code == 400
    (error,) = response.json()["errors"]
    assert error["extensions"] == {"code": "GRAPHQL_VALIDATION_FAILED"}
    assert error["message"].startswith(
        "Expected value of type 'PodFindAndDeployOnDemandInput' not to include unknown field "
        "'dataCenters'"
    )
    assert runpod_fake.pods == {}


async def test_syntax_error_is_400_parse_failed(runpod_fake):
    runpod_fake.allow_invalid = True
    response = await post(runpod_fake, {"query": "query { myself { id }"})
    assert response.status_code == 400
    assert response.json()["errors"][0]["extensions"] == {"code": "GRAPHQL_PARSE_FAILED"}


async def test_wrong_or_missing_key_is_401(runpod_fake):
    for key in ("rpa_WRONG", False):
        response = await post(runpod_fake, {"query": "query { myself { id } }"}, key=key)
        assert (response.status_code, response.json()) == (
            401,
            {"errors": [{"message": "Unauthorized"}]},
        )
    # Older clients send the key as ?api_key=.
    response = await post(
        runpod_fake,
        {"query": "query { myself { id } }"},
        key=False,
        params={"api_key": runpod_fake.api_key},
    )
    assert response.json() == {"data": {"myself": {"id": "user_fake_1"}}}


async def test_capacity_answer_is_runpods_exact_shape(runpod_fake):
    runpod_fake.set_capacity(RTX_4090, 0)
    query = (
        "mutation Deploy($input: PodFindAndDeployOnDemandInput!) "
        "{ podFindAndDeployOnDemand(input: $input) { id } }"
    )
    variables = {"input": {"gpuTypeId": RTX_4090, "imageName": "img", "gpuCount": 1}}
    response = await post(runpod_fake, {"query": query, "variables": variables})
    assert response.status_code == 200
    assert response.json() == {
        "errors": [
            {
                "message": "There are no longer any instances available with the requested "
                "specifications. Please refresh and try again.",
                "path": ["podFindAndDeployOnDemand"],
                "extensions": {"code": "SUPPLY_CONSTRAINT"},
            }
        ],
        "data": {"podFindAndDeployOnDemand": None},
    }
    assert CAPACITY_MESSAGE == response.json()["errors"][0]["message"]


async def test_terminate_twice_answers_pod_not_found(runpod_fake, runpod_client):
    pod = await runpod_client.create_pod(
        PodRequest(name="t", image_name="img", gpu_type_id=RTX_4090)
    )
    query = "mutation T($input: PodTerminateInput!) { podTerminate(input: $input) }"
    payload = {"query": query, "variables": {"input": {"podId": pod.id}}}
    first = await post(runpod_fake, payload)
    assert first.json() == {"data": {"podTerminate": None}}
    second = await post(runpod_fake, payload)
    assert second.status_code == 200
    assert second.json() == {
        "errors": [{"message": "pod not found to terminate", "path": ["podTerminate"]}],
        "data": {"podTerminate": None},
    }


async def test_injected_failures(runpod_fake):
    query = {"query": "query { myself { id } }"}
    runpod_fake.inject(status=502)
    response = await post(runpod_fake, query)
    assert response.status_code == 502 and "error code: 502" in response.text
    runpod_fake.inject(status=500)
    response = await post(runpod_fake, query)
    assert response.status_code == 500
    assert response.json()["errors"][0]["message"].startswith("Something went wrong.")
    runpod_fake.inject(status=429, retry_after=7)
    response = await post(runpod_fake, query)
    assert (response.status_code, response.headers["Retry-After"]) == (429, "7")
    runpod_fake.inject(delay_s=0.5)
    started = time.monotonic()
    response = await post(runpod_fake, query)
    assert response.status_code == 200 and time.monotonic() - started >= 0.5
    response = await post(runpod_fake, query)
    assert response.json() == {"data": {"myself": {"id": "user_fake_1"}}}


# -- pods that really run ---------------------------------------------------------


def server_request(tmp_path, name="web", ports="8080/http", greeting="hello", **kwargs):
    script = tmp_path / "server.py"
    script.write_text(SERVER)
    return PodRequest(
        name=name,
        image_name="python:3.11-slim",
        gpu_type_id=RTX_4090,
        docker_args=f"python {script} --bind 0.0.0.0 --port 8080",
        ports=ports,
        env={"GREETING": greeting},
        **kwargs,
    )


async def get_text(url: str) -> str:
    async with httpx.AsyncClient(timeout=5) as http:
        response = await http.get(url)
        response.raise_for_status()
        return response.text


async def answers(url: str) -> str | None:
    try:
        return await get_text(url)
    except httpx.HTTPError:
        return None


async def test_pod_lifecycle_with_a_real_process(runpod_fake, runpod_client, tmp_path):
    runpod_fake.start_delay_s = 0.5
    pod = await runpod_client.create_pod(server_request(tmp_path))
    # Created: desired RUNNING, no runtime, no ports, no process yet.
    fetched = await runpod_client.get_pod(pod.id)
    assert (fetched.desired_status, fetched.has_runtime, fetched.ports) == ("RUNNING", False, ())
    assert runpod_fake.pod(pod.id).last_process is None

    pod = await runpod_client.wait_for_pod(pod.id, port=8080, timeout_s=10, interval_s=0.05)
    address = runpod_fake.pod(pod.id).address
    assert re.fullmatch(r"127\.\d+\.\d+\.\d+", address) and address != "127.0.0.1"
    url = runpod_client.proxy_url(pod, 8080)
    assert url == f"http://{address}:8080" == runpod_fake.proxy_url(pod.id, 8080)
    text = await eventually(lambda: answers(url), within=15, interval=0.1)
    assert text == f"hello from {pod.id} on {address}"  # 0.0.0.0 became the pod's address
    assert "serving" in runpod_fake.output(pod.id)

    process = runpod_fake.pod(pod.id).last_process
    await runpod_client.terminate_pod(pod.id)
    assert process.returncode is not None
    with pytest.raises(httpx.ConnectError):
        await get_text(url)


async def test_each_pod_has_its_own_address(runpod_fake, runpod_client, tmp_path):
    pods = [
        await runpod_client.create_pod(server_request(tmp_path, name=f"p{i}", greeting=f"hi{i}"))
        for i in range(2)
    ]
    texts = []
    for pod in pods:
        pod = await runpod_client.wait_for_pod(pod.id, port=8080, timeout_s=10, interval_s=0.05)
        url = runpod_client.proxy_url(pod, 8080)
        texts.append(await eventually(lambda url=url: answers(url), within=15, interval=0.1))
    addresses = [runpod_fake.pod(p.id).address for p in pods]
    assert len(set(addresses)) == 2
    assert texts == [
        f"hi0 from {pods[0].id} on {addresses[0]}",
        f"hi1 from {pods[1].id} on {addresses[1]}",
    ]


async def test_tcp_ports_are_forwarded_from_the_public_ip(runpod_fake, runpod_client, tmp_path):
    pod = await runpod_client.create_pod(server_request(tmp_path, ports="8080/tcp"))
    pod = await runpod_client.wait_for_pod(pod.id, port=8080, timeout_s=10, interval_s=0.05)
    mapping = pod.port(8080, "tcp")
    assert (mapping.ip, mapping.is_ip_public) == ("127.0.0.1", True)
    assert mapping.public_port != 8080
    url = f"http://127.0.0.1:{mapping.public_port}/"
    text = await eventually(lambda: answers(url), within=15, interval=0.1)
    assert text == f"hello from {pod.id} on {runpod_fake.pod(pod.id).address}"


async def test_a_process_that_exits_ends_the_pod(runpod_fake, runpod_client):
    pod = await runpod_client.create_pod(
        PodRequest(
            name="short",
            image_name="img",
            gpu_type_id=RTX_4090,
            docker_args="python -c \"print('bye from', __import__('os').environ['RUNPOD_POD_ID'])\"",
        )
    )

    async def exited():
        current = await runpod_client.get_pod(pod.id)
        return current if current.desired_status == "EXITED" else None

    current = await eventually(exited, within=15, interval=0.1)
    assert current.has_runtime is False
    assert runpod_fake.pod(pod.id).exit_code == 0
    assert runpod_fake.output(pod.id) == f"bye from {pod.id}\n"


async def test_a_command_that_cannot_start_ends_the_pod(runpod_fake, runpod_client):
    pod = await runpod_client.create_pod(
        PodRequest(name="bad", image_name="img", gpu_type_id=RTX_4090, docker_args="no-such-cmd")
    )

    async def exited():
        return runpod_fake.pod(pod.id).desired_status == "EXITED"

    await eventually(exited, within=10)
    assert runpod_fake.pod(pod.id).exit_code == 127
    assert "container failed to start" in runpod_fake.output(pod.id)


async def test_start_jupyter_runs_a_real_jupyter_with_the_password_as_token(
    runpod_fake, runpod_client
):
    password = 'Tok"en\\-0123456789'
    pod = await runpod_client.create_pod(
        PodRequest(
            name="jupyter",
            image_name="runpod/pytorch:2.4.0-py3.11-cuda12.4.1-devel-ubuntu22.04",
            gpu_type_id=RTX_4090,
            ports="8888/http,22/tcp",
            start_jupyter=True,
            env={"JUPYTER_PASSWORD": password},
        )
    )
    pod = await runpod_client.wait_for_pod(pod.id, port=8888, timeout_s=10, interval_s=0.05)
    url = runpod_client.proxy_url(pod, 8888)
    status = await runpod_client.wait_for_http(
        f"{url}/api/status", headers={"Authorization": f"token {password}"}, timeout_s=60
    )
    assert status == 200

    async def status_of(**params) -> int:
        async with httpx.AsyncClient(timeout=10) as http:  # a fresh one: no login cookie
            return (await http.get(f"{url}/api/status", params=params)).status_code

    assert await status_of(token=password) == 200
    assert await status_of() == 403
    assert await status_of(token="wrong") == 403
    process = runpod_fake.pod(pod.id).last_process
    cmdline = await asyncio.to_thread(Path(f"/proc/{process.pid}/cmdline").read_text)
    assert "jupyter" in cmdline and password not in cmdline  # the token is not on the command line
    await runpod_client.terminate_pod(pod.id)
    assert process.returncode is not None


# -- standalone -------------------------------------------------------------------


async def test_python_dash_m_runs_it_standalone(tmp_path):
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tests.runpod_fake",
        "--port",
        "0",
        "--api-key",
        "rpa_STANDALONE0000",
        "--capacity",
        f"{RTX_4090}=0",
        "--log-level",
        "WARNING",
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    try:
        line = (await asyncio.wait_for(process.stdout.readline(), 30)).decode()
        match = re.fullmatch(
            r"runpod-fake listening on (http://127\.0\.0\.1:(\d+)/graphql)\n", line
        )
        assert match, line
        fake_like = type("F", (), {"url": match.group(1), "api_key": "rpa_STANDALONE0000"})
        fake_like.proxy_url_template = "http://{ip}:{port}"
        async with client_for(fake_like) as client:
            offers = await client.offers(gpu="4090")
        assert [(o.cloud_type, o.stock) for o in offers] == [("COMMUNITY", None), ("SECURE", None)]
        line = (await asyncio.wait_for(process.stdout.readline(), 10)).decode()
        assert line == f"runpod-fake REST v2 at {match.group(1).removesuffix('/graphql')}/v2\n"
        async with httpx.AsyncClient(timeout=10) as http:
            response = await http.get(
                line.split()[-1] + "/pods", headers={"Authorization": "Bearer rpa_STANDALONE0000"}
            )
        assert response.json() == {"pods": []}
    finally:
        if process.returncode is None:
            process.send_signal(signal.SIGTERM)
        code = await asyncio.wait_for(process.wait(), 15)
    assert code == 0
