"""The RunPod client against the stand-in: real HTTP, RunPod's schema enforced."""

from __future__ import annotations

import asyncio
import logging
import pickle
import socket
import time
from datetime import UTC, datetime, timedelta

import pytest

from tests.runpod.conftest import client_for
from tests.runpod_fake import CAPACITY_MESSAGE, GENERIC_MESSAGE
from tests.utils import eventually
from thinkube_core.runpod import (
    CREATE_ID_ENV,
    AuthError,
    CapacityError,
    ConfigurationError,
    InvalidRequestError,
    PodRequest,
    PodWaitTimeout,
    RunPodClient,
    RunPodError,
    Secret,
    UnavailableError,
    queries,
    resolve_api_key,
    resolve_api_url,
)

RTX_4090 = "NVIDIA GeForce RTX 4090"


def request(**kwargs) -> PodRequest:
    values = {
        "name": "thinkube-test-alice-default",
        "image_name": "runpod/pytorch:2.4.0-py3.11-cuda12.4.1-devel-ubuntu22.04",
        "gpu_type_id": RTX_4090,
        "cloud_type": "COMMUNITY",
    }
    values.update(kwargs)
    return PodRequest(**values)


# -- reading ----------------------------------------------------------------------


async def test_check_returns_the_account(runpod_client):
    assert await runpod_client.check() == "user_fake_1"


async def test_offers_from_the_stand_in(runpod_fake, runpod_client):
    offers = await runpod_client.offers(min_vram_gb=24, max_price_per_hour=0.3)
    assert [(o.display_name, o.cloud_type, o.price_per_hour, o.stock) for o in offers] == [
        ("RTX 3090", "COMMUNITY", 0.22, "High"),
        ("RTX A5000", "COMMUNITY", 0.22, "High"),
        ("RTX A5000", "SECURE", 0.29, "High"),
    ]
    runpod_fake.set_capacity("NVIDIA GeForce RTX 3090", 1, "COMMUNITY")
    runpod_fake.set_capacity("NVIDIA RTX A5000", 2)
    offers = await runpod_client.offers(min_vram_gb=24, max_price_per_hour=0.3)
    assert [(o.display_name, o.cloud_type, o.stock) for o in offers] == [
        ("RTX A5000", "COMMUNITY", "Medium"),
        ("RTX 3090", "COMMUNITY", "Low"),
        ("RTX A5000", "SECURE", "Medium"),
    ]
    spot = await runpod_client.offers(gpu="4090", spot=True)
    assert [(o.cloud_type, o.spot_price_per_hour) for o in spot] == [
        ("COMMUNITY", 0.2),
        ("SECURE", 0.35),
    ]
    two = await runpod_client.offers(gpu="4090", gpu_count=2, cloud_type="SECURE")
    assert [(o.gpu_count, o.price_per_hour) for o in two] == [(2, 1.38)]


async def test_get_pod_of_nobody_is_none(runpod_client):
    assert await runpod_client.get_pod("nosuchpod00000") is None


# -- creating, reading, ending ----------------------------------------------------


async def test_on_demand_pod_lifecycle(runpod_fake, runpod_client):
    terminate_after = datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC)
    pod = await runpod_client.create_pod(
        request(
            docker_args="sleep 300",
            ports="8888/http,22/tcp",
            env={"HELLO": "world"},
            meta={"hub": "lab", "user": "alice"},
            container_disk_in_gb=30,
            terminate_after=terminate_after,
        )
    )
    sent = runpod_fake.pod(pod.id).input
    assert {k: v for k, v in sent.items() if k != "env"} == {
        "name": "thinkube-test-alice-default",
        "imageName": "runpod/pytorch:2.4.0-py3.11-cuda12.4.1-devel-ubuntu22.04",
        "gpuTypeId": RTX_4090,
        "gpuCount": 1,
        "cloudType": "COMMUNITY",
        "dockerArgs": "sleep 300",
        "ports": "8888/http,22/tcp",
        "containerDiskInGb": 30,
        "terminateAfter": "2030-01-02T03:04:05.000Z",
    }
    assert sent["env"][:3] == [
        {"key": "HELLO", "value": "world"},
        {"key": "THINKUBE_HUB", "value": "lab"},
        {"key": "THINKUBE_USER", "value": "alice"},
    ]
    assert sent["env"][3]["key"] == CREATE_ID_ENV
    # Created: desired RUNNING, but no container yet.
    assert (pod.desired_status, pod.has_runtime, pod.ports, pod.is_running) == (
        "RUNNING",
        False,
        (),
        False,
    )
    assert (pod.cost_per_hr, pod.gpu_display_name, pod.pod_type) == (0.34, "RTX 4090", "RESERVED")
    assert pod.meta == {"hub": "lab", "user": "alice"}

    pod = await runpod_client.wait_for_pod(pod.id, port=8888, timeout_s=10, interval_s=0.05)
    assert pod.is_running and pod.uptime_seconds is not None
    address = runpod_fake.pod(pod.id).address
    http = pod.port(8888)
    assert (http.ip, http.private_port, http.type) == (address, 8888, "http")
    ssh = pod.port(22, "tcp")
    assert (ssh.ip, ssh.is_ip_public) == ("127.0.0.1", True)
    assert pod.ssh_command() == f"ssh -p {ssh.public_port} root@127.0.0.1 -L 8888:localhost:8888"
    assert runpod_client.proxy_url(pod, 8888) == f"http://{address}:8888"
    assert pod.proxy_url(8888) == f"https://{pod.id}-8888.proxy.runpod.net"
    assert len(pod.gpus) == 1

    process = runpod_fake.pod(pod.id).last_process
    assert process.returncode is None
    assert await runpod_client.terminate_pod(pod.id) is True
    assert process.returncode is not None
    assert await runpod_client.terminate_pod(pod.id) is False  # "pod not found to terminate"
    assert await runpod_client.get_pod(pod.id) is None
    assert runpod_fake.terminated[pod.id].desired_status == "TERMINATED"


async def test_spot_pod(runpod_fake, runpod_client):
    pod = await runpod_client.create_spot_pod(request(cloud_type="SECURE"), bid_per_gpu=0.4)
    assert (pod.pod_type, pod.cost_per_hr) == ("INTERRUPTABLE", 0.4)
    assert runpod_fake.pod(pod.id).input["bidPerGpu"] == 0.4
    assert [r.operation_name for r in runpod_fake.requests_for("podRentInterruptable")] == [
        "RentInterruptable"
    ]
    with pytest.raises(RunPodError) as caught:
        await runpod_client.create_spot_pod(request(cloud_type="SECURE"), bid_per_gpu=0.1)
    assert type(caught.value) is RunPodError
    assert "minimum bid price of $0.350/hr" in str(caught.value)
    assert len(runpod_fake.pods) == 1
    await runpod_client.terminate_pod(pod.id)


async def test_create_first_available_moves_on_after_capacity_errors(runpod_fake, runpod_client):
    offers = await runpod_client.offers(min_vram_gb=24, max_price_per_hour=0.3)
    runpod_fake.inject(error="capacity", field="podFindAndDeployOnDemand")
    events = []

    async def on_capacity(offer, err):
        events.append(("full", offer.display_name, err.code))

    pod, offer = await runpod_client.create_first_available(
        offers,
        lambda o: request(gpu_type_id=o.gpu_type_id, cloud_type=o.cloud_type, name=o.key),
        on_try=lambda o: events.append(("try", o.display_name, o.cloud_type)),
        on_capacity=on_capacity,
    )
    assert events == [
        ("try", "RTX 3090", "COMMUNITY"),
        ("full", "RTX 3090", "SUPPLY_CONSTRAINT"),
        ("try", "RTX A5000", "COMMUNITY"),
    ]
    assert (offer.display_name, pod.name) == ("RTX A5000", "COMMUNITY:NVIDIA RTX A5000:1")
    assert list(runpod_fake.pods) == [pod.id]


async def test_create_first_available_spot_and_giving_up(runpod_fake, runpod_client):
    offers = await runpod_client.offers(gpu="4090", spot=True)
    pod, offer = await runpod_client.create_first_available(
        offers, lambda o: request(cloud_type=o.cloud_type), spot=True
    )
    assert (offer.cloud_type, pod.pod_type, runpod_fake.pod(pod.id).input["bidPerGpu"]) == (
        "COMMUNITY",
        "INTERRUPTABLE",
        0.2,
    )
    runpod_fake.set_capacity(RTX_4090, 0)
    with pytest.raises(CapacityError) as caught:
        await runpod_client.create_first_available(
            offers, lambda o: request(cloud_type=o.cloud_type), spot=True, attempts=5
        )
    assert str(caught.value) == "none of the 2 cheapest matching offer(s) had capacity"
    assert len(runpod_fake.requests_for("podRentInterruptable")) == 3


async def test_create_first_available_raises_other_errors_at_once(runpod_fake):
    runpod_fake.add_key("rpa_READONLY11111111111", read_only=True)
    async with client_for(runpod_fake, api_key="rpa_READONLY11111111111") as client:
        offers = await client.offers()
        with pytest.raises(AuthError):
            await client.create_first_available(offers, lambda o: request())
    assert len(runpod_fake.requests_for("podFindAndDeployOnDemand")) == 1


async def test_gpu_type_list_on_demand_takes_the_first_with_capacity(runpod_fake, runpod_client):
    runpod_fake.set_capacity(RTX_4090, 0)
    pod = await runpod_client.create_pod(
        request(gpu_type_id=None, gpu_type_ids=[RTX_4090, "NVIDIA RTX A5000"], cloud_type="ALL")
    )
    assert runpod_fake.pod(pod.id).gpu_type.id == "NVIDIA RTX A5000"
    assert runpod_fake.pod(pod.id).input["gpuTypeIdList"] == [RTX_4090, "NVIDIA RTX A5000"]


async def test_stop_keeps_the_pod_and_ends_its_process(runpod_fake, runpod_client):
    pod = await runpod_client.create_pod(request(docker_args="sleep 300"))
    await runpod_client.wait_for_pod(pod.id, timeout_s=10, interval_s=0.05)
    process = runpod_fake.pod(pod.id).last_process
    free_before = runpod_fake.capacity[(RTX_4090, "COMMUNITY")]
    stopped = await runpod_client.stop_pod(pod.id)
    assert (stopped.desired_status, stopped.has_runtime) == ("EXITED", False)
    assert process.returncode is not None
    assert runpod_fake.capacity[(RTX_4090, "COMMUNITY")] == free_before + 1
    assert [p.id for p in await runpod_client.list_pods()] == [pod.id]
    with pytest.raises(RunPodError, match="ended while starting"):
        await runpod_client.wait_for_pod(pod.id, timeout_s=5, interval_s=0.05)
    await runpod_client.terminate_pod(pod.id)


async def test_list_pods_by_name_prefix_and_metadata(runpod_fake, runpod_client):
    a = await runpod_client.create_pod(request(name="hubA-alice-", meta={"hub": "a"}))
    b = await runpod_client.create_pod(request(name="hubA-bob-", meta={"hub": "a", "x": "1"}))
    c = await runpod_client.create_pod(request(name="other", meta={"hub": "b"}))
    other_key = "rpa_OTHERACCOUNTKEY000000"
    runpod_fake.add_key(other_key, user="someone_else")
    async with client_for(runpod_fake, api_key=other_key) as stranger:
        await stranger.create_pod(request(name="hubA-mallory-", meta={"hub": "a"}))
        assert await stranger.get_pod(a.id) is None
    ids = lambda pods: sorted(p.id for p in pods)  # noqa: E731
    assert ids(await runpod_client.list_pods()) == sorted([a.id, b.id, c.id])
    assert ids(await runpod_client.list_pods(name_prefix="hubA-")) == sorted([a.id, b.id])
    assert ids(await runpod_client.list_pods(meta={"hub": "a"})) == sorted([a.id, b.id])
    assert ids(await runpod_client.list_pods(meta={"hub": "a", "x": "1"})) == [b.id]
    assert ids(await runpod_client.list_pods(meta={"HUB": "b"})) == [c.id]


async def test_names_and_env_with_quotes_and_backslashes_round_trip(runpod_fake, runpod_client):
    name = 'it\'s "quoted" \\ back\\slash } { $x'
    password = 'p"w\\d{}\n"); mutation { x }'
    pod = await runpod_client.create_pod(
        request(name=name, env={"JUPYTER_PASSWORD": password}, meta={"note": 'a"b\\c'})
    )
    (listed,) = await runpod_client.list_pods()
    assert listed.name == name
    assert listed.env["JUPYTER_PASSWORD"] == password
    assert listed.meta == {"note": 'a"b\\c'}
    (deploy,) = runpod_fake.requests_for("podFindAndDeployOnDemand")
    assert deploy.query == queries.DEPLOY_ON_DEMAND  # the text never changes
    assert deploy.variables["input"]["name"] == name
    assert password not in deploy.query and name not in deploy.query
    assert runpod_fake.pod(pod.id).env["JUPYTER_PASSWORD"] == password


async def test_wait_for_pod_times_out(runpod_fake, runpod_client):
    runpod_fake.start_delay_s = 30
    pod = await runpod_client.create_pod(request())
    started = time.monotonic()
    with pytest.raises(PodWaitTimeout, match=f"pod {pod.id} was not running with port 8888"):
        await runpod_client.wait_for_pod(pod.id, port=8888, timeout_s=0.5, interval_s=0.1)
    assert time.monotonic() - started < 3
    await runpod_client.terminate_pod(pod.id)


async def test_wait_for_http_stops_when_the_pod_ends(runpod_fake, runpod_client):
    pod = await runpod_client.create_pod(request(docker_args="sleep 300", ports="8888/http"))
    pod = await runpod_client.wait_for_pod(pod.id, port=8888, timeout_s=10, interval_s=0.05)
    url = runpod_client.proxy_url(pod, 8888)  # nothing listens there
    waiting = asyncio.ensure_future(
        runpod_client.wait_for_http(url, timeout_s=30, interval_s=0.1, pod_id=pod.id)
    )
    await asyncio.sleep(0.3)
    assert not waiting.done()
    await runpod_fake.stop_pod(pod.id)
    with pytest.raises(RunPodError) as caught:
        await asyncio.wait_for(waiting, 5)
    assert str(caught.value) == f"pod {pod.id} ended while starting (desiredStatus EXITED)"
    with pytest.raises(PodWaitTimeout, match=r"did not answer within 1s \(last: ConnectError\)"):
        await runpod_client.wait_for_http(url, timeout_s=1, interval_s=0.1)


async def test_the_dead_man_switch_is_sent_and_honoured(runpod_fake, runpod_client):
    pod = await runpod_client.create_pod(
        request(docker_args="sleep 300", terminate_after=datetime.now(UTC) + timedelta(seconds=2))
    )
    await runpod_client.wait_for_pod(pod.id, timeout_s=10, interval_s=0.05)

    async def gone():
        return await runpod_client.get_pod(pod.id) is None

    await eventually(gone, within=10, interval=0.1)
    assert runpod_fake.pod(pod.id).last_process.returncode is not None


# -- typed errors -----------------------------------------------------------------


async def test_capacity_error_is_typed_and_not_retried(runpod_fake, runpod_client):
    runpod_fake.set_capacity(RTX_4090, 0)
    with pytest.raises(CapacityError) as caught:
        await runpod_client.create_pod(request())
    err = caught.value
    assert (err.message, err.code, err.status, err.field) == (
        CAPACITY_MESSAGE,
        "SUPPLY_CONSTRAINT",
        200,
        "podFindAndDeployOnDemand",
    )
    assert len(runpod_fake.requests_for("podFindAndDeployOnDemand")) == 1
    assert runpod_fake.pods == {}


async def test_capacity_by_message_alone_is_a_capacity_error(runpod_fake, runpod_client):
    runpod_fake.inject(
        error="There are no longer any instances available with enough disk space.",
        field="podFindAndDeployOnDemand",
    )
    with pytest.raises(CapacityError) as caught:
        await runpod_client.create_pod(request())
    assert caught.value.code is None


async def test_capacity_is_given_back_on_terminate(runpod_fake, runpod_client):
    runpod_fake.set_capacity(RTX_4090, 1, "COMMUNITY")
    first = await runpod_client.create_pod(request())
    with pytest.raises(CapacityError):
        await runpod_client.create_pod(request())
    await runpod_client.terminate_pod(first.id)
    second = await runpod_client.create_pod(request())
    assert second.id != first.id


async def test_validation_errors_are_typed_and_not_retried(runpod_fake, runpod_client):
    runpod_fake.allow_invalid = True
    with pytest.raises(InvalidRequestError) as caught:
        await runpod_client.execute("query Bad { myself { id noSuchField } }", field="myself")
    err = caught.value
    assert (err.code, err.status) == ("GRAPHQL_VALIDATION_FAILED", 400)
    assert err.message == "Cannot query field 'noSuchField' on type 'User'."
    assert len(runpod_fake.requests) == 1


async def test_unknown_input_field_is_refused_as_the_real_api_would(runpod_fake, runpod_client):
    runpod_fake.allow_invalid = True
    secret = "hub-token-0123456789abcdef"
    with pytest.raises(InvalidRequestError) as caught:
        await runpod_client.create_pod(
            request(env={"JUPYTERHUB_API_TOKEN": secret}, extra={"dataCenters": ["EU-RO-1"]})
        )
    err = caught.value
    assert (err.code, err.status) == ("BAD_USER_INPUT", 400)
    assert "unknown field 'dataCenters'" in err.message
    assert secret not in err.message and secret not in repr(err)
    assert len(runpod_fake.requests) == 1  # not retried, and no search for a lost pod
    assert runpod_fake.pods == {}


async def test_wrong_key_is_an_auth_error_without_retries(runpod_fake):
    async with client_for(runpod_fake, api_key="rpa_WRONGKEY1234567890") as client:
        with pytest.raises(AuthError) as caught:
            await client.offers()
    assert caught.value.status == 401
    assert str(caught.value) == "RunPod refused the API key (HTTP 401): Unauthorized"
    assert len(runpod_fake.requests) == 1


async def test_read_only_key_cannot_create(runpod_fake):
    runpod_fake.add_key("rpa_READONLY00000000000", read_only=True)
    async with client_for(runpod_fake, api_key="rpa_READONLY00000000000") as client:
        assert await client.offers()
        with pytest.raises(AuthError) as caught:
            await client.create_pod(request())
    assert (caught.value.message, caught.value.code) == ("Unauthorized", "UNAUTHORIZED")
    assert runpod_fake.pods == {}


# -- retries ----------------------------------------------------------------------


@pytest.mark.parametrize("status", [500, 502, 503, 504, 429])
async def test_transient_errors_are_retried(runpod_fake, runpod_client, status):
    fault = runpod_fake.inject(status=status, times=2, field="gpuTypes", retry_after=0)
    offers = await runpod_client.offers(gpu="4090")
    assert len(offers) == 2
    assert fault.hits == 2
    assert [r.status for r in runpod_fake.requests_for("gpuTypes")] == [status, status, 200]


async def test_retries_give_up_after_max_attempts(runpod_fake):
    runpod_fake.inject(status=503, times=-1)
    async with client_for(runpod_fake, max_attempts=3) as client:
        with pytest.raises(UnavailableError) as caught:
            await client.list_pods()
    assert str(caught.value) == "RunPod did not answer myself after 3 attempt(s): HTTP 503"
    assert len(runpod_fake.requests) == 3


async def test_generic_errors_are_not_retried(runpod_fake, runpod_client):
    runpod_fake.inject(error="generic", field="myself")
    with pytest.raises(RunPodError) as caught:
        await runpod_client.list_pods()
    assert type(caught.value) is RunPodError
    assert str(caught.value) == GENERIC_MESSAGE
    assert len(runpod_fake.requests) == 1


async def test_slow_answers_time_out_and_are_retried(runpod_fake):
    runpod_fake.inject(delay_s=2.0, field="gpuTypes")
    async with client_for(runpod_fake, timeout_s=0.5) as client:
        started = time.monotonic()
        offers = await client.offers(gpu="A100")
        elapsed = time.monotonic() - started
    assert [o.cloud_type for o in offers] == ["COMMUNITY", "SECURE"]
    assert 0.5 <= elapsed < 2.0
    assert len(runpod_fake.requests_for("gpuTypes")) == 2


async def test_network_errors_are_retried_then_reported(runpod_fake):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # nothing listens here once closed
    client = RunPodClient(
        runpod_fake.api_key,
        api_url=f"http://127.0.0.1:{port}/graphql",
        environ={},
        runpod_config=None,
        max_attempts=3,
        backoff_base_s=0.01,
    )
    async with client:
        with pytest.raises(UnavailableError) as caught:
            await client.check()
    assert caught.value.message.startswith(
        "RunPod did not answer myself after 3 attempt(s): Connect"
    )
    assert runpod_fake.api_key not in repr(caught.value)


async def test_a_lost_create_answer_does_not_rent_a_second_pod(runpod_fake, runpod_client):
    runpod_fake.inject(status=502, after=True, field="podFindAndDeployOnDemand")
    pod = await runpod_client.create_pod(request(name="lost-answer"))
    assert list(runpod_fake.pods) == [pod.id]
    assert pod.name == "lost-answer"
    assert len(runpod_fake.requests_for("podFindAndDeployOnDemand")) == 1


async def test_a_create_that_fails_after_renting_leaves_no_pod(runpod_fake, runpod_client):
    runpod_fake.inject(error="generic", after=True, field="podFindAndDeployOnDemand")
    with pytest.raises(RunPodError, match="Something went wrong"):
        await runpod_client.create_pod(request(docker_args="sleep 300"))
    assert runpod_fake.pods == {}
    (pod,) = runpod_fake.terminated.values()
    assert pod.desired_status == "TERMINATED"


async def test_a_cancelled_create_leaves_no_pod(runpod_fake, runpod_client):
    runpod_fake.inject(delay_s=5.0, after=True, field="podFindAndDeployOnDemand")
    task = asyncio.ensure_future(runpod_client.create_pod(request(docker_args="sleep 300")))

    async def rented():
        return runpod_fake.pods

    await eventually(rented, within=5)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert runpod_fake.pods == {}
    assert len(runpod_fake.terminated) == 1


# -- the key and other secrets stay secret ----------------------------------------


async def test_the_key_appears_in_no_repr_error_or_log(runpod_fake, caplog):
    caplog.set_level(logging.DEBUG)
    key = runpod_fake.api_key
    client = client_for(runpod_fake, max_attempts=2)
    seen = [repr(client), str(client)]
    runpod_fake.inject(status=500, times=1)
    await client.offers()
    runpod_fake.set_capacity(RTX_4090, 0)
    runpod_fake.allow_invalid = True
    wrong = client_for(runpod_fake, api_key=key + "x")
    for attempt in (
        client.create_pod(request(env={"JUPYTER_PASSWORD": "pw-0123456789"})),
        client.execute("query Bad { nope }", field="nope"),
        wrong.check(),
    ):
        with pytest.raises(RunPodError) as caught:
            await attempt
        seen += [str(caught.value), repr(caught.value), str(caught.value.args)]
    await wrong.aclose()
    pod_request = request(env={"JUPYTER_PASSWORD": "pw-0123456789"})
    seen += [repr(pod_request), repr(await client.list_pods())]
    await client.aclose()
    text = "\n".join(seen) + "\n" + caplog.text
    assert "RunPod gpuTypes failed (HTTP 500); retry 1 of 1" in caplog.text
    assert key not in text
    assert "pw-0123456789" not in text


def test_secret_and_client_reprs():
    secret = Secret("rpa_SECRET123")
    assert (str(secret), repr(secret), f"{secret}", f"{secret:>20}") == (
        "***",
        "Secret('***')",
        "***",
        "***",
    )
    assert secret.reveal() == "rpa_SECRET123"
    with pytest.raises(TypeError):
        pickle.dumps(secret)
    client = RunPodClient("rpa_SECRET123", environ={}, runpod_config=None)
    assert repr(client) == "RunPodClient(api_url='https://api.runpod.io/graphql', api_key='***')"
    assert client.redact("key rpa_SECRET123 and tok", ["tok"]) == "key *** and ***"
    assert "rpa_SECRET123" not in str(vars(client))


# -- configuration ----------------------------------------------------------------


def test_key_sources_in_order(tmp_path):
    key_file = tmp_path / "key"
    key_file.write_text("from-file\n")
    env_file = tmp_path / "env-key"
    env_file.write_text("from-env-file")
    config = tmp_path / "config.toml"
    config.write_text('[default]\napi_key = "from-runpod-config"\n')
    env = {"RUNPOD_API_KEY": "from-env", "RUNPOD_API_KEY_FILE": str(env_file)}
    reveal = lambda **kw: resolve_api_key(runpod_config=config, **kw).reveal()  # noqa: E731
    assert reveal(api_key="explicit", key_file=key_file, environ=env) == "explicit"
    assert reveal(key_file=key_file, environ=env) == "from-file"
    assert reveal(environ=env) == "from-env"
    assert reveal(environ={"RUNPOD_API_KEY_FILE": str(env_file)}) == "from-env-file"
    assert reveal(environ={}) == "from-runpod-config"
    with pytest.raises(ConfigurationError) as caught:
        resolve_api_key(environ={}, runpod_config=tmp_path / "none.toml")
    assert str(caught.value) == (
        "no RunPod API key: set RUNPOD_API_KEY, or RUNPOD_API_KEY_FILE to a file holding it"
    )
    (tmp_path / "empty").write_text("\n")
    with pytest.raises(ConfigurationError, match="is empty"):
        resolve_api_key(key_file=tmp_path / "empty", environ={})
    with pytest.raises(ConfigurationError, match="does not exist"):
        resolve_api_key(key_file=tmp_path / "missing", environ={})


def test_api_url_sources_and_checks():
    assert resolve_api_url(environ={}) == "https://api.runpod.io/graphql"
    assert resolve_api_url(environ={"RUNPOD_API_URL": "http://127.0.0.1:1/graphql"}) == (
        "http://127.0.0.1:1/graphql"
    )
    assert resolve_api_url("https://x.example/graphql", environ={"RUNPOD_API_URL": "y"}) == (
        "https://x.example/graphql"
    )
    with pytest.raises(ConfigurationError, match="must not carry the API key"):
        resolve_api_url("https://api.runpod.io/graphql?api_key=rpa_X", environ={})
    with pytest.raises(ConfigurationError, match="http"):
        resolve_api_url("ftp://api.runpod.io", environ={})
