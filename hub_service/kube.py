"""List-then-watch of Nodes and Pods cluster-wide, on raw JSON, feeding ClusterState.

Each resource runs the informer loop client-go's reflector runs: list (in pages), then
watch from the list's resourceVersion with bookmarks; a 410 Gone, a dropped stream or any
error leads to a fresh list (with backoff after errors), so a reconnect always resyncs.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from kubernetes_asyncio import client
from kubernetes_asyncio.client.exceptions import ApiException

log = logging.getLogger("thinkube.kube")


class Gone(Exception):
    """The watch's resourceVersion is too old: relist."""


async def _check_status(response) -> None:
    """With ``_preload_content=False`` kubernetes_asyncio returns any response as it came:
    turn a non-2xx answer into :class:`Gone` (410) or an ``ApiException`` carrying the
    Status message, never into data."""
    if 200 <= response.status <= 299:
        return
    try:
        body = await response.read()
        status = json.loads(body)
        message = status.get("message") if isinstance(status, dict) else None
    except Exception:  # an HTML error page, a cut connection: the code says enough
        message = None
    finally:
        response.release()
    if response.status == 410:
        raise Gone(message or "410 Gone")
    raise ApiException(status=response.status, reason=message or response.reason)


@dataclass
class WatchHealth:
    synced_once: bool = False
    connected: bool = False
    last_sync: float | None = None  # monotonic time of the last full list
    last_event: float | None = None  # monotonic time of the last event or bookmark
    restarts: int = 0  # watches resumed or relisted
    relists: int = 0  # after 410 Gone
    errors: int = 0
    listed: int = 0  # objects in the last full list
    last_error: str = ""
    unhealthy_since: float | None = field(default=None)  # wall-clock time


class ResourceWatcher:
    """Keeps one resource type (nodes or pods, all namespaces) in sync."""

    def __init__(
        self,
        api: client.ApiClient,
        kind: str,
        replace: Callable[[list[dict]], None],
        apply: Callable[[str, dict], None],
        on_change: Callable[[], None],
        on_health: Callable[[], None],
        page_size: int = 500,
        watch_timeout_s: int = 300,
        request_timeout_s: float = 30,
        min_backoff_s: float = 0.5,
        max_backoff_s: float = 10,
        slim: Callable[[Any], Any] | None = None,
    ):
        self.core = client.CoreV1Api(api)
        # Applied to each listed object page by page, so a 50,000-pod list never sits in
        # memory as whole objects.
        self.slim = slim
        self.kind = kind
        self.replace, self.apply = replace, apply
        self.on_change, self.on_health = on_change, on_health
        self.page_size = page_size
        self.watch_timeout_s = watch_timeout_s
        self.request_timeout_s = request_timeout_s
        self.min_backoff_s = min_backoff_s
        self.max_backoff_s = max(max_backoff_s, min_backoff_s)
        self.health = WatchHealth()
        self.resource_version = ""
        self._list = (
            self.core.list_node if kind == "nodes" else self.core.list_pod_for_all_namespaces
        )

    async def list_all(self) -> tuple[list[dict], str]:
        items: list[dict] = []
        token = None
        while True:
            kwargs = {
                "limit": self.page_size,
                "_preload_content": False,
                "_request_timeout": self.request_timeout_s,
            }
            if token:
                kwargs["_continue"] = token
            response = await self._list(**kwargs)
            await _check_status(response)
            body = json.loads(await response.read())
            if not isinstance(body, dict) or not isinstance(body.get("metadata"), dict):
                raise ValueError(f"the {self.kind} list is not a Kubernetes list")
            page = body.get("items") or []
            items.extend(map(self.slim, page) if self.slim else page)
            token = (body.get("metadata") or {}).get("continue")
            if not token:
                return items, body["metadata"]["resourceVersion"]

    async def watch(self) -> None:
        """Follow events until the stream ends (timeout, drop) or fails."""
        response = await self._list(
            watch=True,
            resource_version=self.resource_version,
            allow_watch_bookmarks=True,
            timeout_seconds=self.watch_timeout_s,
            _preload_content=False,
            # Bookmarks arrive well within this; silence longer than it is a dead stream.
            _request_timeout=self.watch_timeout_s + 30,
        )
        await _check_status(response)
        try:
            async for line in response.content:
                if not line.strip():
                    continue
                event = json.loads(line)
                if not isinstance(event, dict):
                    raise ValueError("a watch event is not an object")
                kind, obj = event.get("type"), event.get("object")
                if not isinstance(obj, dict):
                    obj = {}
                self.health.last_event = time.monotonic()
                if kind == "ERROR":
                    if obj.get("code") == 410:
                        raise Gone(obj.get("message", "410 Gone"))
                    raise ApiException(
                        status=obj.get("code", 500), reason=obj.get("message", "watch error")
                    )
                version = (obj.get("metadata") or {}).get("resourceVersion")
                if version:
                    self.resource_version = version
                if kind not in ("ADDED", "MODIFIED", "DELETED"):
                    continue  # BOOKMARK, or a type this client does not know
                self.apply(kind, obj)
                self.on_change()
        finally:
            response.release()

    async def run(self) -> None:
        """List, then watch, forever. Never raises but CancelledError.

        Health is kept in :attr:`health`; the owner logs state changes (see
        ``KubernetesInventory``), so a retry loop never logs once per attempt.
        """
        backoff = self.min_backoff_s
        expired_in_a_row = 0
        while True:
            try:
                items, version = await self.list_all()
                self.resource_version = version
                self.replace(items)
                now = time.monotonic()
                self.health.synced_once = self.health.connected = True
                self.health.last_sync = self.health.last_event = now
                self.health.unhealthy_since = None
                self.health.last_error = ""
                self.health.listed = len(items)
                log.debug("%s listed: %d at resourceVersion %s", self.kind, len(items), version)
                self.on_change()
                self.on_health()
                backoff = self.min_backoff_s
                expired_in_a_row = 0
                while True:
                    await self.watch()
                    # The server ended the watch (its timeout, or a cut stream): resume from
                    # the last resourceVersion seen; a failure to reconnect relists.
                    self.health.restarts += 1
            except asyncio.CancelledError:
                raise
            except Gone as err:
                self.health.restarts += 1
                self.health.relists += 1
                expired_in_a_row += 1
                log.info("%s watch expired (410 Gone: %s): relisting", self.kind, err)
                if expired_in_a_row > 2:  # the server expires even fresh lists: slow down
                    await asyncio.sleep(backoff)
                    backoff = min(backoff * 2, self.max_backoff_s)
            except Exception as err:  # network errors, 5xx, timeouts, bad JSON
                self.health.errors += 1
                self.health.last_error = describe_error(err)
                self.health.connected = False
                if self.health.unhealthy_since is None:
                    self.health.unhealthy_since = time.time()
                log.debug("%s list/watch failed: %s", self.kind, self.health.last_error)
                self.on_health()
                await asyncio.sleep(backoff * (0.5 + random.random() / 2))
                backoff = min(backoff * 2, self.max_backoff_s)


def describe_error(err: Exception) -> str:
    if isinstance(err, ApiException):
        return f"HTTP {err.status} {err.reason or ''}".strip()
    text = str(err) or err.__class__.__name__
    return text.splitlines()[0][:200]
