"""The spawner's client for the availability service: one request returns the nodes, the
summary and the Jupyter image catalog.

Every spawner in a hub asks the same service, so they share one HTTP connection pool. A
caller that still holds what it built from an earlier answer names that answer's version:
while nothing changed the service answers 304 with the freshness in its headers, and
nothing is parsed (the document is about 1 MB at 1,000 nodes).

Parsed answers are not kept, and are parsed with the garbage collector paused (see
`paused_gc`): the hub's full collections walk every long-lived object, and a parsed answer
that lived through a few young collections would be promoted into that set and trigger one.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import os
import weakref
from collections.abc import Iterator
from dataclasses import dataclass
from typing import ClassVar

import httpx
from traitlets import Bool, Float, Unicode, default
from traitlets.config import Configurable

from thinkube_core.runpod.offers import Offer


class ServiceUnavailable(Exception):
    """The availability service could not answer; the message says so plainly."""


@dataclass(frozen=True)
class Answer:
    """One answer of the service: its version and freshness, and the document unless it is
    `unchanged` from the version the caller held."""

    version: str | None
    generated_at: str = ""
    stale: bool = False
    age_seconds: float = 0.0
    unchanged: bool = False
    raw: bytes = b""

    @property
    def freshness(self) -> dict:
        return {
            "generated_at": self.generated_at,
            "stale": self.stale,
            "age_seconds": self.age_seconds,
        }

    def document(self) -> dict:
        """The parsed document (`nodes`, `summary`, `images`, ...); ServiceUnavailable if it
        is not one this hub understands. Parse it inside `paused_gc()` and drop it soon."""
        try:
            body = json.loads(self.raw)
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


@contextlib.contextmanager
def paused_gc() -> Iterator[None]:
    """No garbage collection while a large, acyclic document is parsed and digested: its
    objects are freed by reference counting when dropped, and are never walked or promoted
    to the old generation. Only around synchronous code (no await inside)."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


_frozen_once = False


def freeze_long_lived() -> None:
    """Leave every object that exists now out of the garbage collector's full collections,
    once per process. Called when the hub loads ThinkubeSpawner: what exists then are the
    modules, classes and functions of JupyterHub, kubespawner and kubernetes_asyncio (some
    275,000 objects, thousands of them kubernetes_asyncio's model classes). They live as long
    as the hub, yet every full collection walks them: about 130 ms on a 2-core machine, every
    few seconds while the hub serves spawn forms (the objects of the requests in flight outlive
    the young collections and count toward the next full one), its event loop stopped
    meanwhile. Reference counting still frees a frozen object nothing refers to any more."""
    global _frozen_once
    if _frozen_once:
        return
    _frozen_once = True
    gc.collect()  # nothing that is already garbage is kept
    gc.freeze()


def _freshness_from_headers(headers: httpx.Headers) -> dict:
    fields: dict = {}
    if "X-Thinkube-Generated-At" in headers:
        fields["generated_at"] = headers["X-Thinkube-Generated-At"]
    if "X-Thinkube-Stale" in headers:
        fields["stale"] = headers["X-Thinkube-Stale"] == "true"
    with contextlib.suppress(ValueError):
        fields["age_seconds"] = float(headers.get("X-Thinkube-Age-Seconds", ""))
    return fields


class AvailabilityClient:
    # One connection pool per event loop (a pool cannot move between loops), shared by
    # every spawner of the hub.
    _pools: ClassVar[weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, httpx.AsyncClient]] = (
        weakref.WeakKeyDictionary()
    )

    def __init__(self, base_url: str, token: str, timeout_s: float = 5.0):
        self.url = base_url.rstrip("/") + "/api/v1/availability"
        self._headers = {"Authorization": f"token {token}"} if token else {}
        self.timeout_s = timeout_s
        self.calls = 0  # requests made, for benchmarks and tests

    @classmethod
    def _pool(cls) -> httpx.AsyncClient:
        loop = asyncio.get_running_loop()
        pool = cls._pools.get(loop)
        if pool is None or pool.is_closed:
            pool = cls._pools[loop] = httpx.AsyncClient()
        return pool

    async def fetch(self, held_version: str | None = None) -> Answer:
        """The service's current answer; `unchanged` (no document) when `held_version` is
        still current."""
        self.calls += 1
        headers = dict(self._headers)
        if held_version:
            headers["If-None-Match"] = f'"{held_version}"'
        try:
            response = await self._pool().get(self.url, headers=headers, timeout=self.timeout_s)
        except httpx.HTTPError as err:
            raise ServiceUnavailable(
                f"The availability service cannot be reached ({type(err).__name__})."
            ) from None
        freshness = _freshness_from_headers(response.headers)
        if response.status_code == 304 and held_version:
            return Answer(held_version, unchanged=True, **freshness)
        if response.status_code != 200:
            raise ServiceUnavailable(
                f"The availability service answered HTTP {response.status_code}."
            )
        version = response.headers.get("ETag", "").strip('"') or None
        return Answer(version, raw=response.content, **freshness)

    async def waiting_estimates(self) -> dict | None:
        """The GPU queue's estimates per GPU model and node (how many wait, when a GPU may
        free), or None when the service does not queue (jobs off) or cannot answer."""
        url = self.url.removesuffix("/availability") + "/waiting/estimates"
        try:
            response = await self._pool().get(url, headers=self._headers, timeout=self.timeout_s)
            if response.status_code != 200:
                return None
            document = response.json()
        except (httpx.HTTPError, ValueError):
            return None
        return document if isinstance(document, dict) else None

    async def register_waiting(self, token: str, body: dict) -> tuple[int, dict]:
        """Register a waiting server request as its owner (`token` is theirs): the status
        and the JSON answer. ServiceUnavailable when the service cannot be asked."""
        url = self.url.removesuffix("/availability") + "/waiting"
        try:
            response = await self._pool().post(
                url,
                json=body,
                headers={"Authorization": f"token {token}"},
                timeout=max(self.timeout_s, 10.0),
            )
        except httpx.HTTPError as err:
            raise ServiceUnavailable(
                f"The availability service cannot be reached ({type(err).__name__})."
            ) from None
        try:
            answer = response.json()
        except ValueError:
            answer = {}
        return response.status_code, answer if isinstance(answer, dict) else {}

    async def cloud_offers(self) -> list[Offer]:
        """RunPod's offers as the service holds them (its cache: no request to RunPod).
        ServiceUnavailable when the service cannot say, with the reason."""
        url = self.url.removesuffix("/availability") + "/cloud/offers"
        try:
            response = await self._pool().get(url, headers=self._headers, timeout=self.timeout_s)
        except httpx.HTTPError as err:
            raise ServiceUnavailable(
                f"The availability service cannot be reached ({type(err).__name__})."
            ) from None
        if response.status_code == 404:
            raise ServiceUnavailable("Cloud GPUs are not configured on the availability service.")
        if response.status_code != 200:
            raise ServiceUnavailable(
                f"The availability service answered HTTP {response.status_code}."
            )
        offers = []
        for raw in response.json().get("offers") or []:
            try:
                offers.append(Offer(**raw))
            except TypeError:
                continue  # a field this version does not know: leave that offer out
        return offers


class AvailabilitySettings(Configurable):
    """Where a spawner finds the availability service. Mixed into ThinkubeSpawner and
    ThinkubeLocalSpawner (listed before the Spawner class)."""

    availability_service_name = Unicode(
        "thinkube-resources",
        config=True,
        help="Name of the availability service in `c.JupyterHub.services`, e.g. "
        "`thinkube-resources`.",
    )
    availability_url = Unicode(
        config=True,
        help="Base URL of the availability service, reached directly (not through the proxy), "
        "e.g. `http://hub:8181/services/thinkube-resources/`. Default: from the service's "
        "entry in `c.JupyterHub.services`.",
    )

    @default("availability_url")
    def _default_availability_url(self) -> str:
        base = (self._service_entry().get("url") or "http://127.0.0.1:8181").rstrip("/")
        # The hub's own URL prefix is its base_url, "/" unless configured, then "hub/".
        hub_prefix = getattr(getattr(self, "hub", None), "base_url", None) or "/hub/"
        prefix = hub_prefix.rstrip("/").removesuffix("/hub")
        return f"{base}{prefix}/services/{self.availability_service_name}/"

    jobs_url = Unicode(
        config=True,
        help="Where notebook servers reach the service for GPU jobs (their THINKUBE_JOBS_URL, "
        "which `thinkube jobs` and `thinkube_core.jobs` use with the server's own "
        "$JUPYTERHUB_API_TOKEN), e.g. `https://hub.example.org/services/thinkube-resources/`. "
        "Default: availability_url.",
    )

    offer_waiting = Bool(
        True,
        config=True,
        help="Offer “Wait for the next free <model>” (or for a node) in the spawn form when "
        "every GPU of a kind is taken: the request waits in the service's GPU queue and the "
        "server starts by itself when one frees (needs the service's jobs_enabled). E.g. "
        "`False`.",
    )

    @default("jobs_url")
    def _default_jobs_url(self) -> str:
        return self.availability_url

    @default("server_token_scopes")
    def _default_server_token_scopes(self) -> list[str]:
        # The hub's own `server` role, and the service: a notebook can submit GPU jobs.
        return [
            "users:activity!user",
            "access:servers!server",
            f"access:services!service={self.availability_service_name}",
        ]

    def jobs_env(self) -> dict[str, str]:
        """What a notebook server needs to submit GPU jobs (its token is the hub's)."""
        return {"THINKUBE_JOBS_URL": self.jobs_url} if self.jobs_url else {}

    availability_token = Unicode(
        config=True,
        help="Hub API token with access to the availability service (a role with "
        "`access:services!service=thinkube-resources`). Default: the `api_token` of the "
        "service's entry in `c.JupyterHub.services`, else $THINKUBE_SERVICE_TOKEN.",
    )

    @default("availability_token")
    def _default_availability_token(self) -> str:
        return self._service_entry().get("api_token") or os.environ.get(
            "THINKUBE_SERVICE_TOKEN", ""
        )

    availability_timeout = Float(
        5.0, config=True, help="Seconds to wait for the availability service, e.g. `5`."
    )

    _availability_client: AvailabilityClient | None = None

    def _service_entry(self) -> dict:
        """The service's entry in the hub's configuration (`c.JupyterHub.services`), which
        JupyterHub hands every spawner with its config."""
        services = self.config.JupyterHub.get("services") or []
        return next(
            (
                s
                for s in services
                if isinstance(s, dict) and s.get("name") == self.availability_service_name
            ),
            {},
        )

    @property
    def availability_configured(self) -> bool:
        """Whether this hub runs the availability service (or names one to use)."""
        return bool(self._service_entry()) or self.trait_has_value("availability_url")

    @property
    def availability(self) -> AvailabilityClient:
        if self._availability_client is None:
            self._availability_client = AvailabilityClient(
                self.availability_url, self.availability_token, self.availability_timeout
            )
        return self._availability_client
