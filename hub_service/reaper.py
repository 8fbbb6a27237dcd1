"""The reaper: ends RunPod pods of this hub that no server owns any more.

A cloud server's pod carries its hub, user and server as metadata (the env entries
`THINKUBE_HUB`, `THINKUBE_USER`, `THINKUBE_SERVER`; "" or none is the default server) and
the spawner keeps the pod id in its state (`runpod_pod_id`). Every `interval_s` the reaper
lists the account's pods and the hub's active servers, and terminates each pod marked with
this hub's prefix that

- belongs to no active (ready or pending) server of the hub's REST API, or
- belongs to a ready server whose spawner state names another pod,

once the pod is older than `grace_s`. It never terminates on doubt: when the hub cannot be
asked, lacks the scopes to answer fully, or lists a user with active servers it cannot show,
that pass (or that user) is skipped. Pods of other hubs and pods without metadata are never
touched.

The service's hub role needs `list:users` and `read:servers` (to see who runs what), plus
`admin:server_state` for the pod-id check (without it a ready server owns every pod marked
with its user and server name).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import httpx

from thinkube_core.runpod import Pod, RunPodClient, RunPodError
from thinkube_core.runpod.models import STATE_POD_ID, TERMINATED

from .background import cancel_and_wait

log = logging.getLogger("thinkube.reaper")

REQUIRED_SCOPES = ("list:users", "read:servers")
STATE_SCOPE = "admin:server_state"
PAGINATION = "application/jupyterhub-pagination+json"

# Only what the decision needs, plus createdAt (not in the client's pod fields) for the age.
REAPER_PODS = """
query ThinkubeReaperPods {
  myself { pods { id name desiredStatus createdAt env runtime { uptimeInSeconds } } }
}
"""


@dataclass(frozen=True)
class ActiveServer:
    user: str
    server: str
    ready: bool
    pending: str | None
    pod_id: str | None  # the spawner state's runpod_pod_id; None: none or not visible


@dataclass(frozen=True)
class HubServers:
    """The hub's active servers by (user, server name), and the users whose servers the hub
    listed as active but did not show (their pods are left alone)."""

    servers: dict[tuple[str, str], ActiveServer]
    unknown_users: frozenset[str]


@dataclass(frozen=True)
class Verdict:
    pod: Pod
    reap: bool
    why: str


def active_servers(users: Iterable[Mapping[str, Any]]) -> HubServers:
    """Parse user models of `GET /users?state=active` (pure)."""
    servers: dict[tuple[str, str], ActiveServer] = {}
    unknown: set[str] = set()
    for user in users:
        name = user.get("name")
        if not isinstance(name, str):
            continue
        models = user.get("servers")
        if not isinstance(models, Mapping) or not models:
            unknown.add(name)
            continue
        for server_name, model in models.items():
            if not isinstance(model, Mapping):
                unknown.add(name)
                continue
            if model.get("stopped") and not model.get("pending"):
                continue
            state = model.get("state")
            pod_id = state.get(STATE_POD_ID) if isinstance(state, Mapping) else None
            servers[(name, server_name)] = ActiveServer(
                user=name,
                server=server_name,
                ready=bool(model.get("ready")),
                pending=model.get("pending") or None,
                pod_id=str(pod_id) if pod_id else None,
            )
    return HubServers(servers, frozenset(unknown))


def parse_created(value: Any) -> float | None:
    """RunPod's `createdAt` as a Unix time; None when absent or unreadable."""
    if not isinstance(value, str) or not value.strip():
        return None
    try:
        moment = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
    except ValueError:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


def pod_age(pod: Pod, now: float, first_seen: float | None) -> float:
    """How old the pod is at least: the largest of its age by `createdAt`, its container's
    uptime, and how long this reaper has known it."""
    ages = [0.0]
    created = parse_created(pod.raw.get("createdAt"))
    if created is not None:
        ages.append(now - created)
    if pod.uptime_seconds:
        ages.append(float(pod.uptime_seconds))
    if first_seen is not None:
        ages.append(now - first_seen)
    return max(ages)


def judge(
    pods: Iterable[Pod],
    hub: HubServers,
    *,
    prefix: str,
    grace_s: float,
    now: float,
    first_seen: Mapping[str, float] | None = None,
) -> list[Verdict]:
    """A verdict for each pod marked with this hub's `prefix` (pure); other pods are left
    out."""
    verdicts = []
    for pod in pods:
        meta = pod.meta
        if meta.get("hub") != prefix or pod.desired_status == TERMINATED:
            continue
        user = meta.get("user") or ""
        server = meta.get("server") or ""
        if user in hub.unknown_users:
            verdicts.append(Verdict(pod, False, f"the hub did not show the servers of {user}"))
            continue
        owner = hub.servers.get((user, server))
        if owner is not None:
            if owner.pending:
                verdicts.append(Verdict(pod, False, f"its server is {owner.pending} pending"))
                continue
            if owner.pod_id is None or owner.pod_id == pod.id:
                verdicts.append(Verdict(pod, False, "its server is running"))
                continue
            why = f"its server runs pod {owner.pod_id}"
        elif not user:
            why = "it names no user"
        else:
            why = "no active server owns it"
        age = pod_age(pod, now, (first_seen or {}).get(pod.id))
        if age < grace_s:
            verdicts.append(Verdict(pod, False, f"{why}, but it is {age:.0f}s old"))
            continue
        verdicts.append(Verdict(pod, True, why))
    return verdicts


class HubClient:
    """The hub's REST API, with the service's own token."""

    def __init__(self, api_url: str, token: str, *, timeout_s: float = 20.0) -> None:
        self.api_url = api_url.rstrip("/")
        self._http = httpx.AsyncClient(
            headers={"Authorization": f"token {token}"}, timeout=timeout_s
        )

    async def scopes(self) -> set[str]:
        response = await self._http.get(f"{self.api_url}/user")
        response.raise_for_status()
        return set(response.json().get("scopes") or [])

    async def active_users(self, page_size: int = 200) -> list[dict]:
        users: list[dict] = []
        offset = 0
        while True:
            response = await self._http.get(
                f"{self.api_url}/users",
                params={"state": "active", "offset": offset, "limit": page_size},
                headers={"Accept": PAGINATION},
            )
            response.raise_for_status()
            body = response.json()
            if isinstance(body, list):  # a hub that does not paginate
                return body
            users.extend(body.get("items") or [])
            following = (body.get("_pagination") or {}).get("next")
            if not following:
                return users
            offset = int(following["offset"])

    async def aclose(self) -> None:
        await self._http.aclose()


class Reaper:
    """Runs `reap_once` every `interval_s` in the background (see the module docstring)."""

    def __init__(
        self,
        runpod: RunPodClient,
        hub: HubClient,
        *,
        prefix: str,
        interval_s: float,
        grace_s: float,
    ) -> None:
        self.runpod = runpod
        self.hub = hub
        self.prefix = prefix
        self.interval_s = interval_s
        self.grace_s = grace_s
        self.first_seen: dict[str, float] = {}
        self.reaped = 0  # pods terminated since the service started
        self._problem: str | None = None
        self._warned_state = False
        self._task: asyncio.Task | None = None

    async def start(self) -> None:
        if self._task is None and self.interval_s > 0:
            self._task = asyncio.create_task(self._run(), name="thinkube-cloud-reaper")
            log.info(
                "reaper on: RunPod pods of hub %r that no server owns are terminated "
                "(every %gs, after %gs)",
                self.prefix,
                self.interval_s,
                self.grace_s,
            )

    async def stop(self) -> None:
        task, self._task = self._task, None
        await cancel_and_wait(task)
        await self.hub.aclose()

    async def _run(self) -> None:
        while True:
            try:
                await self.reap_once()
            except Exception:  # the loop must go on; the next pass tries again
                log.exception("reaper pass failed")
            await asyncio.sleep(self.interval_s)

    def _report(self, problem: str | None) -> None:
        """Log a problem once, and once when it is gone (not once per pass)."""
        if problem and problem != self._problem:
            log.error("reaper paused: %s", problem)
        elif not problem and self._problem:
            log.info("reaper resumed")
        self._problem = problem

    async def reap_once(self) -> list[Verdict]:
        """One pass: the verdicts (the pods reaped have `reap` True)."""
        try:
            data = await self.runpod.execute(REAPER_PODS, field="myself")
        except RunPodError as err:
            self._report(f"RunPod's pod list cannot be read: {err}")
            return []
        raw = (data.get("myself") or {}).get("pods") or []
        pods = [Pod.from_api(p) for p in raw if p and p.get("id")]
        now = time.time()
        listed = {p.id for p in pods}
        self.first_seen = {i: t for i, t in self.first_seen.items() if i in listed}
        for pod in pods:
            self.first_seen.setdefault(pod.id, now)
        if not any(p.meta.get("hub") == self.prefix for p in pods):
            self._report(None)
            return []
        hub = await self._hub_servers()
        if hub is None:
            return []
        self._report(None)
        verdicts = judge(
            pods,
            hub,
            prefix=self.prefix,
            grace_s=self.grace_s,
            now=now,
            first_seen=self.first_seen,
        )
        for verdict in verdicts:
            if verdict.reap:
                await self._terminate(verdict)
        return verdicts

    async def _hub_servers(self) -> HubServers | None:
        try:
            scopes = await self.hub.scopes()
            missing = [s for s in REQUIRED_SCOPES if s not in scopes]
            if missing:
                self._report(
                    f"the service's hub role lacks {', '.join(missing)} (it needs list:users, "
                    "read:servers and admin:server_state; see docs/service.md)"
                )
                return None
            if STATE_SCOPE not in scopes and not self._warned_state:
                self._warned_state = True
                log.warning(
                    "reaper: without the hub scope %s a running server owns every pod "
                    "marked with its name (the pod id is not checked)",
                    STATE_SCOPE,
                )
            users = await self.hub.active_users()
        except (httpx.HTTPError, ValueError, KeyError, TypeError) as err:
            detail = (
                f"HTTP {err.response.status_code}"
                if isinstance(err, httpx.HTTPStatusError)
                else type(err).__name__
            )
            self._report(f"the hub's servers cannot be read ({detail})")
            return None
        return active_servers(users)

    async def _terminate(self, verdict: Verdict) -> None:
        pod = verdict.pod
        meta = pod.meta
        try:
            ended = await self.runpod.terminate_pod(pod.id)
        except RunPodError as err:
            log.warning("reaper could not terminate RunPod pod %s (%s): %s", pod.id, pod.name, err)
            return
        self.reaped += 1
        log.warning(
            "reaper %s RunPod pod %s (%s) of user %r, server %r: %s",
            "terminated" if ended else "found already gone",
            pod.id,
            pod.name,
            meta.get("user") or "",
            meta.get("server") or "",
            verdict.why,
        )


__all__ = [
    "REQUIRED_SCOPES",
    "STATE_SCOPE",
    "ActiveServer",
    "HubClient",
    "HubServers",
    "Reaper",
    "Verdict",
    "active_servers",
    "judge",
    "parse_created",
    "pod_age",
]
