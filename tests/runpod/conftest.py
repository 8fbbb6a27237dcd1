"""Fixtures for the RunPod tests: the stand-in (in-process, on the test's event loop), a
client pointed at it, and the environment `thinkube cloud` reads."""

from __future__ import annotations

import pytest

from tests.runpod_fake import RunPodFake
from thinkube_core.runpod import RunPodClient


@pytest.fixture
async def make_runpod_fake():
    """Factory: `fake = await make_runpod_fake(capacity=1)`; stopped afterwards (every pod's
    process ended). A test fails if any request the fake saw was invalid (HTTP 400: the real
    API would have refused it) unless the test set `fake.allow_invalid = True`."""
    fakes: list[RunPodFake] = []

    async def make(**kwargs) -> RunPodFake:
        kwargs.setdefault("start_delay_s", 0.2)
        fake = RunPodFake(**kwargs)
        await fake.start()
        fakes.append(fake)
        return fake

    yield make
    for fake in fakes:
        await fake.stop()
    for fake in fakes:
        if not fake.allow_invalid:
            invalid = fake.invalid_requests()
            assert not invalid, f"requests the real API would reject: {invalid}"


@pytest.fixture
async def runpod_fake(make_runpod_fake) -> RunPodFake:
    return await make_runpod_fake()


def client_for(fake: RunPodFake, **kwargs) -> RunPodClient:
    kwargs.setdefault("backoff_base_s", 0.01)
    kwargs.setdefault("backoff_max_s", 0.05)
    kwargs.setdefault("poll_interval_s", 0.1)
    return RunPodClient(
        kwargs.pop("api_key", fake.api_key),
        api_url=fake.url,
        rest_url=getattr(fake, "rest_url", None),
        proxy_url_template=fake.proxy_url_template,
        environ={},
        runpod_config=None,
        **kwargs,
    )


@pytest.fixture
async def runpod_client(runpod_fake):
    client = client_for(runpod_fake)
    yield client
    await client.aclose()


@pytest.fixture
def cloud_env(runpod_fake, monkeypatch, tmp_path):
    """The environment `thinkube cloud` reads, pointed at the stand-in; HOME is a fresh
    directory so that no ~/.runpod/config.toml of the machine is read."""
    for name in ("RUNPOD_API_KEY_FILE",):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    for name, value in runpod_fake.env().items():
        monkeypatch.setenv(name, value)
    return runpod_fake.env()
