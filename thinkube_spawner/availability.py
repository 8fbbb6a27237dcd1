"""The spawner's client for the availability service: one request returns the nodes, the
summary and the Jupyter image catalog."""

from __future__ import annotations

import httpx


class ServiceUnavailable(Exception):
    """The availability service could not answer; the message says so plainly."""


class AvailabilityClient:
    def __init__(self, base_url: str, token: str, timeout_s: float = 5.0):
        self.url = base_url.rstrip("/") + "/api/v1/availability"
        self._headers = {"Authorization": f"token {token}"} if token else {}
        self.timeout_s = timeout_s
        self.calls = 0  # requests made, for benchmarks and tests

    async def fetch(self) -> dict:
        self.calls += 1
        try:
            async with httpx.AsyncClient(timeout=self.timeout_s) as http:
                response = await http.get(self.url, headers=self._headers)
        except httpx.HTTPError as err:
            raise ServiceUnavailable(
                f"The availability service cannot be reached ({type(err).__name__})."
            ) from None
        if response.status_code != 200:
            raise ServiceUnavailable(
                f"The availability service answered HTTP {response.status_code}."
            )
        try:
            body = response.json()
            if not all(
                isinstance(body[key], list if key != "summary" else dict)
                for key in ("nodes", "summary", "images")
            ):
                raise TypeError
        except (ValueError, KeyError, TypeError):
            raise ServiceUnavailable(
                "The availability service sent an answer this hub does not understand."
            ) from None
        return body
