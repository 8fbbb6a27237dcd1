"""Idle GPUs given back: the service's loop. Every `interval_s` it samples each notebook
server's GPU utilisation from the inventory (DCGM on Kubernetes, NVML on one machine) into a
bounded window per server, decides with :func:`hub_service.gpu_idle.decide`, records
warnings, and stops servers whose grace period is over (unless jupyterhub-idle-culler does
the stopping: ``stop_servers`` False, see thinkube_core/idle_culler_hook.py).

Who the servers are, their groups and their URLs come from the hub's REST API with the
service's token: `GET users/{name}` (``read:users:groups``, ``read:servers``), the stop is
`DELETE users/{name}/server(s/{server})` (``delete:servers``). Whether a kernel is busy is read
from the server itself, through the proxy: `GET {server url}api/kernels` (``access:servers``),
any kernel whose ``execution_state`` is ``busy`` or ``starting`` is busy. Jobs are never
looked at: only notebook servers' pods and allocations are in ``server_gpus``.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import httpx

from .background import cancel_and_wait
from .gpu_idle import (
    NO_DATA,
    STOP,
    WARNED,
    IdleDecision,
    IdlePolicy,
    UsageWindow,
    decide,
    iso_time,
    policy_for,
)
from .hub_api import HubAPI, server_path
from .inventory import Inventory

log = logging.getLogger("thinkube.gpu_idle")

__all__ = ["GpuIdleCuller", "HubServerControl", "ServerKey"]

ServerKey = tuple[str, str]  # (user, server name; "" for the default server)
USER_CACHE_SECONDS = 30.0
BUSY_KERNEL_STATES = {"busy", "starting"}


class HubServerControl(HubAPI):
    """The hub's REST API and the servers behind its proxy, with the service's token."""

    def __init__(self, api_url: str, token: str, proxy_url: str = "", timeout_s: float = 10.0):
        super().__init__(api_url, token, timeout_s)
        self.proxy_url = proxy_url.rstrip("/")
        self._users: dict[str, tuple[float, dict | None]] = {}

    async def user(self, name: str, fresh: bool = False) -> dict | None:
        """The hub's model of `name` (None: unknown or unreadable), kept a few seconds."""
        kept = self._users.get(name)
        if kept is not None and not fresh and time.monotonic() - kept[0] < USER_CACHE_SECONDS:
            return kept[1]
        try:
            response = await self.client.get(self.api_url + f"users/{quote(name, safe='')}")
            model = response.json() if response.status_code == 200 else None
        except (httpx.HTTPError, ValueError):
            return kept[1] if kept else None
        self._users[name] = (time.monotonic(), model if isinstance(model, dict) else None)
        return self._users[name][1]

    async def kernels(self, server_url: str) -> str:
        """``busy``, ``idle`` or ``unknown`` (no proxy URL, the server did not answer)."""
        if not self.proxy_url or not server_url:
            return "unknown"
        url = self.proxy_url + "/" + server_url.lstrip("/").rstrip("/") + "/api/kernels"
        try:
            response = await self.client.get(url)
            kernels = response.json() if response.status_code == 200 else None
        except (httpx.HTTPError, ValueError):
            return "unknown"
        if not isinstance(kernels, list):
            return "unknown"
        states = {k.get("execution_state") for k in kernels if isinstance(k, dict)}
        return "busy" if states & BUSY_KERNEL_STATES else "idle"

    async def stop(self, user: str, server: str) -> str | None:
        """Stop the server; None when the hub took it, else why not in a few words."""
        try:
            response = await self.client.delete(self.api_url + server_path(user, server))
        except httpx.HTTPError as err:
            return f"the hub could not be reached ({type(err).__name__})"
        if response.status_code in (202, 204):
            self._users.pop(user, None)
            return None
        return f"the hub answered HTTP {response.status_code}"


@dataclass
class ServerRecord:
    """What the loop knows of one server between rounds."""

    window: UsageWindow
    gpus: int = 0
    node: str = ""
    url: str = ""
    warned_at: float | None = None
    kept_at: float | None = None
    decision: IdleDecision | None = None
    policy: IdlePolicy | None = None
    stopping: bool = False


class GpuIdleCuller:
    def __init__(
        self,
        source: Inventory,
        hub: HubServerControl,
        *,
        default_policy: IdlePolicy,
        group_policies: Mapping[str, IdlePolicy],
        interval_s: float = 30.0,
        stop_servers: bool = True,
        on_stop: Callable[[ServerKey, IdleDecision, int, float], None] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.source = source
        self.hub = hub
        self.default_policy = default_policy
        self.group_policies = dict(group_policies)
        self.interval_s = interval_s
        self.stop_servers = stop_servers
        self.on_stop = on_stop
        self.clock = clock
        # a window as long as the longest idle time and grace of any policy, and a little
        # more: the whole idle run of a server that is stopped is in it
        policies = [default_policy, *self.group_policies.values()]
        self.keep_seconds = max(p.idle_seconds + p.grace_seconds for p in policies) + 3 * interval_s
        self.max_samples = math.ceil(self.keep_seconds / interval_s) + 10
        # a gap longer than this between samples breaks an idle run (the clock restarts)
        self.max_gap = 3 * interval_s
        self.servers: dict[ServerKey, ServerRecord] = {}
        self.rounds = 0
        self._task: asyncio.Task | None = None

    @property
    def any_policy_on(self) -> bool:
        return self.default_policy.enabled or any(p.enabled for p in self.group_policies.values())

    def start(self) -> None:
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run(), name="thinkube-gpu-idle")

    async def stop(self) -> None:
        task, self._task = self._task, None
        await cancel_and_wait(task)
        await self.hub.aclose()

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            started = loop.time()
            try:
                await self.round()
            except Exception:  # a bug or a new failure: the next round tries again
                log.exception("GPU idle round failed")
            await asyncio.sleep(max(0.0, self.interval_s - (loop.time() - started)))

    # -- one round ---------------------------------------------------------------------

    async def round(self) -> None:
        servers = self.source.server_gpus()
        self.rounds += 1
        if servers is None:
            return  # the inventory cannot tell who holds what now: nothing changes
        now = self.clock()
        listed: set[ServerKey] = set()
        for server in servers:
            key = (server["user"], server["server"])
            listed.add(key)
            record = self.servers.get(key)
            if record is None:
                record = self.servers[key] = ServerRecord(
                    UsageWindow(self.keep_seconds, max_samples=self.max_samples)
                )
            record.gpus, record.node = server["gpus"], server.get("node", "")
            record.window.add(now, server["readings"])
        for key in set(self.servers) - listed:
            del self.servers[key]  # stopped (by anyone): its history goes with it
        await asyncio.gather(*(self._decide(key, now) for key in listed))

    async def _decide(self, key: ServerKey, now: float) -> None:
        record = self.servers.get(key)
        if record is None:
            return
        user, server = key
        kept_before = record.kept_at
        model = await self.hub.user(user)
        groups = (model or {}).get("groups") or []
        policy = policy_for(
            [g for g in groups if isinstance(g, str)], self.default_policy, self.group_policies
        )
        server_model = ((model or {}).get("servers") or {}).get(server) or {}
        record.url = server_model.get("url") or record.url
        record.policy = policy
        arguments: dict[str, Any] = {
            "max_gap": self.max_gap,
            "warned_at": record.warned_at,
            "kept_at": record.kept_at,
        }
        decision = decide(record.window.samples, policy, now, **arguments, kernels="idle")
        if decision.state in (WARNED, STOP):
            # idle GPUs: only now are the kernels asked (a request through the proxy)
            kernels = await self.hub.kernels(record.url)
            decision = decide(record.window.samples, policy, now, **arguments, kernels=kernels)
        if record.kept_at != kept_before or self.servers.get(key) is not record:
            return  # kept (or gone) while the hub was asked: this round's decision is stale
        self._apply(key, record, decision, now)
        if decision.state == STOP and self.stop_servers and not record.stopping:
            await self._stop(key, record, decision, now)

    def _apply(
        self, key: ServerKey, record: ServerRecord, decision: IdleDecision, now: float
    ) -> None:
        name = "/".join(part for part in key if part) or key[0]
        if decision.state == WARNED and record.warned_at is None:
            record.warned_at = now
            log.warning(
                "GPU idle: warned server %s of %s: %s",
                key[1] or "(default)",
                key[0],
                decision.reason,
            )
        elif decision.state not in (WARNED, STOP) and record.warned_at is not None:
            record.warned_at = None
            why = "no GPU metrics" if decision.state == NO_DATA else decision.reason
            log.info("GPU idle: server %s is no longer warned: %s", name, why)
        record.decision = decision

    async def _stop(
        self, key: ServerKey, record: ServerRecord, decision: IdleDecision, now: float
    ) -> None:
        user, server = key
        record.stopping = True
        problem = await self.hub.stop(user, server)
        if problem is not None:
            record.stopping = False
            log.warning(
                "GPU idle: could not stop server %s of %s: %s", server or "(default)", user, problem
            )
            return
        idle_for = now - decision.idle_since if decision.idle_since is not None else 0.0
        log.warning(
            "GPU idle: stopped server %s of %s, giving back %d GPU(s): %s",
            server or "(default)",
            user,
            record.gpus,
            decision.reason,
        )
        if self.on_stop is not None:
            self.on_stop(key, decision, record.gpus, idle_for)

    # -- what the API and the page ask ---------------------------------------------------

    def keep(self, key: ServerKey) -> bool:
        """The owner keeps the server: the warning goes, the clock starts again now.
        False when the server holds no GPU this loop knows of."""
        record = self.servers.get(key)
        if record is None:
            return False
        now = self.clock()
        record.kept_at, record.warned_at = now, None
        record.decision = decide(
            record.window.samples,
            record.policy or self.default_policy,
            now,
            max_gap=self.max_gap,
            kept_at=now,
        )
        log.info(
            "GPU idle: %s kept server %s; its clock starts again", key[0], key[1] or "(default)"
        )
        return True

    def usage(self, key: ServerKey) -> dict[str, Any] | None:
        """The server's GPU history and decision, as `GET .../gpu-usage` answers."""
        record = self.servers.get(key)
        if record is None:
            return None
        now = self.clock()
        policy = record.policy or self.default_policy
        decision = record.decision or IdleDecision(NO_DATA, "no GPU metrics yet")
        return {
            "user": key[0],
            "server": key[1],
            "gpus": record.gpus,
            "policy": {
                "enabled": policy.enabled,
                "threshold_percent": policy.threshold_percent,
                "idle_seconds": policy.idle_seconds,
                "grace_seconds": policy.grace_seconds,
            },
            "decision": decision.document(now),
            "warned_at": _iso_or_none(record.warned_at),
            "kept_at": _iso_or_none(record.kept_at),
            "stopped_by": "service" if self.stop_servers else "jupyterhub-idle-culler",
            "interval_seconds": self.interval_s,
            "history": record.window.points(),
        }

    def warned_count(self) -> int:
        return sum(1 for record in self.servers.values() if record.warned_at is not None)

    def of_user(self, user: str) -> list[tuple[ServerKey, dict[str, Any]]]:
        return [
            (key, usage)
            for key in sorted(self.servers)
            if key[0] == user and (usage := self.usage(key)) is not None
        ]


def _iso_or_none(at: float | None) -> str | None:
    return None if at is None else iso_time(at)
