"""RunPodBackend on its own, composed with a real hub's spawner, against the stand-in: the
paths a hub test cannot time (a cancelled start, RunPod failing at stop or poll, state
carried to a new backend)."""

from __future__ import annotations

import asyncio
import dataclasses

import pytest

from tests.runpod.cloud_hub import cloud_hub, cloud_hub_config
from tests.runpod.conftest import client_for
from tests.runpod_fake import RunPodFake
from tests.utils import eventually
from thinkube_core.runpod import PodRequest, Secret
from thinkube_core.runpod.models import STATE_POD_ID
from thinkube_spawner.runpod.backend import CloudStartError, RunPodBackend


@pytest.fixture
async def spawner(make_runpod_fake, tmp_path):
    """The default server's spawner of user "zoe" on a real hub (not started)."""
    fake = await make_runpod_fake(start_delay_s=0.2)
    async with cloud_hub(tmp_path, cloud_hub_config(fake, tmp_path)) as hub:
        hub.user("zoe")
        spawner = hub.app.users["zoe"].spawner
        spawner.test_fake = fake
        yield spawner


def backend_for(spawner, **changes) -> RunPodBackend:
    config = dataclasses.replace(spawner.cloud_config(spawner.public_hub_url), **changes)
    return RunPodBackend(spawner, config)


async def rent(fake: RunPodFake) -> str:
    async with client_for(fake) as client:
        pod = await client.create_pod(
            PodRequest(name="thinkube-zoe", image_name="x", gpu_type_id="NVIDIA L4")
        )
    return pod.id


async def offers(spawner):
    return await spawner.fetch_offers()


async def test_a_start_cancelled_after_renting_terminates_the_pod(spawner):
    fake: RunPodFake = spawner.test_fake
    fake.start_delay_s = 600  # the container never comes up
    backend = backend_for(spawner)
    start = asyncio.ensure_future(backend.start((await offers(spawner))[:1], spot=False))
    await eventually(lambda: _async(bool(fake.pods)), within=10)
    (pod_id,) = fake.pods
    await asyncio.sleep(0.3)  # waiting for the container now
    start.cancel()
    with pytest.raises(asyncio.CancelledError):
        await start
    assert fake.pods == {} and pod_id in fake.terminated
    assert backend.get_state() == {}
    assert [e["message"] for e in backend._events][
        -1
    ] == "Waiting for RunPod to start the container"


async def test_no_public_url_refuses_before_asking_runpod(spawner):
    fake: RunPodFake = spawner.test_fake
    backend = backend_for(spawner, public_hub_url="")
    before = len(fake.requests)
    with pytest.raises(CloudStartError, match="set c.JupyterHub.public_url") as err:
        await backend.start(await offers(spawner))
    assert err.value.reason == "configuration"
    assert fake.requests_for("podFindAndDeployOnDemand") == [] and len(fake.requests) == before + 1


async def test_state_carries_the_pod_to_a_new_backend_and_stop_is_idempotent(spawner):
    fake: RunPodFake = spawner.test_fake
    pod_id = await rent(fake)
    first = backend_for(spawner)
    first.load_state({STATE_POD_ID: pod_id})
    assert first.get_state() == {STATE_POD_ID: pod_id}
    assert await first.poll() is None  # running (or starting)

    resumed = backend_for(spawner)  # as after a hub restart
    resumed.load_state(first.get_state())
    await resumed.stop()
    assert pod_id in fake.terminated and fake.pods == {}
    assert resumed.get_state() == {}
    # Terminated already ("pod not found to terminate"): done, twice over.
    first.pod_id = pod_id
    await first.stop()
    await first.stop()
    assert first.get_state() == {}
    first.pod_id = pod_id
    assert await first.poll() == 0  # RunPod has no such pod: the server is gone


async def test_a_stop_runpod_refuses_keeps_the_pod_id_until_it_is_ended(spawner, caplog):
    fake: RunPodFake = spawner.test_fake
    pod_id = await rent(fake)
    backend = backend_for(spawner)
    backend.load_state({STATE_POD_ID: pod_id})
    fault = fake.inject(status=503, field="podTerminate", times=-1)
    await backend.stop()
    assert pod_id in fake.pods
    assert f"could not terminate RunPod pod {pod_id}" in caplog.text
    backend.clear_state()  # what JupyterHub does after stop: the id stays
    assert backend.get_state() == {STATE_POD_ID: pod_id}
    fake.faults.remove(fault)
    # The next start ends the leftover pod before renting (here RunPod has no capacity).
    fake.inject(error="capacity", field="podFindAndDeployOnDemand", times=-1)
    with pytest.raises(CloudStartError) as err:
        await backend.start((await offers(spawner))[:2])
    assert err.value.reason == "capacity" and "Nothing was started" in str(err.value)
    assert pod_id in fake.terminated and fake.pods == {}
    assert backend.get_state() == {}
    fields = [r.fields[0] for r in fake.requests if r.fields]
    last_terminate = max(i for i, f in enumerate(fields) if f == "podTerminate")
    # ended first, then the two offers asked for
    assert fields[last_terminate + 1 :].count("podFindAndDeployOnDemand") == 2


async def test_poll_assumes_running_while_runpod_cannot_be_asked(spawner, caplog):
    fake: RunPodFake = spawner.test_fake
    pod_id = await rent(fake)
    backend = backend_for(spawner)
    backend.load_state({STATE_POD_ID: pod_id})
    fault = fake.inject(status=502, field="pod", times=-1)
    assert await backend.poll() is None
    assert "assuming it still runs" in caplog.text
    fake.faults.remove(fault)
    await fake.stop_pod(pod_id)  # the container exits: the server is gone, the pod ended
    assert await backend.poll() == 1
    assert pod_id in fake.terminated


async def test_a_wrong_key_fails_the_start_clearly_without_a_pod(spawner):
    fake: RunPodFake = spawner.test_fake
    good = await offers(spawner)
    backend = backend_for(spawner, api_key=None)
    with pytest.raises(CloudStartError, match="no RunPod API key"):
        await backend.start(good)
    wrong = backend_for(spawner, api_key=Secret("rpa_not_the_key_0123456789"))
    with pytest.raises(CloudStartError, match="RunPod refused the hub's API key") as err:
        await wrong.start(good)
    assert "rpa_not_the_key" not in str(err.value)
    assert fake.pods == {} and fake.terminated == {}


async def _async(value):
    return value
