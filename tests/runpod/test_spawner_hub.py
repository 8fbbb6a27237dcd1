"""RemoteRunPodSpawner end to end: a real JupyterHub behind the real configurable-http-proxy,
the RunPod stand-in renting "pods" whose dockerArgs run a real jupyterhub-singleuser on a
loopback address of their own, reached through the hub's proxy.

Every test ends by checking that neither the RunPod API key nor a server's hub token
appears in anything the hub logged or answered (the pods' own env aside).
"""

from __future__ import annotations

import json
import logging
import re
import time
from datetime import UTC, datetime, timedelta
from html import unescape
from urllib.parse import urljoin

import httpx
import pytest
from jupyterhub import orm

from tests.kubesim.sim import free_port
from tests.runpod.cloud_hub import (
    Browser,
    admin_api,
    cloud_hub,
    cloud_hub_config,
    progress_messages,
    wait_gone,
    wait_ready,
)
from tests.runpod_fake import FakePod, RunPodFake
from tests.utils import eventually

RTX4090_SECURE = "SECURE:NVIDIA GeForce RTX 4090:1"


class Seen:
    """Everything the tests saw the hub say: answers, pages, progress, the database's
    spawner state. Checked for secrets at the end of each test, with the hub's log."""

    def __init__(self) -> None:
        self.texts: list[str] = []
        self.secrets: set[str] = set()  # more to look for (a wrong key a test configured)
        self.fakes: list[RunPodFake] = []  # stand-ins a test made itself

    def add(self, *texts) -> None:
        for text in texts:
            self.texts.append(text if isinstance(text, str) else json.dumps(text))


@pytest.fixture
def seen():
    return Seen()


@pytest.fixture
async def fake(make_runpod_fake) -> RunPodFake:
    return await make_runpod_fake(start_delay_s=0.3)


class LogLines(logging.Handler):
    """Every log record of the test, formatted as it is emitted (with its traceback)."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.setFormatter(logging.Formatter("%(name)s %(levelname)s %(message)s"))
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.lines.append(self.format(record))
        except Exception:  # a record whose arguments cannot be shown any more
            self.lines.append(f"{record.name} {record.msg}")


def leaks(haystacks: dict[str, str], secrets: set[str]) -> list[str]:
    """Where (by name) any of `secrets` shows up."""
    return [where for where, text in haystacks.items() for secret in secrets if secret in text]


@pytest.fixture(autouse=True)
def no_secrets_anywhere(request, caplog, seen):
    """After each test: the API key and the servers' hub tokens are nowhere in the hub's
    log (all loggers, DEBUG: the hub, the spawner, the RunPod client, the stand-in), the
    spawner's messages, pages, answers and state, or the pods' own output. Only the pods'
    env (where the hub token must be) is not searched."""
    caplog.set_level("DEBUG")
    hub_log = LogLines()
    logging.getLogger().addHandler(hub_log)
    try:
        yield
    finally:
        logging.getLogger().removeHandler(hub_log)
    fakes = [v for v in request.node.funcargs.values() if isinstance(v, RunPodFake)]
    fakes += seen.fakes
    if not fakes:
        return  # no hub ran
    secrets = set(seen.secrets)
    for runpod in fakes:
        secrets.update(runpod.keys)
        for pod in [*runpod.pods.values(), *runpod.terminated.values()]:
            token = pod.env.get("JUPYTERHUB_API_TOKEN")
            if token:
                secrets.add(token)
            # the pod's own output (jupyterhub-singleuser's log) while it still has one
            seen.add(runpod.output(pod.id) if pod.container else "")
    assert secrets, "nothing to look for"
    assert len(hub_log.lines) > 50, "the hub's log was not captured"
    haystacks = {
        "hub log": "\n".join(hub_log.lines),
        **{f"seen[{i}]": t for i, t in enumerate(seen.texts)},
    }
    found = leaks(haystacks, secrets)  # names only: the failure must not print a secret
    assert found == [], "a secret appeared in what the hub said"


def test_the_leak_check_finds_a_secret():
    assert leaks({"log": "x rpa_ABC y", "page": "ok"}, {"rpa_ABC"}) == ["log"]
    assert leaks({"log": "nothing"}, {"rpa_ABC", "tok"}) == []


def only_pod(fake: RunPodFake) -> FakePod:
    (pod,) = fake.pods.values()
    return pod


def deploys(fake: RunPodFake) -> list[dict]:
    return [r.variables["input"] for r in fake.requests_for("podFindAndDeployOnDemand")]


async def state_in_db(hub, user: str) -> dict:
    db = hub.app.db
    db.expire_all()
    return orm.User.find(db, user).orm_spawners[""].state or {}


async def test_form_spawn_through_the_proxy_and_stop_terminates(fake, tmp_path, seen):
    # RunPod's proxy routes by host name, so the hub's proxy must send it the pod's
    # (configurable-http-proxy --change-origin): the server then sees another Host than
    # the browser's Origin, and must still accept the browser's API calls.
    proxy = {"ConfigurableHTTPProxy": {"command": ["configurable-http-proxy", "--change-origin"]}}
    async with cloud_hub(tmp_path, cloud_hub_config(fake, tmp_path, hub=proxy)) as hub:
        browser = Browser(hub)
        await browser.login("alice")
        page = await browser.spawn_page()
        seen.add(page)
        text = unescape(page)
        assert "RunPod secure cloud: RTX 4090 24 GB, $0.69/h on demand, $0.35/h spot" in text
        assert "H100" not in text  # $2.69/h: above alice's cap of $1/h
        assert "not on the lab's shared storage" in text
        response = await browser.submit({"offer": RTX4090_SECURE})
        assert response.status_code == 302, response.text[:1000]
        async with admin_api(hub) as api:
            seen.add(await progress_messages(api, "alice"))
            model = await wait_ready(api, "alice")
            seen.add(model)

            pod = only_pod(fake)
            sent = pod.input
            assert sent["gpuTypeId"] == "NVIDIA GeForce RTX 4090"
            assert sent["cloudType"] == "SECURE" and sent["gpuCount"] == 1
            assert sent["name"] == "thinkube-alice"
            assert sent["ports"] == "8888/http"
            assert "jupyterhub-singleuser --ip=0.0.0.0 --port=8888" in sent["dockerArgs"]
            lifetime = datetime.fromisoformat(sent["terminateAfter"].replace("Z", "+00:00"))
            assert abs(lifetime - (datetime.now(UTC) + timedelta(hours=12))) < timedelta(minutes=2)
            env = pod.env
            assert env["THINKUBE_HUB"] == "thinkube"
            assert env["THINKUBE_USER"] == "alice"
            assert env["THINKUBE_SERVER"] == ""
            assert env["JUPYTERHUB_API_URL"] == f"{hub.url}hub/api"
            assert env["JUPYTERHUB_USER"] == "alice" and env["JUPYTERHUB_API_TOKEN"]
            assert "PATH" not in env  # the hub's own PATH means nothing in the container

            state = await state_in_db(hub, "alice")
            seen.add(state)
            assert state["runpod_pod_id"] == pod.id
            assert state["runpod_offer"] == RTX4090_SECURE

            # The real jupyterhub-singleuser answers through the hub's proxy.
            token = hub.token("alice")
            async with httpx.AsyncClient(headers={"Authorization": f"token {token}"}) as http:
                for path in ("user/alice/api", "user/alice/api/status"):
                    answer = await http.get(urljoin(hub.url, path))
                    assert answer.status_code == 200, answer.text[:300]
                # and it asked the hub, through the public URL, who the token belongs to
                me = await http.get(urljoin(hub.url, "user/alice/api/me"))
                assert me.status_code == 200, me.text[:300]
                assert me.json()["identity"]["username"] == "alice"
            # The person's browser gets in by the hub's OAuth, which the cloud server
            # completes by calling the hub's public URL.
            lab = await browser.http.get(urljoin(hub.url, "user/alice/"), follow_redirects=True)
            assert lab.status_code == 200, lab.text[:300]
            assert str(lab.url).startswith(urljoin(hub.url, "user/alice/"))
            seen.add(lab.text)
            xsrf = next(
                c.value
                for c in browser.http.cookies.jar
                if c.name == "_xsrf" and c.path.startswith("/user/alice")
            )
            created = await browser.http.post(
                urljoin(hub.url, "user/alice/api/contents"),
                json={"type": "notebook"},
                headers={"Origin": hub.url.rstrip("/"), "X-XSRFToken": xsrf},
            )
            assert created.status_code == 201, created.text[:300]

            response = await api.delete("users/alice/server")
            assert response.status_code in (202, 204), response.text
            await wait_gone(api, "alice")
        assert fake.pods == {}
        assert fake.terminated[pod.id].desired_status == "TERMINATED"
        assert fake.pod(pod.id).last_process.returncode is not None
        assert "runpod_pod_id" not in await state_in_db(hub, "alice")
        await browser.aclose()


async def test_rest_filters_try_the_next_offer_when_the_first_has_no_capacity(fake, tmp_path, seen):
    fake.set_capacity("NVIDIA RTX A4000", 0)
    # The POST answers at once (no slow-spawn wait), so the progress can be followed.
    settings = {"allow_named_servers": True, "tornado_settings": {"slow_spawn_timeout": 0}}
    config = cloud_hub_config(fake, tmp_path, hub={"JupyterHub": settings})
    async with cloud_hub(tmp_path, config) as hub:
        hub.user("bob")
        async with admin_api(hub) as api:
            response = await api.post(
                "users/bob/servers/gpu", json={"min_vram_gb": 16, "max_price_per_hour": 0.3}
            )
            assert response.status_code in (201, 202), response.text
            messages = await progress_messages(api, "bob", "gpu")
            seen.add(messages)
        tried = [(i["gpuTypeId"], i["cloudType"]) for i in deploys(fake)]
        assert tried[0] == ("NVIDIA RTX A4000", "COMMUNITY")  # the cheapest: no capacity
        assert len(tried) == 2
        pod = only_pod(fake)
        assert (pod.gpu_type.id, pod.cloud_type) == tried[1]
        assert pod.name == "thinkube-bob-gpu" and pod.env["THINKUBE_SERVER"] == "gpu"
        assert any("RunPod has no RTX A4000 free right now" in m for m in messages), messages
        assert any(m.startswith(f"Pod {pod.id} created") for m in messages), messages
        assert "Jupyter is answering" in messages
        async with admin_api(hub) as api:
            assert (await api.delete("users/bob/servers/gpu")).status_code in (202, 204)

            async def stopped():
                return (await api.get("users/bob")).json()["servers"] == {}

            await eventually(stopped, within=60, interval=0.2)
        assert fake.pods == {}


async def test_a_server_that_never_answers_is_terminated_and_the_start_fails(
    make_runpod_fake, tmp_path, seen
):
    # The container runs, but not Jupyter: the start gives up and ends the pod.
    fake = await make_runpod_fake(
        start_delay_s=0.2, command_hook=lambda argv, env, pod: ["sleep", "600"]
    )
    seen.fakes.append(fake)
    config = cloud_hub_config(fake, tmp_path, spawner={"cloud_start_timeout": 3})
    async with cloud_hub(tmp_path, config) as hub:
        hub.user("carol")
        async with admin_api(hub) as api:
            started = time.monotonic()
            response = await api.post("users/carol/server", json={"offer": RTX4090_SECURE})
            seen.add(response.text)
            if response.status_code in (201, 202):
                messages = await progress_messages(api, "carol")
                seen.add(messages)
                text = " ".join(messages)
            else:
                text = response.json()["message"]
            await wait_gone(api, "carol")
            assert time.monotonic() - started < 30
        (pod_id,) = fake.terminated
        assert fake.pods == {}
        assert "did not start within 3s" in text and f"pod {pod_id} was terminated" in text, text
        assert fake.terminated[pod_id].last_process.returncode is not None
        assert "runpod_pod_id" not in await state_in_db(hub, "carol")


async def test_a_pod_whose_server_exits_is_terminated(make_runpod_fake, tmp_path, seen):
    fake = await make_runpod_fake(
        start_delay_s=0.2, command_hook=lambda argv, env, pod: ["bash", "-c", "exit 3"]
    )
    seen.fakes.append(fake)
    async with cloud_hub(tmp_path, cloud_hub_config(fake, tmp_path)) as hub:
        hub.user("dan")
        async with admin_api(hub) as api:
            response = await api.post("users/dan/server", json={})
            seen.add(response.text)
            text = response.text
            if response.status_code in (201, 202):
                text = " ".join(await progress_messages(api, "dan"))
                seen.add(text)
            await wait_gone(api, "dan")
        assert fake.pods == {} and len(fake.terminated) == 1
        assert "ended while starting" in text and "was terminated" in text, text


async def test_hub_restart_while_running_keeps_tracking_and_stops_cleanly(fake, tmp_path, seen):
    workdir = tmp_path / "hub"
    hub_settings = {"JupyterHub": {"cleanup_servers": False}}
    port = free_port()  # the hub's public URL stays the same across the restart
    config = cloud_hub_config(fake, workdir, hub=hub_settings, port=port)
    async with cloud_hub(workdir, config) as hub:
        hub.user("erin")
        async with admin_api(hub) as api:
            response = await api.post("users/erin/server", json={"offer": RTX4090_SECURE})
            assert response.status_code in (201, 202), response.text
            await wait_ready(api, "erin")
        pod = only_pod(fake)
    # The hub and its proxy are gone; the pod runs on.
    assert fake.pods == {pod.id: pod} and pod.process.returncode is None

    config = cloud_hub_config(fake, workdir, hub=hub_settings, port=port)
    async with cloud_hub(workdir, config, fresh_db=False) as hub:
        async with admin_api(hub) as api:
            model = await wait_ready(api, "erin", within=30)
            seen.add(model)
            assert (await state_in_db(hub, "erin"))["runpod_pod_id"] == pod.id
            token = hub.token("erin")
            async with httpx.AsyncClient(headers={"Authorization": f"token {token}"}) as http:
                answer = await http.get(urljoin(hub.url, "user/erin/api/status"))
                assert answer.status_code == 200, answer.text[:300]
            assert (await api.delete("users/erin/server")).status_code in (202, 204)
            await wait_gone(api, "erin")
    assert fake.pods == {} and pod.id in fake.terminated


async def test_a_wrong_api_key_is_a_clear_error_and_rents_nothing(fake, tmp_path, seen):
    wrong_key = "rpa_WRONG" + "X" * 30
    seen.secrets.add(wrong_key)
    config = cloud_hub_config(fake, tmp_path, spawner={"runpod_api_key": wrong_key})
    async with cloud_hub(tmp_path, config) as hub:
        browser = Browser(hub)
        await browser.login("frank")
        page = await browser.spawn_page()
        seen.add(page)
        assert (
            "RunPod refused the hub&#x27;s API key" in page
            or "RunPod refused the hub's" in unescape(page)
        )
        async with admin_api(hub) as api:
            response = await api.post("users/frank/server", json={})
            seen.add(response.text)
            assert response.status_code == 500, response.text
            assert "RunPod refused the hub's API key" in response.json()["message"]
            assert "rpa_WRONG" not in response.text
            await wait_gone(api, "frank")
            assert (await api.get("")).status_code == 200  # the hub is fine
        await browser.aclose()
    assert deploys(fake) == [] and fake.pods == {} and fake.terminated == {}


async def test_no_public_hub_url_is_a_clear_error_naming_the_setting(fake, tmp_path, seen, caplog):
    config = cloud_hub_config(fake, tmp_path, public_url=False)
    async with cloud_hub(tmp_path, config) as hub:
        hub.user("gina")
        async with admin_api(hub) as api:
            response = await api.post("users/gina/server", json={})
            seen.add(response.text)
            assert response.status_code == 500, response.text
            message = response.json()["message"]
            assert "set c.JupyterHub.public_url" in message
            assert "c.RemoteRunPodSpawner.cloud_public_hub_url" in message
            await wait_gone(api, "gina")
    assert "set c.JupyterHub.public_url" in caplog.text  # said when the spawner was made
    assert fake.requests_for("podFindAndDeployOnDemand") == [] and fake.pods == {}


async def test_no_api_key_is_a_clear_error_for_the_admin_and_the_user(
    fake, tmp_path, seen, caplog, monkeypatch
):
    monkeypatch.delenv("RUNPOD_API_KEY", raising=False)
    monkeypatch.delenv("RUNPOD_API_KEY_FILE", raising=False)
    config = cloud_hub_config(fake, tmp_path, spawner={"runpod_api_key": ""})
    async with cloud_hub(tmp_path, config) as hub:
        browser = Browser(hub)
        await browser.login("ivan")
        page = unescape(await browser.spawn_page())
        seen.add(page)
        assert "Cloud GPUs are not configured on this hub (no RunPod API key)" in page
        async with admin_api(hub) as api:
            response = await api.post("users/ivan/server", json={})
            seen.add(response.text)
            assert response.status_code == 500, response.text
            assert "no RunPod API key" in response.json()["message"]
            await wait_gone(api, "ivan")
        await browser.aclose()
    assert "Cloud GPUs cannot work: no RunPod API key" in caplog.text
    assert fake.requests == []


async def test_a_cap_of_zero_means_no_cloud_unless_a_group_cap_allows_it(fake, tmp_path, seen):
    caps = {
        "cloud_price_cap": 0,
        "cloud_group_price_caps": {"gpu-users": 0.3},
        "cloud_user_price_caps": {"ida": 0},
    }
    config = cloud_hub_config(fake, tmp_path, spawner=caps)
    async with cloud_hub(tmp_path, config) as hub:
        group = orm.Group(name="gpu-users")
        hub.app.db.add(group)
        for name in ("rita", "ida"):
            group.users.append(hub.user(name))
        hub.app.db.commit()
        browser = Browser(hub)
        await browser.login("rita")  # in the group: offers up to $0.30/h
        page = unescape(await browser.spawn_page())
        seen.add(page)
        assert "within your cap of $0.30/h" in page and "RTX A4000 16 GB" in page
        assert "RTX 4090 24 GB, $0.69/h" not in page  # $0.34/h community, $0.69/h secure
        await browser.aclose()
        for name in ("henry", "ida"):  # no cap; a user cap of 0 over the group's
            browser = Browser(hub)
            await browser.login(name)
            page = await browser.spawn_page()
            seen.add(page)
            assert "Cloud GPUs are not available to you on this hub." in page, name
            assert 'name="offer"' not in page
            await browser.aclose()
        async with admin_api(hub) as api:
            response = await api.post("users/henry/server", json={"offer": RTX4090_SECURE})
            seen.add(response.text)
            assert response.status_code == 400, response.text
            assert "Cloud GPUs are not available to you on this hub." in response.json()["message"]
            await wait_gone(api, "henry")
    assert fake.requests_for("podFindAndDeployOnDemand") == [] and fake.pods == {}


@pytest.mark.parametrize(
    ("user_options", "message"),
    [
        (
            {"offer": "SECURE:NVIDIA H100 80GB HBM3:1"},
            "H100 SXM costs $2.69/h on demand, over your cloud limit",
        ),
        ({"offer": "SECURE:NVIDIA B200 <script>:1"}, "Unknown cloud offer"),
        ({"offer": RTX4090_SECURE, "image": "evil/miner"}, "Unknown option 'image'"),
        ({"min_vram_gb": 200}, "No cloud GPU offer matches your request within $1.00/h"),
        ({"spot": "yes please"}, "'spot' must be true or false"),
    ],
)
async def test_tampered_or_impossible_options_are_refused_and_rent_nothing(
    fake, tmp_path, seen, user_options, message
):
    async with cloud_hub(tmp_path, cloud_hub_config(fake, tmp_path)) as hub:
        hub.user("mallory")
        async with admin_api(hub) as api:
            response = await api.post("users/mallory/server", json=user_options)
            seen.add(response.text)
            assert response.status_code == 400, response.text
            assert message in response.json()["message"], response.text
            await wait_gone(api, "mallory")
    assert fake.requests_for("podFindAndDeployOnDemand") == [] and fake.pods == {}


async def test_a_tampered_form_is_refused_with_the_form_again(fake, tmp_path, seen):
    async with cloud_hub(tmp_path, cloud_hub_config(fake, tmp_path)) as hub:
        browser = Browser(hub)
        await browser.login("oscar")
        await browser.spawn_page()
        response = await browser.submit({"offer": "SECURE:NVIDIA H100 80GB HBM3:1"})
        seen.add(response.text)
        text = unescape(response.text)
        assert "over your cloud limit of $1.00/h" in text
        assert re.search(r'name="offer"', response.text)  # the form, to choose again
        await browser.aclose()
    assert fake.pods == {}


async def test_spot_rents_an_interruptible_pod_at_the_minimum_bid(fake, tmp_path, seen):
    async with cloud_hub(tmp_path, cloud_hub_config(fake, tmp_path)) as hub:
        hub.user("paula")
        async with admin_api(hub) as api:
            response = await api.post(
                "users/paula/server", json={"offer": RTX4090_SECURE, "spot": True}
            )
            assert response.status_code in (201, 202), response.text
            await wait_ready(api, "paula")
            pod = only_pod(fake)
            assert pod.pod_type == "INTERRUPTABLE"
            (rent,) = fake.requests_for("podRentInterruptable")
            assert rent.variables["input"]["bidPerGpu"] == 0.35
            # RunPod takes the spot pod back: the hub notices and ends it.
            await fake.stop_pod(pod.id)
            assert await hub.app.users["paula"].spawner.poll() == 1
            # poll() ended the stopped pod: nothing keeps billing
            assert fake.pods == {} and pod.id in fake.terminated
            assert (await api.delete("users/paula/server")).status_code in (202, 204)
            await wait_gone(api, "paula")
    assert fake.pods == {}
