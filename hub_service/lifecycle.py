"""The service lives as long as the hub that started it.

JupyterHub starts a managed service as its child in a session of its own, so nothing tells
the service when the hub dies without stopping it (SIGKILL, the OOM killer, a crash). Left
running, the service would keep its port (the next hub's service then cannot listen) and
keep running its background work with nobody to manage it. Two ways to notice:

- On Linux, the parent-death signal: the kernel sends SIGTERM when the parent ends, and the
  service stops as for any SIGTERM. Set once the service starts; the parent may have ended
  just before, so the parent pid is checked right after setting it.
- Everywhere, once a second: the parent pid changed (the service was re-parented), and then
  the hub's API has not answered for `grace_s` (a hub that still answers keeps its service).
"""

from __future__ import annotations

import asyncio
import ctypes
import logging
import os
import signal
import sys
import time
from collections.abc import Callable

import httpx

from .background import cancel_and_wait

log = logging.getLogger("thinkube.lifecycle")

PR_SET_PDEATHSIG = 1  # linux/prctl.h


def set_parent_death_signal(sig: int = signal.SIGTERM) -> bool:
    """Ask Linux to send `sig` to this process when its parent ends; False where that is
    not available (other systems, a libc without prctl)."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return False
    prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
    prctl.restype = ctypes.c_int
    return prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0) == 0


def hub_gone(
    parent_pid: int,
    hub_pid: int,
    unreachable_since: float | None,
    now: float,
    grace_s: float,
) -> bool:
    """Whether the hub that started this service is gone: the service's parent is no longer
    the hub's pid, and the hub's API has not answered since `unreachable_since` for at least
    `grace_s` seconds (None: it answered at the last check)."""
    if parent_pid == hub_pid:
        return False
    return unreachable_since is not None and now - unreachable_since >= grace_s


class HubWatch:
    """Calls `on_gone` (once, with the reason in words) when the hub that started this
    service is gone: at once on Linux's parent-death signal (through the service's SIGTERM
    handler, not here), else when :func:`hub_gone` says so."""

    def __init__(
        self,
        hub_pid: int,
        hub_api_url: str,
        on_gone: Callable[[str], None],
        *,
        grace_s: float = 10.0,
        interval_s: float = 1.0,
        probe_timeout_s: float = 2.0,
    ) -> None:
        self.hub_pid = hub_pid
        self.hub_api_url = hub_api_url
        self.on_gone = on_gone
        self.grace_s = grace_s
        self.interval_s = interval_s
        self.probe_timeout_s = probe_timeout_s
        self.parent_death_signal = False
        self._unreachable_since: float | None = None
        self._task: asyncio.Task | None = None
        self._http: httpx.AsyncClient | None = None

    def start(self) -> None:
        self.parent_death_signal = set_parent_death_signal(signal.SIGTERM)
        # The parent may have ended before the signal was asked for: then it never comes.
        if os.getppid() != self.hub_pid:
            self.on_gone(f"the hub (pid {self.hub_pid}) ended before this service started")
            return
        self._task = asyncio.create_task(self._run(), name="thinkube-hub-watch")

    async def stop(self) -> None:
        task, self._task = self._task, None
        await cancel_and_wait(task)
        if self._http is not None:
            await self._http.aclose()
            self._http = None

    @property
    def parent_gone(self) -> bool:
        return os.getppid() != self.hub_pid

    async def hub_answers(self) -> bool:
        """Whether the hub's API answers (its root needs no token): not a refused or timed
        out connection, not a 5xx."""
        if not self.hub_api_url:
            return False
        if self._http is None:
            self._http = httpx.AsyncClient(timeout=self.probe_timeout_s)
        try:
            response = await self._http.get(self.hub_api_url)
        except httpx.HTTPError:
            return False
        return response.status_code < 500

    async def _run(self) -> None:
        logged = False
        while True:
            await asyncio.sleep(self.interval_s)
            if not self.parent_gone:
                continue
            if not logged:
                logged = True
                log.warning(
                    "the hub (pid %d) that started this service is gone; stopping once "
                    "its API has not answered for %gs",
                    self.hub_pid,
                    self.grace_s,
                )
            asked_at = time.monotonic()
            if await self.hub_answers():
                self._unreachable_since = None
            elif self._unreachable_since is None:
                self._unreachable_since = asked_at
            if hub_gone(
                os.getppid(), self.hub_pid, self._unreachable_since, time.monotonic(), self.grace_s
            ):
                self.on_gone(
                    f"the hub (pid {self.hub_pid}) is gone and its API has not answered "
                    f"for {self.grace_s:g}s"
                )
                return


__all__ = ["HubWatch", "hub_gone", "set_parent_death_signal"]
