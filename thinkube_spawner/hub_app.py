"""The JupyterHub that `thinkube hub` runs: JupyterHub itself, plus the start-up banner.

    python -m thinkube_spawner.hub_app -f thinkube_spawner/hub_config.py

Once JupyterHub has started (the proxy, the hub, the availability service and their
routes), this asks the hub's login page through the public address until it answers 200,
and only then prints the banner (`hub.banner_lines`): the address and the password are
the last lines of the start, not lost above the start-up log.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path

import httpx
from jupyterhub import app as jupyterhub_app

from thinkube_core.accounts import DEFAULT_PREFIX
from thinkube_spawner.hub import SETTINGS_ENV, banner_lines, local_address

READY_WITHIN_S = 120


def read_settings(settings_file: Path) -> tuple[dict, str]:
    settings = json.loads(settings_file.read_text())
    return settings, (Path(settings["data_dir"]) / "password").read_text().strip()


class JupyterHub(jupyterhub_app.JupyterHub):
    """JupyterHub plus the banner. Named as JupyterHub because the class name is the log's
    name: the log reads as JupyterHub's own."""

    async def start(self):
        await super().start()
        settings_file = os.environ.get(SETTINGS_ENV)
        if settings_file and self.proxy.should_start and getattr(self, "http_server", None):
            settings, password = read_settings(Path(settings_file))
            # What the configuration (thinkube's, then --config) says about accounts.
            spawner = self.config.ThinkubeLocalSpawner
            settings["account_prefix"] = spawner.get("account_prefix", DEFAULT_PREFIX)
            settings["system_users"] = bool(spawner.get("system_users", False))
            self._announcer = asyncio.ensure_future(self._announce(settings, password))

    async def _announce(self, settings: dict, password: str) -> None:
        scheme = "https" if settings.get("ssl_cert") else "http"
        login = f"{scheme}://{local_address(settings['ip'])}:{settings['port']}/hub/login"
        status = None
        # The hub's own address, over loopback: checking that it answers, not who it is.
        async with httpx.AsyncClient(verify=False, timeout=5) as http:
            loop = asyncio.get_running_loop()
            deadline = loop.time() + READY_WITHIN_S
            while loop.time() < deadline:
                try:
                    status = (await http.get(login)).status_code
                except httpx.HTTPError as err:
                    status = type(err).__name__
                if status == 200:
                    break
                await asyncio.sleep(0.1)
        if status != 200:
            self.log.warning("The login page %s did not answer 200 (last: %s)", login, status)
            return
        # The service's start-up lines come before the banner too.
        health = (
            f"http://127.0.0.1:{settings['service_port']}/services/thinkube-resources/api/v1/health"
        )
        async with httpx.AsyncClient(timeout=5) as http:
            while loop.time() < deadline:
                try:
                    if (await http.get(health)).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                await asyncio.sleep(0.1)
        # One write, so that no log line from another process lands inside it.
        sys.stdout.write("\n".join(banner_lines(settings, password)) + "\n")
        sys.stdout.flush()


main = JupyterHub.launch_instance

if __name__ == "__main__":
    sys.exit(main())
