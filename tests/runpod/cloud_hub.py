"""A real JupyterHub (MockHub: PAM mocked, password = user name) behind the real
configurable-http-proxy, spawning with RemoteRunPodSpawner against the RunPod stand-in.

Unlike tests/hub_fixtures.running_hub, no managed service runs (the cloud spawner does not
need one), the hub's SQLite database is a file of the test's (so a second hub can resume
from it), and `c.JupyterHub.public_url` is the proxy's URL, which the stand-in's pods reach.
"""

from __future__ import annotations

import json
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urljoin

import httpx
from jupyterhub.tests.mocking import MockHub
from traitlets.config import Config

from tests.hub_fixtures import HubWithService, stop_hub
from tests.kubesim.sim import free_port
from tests.runpod_fake import RunPodFake
from tests.utils import eventually


def cloud_hub_config(
    fake: RunPodFake,
    workdir: Path,
    *,
    public_url: bool = True,
    spawner: dict[str, Any] | None = None,
    hub: dict[str, Any] | None = None,
    port: int | None = None,
) -> Config:
    """The hub's configuration; `port` (default: a free one) is where its proxy listens,
    which is also its public URL."""
    port = port or free_port()
    c = Config()
    c.JupyterHub.bind_url = f"http://127.0.0.1:{port}/"
    if public_url:
        c.JupyterHub.public_url = f"http://127.0.0.1:{port}/"
    c.JupyterHub.cookie_secret_file = str(workdir / "jupyterhub_cookie_secret")
    c.ConfigurableHTTPProxy.pid_file = str(workdir / "jupyterhub-proxy.pid")
    c.JupyterHub.spawner_class = "runpod"
    c.JupyterHub.load_roles = [{"name": "user", "scopes": ["self"]}]
    settings = {
        "runpod_api_key": fake.api_key,
        "runpod_api_url": fake.url,
        "runpod_proxy_url_template": fake.proxy_url_template,
        "cloud_price_cap": 1.0,
        "cloud_poll_interval": 0.1,
        "cloud_start_timeout": 60,
        "start_timeout": 90,
        "http_timeout": 30,
        **(spawner or {}),
    }
    for name, value in settings.items():
        setattr(c.RemoteRunPodSpawner, name, value)
    for section, values in (hub or {}).items():
        for name, value in values.items():
            setattr(c[section], name, value)
    return c


@asynccontextmanager
async def cloud_hub(
    workdir: Path, config: Config, *, fresh_db: bool = True
) -> AsyncIterator[HubWithService]:
    """Start the hub and its proxy; stop them after. `fresh_db=False` resumes from the
    database an earlier hub of the same workdir left."""
    workdir.mkdir(parents=True, exist_ok=True)  # noqa: ASYNC240 (a test fixture)
    previous = os.environ.get("JUPYTERHUB_TEST_DB_URL")
    # MockHub takes its database from here (else a temporary file it deletes)
    os.environ["JUPYTERHUB_TEST_DB_URL"] = f"sqlite:///{workdir / 'jupyterhub.sqlite'}"
    MockHub.clear_instance()
    app = MockHub.instance(config=config, test_clean_db=fresh_db)
    hub = None
    try:
        await app.initialize([])
        await app.start()
        public = app.proxy.public_url.rstrip("/") + "/"
        # HubWithService's user/token helpers; there is no service here.
        hub = HubWithService(
            app=app, url=public, service_url="", service_direct_url="", workdir=workdir, sim=None
        )
        yield hub
    finally:
        if previous is None:
            os.environ.pop("JUPYTERHUB_TEST_DB_URL", None)
        else:
            os.environ["JUPYTERHUB_TEST_DB_URL"] = previous
        if hub is not None:
            await hub.aclose()
        await stop_hub(app)


def admin_api(hub: HubWithService) -> httpx.AsyncClient:
    token = hub.token("cloud-admin", roles_=["admin"])
    return httpx.AsyncClient(
        base_url=urljoin(hub.url, "hub/api/"),
        headers={"Authorization": f"token {token}"},
        timeout=60,
    )


async def wait_ready(api: httpx.AsyncClient, user: str, within: float = 90) -> dict:
    async def ready():
        model = (await api.get(f"users/{user}")).json()
        server = model.get("servers", {}).get("")
        return model if server and server.get("ready") else None

    return await eventually(ready, within=within, interval=0.2)


async def wait_gone(api: httpx.AsyncClient, user: str, within: float = 60) -> dict:
    async def gone():
        model = (await api.get(f"users/{user}")).json()
        return model if model["servers"] == {} and model.get("pending") is None else None

    return await eventually(gone, within=within, interval=0.2)


async def progress_messages(api: httpx.AsyncClient, user: str, server: str = "") -> list[str]:
    """The progress events of the user's pending (or just finished) start."""
    path = f"users/{user}/servers/{server}/progress" if server else f"users/{user}/server/progress"
    messages = []
    async with api.stream("GET", path) as response:
        async for line in response.aiter_lines():
            if line.startswith("data:"):
                event = json.loads(line[5:])
                messages.append(event.get("message", ""))
                if event.get("ready") or event.get("failed"):
                    break
    return messages


class Browser:
    """A person's browser on the hub: logs in through the login form, opens the spawn
    form, submits it."""

    def __init__(self, hub: HubWithService) -> None:
        self.hub = hub
        self.http = httpx.AsyncClient(timeout=60, follow_redirects=False)

    async def login(self, name: str) -> None:
        login_url = urljoin(self.hub.url, "hub/login")
        await self.http.get(login_url)
        response = await self.http.post(
            login_url,
            data={"username": name, "password": name, "_xsrf": self.xsrf()},
        )
        assert response.status_code == 302, response.text[:500]

    def xsrf(self) -> str:
        return self.http.cookies.get("_xsrf", "")

    async def spawn_page(self) -> str:
        page = await self.http.get(urljoin(self.hub.url, "hub/spawn"), follow_redirects=True)
        assert page.status_code == 200, page.text[:500]
        return page.text

    async def submit(self, fields: dict[str, str]) -> httpx.Response:
        return await self.http.post(
            urljoin(self.hub.url, "hub/spawn"), data={**fields, "_xsrf": self.xsrf()}
        )

    async def aclose(self) -> None:
        await self.http.aclose()
