"""A pod's log read from REST v2 by the client (`RunPodClient.pod_log_events`), and followed by
the jobs backend's LogFollower through the stand-in's faults: a stream cut mid-body is
resumed after its last event, 5xx answers fall back to polling; no line lost or repeated."""

from __future__ import annotations

import time

import pytest

from hub_service.jobs.runpod import LineBuffer, LogFollower, RunPodJobSettings
from tests.runpod.conftest import client_for
from tests.runpod.test_fake_logs import create_pod, reaches
from thinkube_core.runpod import AuthError, LogStreamCut, NotFoundError, UnavailableError


async def lines_of(client, pod_id, **kwargs) -> list:
    return [event async for event in client.pod_log_events(pod_id, **kwargs)]


async def test_the_client_reads_a_pods_log_and_resumes_after_an_event(runpod_fake, runpod_client):
    pod_id = await create_pod(runpod_fake, "for n in range(6):\n    print('line', n)\n")
    events = await lines_of(runpod_client, pod_id, source="container")
    assert [e.line for e in events] == [f"line {n}" for n in range(6)]
    assert {e.source for e in events} == {"container"} and all(e.id and e.ts for e in events)
    rest = await lines_of(runpod_client, pod_id, source="container", last_event_id=events[2].id)
    assert [e.line for e in rest] == ["line 3", "line 4", "line 5"]
    tail = await lines_of(runpod_client, pod_id, source="container", tail=2)
    assert [e.line for e in tail] == ["line 4", "line 5"]
    everything = await lines_of(runpod_client, pod_id)  # the host's lines too
    assert {e.source for e in everything} == {"container", "system"}
    await runpod_fake.terminate(pod_id)
    assert runpod_fake.pods == {}


async def test_the_clients_log_errors_are_typed(runpod_fake, runpod_client):
    with pytest.raises(NotFoundError):
        await lines_of(runpod_client, "nosuchpod")
    pod_id = await create_pod(runpod_fake, "import time\nprint('up', flush=True)\ntime.sleep(30)\n")
    wrong = client_for(runpod_fake, api_key="rpa_wrong")
    try:
        with pytest.raises(AuthError):
            await lines_of(wrong, pod_id)
    finally:
        await wrong.aclose()
    runpod_fake.inject(field="getPodLogs", status=503)
    with pytest.raises(UnavailableError):
        await lines_of(runpod_client, pod_id)
    await reaches(runpod_fake, pod_id, "RUNNING")
    runpod_fake.inject(field="getPodLogs", drop_after_events=1)
    with pytest.raises(LogStreamCut):
        await lines_of(runpod_client, pod_id)
    # A poll: what is there now, then done, while the pod runs on.
    began = time.monotonic()
    polled = await lines_of(runpod_client, pod_id, source="container", duration_s=0.5)
    assert [e.line for e in polled] == ["up"]
    assert 0.4 < time.monotonic() - began < 5
    await runpod_fake.terminate(pod_id)
    assert runpod_fake.pods == {}


async def test_the_follower_gets_every_line_once_through_cut_streams_and_5xx(runpod_fake):
    client = client_for(runpod_fake)
    pod_id = await create_pod(
        runpod_fake,
        "import time\nfor n in range(30):\n    print('step', n, flush=True)\n    time.sleep(0.05)\n",
    )
    runpod_fake.inject(field="getPodLogs", drop_after_events=3, times=2)
    runpod_fake.inject(field="getPodLogs", status=503, times=3)
    settings = RunPodJobSettings(
        public_url="http://hub/",
        artifacts_folder=None,  # type: ignore[arg-type]
        log_poll_interval_s=0.1,
        log_poll_window_s=0.3,
    )
    buffer = LineBuffer(1 << 20)
    follower = LogFollower(client, pod_id, buffer, settings)
    try:
        await follower.run()  # returns once the pod has stopped and its log was read
    finally:
        await client.aclose()
    assert [line for _, line in buffer.lines] == [f"step {n}" for n in range(30)]
    assert [n for n, _ in buffer.lines] == list(range(1, 31))
    assert follower.polls >= 1  # the 5xx answers made it poll
    statuses = [r.status for r in runpod_fake.requests_for("getPodLogs")]
    assert statuses.count(503) == 3
    resumed = [r for r in runpod_fake.requests_for("getPodLogs") if "Last-Event-ID" in r.variables]
    assert len(resumed) >= 3
    await runpod_fake.terminate(pod_id)
    assert runpod_fake.pods == {}
