"""Logging in through Keycloak as lab.yaml configures it, end to end.

A real OpenID Connect provider (oidc-provider-mock) stands in for Keycloak: its endpoints
are served at Keycloak's paths under a realm URL, so the URLs lab.yaml derives from the
realm are the ones used. A real JupyterHub (MockHub, behind the real configurable-http-proxy)
runs with the configuration z2jh builds from values.yaml + lab.yaml; only what cannot
run here is replaced (the spawner by jupyterhub's MockSpawner with a form, the managed
service by its name and token, the public URLs by local ones). A browser-like client goes
through the whole redirect flow: hub login -> the realm's authorize page -> the user picks
their account -> the hub's oauth_callback (code exchanged at the token URL, claims from the
userinfo URL) -> the spawn form. Submitting the form runs the spawn, and with it the price
cap hook. Passes on JupyterHub 6.1 and 5.5 (the version the chart ships).
"""

from __future__ import annotations

import asyncio
import os
import re
import secrets
import shutil
import sys
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
import werkzeug.serving
from jupyterhub import orm, scopes
from jupyterhub.tests.mocking import MockHub, MockSpawner

from tests.deploy.z2jh import (
    LAB,
    REPO,
    VALUES,
    environment,
    hub_config,
    overlay_values,
    spawner_for,
)
from tests.kubesim.sim import free_port

oidc_provider_mock = pytest.importorskip("oidc_provider_mock")

REALM_PATH = "/realms/thinkube"
# Keycloak's OpenID Connect endpoints -> oidc-provider-mock's.
KEYCLOAK_PATHS = {
    f"{REALM_PATH}/protocol/openid-connect/auth": "/oauth2/authorize",
    f"{REALM_PATH}/protocol/openid-connect/token": "/oauth2/token",
    f"{REALM_PATH}/protocol/openid-connect/userinfo": "/userinfo",
}
USERS = {
    # sub -> claims, as Keycloak's userinfo gives them with the groups mapper
    "f3a1-alice": {
        "preferred_username": "alice",
        "email": "alice@lab.test",
        "groups": ["lab-members", "gpu-users"],
    },
    "9c2e-carol": {
        "preferred_username": "carol",
        "email": "carol@lab.test",
        "groups": ["lab-members", "image-publishers", "lab-admins"],
    },
    "77b0-mallory": {"preferred_username": "mallory", "groups": ["visitors"]},
}


def keycloak_paths(app, seen: list[str]):
    """WSGI middleware: serve the provider at Keycloak's paths (and its own); `seen`
    records the paths asked for."""

    def wsgi(environ, start_response):
        path = environ.get("PATH_INFO", "")
        seen.append(path)
        if path in KEYCLOAK_PATHS:
            environ = {**environ, "PATH_INFO": KEYCLOAK_PATHS[path]}
        return app(environ, start_response)

    return wsgi


@dataclass
class Realm:
    url: str
    seen: list[str]  # paths requested from the provider


@pytest.fixture
def keycloak(monkeypatch):
    """The realm URL of a running OpenID Connect provider with USERS in it."""
    monkeypatch.setenv("AUTHLIB_INSECURE_TRANSPORT", "1")  # plain http on loopback
    app = oidc_provider_mock.app(
        user_claims=[oidc_provider_mock.User(sub=sub, claims=c) for sub, c in USERS.items()]
    )
    seen: list[str] = []
    server = werkzeug.serving.make_server("127.0.0.1", 0, keycloak_paths(app, seen), threaded=True)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        yield Realm(f"http://127.0.0.1:{server.server_port}{REALM_PATH}", seen)
    finally:
        server.shutdown()
        thread.join(5)
        server.server_close()


class FormSpawner(MockSpawner):
    """jupyterhub's MockSpawner (a real local process) with a spawn form."""

    options_form = '<label>Energy <input name="energy" type="text" value="high"/></label>'


@dataclass
class RunningHub:
    app: MockHub
    url: str  # public, ends with "/"

    def user(self, name: str) -> orm.User | None:
        return orm.User.find(self.app.db, name)


@asynccontextmanager
async def hub_from_values(realm_url: str) -> AsyncIterator[RunningHub]:
    values = overlay_values(VALUES, LAB)
    port = free_port()
    public = f"http://127.0.0.1:{port}/"
    env = {"KEYCLOAK_REALM_URL": realm_url, "OAUTH_CLIENT_SECRET": secrets.token_hex(16)}
    with environment(env):
        c, _ = hub_config(values)
    # What cannot run here: a local public URL, a MockSpawner with a form for
    # ThinkubeSpawner (which needs a cluster), and the services by name and token only
    # (the roles refer to them; the managed process is tested elsewhere).
    c.JupyterHub.bind_url = public
    c.GenericOAuthenticator.oauth_callback_url = f"{public}hub/oauth_callback"
    c.JupyterHub.spawner_class = FormSpawner
    c.JupyterHub.services = [
        {"name": s["name"], "api_token": s["api_token"]} for s in c.JupyterHub.services
    ]
    c.CryptKeeper.keys = [secrets.token_bytes(32)]
    c.Authenticator.allow_all = False  # MockHub would allow everyone otherwise
    MockHub.clear_instance()
    app = MockHub.instance(config=c)
    try:
        with environment(env):
            await app.initialize([])
            await app.start()
            yield RunningHub(app, public)
    finally:
        await stop_hub(app)


async def stop_hub(app: MockHub) -> None:
    """Stop the spawned servers, the proxy and the hub's server without app.stop(), which
    cancels every task of the event loop."""
    app.log.handlers = []
    MockHub.clear_instance()
    app._stop_called = True
    app._atexit_ran = True
    try:
        await app.cleanup()
    except Exception as err:
        print(f"error stopping the hub: {err}", file=sys.stderr)
    for callback in app._periodic_callbacks.values():
        callback.stop()
    if app.http_server:
        app.http_server.stop()
        await app.http_server.close_all_connections()
    app.db.close()
    app.db_file.close()


@pytest.fixture
async def running_hub(keycloak, monkeypatch):
    if shutil.which("configurable-http-proxy") is None:
        monkeypatch.setenv(
            "PATH", f"{REPO / 'node_modules' / '.bin'}{os.pathsep}{os.environ['PATH']}"
        )
    if shutil.which("configurable-http-proxy") is None:
        pytest.fail("configurable-http-proxy is missing: run `npm ci` (Makefile: deps)")
    async with hub_from_values(keycloak.url) as hub:
        yield hub, keycloak


def form_value(html: str, name: str) -> str:
    match = re.search(rf'name="{re.escape(name)}"[^>]*value="([^"]*)"', html)
    return match.group(1) if match else ""


async def log_in(browser: httpx.AsyncClient, hub_url: str, realm_url: str, sub: str):
    """Hub login through the realm, as a person in a browser; the last response."""
    page = await browser.get(f"{hub_url}hub/login")
    assert page.status_code == 200 and "Sign in with Keycloak" in page.text
    # The login button: the hub redirects to the realm's authorize URL.
    start = await browser.get(f"{hub_url}hub/oauth_login", follow_redirects=False)
    assert start.status_code == 302
    authorize = start.headers["location"]
    assert authorize.startswith(f"{realm_url}/protocol/openid-connect/auth?")
    query = parse_qs(urlsplit(authorize).query)
    assert query["client_id"] == ["thinkube-hub"]
    assert query["redirect_uri"] == [f"{hub_url}hub/oauth_callback"]
    assert set(query["scope"][0].split()) == {"openid", "profile", "email"}
    # The provider's login page; the person picks their account.
    form = await browser.get(authorize)
    assert form.status_code == 200
    back = await browser.post(authorize, data={"sub": sub}, follow_redirects=False)
    assert back.status_code == 302
    assert back.headers["location"].startswith(f"{hub_url}hub/oauth_callback?")
    # The hub exchanges the code, reads the userinfo, logs the person in.
    return await browser.get(back.headers["location"], follow_redirects=True)


async def wait_for(condition, within: float = 30.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while not condition():
        if loop.time() > deadline:
            raise AssertionError("timed out waiting")
        await asyncio.sleep(0.1)


async def test_login_through_keycloak_lands_on_the_spawn_form_and_caps_apply(running_hub):
    hub, realm = running_hub
    async with httpx.AsyncClient(timeout=30) as browser:
        landed = await log_in(browser, hub.url, realm.url, "f3a1-alice")
        # Every step went to Keycloak's endpoints under the realm URL.
        for path in KEYCLOAK_PATHS:
            assert path in realm.seen, path
        # Logged in, no server yet: the hub shows the spawn form.
        assert landed.status_code == 200, landed.text[:500]
        assert urlsplit(str(landed.url)).path == "/hub/spawn"
        assert 'name="energy"' in landed.text  # the spawner's options form

        alice = hub.user("alice")  # preferred_username, not the subject id
        assert alice is not None and not alice.admin
        assert sorted(g.name for g in alice.groups) == ["gpu-users", "lab-members"]
        assert scopes.has_scope(
            "access:services!service=thinkube-resources", scopes.get_scopes_for(alice)
        )
        user = hub.app.users[alice]
        auth_state = await user.get_auth_state()
        assert auth_state["oauth_user"]["groups"] == ["lab-members", "gpu-users"]

        # ThinkubeSpawner, built from the hub's configuration for this user, takes its cloud
        # price cap from these hub groups.
        spawner = spawner_for(hub.app.config, alice.name, [g.name for g in alice.groups])
        assert spawner.user_price_cap() == 2.0  # max(lab-members 0.5, gpu-users 2.0)

        # Start a server from the form.
        spawned = await browser.post(
            str(landed.url),
            data={"energy": "high", "_xsrf": browser.cookies.get("_xsrf") or ""},
            follow_redirects=False,
        )
        assert spawned.status_code == 302, spawned.text[:500]
        await wait_for(lambda: user.spawner.ready or not user.spawner.pending)
        await user.stop()


async def test_groups_make_admins_and_image_publishers(running_hub):
    hub, realm = running_hub
    async with httpx.AsyncClient(timeout=30) as browser:
        landed = await log_in(browser, hub.url, realm.url, "9c2e-carol")
        assert landed.status_code == 200
    carol = hub.user("carol")
    assert carol.admin  # lab-admins
    granted = scopes.get_scopes_for(carol)
    # Keycloak group image-publishers -> hub group -> role image-publisher -> custom scope
    assert scopes.has_scope("custom:thinkube:images:write", granted)


async def test_a_user_outside_the_allowed_groups_is_refused(running_hub):
    hub, realm = running_hub
    async with httpx.AsyncClient(timeout=30) as browser:
        refused = await log_in(browser, hub.url, realm.url, "77b0-mallory")
    assert refused.status_code == 403
    assert hub.user("mallory") is None
