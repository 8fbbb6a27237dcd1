"""Checking tokens with the hub when the hub cannot answer, and how long a revoked token or
login cookie keeps working.

The service as a real process in every case: on its own, pointed at a hub API that refuses
connections, answers 502 or never answers; and managed by a real `jupyterhub` process, whose
admin API revokes tokens and which is paused (SIGSTOP) in the middle of a browser's login."""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import signal
import socket
import sys
import time
from contextlib import asynccontextmanager
from pathlib import Path
from urllib.parse import urljoin, urlsplit

import httpx
import pytest
import pytest_asyncio
from tornado import web
from tornado.httpserver import HTTPServer

from hub_service.handlers import HUB_UNREACHABLE
from tests.kubesim.sim import free_port
from tests.service.hubprocess import ACCESS_SCOPE, HubSettings, reap, start_hub
from tests.utils import eventually

pytestmark = pytest.mark.asyncio(loop_scope="module")

REPO = Path(__file__).resolve().parents[2]
PREFIX = "/services/thinkube-resources/"
CACHE_S = 2  # the service's token_cache_seconds in these tests
TIMEOUT_S = 1  # its hub_auth_timeout_seconds
MARGIN_S = 1.5  # a loaded machine's slack on top


# --- the service on its own, with a hub that cannot answer ----------------------------------


@asynccontextmanager
async def lone_service(workdir: Path, hub_api_url: str):
    """`python -m hub_service` as the hub would start it, checking tokens at `hub_api_url`;
    yields its URL once it answers."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("JUPYTERHUB_")}
    env.update(
        JUPYTERHUB_API_TOKEN=secrets.token_hex(16),
        JUPYTERHUB_CLIENT_ID="service-thinkube-resources",
        JUPYTERHUB_API_URL=hub_api_url,
        JUPYTERHUB_SERVICE_NAME="thinkube-resources",
        JUPYTERHUB_SERVICE_URL=f"http://127.0.0.1:{port}",
    )
    log = workdir / "service.log"
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "hub_service",
        "--db-url",
        f"sqlite:///{workdir / 'catalog.sqlite'}",
        "--kubeconfig",
        os.environ["KUBECONFIG"],  # the tests' placeholder: never ready, which is fine here
        "--log-file",
        str(log),
        f"--ThinkubeService.hub_auth_timeout_seconds={TIMEOUT_S}",
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
        env=env,
        cwd=str(REPO),
    )
    url = f"http://127.0.0.1:{port}{PREFIX}"
    try:
        async with httpx.AsyncClient(timeout=5) as client:

            async def healthy() -> bool:
                assert process.returncode is None, log.read_text()
                try:
                    return (await client.get(url + "api/v1/health")).status_code == 200
                except httpx.TransportError:
                    return False

            await eventually(healthy, within=60, interval=0.1)
        yield url
    finally:
        if process.returncode is None:
            process.terminate()
            await process.wait()


def assert_hub_unreachable(response: httpx.Response) -> None:
    assert response.status_code == 503, response.text
    assert response.json() == {"status": 503, "error": HUB_UNREACHABLE}
    assert response.headers["Retry-After"] == "5"


async def ask(url: str, token: str | None = "some-token", **kwargs) -> httpx.Response:
    headers = kwargs.pop("headers", {})
    if token:
        headers["Authorization"] = f"token {token}"
    async with httpx.AsyncClient(timeout=30) as client:
        return await client.request(kwargs.pop("method", "GET"), url, headers=headers, **kwargs)


async def test_a_hub_that_refuses_connections_is_503_with_the_reason(tmp_path):
    async with lone_service(tmp_path, f"http://127.0.0.1:{free_port()}/hub/api") as url:
        for path in ("api/v1/cluster/summary", "api/v1/images", "metrics"):
            assert_hub_unreachable(await ask(url + path))
        assert_hub_unreachable(
            await ask(url + "api/v1/images/mine", method="PUT", json={"image": "x/y:1"})
        )
        # a browser sent with a token: the page says the same in HTML
        page = await ask(url, headers={"Accept": "text/html"})
        assert page.status_code == 503
        assert "The hub cannot be reached to check your token" in page.text
        # no credentials at all: nothing to ask the hub, still a 401
        assert (await ask(url + "api/v1/cluster/summary", token=None)).status_code == 401
    log = (tmp_path / "service.log").read_text()
    assert "Traceback" not in log
    assert " 500 " not in log


async def test_a_hub_api_answering_5xx_is_503(tmp_path):
    class Failing(web.RequestHandler):
        def get(self, _path: str) -> None:
            self.set_status(502)
            self.finish("Bad Gateway")

    port = free_port()
    server = HTTPServer(web.Application([(r"/hub/api/(.*)", Failing)]))
    server.listen(port, "127.0.0.1")
    try:
        async with lone_service(tmp_path, f"http://127.0.0.1:{port}/hub/api") as url:
            assert_hub_unreachable(await ask(url + "api/v1/cluster/summary"))
    finally:
        server.stop()


async def test_a_hub_that_never_answers_is_503_after_the_timeout(tmp_path):
    # accepts connections (the kernel does) and never reads or answers them
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(64)
    try:
        api = f"http://127.0.0.1:{silent.getsockname()[1]}/hub/api"
        async with lone_service(tmp_path, api) as url:
            started = time.monotonic()
            response = await ask(url + "api/v1/cluster/summary")
            took = time.monotonic() - started
        assert_hub_unreachable(response)
        assert TIMEOUT_S <= took < TIMEOUT_S + MARGIN_S
        assert "the hub did not check a token within 1s" in (tmp_path / "service.log").read_text()
    finally:
        silent.close()


# --- with a real hub ------------------------------------------------------------------------


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def hub(module_kubesim, tmp_path_factory):
    sim = await module_kubesim()
    settings = HubSettings.new(
        tmp_path_factory.mktemp("hub"),
        sim.kubeconfig,
        (
            f"--ThinkubeService.token_cache_seconds={CACHE_S}",
            f"--ThinkubeService.hub_auth_timeout_seconds={TIMEOUT_S}",
        ),
    )
    process = await start_hub(settings)
    try:
        await process.wait_service()
        yield process
    finally:
        if process.process.returncode is None:
            os.kill(process.pid, signal.SIGCONT)  # should a test have left it paused
            try:
                await process.stop(signal.SIGTERM, within=60)
            except TimeoutError:
                import psutil

                await reap(psutil.Process(process.pid))


def hub_admin(hub) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        base_url=hub.hub_api_url,
        headers={"Authorization": f"token {hub.settings.admin_token}"},
        timeout=30,
    )


async def user_token(hub, name: str) -> tuple[str, str]:
    """A new user `name` (the user role reads the service) and a token of theirs: (token, id)."""
    async with hub_admin(hub) as admin:
        response = await admin.post(f"users/{name}")
        assert response.status_code in (201, 409), response.text
        response = await admin.post(f"users/{name}/tokens", json={"scopes": [ACCESS_SCOPE]})
        assert response.status_code == 201, response.text
        model = response.json()
    return model["token"], model["id"]


async def seconds_until_refused(client: httpx.AsyncClient, path: str, within: float) -> float:
    started = time.monotonic()

    async def refused() -> bool:
        response = await client.get(path)
        assert response.status_code in (200, 401), response.text
        return response.status_code == 401

    await eventually(refused, within=within, interval=0.05)
    return time.monotonic() - started


async def test_a_revoked_token_stops_working_within_the_cache_lifetime(hub):
    token, token_id = await user_token(hub, "revoked-ann")
    async with httpx.AsyncClient(
        base_url=hub.service_url, headers={"Authorization": f"token {token}"}, timeout=10
    ) as client:
        assert (await client.get("api/v1/cluster/summary")).status_code == 200
        async with hub_admin(hub) as admin:
            response = await admin.delete(f"users/revoked-ann/tokens/{token_id}")
            assert response.status_code == 204, response.text
        took = await seconds_until_refused(client, "api/v1/cluster/summary", within=30)
    assert took <= CACHE_S + MARGIN_S, f"refused {took:.2f}s after the revoke"


@asynccontextmanager
async def login_browser(hub, name: str):
    """A client logged in to the hub (dummy authenticator) through its login form."""
    async with httpx.AsyncClient(timeout=30) as browser:
        public = f"http://127.0.0.1:{hub.settings.ports.public}/"
        await browser.get(urljoin(public, "hub/login"))
        xsrf = next(c.value for c in browser.cookies.jar if c.name == "_xsrf")
        response = await browser.post(
            urljoin(public, "hub/login"),
            data={"username": name, "password": "any", "_xsrf": xsrf},
        )
        assert response.status_code == 302, response.text
        yield browser


async def oauth_callback_url(hub, browser: httpx.AsyncClient) -> str:
    """Open the service in the browser way and follow the OAuth redirects through the hub
    up to (not into) the service's oauth_callback: its URL, with the code."""
    public = f"http://127.0.0.1:{hub.settings.ports.public}/"
    url = urljoin(public, PREFIX.lstrip("/"))
    for _ in range(5):
        response = await browser.get(url, headers={"Accept": "text/html"})
        assert response.status_code == 302, (url, response.status_code, response.text[:300])
        url = urljoin(url, response.headers["Location"])
        if urlsplit(url).path.endswith("/oauth_callback"):
            return url
    raise AssertionError(f"no oauth_callback in the redirects (last: {url})")


async def test_a_revoked_login_cookie_stops_working_within_the_cache_lifetime(hub):
    async with login_browser(hub, "cookie-cal") as browser:
        callback = await oauth_callback_url(hub, browser)
        response = await browser.get(callback)
        assert response.status_code == 302  # cookie set, back to the page
        summary = hub.service_url + "api/v1/cluster/summary"
        assert (await browser.get(summary)).status_code == 200  # the cookie alone
        async with hub_admin(hub) as admin:
            tokens = (await admin.get("users/cookie-cal/tokens")).json()["api_tokens"]
            service_tokens = [t for t in tokens if t.get("oauth_client")]
            assert service_tokens, tokens
            for token in service_tokens:
                response = await admin.delete(f"users/cookie-cal/tokens/{token['id']}")
                assert response.status_code == 204, response.text
        took = await seconds_until_refused(browser, summary, within=30)
    assert took <= CACHE_S + MARGIN_S, f"refused {took:.2f}s after the revoke"


async def test_a_paused_hub_at_the_oauth_callback_is_503_then_the_login_works(hub):
    async with login_browser(hub, "paused-pat") as browser:
        callback = await oauth_callback_url(hub, browser)
        # straight to the service (the proxy would wait on the paused hub's routes too)
        direct = urljoin(hub.service_url, urlsplit(callback).path + "?" + urlsplit(callback).query)
        os.kill(hub.pid, signal.SIGSTOP)
        try:
            started = time.monotonic()
            response = await browser.get(direct)
            took = time.monotonic() - started
            # a token no answer is cached for, while the hub is paused: 503 too
            token_answer = await ask(
                hub.service_url + "api/v1/cluster/summary", token=secrets.token_hex(16)
            )
        finally:
            os.kill(hub.pid, signal.SIGCONT)
        assert response.status_code == 503, response.text
        assert json.loads(response.text) == {"status": 503, "error": HUB_UNREACHABLE}
        assert response.headers["Retry-After"] == "5"
        assert took < TIMEOUT_S + MARGIN_S
        assert_hub_unreachable(token_answer)
        # the hub back: a new login goes through
        callback = await oauth_callback_url(hub, browser)
        assert (await browser.get(callback)).status_code == 302
        summary = hub.service_url + "api/v1/cluster/summary"
        assert (await browser.get(summary)).status_code == 200
    assert " 500 " not in hub.service_log()
