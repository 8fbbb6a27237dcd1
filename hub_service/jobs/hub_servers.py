"""Starting waiting notebook servers through the hub's REST API, as the service.

`POST /hub/api/users/{name}/servers/{server}` (`/server` for the default one) with the
request's `user_options` and `queue_entry`, then the spawn's progress stream until the
server is up or failed. The service's role needs the scope `servers` (start them, see their
models and progress; JupyterHub 5.5 has no narrower scope that starts a server).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Mapping
from typing import Any
from urllib.parse import quote

import httpx

from thinkube_core.waiting import QUEUE_ENTRY_OPTION

from ..hub_api import HubAPI, server_path
from .waiting import StartOutcome

log = logging.getLogger("thinkube.jobs")

__all__ = ["HubServers"]


def _message(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return f"the hub answered HTTP {response.status_code}"
    if isinstance(body, Mapping) and isinstance(body.get("message"), str):
        return body["message"]
    return f"the hub answered HTTP {response.status_code}"


def _spawn_failure(event: Mapping[str, Any]) -> str:
    """The hub's words for a spawn that failed, from its progress event ("Spawn failed:
    <the spawner's message>")."""
    message = str(event.get("message") or "").strip()
    return message.removeprefix("Spawn failed:").strip() or "the spawn failed"


class HubServers(HubAPI):
    """The hub's REST API, with the service's own token."""

    def __init__(
        self,
        api_url: str,
        token: str,
        timeout_s: float = 30.0,
        poll_s: float = 0.5,
        follow_max_s: float = 3600.0,
    ) -> None:
        super().__init__(api_url, token, timeout_s)
        self.poll_s = poll_s
        self.follow_max_s = follow_max_s

    async def _server(self, user: str, server_name: str) -> dict[str, Any] | None:
        """The server's model in the hub (None: it has none); raises for a hub error."""
        response = await self.client.get(self.api_url + f"users/{quote(user, safe='')}")
        if response.status_code == 404:
            return None
        response.raise_for_status()
        servers = response.json().get("servers") or {}
        return servers.get(server_name)

    async def start(self, entry: Mapping[str, Any]) -> StartOutcome:
        user, server_name = entry["user"], entry.get("name") or ""
        server = await self._server(user, server_name)
        if server is not None:
            return StartOutcome(
                superseded=True,
                message="the server was started another way while it waited",
            )
        options = dict((entry.get("request") or {}).get("user_options") or {})
        options[QUEUE_ENTRY_OPTION] = entry["id"]
        response = await self.client.post(
            self.api_url + server_path(user, server_name), json=options
        )
        if response.status_code == 201:
            return StartOutcome(ready=True)
        if response.status_code == 202:
            return StartOutcome(pending=True)
        message = _message(response)
        if response.status_code in (409, 503) or response.status_code >= 500:
            # no room after all (taken since the plan), or the service or the hub could
            # not be asked: it waits again
            return StartOutcome(retry=True, message=message)
        if response.status_code == 400 and (
            "is pending" in message or "already running" in message
        ):
            return StartOutcome(superseded=True, message=message)
        return StartOutcome(message=message)

    async def follow(self, entry: Mapping[str, Any]) -> StartOutcome:
        """The spawn's progress stream until it is ready or failed; the server's model if
        the stream ends without saying."""
        user, server_name = entry["user"], entry.get("name") or ""
        progress = self.api_url + server_path(user, server_name) + "/progress"
        with contextlib.suppress(TimeoutError, httpx.HTTPError, ValueError):
            async with asyncio.timeout(self.follow_max_s):
                async with self.client.stream(
                    "GET", progress, headers={"Accept": "text/event-stream"}, timeout=None
                ) as response:
                    if response.status_code == 200:
                        async for line in response.aiter_lines():
                            if not line.startswith("data:"):
                                continue
                            event = json.loads(line[5:].strip() or "{}")
                            if event.get("ready"):
                                return StartOutcome(ready=True)
                            if event.get("failed"):
                                return StartOutcome(message=_spawn_failure(event))
        return await self._settled(user, server_name)

    async def _settled(self, user: str, server_name: str) -> StartOutcome:
        """Polls the server's model until it is ready, or gone (failed)."""
        async with asyncio.timeout(self.follow_max_s):
            while True:
                server = await self._server(user, server_name)
                if server is None:
                    return StartOutcome(message="the spawn failed")
                if server.get("ready"):
                    return StartOutcome(ready=True)
                await asyncio.sleep(self.poll_s)

    async def resume(self, entry: Mapping[str, Any]) -> StartOutcome:
        server = await self._server(entry["user"], entry.get("name") or "")
        if server is None:
            return StartOutcome(retry=True, message="its start was cut short by a restart")
        if server.get("ready"):
            return StartOutcome(ready=True)
        return StartOutcome(pending=True)
