"""A real JupyterHub for tests: MockHub (jupyterhub's own test hub: PAM mocked so that the
password is the user name) behind the real configurable-http-proxy, with thinkube-resources
as a hub-MANAGED service (the hub starts `python -m hub_service`) watching a kubesim.

Registered from tests/conftest.py (``pytest_plugins``), so any test module can use:

- ``hub_with_service`` — factory, function scoped: ``hub = await hub_with_service(sim=sim,
  config={...})``; stopped after the test.
- ``module_hub_factory`` — the same factory, module scoped, for a hub shared by a module's
  tests (they run in the module's event loop: ``pytestmark =
  pytest.mark.asyncio(loop_scope="module")``).
- ``module_kubesim`` — factory of kubesims stopped at the end of the module.

A hub start costs about a second; share one per module where the tests allow. MockHub is a
singleton: one hub at a time.

The returned :class:`HubWithService` has the public URL, helpers to make users and tokens
with given scopes or roles, an httpx client for the service with a token, and
:meth:`HubWithService.login`, which logs a user in through the hub's login form and follows
the OAuth redirects into the service, returning a client that holds the service's cookie.
"""

from __future__ import annotations

import asyncio
import re
import secrets
import sys
from collections.abc import AsyncIterator, Iterable
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urljoin

import httpx
import pytest
import pytest_asyncio
from jupyterhub import orm, roles
from jupyterhub.scopes import scope_definitions
from jupyterhub.tests.mocking import MockHub
from jupyterhub.utils import url_path_join
from traitlets.config import Config

from tests.kubesim import KubeSim
from tests.kubesim.sim import free_port

SERVICE_NAME = "thinkube-resources"
ACCESS_SCOPE = f"access:services!service={SERVICE_NAME}"
IMAGES_WRITE_SCOPE = "custom:thinkube:images:write"
IMAGE_WRITERS_ROLE = "thinkube-image-writers"
REPO_ROOT = Path(__file__).resolve().parent.parent


def service_hub_config(
    *,
    sim: KubeSim | None,
    kubeconfig: Path | str | None,
    workdir: Path,
    service_port: int,
    base_url: str = "/",
    service_args: Iterable[str] = (),
    service_env: dict[str, str] | None = None,
) -> Config:
    """The hub configuration these tests run with, as docs/service.md documents it.
    `service_env` is the service entry's `environment` (e.g. RUNPOD_API_KEY)."""
    c = Config()
    c.JupyterHub.bind_url = f"http://127.0.0.1:{free_port()}{base_url}"
    # keep the hub's files out of the working tree
    c.JupyterHub.cookie_secret_file = str(workdir / "jupyterhub_cookie_secret")
    c.ConfigurableHTTPProxy.pid_file = str(workdir / "jupyterhub-proxy.pid")
    command = [
        sys.executable,
        "-m",
        "hub_service",
        "--db-url",
        f"sqlite:///{workdir / 'catalog.sqlite'}",
        "--log-file",
        str(workdir / "service.log"),
        "--ThinkubeService.max_backoff_seconds=1",
        *service_args,
    ]
    if kubeconfig is not None:
        command[3:3] = ["--kubeconfig", str(kubeconfig)]
    c.JupyterHub.services = [
        {
            "name": SERVICE_NAME,
            "url": f"http://127.0.0.1:{service_port}",
            # as Zero to JupyterHub does (hub.services.<name>.apiToken): a known token, so
            # that the spawner may use it to call the service
            "api_token": secrets.token_hex(32),
            "command": command,
            "cwd": str(REPO_ROOT),
            "display": False,
            "oauth_no_confirm": True,
            "environment": dict(service_env or {}),
        }
    ]
    # JupyterHub keeps custom scopes per process and refuses a second, different
    # definition: reuse one an earlier hub of this test run made (helm-values' tests too)
    c.JupyterHub.custom_scopes = {
        IMAGES_WRITE_SCOPE: scope_definitions.get(IMAGES_WRITE_SCOPE)
        or {
            "description": "Register, replace and delete images in the thinkube-resources "
            "image catalog."
        }
    }
    c.JupyterHub.load_roles = [
        # every user may read the service (the default user role is just "self")
        {"name": "user", "scopes": ["self", ACCESS_SCOPE]},
        {"name": IMAGE_WRITERS_ROLE, "scopes": [ACCESS_SCOPE, IMAGES_WRITE_SCOPE]},
    ]
    return c


# The harness's roles plus the service's own, whose token ThinkubeSpawner uses to read
# availability (as helm-values' hub.loadRoles grants it).
SPAWNER_HUB_ROLES = [
    {"name": "user", "scopes": ["self", ACCESS_SCOPE]},
    {"name": IMAGE_WRITERS_ROLE, "scopes": [ACCESS_SCOPE, IMAGES_WRITE_SCOPE]},
    # `servers`: the service starts notebook servers that waited for a GPU
    {"name": SERVICE_NAME, "scopes": [ACCESS_SCOPE, "servers"], "services": [SERVICE_NAME]},
]


@dataclass
class HubWithService:
    app: MockHub
    url: str  # the hub's public URL (through the proxy), ending in "/"
    service_url: str  # the service's public URL (through the proxy), ending in "/"
    service_direct_url: str  # the service itself, not through the proxy, ending in "/"
    workdir: Path
    sim: KubeSim | None
    _clients: list[httpx.AsyncClient] = field(default_factory=list)

    @property
    def service_prefix(self) -> str:
        return self.app._service_map[SERVICE_NAME].prefix

    @property
    def log_path(self) -> Path:
        return self.workdir / "service.log"

    def service_log(self) -> str:
        return self.log_path.read_text() if self.log_path.exists() else ""

    @property
    def service_token(self) -> str:
        """The service's own API token (its `api_token` in c.JupyterHub.services)."""
        return self.app._service_map[SERVICE_NAME].api_token

    @property
    def service_pid(self) -> int | None:
        proc = self.app._service_map[SERVICE_NAME].proc
        return proc.pid if proc is not None else None

    # -- users and tokens -----------------------------------------------------------

    def user(self, name: str, roles_: Iterable[str] = ()) -> orm.User:
        """The user `name` (created with the default roles if new), granted `roles_`."""
        db = self.app.db
        user = orm.User.find(db, name)
        if user is None:
            user = orm.User(name=name)
            db.add(user)
            db.commit()
            roles.assign_default_roles(db, entity=user)
        for role in roles_:
            roles.grant_role(db, user, role)
        db.commit()
        return user

    def token(
        self,
        name: str,
        scopes: Iterable[str] | None = None,
        roles_: Iterable[str] = (),
        note: str = "test",
    ) -> str:
        """A new API token of user `name` with these scopes (None: everything the user has).
        The user must hold the scopes through their roles; `roles_` grants roles first."""
        user = self.user(name, roles_)
        return user.new_api_token(scopes=list(scopes) if scopes is not None else None, note=note)

    # -- HTTP -----------------------------------------------------------------------

    def client(self, token: str | None = None, direct: bool = False, **kwargs) -> httpx.AsyncClient:
        """An httpx client with base_url at the service (through the proxy unless `direct`),
        sending `token` in the Authorization header; closed with the hub."""
        headers = dict(kwargs.pop("headers", {}) or {})
        if token:
            headers["Authorization"] = f"token {token}"
        client = httpx.AsyncClient(
            base_url=self.service_direct_url if direct else self.service_url,
            headers=headers,
            timeout=kwargs.pop("timeout", 10),
            **kwargs,
        )
        self._clients.append(client)
        return client

    async def login(self, name: str, password: str | None = None) -> httpx.AsyncClient:
        """Log `name` in through the hub's login form, then open the service in the
        browser way (Accept: text/html) and follow the OAuth redirects through the hub
        back to the service's oauth_callback. The client returned holds the hub's and the
        service's cookies; its base_url is the service."""
        # what a browser's address bar sends: a navigation that accepts HTML
        client = self.client(
            follow_redirects=True,
            headers={"Accept": "text/html", "Sec-Fetch-Mode": "navigate"},
        )
        login_url = urljoin(self.url, "hub/login")
        page = await client.get(login_url)
        page.raise_for_status()
        xsrf = client.cookies.get("_xsrf") or _form_value(page.text, "_xsrf")
        response = await client.post(
            login_url,
            data={"username": name, "password": password or name, "_xsrf": xsrf},
            follow_redirects=False,
        )
        if response.status_code != 302:
            raise AssertionError(f"hub login of {name!r} failed: HTTP {response.status_code}")
        # The browser way into the service: its prepare() redirects to the hub's
        # authorize URL, which (logged in, no confirmation page) redirects to the
        # service's oauth_callback, which sets the service cookie and sends us back.
        response = await client.get(url_path_join(self.service_url, "api/v1/ready"))
        if response.status_code == 200 and "/oauth2/authorize" in str(response.url):
            # a hub that asks the user to confirm (oauth_no_confirm False): say yes
            response = await client.post(
                str(response.url),
                data={
                    "_xsrf": client.cookies.get("_xsrf") or _form_value(response.text, "_xsrf"),
                    "scopes": _form_values(response.text, "scopes"),
                },
            )
        if not str(response.url).startswith(self.service_url) or response.status_code >= 400:
            raise AssertionError(
                f"OAuth into the service ended at {response.url} with HTTP {response.status_code}"
            )
        client.headers.pop("Accept", None)
        client.follow_redirects = False
        return client

    async def wait_ready(self, token: str, within: float = 30.0) -> dict:
        """Wait until the service answers ready (listed Kubernetes once)."""
        client = self.client(token, direct=True)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + within
        last: Any = None
        while loop.time() < deadline:
            try:
                response = await client.get("api/v1/ready")
                last = f"HTTP {response.status_code} {response.text[:200]}"
                if response.status_code == 200:
                    return response.json()
            except httpx.TransportError as err:
                last = repr(err)
            await asyncio.sleep(0.05)
        raise AssertionError(f"the service was not ready within {within}s: {last}")

    async def aclose(self) -> None:
        for client in self._clients:
            await client.aclose()
        self._clients.clear()


def _form_value(html: str, name: str) -> str:
    match = re.search(rf'name="{re.escape(name)}"[^>]*value="([^"]*)"', html)
    return match.group(1) if match else ""


def _form_values(html: str, name: str) -> list[str]:
    return re.findall(rf'name="{re.escape(name)}"[^>]*value="([^"]*)"', html)


@asynccontextmanager
async def running_hub(
    workdir: Path,
    *,
    sim: KubeSim | None = None,
    kubeconfig: Path | str | None = None,
    config: Config | dict | None = None,
    base_url: str = "/",
    service_args: Iterable[str] = (),
    service_env: dict[str, str] | None = None,
    wait_ready: bool = True,
) -> AsyncIterator[HubWithService]:
    """Start MockHub + configurable-http-proxy + the managed service; stop them after.

    `kubeconfig` defaults to the sim's; `config` (a traitlets Config or a plain nested dict)
    is merged over the service configuration; `service_args` are added to the service's
    command line and `service_env` to its environment. With `wait_ready`, returns once the
    service has listed Kubernetes.
    """
    workdir.mkdir(parents=True, exist_ok=True)  # noqa: ASYNC240 (a test fixture, once)
    if kubeconfig is None and sim is not None:
        kubeconfig = getattr(sim, "kubeconfig", None) or sim.write_kubeconfig(
            workdir / "kubeconfig"
        )
    service_port = free_port()
    hub_config = service_hub_config(
        sim=sim,
        kubeconfig=kubeconfig,
        workdir=workdir,
        service_port=service_port,
        base_url=base_url,
        service_args=service_args,
        service_env=service_env,
    )
    if config:
        hub_config.merge(Config(config) if not isinstance(config, Config) else config)
    forget_kubernetes_configuration()
    MockHub.clear_instance()
    app = MockHub.instance(config=hub_config)
    hub = None
    try:
        await app.initialize([])
        await app.start()
        public = app.proxy.public_url.rstrip("/") + "/"
        service = app._service_map[SERVICE_NAME]
        hub = HubWithService(
            app=app,
            url=public,
            service_url=urljoin(public, service.prefix.lstrip("/")),
            service_direct_url=f"http://127.0.0.1:{service_port}{service.prefix}",
            workdir=workdir,
            sim=sim,
        )
        if wait_ready:
            await hub.wait_ready(hub.token("readiness-probe", [ACCESS_SCOPE]))
        yield hub
    finally:
        if hub is not None:
            await hub.aclose()
        await stop_hub(app)


async def stop_hub(app: MockHub) -> None:
    """Stop the managed services, the proxy and the hub's server and timers.

    Not ``app.stop()``: JupyterHub's stop schedules ``shutdown_cancel_tasks``, which
    cancels every task of the event loop, kubesim's and the test's included.
    """
    app.log.handlers = []  # pytest closes its captured files early
    MockHub.clear_instance()
    app._stop_called = True  # MockHub.stop() becomes a no-op
    app._atexit_ran = True
    try:
        await app.cleanup()  # managed services, then the proxy
    except Exception as err:
        print(f"error stopping the hub's services and proxy: {err}", file=sys.stderr)
    for callback in getattr(app, "_periodic_callbacks", {}).values():
        callback.stop()
    if getattr(app, "metrics_collector", None):
        app.metrics_collector.stop()
    if app.http_server:
        app.http_server.stop()
        await app.http_server.close_all_connections()
    app.db.close()
    app.db_file.close()
    await stop_kubespawner_reflectors()


def forget_kubernetes_configuration() -> None:
    """kubespawner sets the process's default Kubernetes configuration once per API host (a
    cached function): a later test whose kubesim got the port an earlier one had would skip
    it and keep the configuration of the kubesim in between, which is gone."""
    from kubespawner import clients

    clients.load_config.cache_clear()


async def stop_kubespawner_reflectors() -> None:
    """kubespawner keeps its pod and event watchers on the class, shared by every spawner of
    the process; a hub that stops must take them along, or the next test's spawners reuse
    watchers of a kubesim that is gone."""
    from kubespawner import KubeSpawner

    forget_kubernetes_configuration()
    reflectors = list(KubeSpawner.reflectors.values())
    KubeSpawner.reflectors.clear()
    for reflector in reflectors:
        try:
            await reflector.stop()
        except Exception as err:
            print(f"error stopping a kubespawner reflector: {err}", file=sys.stderr)


@pytest.fixture
async def hub_with_service(tmp_path):
    """Factory: ``hub = await hub_with_service(sim=sim, config={...})``."""
    async with AsyncExitStack() as stack:

        async def start(**kwargs) -> HubWithService:
            workdir = tmp_path / f"hub-{len(stack._exit_callbacks)}"
            return await stack.enter_async_context(running_hub(workdir, **kwargs))

        yield start


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def module_hub_factory(tmp_path_factory):
    """Module-scoped factory: ``await module_hub_factory(sim=sim)``; one hub at a time."""
    async with AsyncExitStack() as stack:

        async def start(**kwargs) -> HubWithService:
            workdir = tmp_path_factory.mktemp("hub")
            return await stack.enter_async_context(running_hub(workdir, **kwargs))

        yield start


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def module_kubesim(tmp_path_factory):
    """Module-scoped factory of kubesims: ``sim = await module_kubesim()``; each has
    ``sim.kubeconfig``."""
    sims: list[KubeSim] = []

    async def make(**kwargs) -> KubeSim:
        sim = KubeSim(**kwargs)
        await sim.start()
        sim.kubeconfig = sim.write_kubeconfig(tmp_path_factory.mktemp("kubesim") / "kubeconfig")
        sims.append(sim)
        return sim

    yield make
    for sim in sims:
        await sim.stop()


__all__ = [
    "ACCESS_SCOPE",
    "IMAGES_WRITE_SCOPE",
    "IMAGE_WRITERS_ROLE",
    "SERVICE_NAME",
    "HubWithService",
    "running_hub",
    "service_hub_config",
]
