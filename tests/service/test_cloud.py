"""The service's cloud part through a real hub, with the service as a hub-managed process
talking to the RunPod stand-in: `api/v1/cloud/offers` (cached, filtered, not configured,
RunPod down or slow, bad filters, auth) and the reaper of orphan pods. The pure parts
(filters, ownership) are tested without servers at the end.

MockHub is one hub at a time: the tests that need a hub of their own come first and stop
it before the module's shared hub starts.
"""

from __future__ import annotations

import asyncio
import logging
import time
from urllib.parse import urljoin

import httpx
import pytest
import pytest_asyncio
from jupyterhub.tests.mocking import MockSpawner
from traitlets.config import Config

from hub_service.cloud import NO_KEY_REASON, FilterError, make_runpod_client, offer_filters
from hub_service.reaper import (
    ActiveServer,
    HubClient,
    HubServers,
    Reaper,
    active_servers,
    judge,
    parse_created,
)
from tests.hub_fixtures import (
    ACCESS_SCOPE,
    IMAGE_WRITERS_ROLE,
    IMAGES_WRITE_SCOPE,
    SERVICE_NAME,
    running_hub,
)
from tests.kubesim.generator import make_node
from tests.kubesim.sim import free_port
from tests.runpod_fake import DEFAULT_GPU_TYPES, RunPodFake
from tests.service.test_openapi import run_schemathesis
from thinkube_core.runpod import Pod, PodRequest, RunPodClient

# The hub tests share the module's event loop (and its hub); the pure tests at the end are plain.
in_module_loop = pytest.mark.asyncio(loop_scope="module")

PREFIX = "labhub"
REAPER_SCOPES = ["list:users", "read:servers", "admin:server_state"]
GRACE_S = 8.0
OFFERS = "api/v1/cloud/offers"


def hub_roles(service_scopes: list[str] | None) -> list[dict]:
    """The harness's roles, plus a role for the service's own token when given scopes."""
    roles = [
        {"name": "user", "scopes": ["self", ACCESS_SCOPE]},
        {"name": IMAGE_WRITERS_ROLE, "scopes": [ACCESS_SCOPE, IMAGES_WRITE_SCOPE]},
    ]
    if service_scopes is not None:
        roles.append(
            {
                "name": SERVICE_NAME,
                "scopes": [ACCESS_SCOPE, *service_scopes],
                "services": [SERVICE_NAME],
            }
        )
    return roles


class PodIdSpawner(MockSpawner):
    """A local spawner whose state names a RunPod pod, as the RunPod spawner's does (the id
    comes from the user options given at start)."""

    def get_state(self):
        state = super().get_state()
        pod_id = (self.user_options or {}).get("runpod_pod_id")
        if pod_id:
            state["runpod_pod_id"] = pod_id
        return state


def cloud_args(**options) -> list[str]:
    return [f"--ThinkubeService.{name}={value}" for name, value in options.items()]


def runpod_env(fake: RunPodFake) -> dict[str, str]:
    return {"RUNPOD_API_URL": fake.url, "RUNPOD_API_KEY": fake.api_key}


def client_for(fake: RunPodFake) -> RunPodClient:
    return RunPodClient(fake.api_key, api_url=fake.url, environ={}, runpod_config=None)


async def make_pod(runpod: RunPodClient, name: str, meta: dict[str, str]) -> Pod:
    return await runpod.create_pod(
        PodRequest(
            name=name,
            image_name="runpod/pytorch:2.4.0-py3.11-cuda12.4.1-devel-ubuntu22.04",
            gpu_type_id="NVIDIA RTX A4000",
            cloud_type="COMMUNITY",
            meta=meta,
        )
    )


async def eventually(check, within: float = 20.0, every: float = 0.1):
    """Wait until `check()` (plain or async) returns something true; return it."""
    deadline = time.monotonic() + within
    last = None
    while time.monotonic() < deadline:
        last = check()
        if asyncio.iscoroutine(last):
            last = await last
        if last:
            return last
        await asyncio.sleep(every)
    raise AssertionError(f"not within {within}s (last: {last!r})")


async def fetched_offers(client: httpx.AsyncClient, **params) -> dict:
    """The route's answer once the cache has offers."""

    async def ready():
        response = await client.get(OFFERS, params=params)
        assert response.status_code == 200, response.text
        body = response.json()
        return body if body["fetched_at"] else None

    return await eventually(ready)


def expected_offers(spot: bool = False) -> list[tuple[str, str, float]]:
    """(gpu_type_id, cloud, price) of every offer the stand-in sells, from its catalogue."""
    rows = []
    for spec in DEFAULT_GPU_TYPES:
        for cloud in ("SECURE", "COMMUNITY"):
            if spec.price(cloud) is None:
                continue
            price = spec.spot_price(cloud) if spot else spec.price(cloud)
            if price is not None:
                rows.append((spec.id, cloud, price))
    return rows


# -- fixtures ----------------------------------------------------------------------------


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def sim(module_kubesim):
    sim = await module_kubesim()
    sim.load([make_node("cpu-1", 8, 32)])
    return sim


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def fake():
    fake = RunPodFake(capacity=50, start_delay_s=0.1, run_processes=False)
    await fake.start()
    yield fake
    await fake.stop()
    assert not fake.invalid_requests(), "requests the real API would reject"


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def runpod(fake):
    client = client_for(fake)
    yield client
    await client.aclose()


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def hub(sim, fake, module_hub_factory):
    """The shared hub: cloud on (key and endpoint from the service's environment), offers
    refreshed every second, the reaper every 0.3 s with a grace of GRACE_S, and a service
    role with the scopes the reaper needs."""
    config = Config()
    config.JupyterHub.load_roles = hub_roles(REAPER_SCOPES)
    config.JupyterHub.spawner_class = PodIdSpawner
    config.JupyterHub.allow_named_servers = True
    return await module_hub_factory(
        sim=sim,
        config=config,
        service_env=runpod_env(fake),
        service_args=cloud_args(
            cloud_offers_ttl_seconds=1,
            cloud_pod_prefix=PREFIX,
            cloud_reaper_interval_seconds=0.3,
            cloud_reaper_grace_seconds=GRACE_S,
        ),
    )


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def reader(hub):
    return hub.client(hub.token("reader", [ACCESS_SCOPE]))


# -- hubs of their own (before the shared hub starts) -----------------------------------


@in_module_loop
async def test_without_a_key_the_route_says_cloud_is_not_configured(sim, tmp_path):
    async with running_hub(tmp_path / "hub", sim=sim) as hub:
        client = hub.client(hub.token("reader", [ACCESS_SCOPE]))
        response = await client.get(OFFERS)
        assert response.status_code == 404
        assert response.json() == {
            "status": 404,
            "error": "cloud GPUs are not configured on this hub: no RunPod API key: set "
            "ThinkubeService.runpod_api_key or runpod_api_key_file, or RUNPOD_API_KEY or "
            "RUNPOD_API_KEY_FILE in the service's environment",
        }
        # a bad filter is still named as such
        response = await client.get(OFFERS, params={"min_vram_gb": "lots"})
        assert response.status_code == 400
        assert response.json()["field"] == "min_vram_gb"
        # the rest of the service is unaffected
        assert (await client.get("api/v1/availability")).status_code == 200
        assert "cloud GPUs off: no RunPod API key" in hub.service_log()


@in_module_loop
async def test_a_missing_key_file_is_a_plain_reason_and_the_service_runs(sim, tmp_path):
    missing = tmp_path / "no-such-key"
    async with running_hub(
        tmp_path / "hub", sim=sim, service_args=cloud_args(runpod_api_key_file=missing)
    ) as hub:
        response = await hub.client(hub.token("reader", [ACCESS_SCOPE])).get(OFFERS)
        assert response.status_code == 404
        assert response.json()["error"] == (
            "cloud GPUs are not configured on this hub: "
            f"the RunPod API key file {missing} does not exist"
        )
        assert f"cloud GPUs off: the RunPod API key file {missing} does not exist" in (
            hub.service_log()
        )


@in_module_loop
async def test_a_wrong_key_is_reported_without_the_key(sim, fake, tmp_path):
    wrong = "rpa_WRONGKEY0123456789ABCDEF0123456789ABCD"
    key_file = tmp_path / "runpod-key"
    key_file.write_text(wrong + "\n")
    async with running_hub(
        tmp_path / "hub",
        sim=sim,
        service_env={"RUNPOD_API_URL": fake.url},
        service_args=cloud_args(runpod_api_key_file=key_file, cloud_offers_ttl_seconds=1),
    ) as hub:
        client = hub.client(hub.token("reader", [ACCESS_SCOPE]))

        async def refused():
            body = (await client.get(OFFERS)).json()
            return body if body["error"] else None

        body = await eventually(refused)
        assert body == {
            "configured": True,
            "offers": [],
            "fetched_at": None,
            "age_seconds": None,
            "error": "RunPod refused the API key (HTTP 401): Unauthorized",
        }
        log = hub.service_log()
        assert "RunPod offers not refreshed (RunPod refused the API key" in log
        assert wrong not in log
    # the stand-in saw the key file's key (stripped), in the Authorization header
    assert any(not r.authorized for r in fake.requests_for("gpuTypes"))


@in_module_loop
async def test_the_reaper_waits_for_the_scopes_it_needs(sim, fake, runpod, tmp_path):
    orphan = await make_pod(runpod, f"{PREFIX}-nobody", {"hub": PREFIX, "user": "nobody"})
    config = Config()
    config.JupyterHub.load_roles = hub_roles([])  # the service may not list users
    try:
        async with running_hub(
            tmp_path / "hub",
            sim=sim,
            config=config,
            service_env=runpod_env(fake),
            service_args=cloud_args(
                cloud_pod_prefix=PREFIX,
                cloud_reaper_interval_seconds=0.2,
                cloud_reaper_grace_seconds=0,
            ),
        ) as hub:
            message = (
                "reaper paused: the service's hub role lacks list:users, read:servers "
                "(it needs list:users, read:servers and admin:server_state; see docs/service.md)"
            )
            await eventually(lambda: message in hub.service_log())
            await asyncio.sleep(1)  # several passes
            assert orphan.id in fake.pods
            assert hub.service_log().count(message) == 1  # said once, not every pass
            assert fake.api_key not in hub.service_log()
    finally:
        await runpod.terminate_pod(orphan.id)


# -- offers ------------------------------------------------------------------------------


@in_module_loop
async def test_offers_are_served_cheapest_first(reader):
    body = await fetched_offers(reader)
    assert body["configured"] is True
    assert body["error"] is None
    assert body["age_seconds"] < 5
    offers = body["offers"]
    assert sorted((o["gpu_type_id"], o["cloud_type"], o["price_per_hour"]) for o in offers) == (
        sorted(expected_offers())
    )
    prices = [o["price_per_hour"] for o in offers]
    assert prices == sorted(prices)
    assert offers[0] == {
        "gpu_type_id": "NVIDIA RTX A4000",
        "display_name": "RTX A4000",
        "vram_gb": 16,
        "cloud_type": "COMMUNITY",
        "price_per_hour": 0.17,
        "spot_price_per_hour": 0.09,
        "stock": "High",
        "gpu_count": 1,
    }


@in_module_loop
@pytest.mark.parametrize(
    ("params", "keep"),
    [
        ({"min_vram_gb": "48"}, lambda o: o["vram_gb"] >= 48),
        ({"max_price_per_hour": "0.3"}, lambda o: o["price_per_hour"] <= 0.3),
        ({"gpu": "4090"}, lambda o: o["display_name"] == "RTX 4090"),
        ({"cloud_type": "secure"}, lambda o: o["cloud_type"] == "SECURE"),
        (
            {"min_vram_gb": "24", "max_price_per_hour": "0.5", "cloud_type": "COMMUNITY"},
            lambda o: (
                o["vram_gb"] >= 24 and o["price_per_hour"] <= 0.5 and o["cloud_type"] == "COMMUNITY"
            ),
        ),
    ],
)
async def test_filters(reader, params, keep):
    everything = (await fetched_offers(reader))["offers"]
    body = await fetched_offers(reader, **params)
    wanted = [o for o in everything if keep(o)]
    assert wanted and len(wanted) < len(everything)
    assert body["offers"] == wanted  # same order: cheapest first


@in_module_loop
async def test_spot_offers_are_sorted_by_spot_price(reader):
    body = await fetched_offers(reader, spot="true", max_price_per_hour="0.2")
    offers = body["offers"]
    spot_prices = [o["spot_price_per_hour"] for o in offers]
    assert spot_prices == sorted(spot_prices)
    assert {(o["gpu_type_id"], o["cloud_type"]) for o in offers} == {
        (gpu, cloud) for gpu, cloud, price in expected_offers(spot=True) if price <= 0.2
    }


@in_module_loop
@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"min_vram_gb": "lots"}, "min_vram_gb"),
        ({"min_vram_gb": "-1"}, "min_vram_gb"),
        ({"max_price_per_hour": "nan"}, "max_price_per_hour"),
        ({"max_price_per_hour": "inf"}, "max_price_per_hour"),
        ({"cloud_type": "moon"}, "cloud_type"),
        ({"spot": "maybe"}, "spot"),
        ({"gpu": "x" * 101}, "gpu"),
    ],
)
async def test_bad_filters_are_400(reader, params, field):
    response = await reader.get(OFFERS, params=params)
    assert response.status_code == 400
    body = response.json()
    assert body["status"] == 400
    assert body["field"] == field
    assert field in body["error"]


@in_module_loop
async def test_auth_is_that_of_the_other_routes(hub):
    response = await hub.client().get(OFFERS)
    assert response.status_code == 401
    assert "authentication required" in response.json()["error"]
    limited = hub.client(hub.token("limited", ["read:users!user=limited"]))
    response = await limited.get(OFFERS)
    assert response.status_code == 403
    assert response.json()["status"] == 403
    browser = await hub.login("dora")  # the OAuth cookie works as well
    assert (await browser.get(OFFERS)).status_code == 200


@in_module_loop
async def test_many_requests_make_one_runpod_query_per_ttl(reader, fake):
    await fetched_offers(reader)
    before = len(fake.requests_for("gpuTypes"))
    started = time.monotonic()
    answers = []
    while time.monotonic() - started < 2.5:
        batch = await asyncio.gather(*(reader.get(OFFERS) for _ in range(10)))
        answers.extend(batch)
        await asyncio.sleep(0.05)
    elapsed = time.monotonic() - started
    queries = len(fake.requests_for("gpuTypes")) - before
    assert len(answers) >= 50
    assert all(a.status_code == 200 and a.json()["offers"] for a in answers)
    # one refresh a second (TTL 1 s), whatever the number of requests
    assert 1 <= queries <= int(elapsed) + 2, queries
    assert len({a.json()["fetched_at"] for a in answers}) <= queries + 1


@in_module_loop
async def test_a_slow_runpod_does_not_slow_requests(reader, fake):
    await fetched_offers(reader)
    fault = fake.inject(field="gpuTypes", delay_s=3.0, times=1)
    await eventually(lambda: fault.hits)  # a refresh is waiting on RunPod now
    for _ in range(10):
        started = time.monotonic()
        response = await reader.get(OFFERS)
        assert response.status_code == 200
        assert response.json()["offers"]
        assert time.monotonic() - started < 0.5
        await asyncio.sleep(0.1)


@in_module_loop
async def test_runpod_down_keeps_the_last_offers_with_the_error(reader, fake, hub):
    good = await fetched_offers(reader)
    fault = fake.inject(field="gpuTypes", status=500, times=-1)
    try:

        async def failing():
            body = (await reader.get(OFFERS)).json()
            return body if body["error"] else None

        body = await eventually(failing)
        assert body["error"].startswith("RunPod did not answer gpuTypes after 3 attempt(s)")
        assert "HTTP 500" in body["error"]
        assert body["offers"] == good["offers"]  # the last ones, kept
        await asyncio.sleep(1.2)
        later = (await reader.get(OFFERS)).json()
        assert later["fetched_at"] == body["fetched_at"]
        assert later["age_seconds"] >= 1.0
        assert "RunPod offers not refreshed (RunPod did not answer gpuTypes" in (hub.service_log())
    finally:
        fake.faults.remove(fault)

    async def recovered():
        body = (await reader.get(OFFERS)).json()
        return body if body["error"] is None else None

    body = await eventually(recovered)
    assert body["fetched_at"] > good["fetched_at"]


@in_module_loop
async def test_the_offers_route_matches_its_openapi_description(hub, reader):
    await fetched_offers(reader)
    token = hub.token("schemathesis", [ACCESS_SCOPE])
    # with the checks of test_openapi (there the service has no key: only its 404 is seen)
    failures, calls = await asyncio.to_thread(
        run_schemathesis, hub.service_url.rstrip("/"), token, "/api/v1/cloud/offers", 30
    )
    assert not failures, "\n\n".join(failures)
    assert calls >= 30


# -- the reaper --------------------------------------------------------------------------


async def hub_api(hub, token: str, method: str, path: str, **kwargs) -> httpx.Response:
    async with httpx.AsyncClient(headers={"Authorization": f"token {token}"}) as client:
        return await client.request(method, urljoin(hub.url, f"hub/api/{path}"), **kwargs)


async def wait_server(hub, token: str, user: str, server: str, ready: bool) -> None:
    async def check():
        model = (await hub_api(hub, token, "GET", f"users/{user}")).json()
        found = (model.get("servers") or {}).get(server)
        return (found is not None and found["ready"]) if ready else found is None

    await eventually(check)


@in_module_loop
async def test_the_reaper_ends_orphan_pods_and_keeps_owned_ones(hub, fake, runpod):
    admin = hub.token("root", roles_=["admin"])
    for name in ("alice", "bob"):
        hub.user(name)
    bob_pod = await make_pod(
        runpod, f"{PREFIX}-bob-gpu", {"hub": PREFIX, "user": "bob", "server": "gpu"}
    )
    # bob's server "gpu" runs bob_pod (its state says so) ...
    response = await hub_api(
        hub, admin, "POST", "users/bob/servers/gpu", json={"runpod_pod_id": bob_pod.id}
    )
    assert response.status_code in (201, 202), response.text
    # ... and alice's default server, under a plain local spawner
    response = await hub_api(hub, admin, "POST", "users/alice/server")
    assert response.status_code in (201, 202), response.text
    created = time.monotonic()  # bob_pod is older, but owned by a pending or ready server
    pods = {
        "orphan": await make_pod(runpod, f"{PREFIX}-nobody", {"hub": PREFIX, "user": "nobody"}),
        "alice": await make_pod(runpod, f"{PREFIX}-alice", {"hub": PREFIX, "user": "alice"}),
        "bob_stale": await make_pod(
            runpod, f"{PREFIX}-bob-gpu", {"hub": PREFIX, "user": "bob", "server": "gpu"}
        ),
        "bob_other_server": await make_pod(
            runpod, f"{PREFIX}-bob-cpu", {"hub": PREFIX, "user": "bob", "server": "cpu"}
        ),
        "other_hub": await make_pod(runpod, "thinkube-alice", {"hub": "thinkube", "user": "x"}),
        "unmarked": await make_pod(runpod, "my-own-pod", {}),
    }
    pods["bob"] = bob_pod
    # young pods are left alone, orphans included (the reaper passes every 0.3 s)
    await asyncio.sleep(1.0)
    assert time.monotonic() - created < GRACE_S - 0.5
    assert all(pod.id in fake.pods for pod in pods.values())
    assert "reaper terminated" not in hub.service_log()

    await wait_server(hub, admin, "bob", "gpu", ready=True)
    await wait_server(hub, admin, "alice", "", ready=True)

    orphans = ("orphan", "bob_stale", "bob_other_server")
    await eventually(lambda: not any(pods[name].id in fake.pods for name in orphans))
    for name in ("alice", "bob", "other_hub", "unmarked"):
        assert pods[name].id in fake.pods, name
    # the reaper logs a pod after RunPod has answered its terminate: the line may trail
    # the pod's disappearance from the stand-in by a moment
    expected_lines = [
        f"reaper terminated RunPod pod {pods['orphan'].id} ({PREFIX}-nobody) of user 'nobody', "
        "server '': no active server owns it",
        f"reaper terminated RunPod pod {pods['bob_stale'].id} ({PREFIX}-bob-gpu) of user 'bob', "
        f"server 'gpu': its server runs pod {bob_pod.id}",
        f"reaper terminated RunPod pod {pods['bob_other_server'].id}",
    ]
    await eventually(lambda: all(line in hub.service_log() for line in expected_lines))

    # alice stops her server: her pod has no owner any more
    response = await hub_api(hub, admin, "DELETE", "users/alice/server")
    assert response.status_code in (202, 204), response.text
    await eventually(lambda: pods["alice"].id not in fake.pods)
    assert pods["bob"].id in fake.pods
    alice_line = (
        f"reaper terminated RunPod pod {pods['alice'].id} ({PREFIX}-alice) of user 'alice', "
        "server '': no active server owns it"
    )
    await eventually(lambda: alice_line in hub.service_log())

    response = await hub_api(hub, admin, "DELETE", "users/bob/servers/gpu")
    assert response.status_code in (202, 204), response.text
    await eventually(lambda: pods["bob"].id not in fake.pods)


@in_module_loop
async def test_a_hub_that_cannot_be_asked_means_no_reaping(fake, runpod):
    orphan = await make_pod(runpod, f"{PREFIX}-nobody", {"hub": PREFIX, "user": "nobody"})
    reaper = Reaper(
        runpod,
        HubClient(f"http://127.0.0.1:{free_port()}/hub/api", "not-a-token"),
        prefix=PREFIX,
        interval_s=1,
        grace_s=0,
    )
    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append
    logger = logging.getLogger("thinkube.reaper")
    logger.addHandler(handler)
    try:
        assert await reaper.reap_once() == []
        assert await reaper.reap_once() == []
        assert orphan.id in fake.pods
        paused = [r.getMessage() for r in records if "reaper paused" in r.getMessage()]
        assert paused == ["reaper paused: the hub's servers cannot be read (ConnectError)"]
    finally:
        logger.removeHandler(handler)
        await reaper.stop()
        await runpod.terminate_pod(orphan.id)


@in_module_loop
async def test_no_secret_in_the_service_log(hub, fake):
    log = hub.service_log()
    assert "reaper on: RunPod pods of hub 'labhub'" in log  # the log is the service's
    assert fake.api_key not in log
    assert hub.service_token not in log


# -- pure parts --------------------------------------------------------------------------


def test_offer_filters_parse_query_arguments():
    assert offer_filters(
        {
            "min_vram_gb": "24",
            "max_price_per_hour": "0.5",
            "gpu": " 4090 ",
            "cloud_type": "community",
            "spot": "yes",
            "other": "ignored",
        }
    ) == {
        "min_vram_gb": 24.0,
        "max_price_per_hour": 0.5,
        "gpu": "4090",
        "cloud_type": "COMMUNITY",
        "spot": True,
    }
    assert offer_filters({"gpu": "", "spot": "0"}) == {"spot": False}
    with pytest.raises(FilterError) as caught:
        offer_filters({"max_price_per_hour": "1e999"})
    assert caught.value.field == "max_price_per_hour"


async def test_where_the_service_finds_the_key(tmp_path):
    client, reason = make_runpod_client(api_key=" rpa_CONFIGURED ", environ={})
    assert reason is None and client.redact("rpa_CONFIGURED") == "***"
    await client.aclose()
    client, reason = make_runpod_client(environ={"RUNPOD_API_KEY": "rpa_FROM_ENV"})
    assert reason is None and client.redact("rpa_FROM_ENV") == "***"
    await client.aclose()
    # not ~/.runpod/config.toml: a hub's service reads only what its admin configured
    assert make_runpod_client(environ={"HOME": str(tmp_path)}) == (None, NO_KEY_REASON)
    client, reason = make_runpod_client(
        api_key="rpa_X", api_url="https://api.runpod.io/graphql?api_key=rpa_X", environ={}
    )
    assert client is None
    assert reason == "the RunPod API URL must not carry the API key; set RUNPOD_API_KEY instead"


def pod(pod_id: str, meta: dict[str, str], created: str | None = None) -> Pod:
    env = [f"THINKUBE_{k.upper()}={v}" for k, v in meta.items()]
    return Pod.from_api(
        {"id": pod_id, "name": pod_id, "desiredStatus": "RUNNING", "env": env, "createdAt": created}
    )


def test_active_servers_from_user_models():
    hub = active_servers(
        [
            {"name": "alice", "servers": {"": {"ready": True, "pending": None, "state": {}}}},
            {
                "name": "bob",
                "servers": {
                    "gpu": {"ready": True, "pending": None, "state": {"runpod_pod_id": "p1"}},
                    "new": {"ready": False, "pending": "spawn"},
                },
            },
            {"name": "carol", "servers": {}},  # listed active, servers not shown
        ]
    )
    assert hub.servers[("alice", "")] == ActiveServer("alice", "", True, None, None)
    assert hub.servers[("bob", "gpu")].pod_id == "p1"
    assert hub.servers[("bob", "new")].pending == "spawn"
    assert hub.unknown_users == {"carol"}


def test_judge_decides_by_owner_pod_id_and_age():
    now = 1_000_000.0  # 1970-01-12T13:46:40Z
    old = "1970-01-12T13:30:00.000Z"  # 1000 s before now
    assert parse_created(old) == now - 1000
    assert parse_created("yesterday") is None
    hub = HubServers(
        {
            ("bob", "gpu"): ActiveServer("bob", "gpu", True, None, "p1"),
            ("eve", ""): ActiveServer("eve", "", False, "spawn", "p0"),
        },
        frozenset({"carol"}),
    )
    pods = [
        pod("p1", {"hub": "lab", "user": "bob", "server": "gpu"}, old),
        pod("p2", {"hub": "lab", "user": "bob", "server": "gpu"}, old),
        pod("p3", {"hub": "lab", "user": "eve"}, old),  # its server is starting
        pod("p4", {"hub": "lab", "user": "carol"}, old),  # the hub did not show carol's
        pod("p5", {"hub": "lab", "user": "dan"}, old),
        pod("p6", {"hub": "lab", "user": "dan"}, "1970-01-12T13:46:30Z"),  # 10 s old
        pod("p7", {"hub": "other", "user": "dan"}, old),
        pod("p8", {}, old),
        pod("p9", {"hub": "lab"}, old),
    ]
    verdicts = {v.pod.id: v for v in judge(pods, hub, prefix="lab", grace_s=60, now=now)}
    assert {i for i, v in verdicts.items() if v.reap} == {"p2", "p5", "p9"}
    assert set(verdicts) == {"p1", "p2", "p3", "p4", "p5", "p6", "p9"}
    assert verdicts["p2"].why == "its server runs pod p1"
    assert verdicts["p6"].why == "no active server owns it, but it is 10s old"
    # a pod whose creation time is unknown is as old as the reaper has known it
    young = judge(
        [pod("p10", {"hub": "lab", "user": "dan"})],
        hub,
        prefix="lab",
        grace_s=60,
        now=now,
        first_seen={"p10": now - 30},
    )
    assert not young[0].reap
    old_enough = judge(
        [pod("p10", {"hub": "lab", "user": "dan"})],
        hub,
        prefix="lab",
        grace_s=60,
        now=now,
        first_seen={"p10": now - 61},
    )
    assert old_enough[0].reap
