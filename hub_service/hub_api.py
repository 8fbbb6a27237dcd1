"""The hub's REST API as the service calls it, with its own token: one HTTP client (opened
when first used, again after it was closed) and the path of a person's server. Used by the
GPU queue (starting waiting servers) and the idle-GPU policy (stopping servers)."""

from __future__ import annotations

from urllib.parse import quote

import httpx

__all__ = ["HubAPI", "server_path"]


def server_path(user: str, server: str) -> str:
    """`users/{name}/server` for the default server, `users/{name}/servers/{server}`."""
    user_path = f"users/{quote(user, safe='')}"
    return f"{user_path}/servers/{quote(server, safe='')}" if server else f"{user_path}/server"


class HubAPI:
    """The hub's REST API at `api_url` (ending in `hub/api/`), with the service's token."""

    def __init__(self, api_url: str, token: str, timeout_s: float) -> None:
        self.api_url = api_url.rstrip("/") + "/"
        self._headers = {"Authorization": f"token {token}"}
        self.timeout_s = timeout_s
        self._client: httpx.AsyncClient | None = None

    @property
    def client(self) -> httpx.AsyncClient:
        if self._client is None or self._client.is_closed:
            self._client = httpx.AsyncClient(headers=self._headers, timeout=self.timeout_s)
        return self._client

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()
