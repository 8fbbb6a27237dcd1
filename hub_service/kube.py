"""List-then-watch of Nodes and Pods cluster-wide, on raw JSON, feeding ClusterState.

Each resource runs the informer loop client-go's reflector runs:

- the first list asks for ``resourceVersion=0``: any version the API server has, so it is
  answered from its watch cache, not by a quorum read of etcd;
- then a watch from the list's resourceVersion, with bookmarks; a watch the server ends is
  resumed from the last version seen;
- a watch that fails with 410 Gone relists at the last version seen (again servable from
  the cache); only when a list itself says that version is gone (410) or ahead of the
  server (504 "Too large resource version") does the next list ask for the newest data
  (``resourceVersion=""``, a consistent read);
- lists are paged (``limit``) while the server pages them; a server that answers the
  ``resourceVersion=0`` list in one piece (its watch cache ignores ``limit``) is not asked
  for pages again for lists that the cache can serve, and a page whose continue token has
  expired makes the pager fall back to one unpaged list.

List bodies are parsed as they arrive: each item goes to a callback as soon as it is
complete and is not kept, so a 150,000-pod list answered in one response never sits in
memory as whole objects.
"""

from __future__ import annotations

import asyncio
import codecs
import json
import logging
import random
import re
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

from kubernetes_asyncio import client
from kubernetes_asyncio.client.exceptions import ApiException

log = logging.getLogger("thinkube.kube")


class Gone(Exception):
    """The resourceVersion asked for is no longer available (410): relist."""


class VersionTooLarge(Exception):
    """The resourceVersion asked for is newer than the server has (504 "Too large resource
    version"): a server restored from a backup, or a cache not caught up yet."""


def _too_large(status: Any) -> bool:
    if not isinstance(status, dict):
        return False
    details = status.get("details")
    causes = details.get("causes") if isinstance(details, dict) else None
    if isinstance(causes, list) and any(
        isinstance(c, dict) and c.get("reason") == "ResourceVersionTooLarge" for c in causes
    ):
        return True
    return "Too large resource version" in str(status.get("message") or "")


async def _check_status(response) -> None:
    """With ``_preload_content=False`` kubernetes_asyncio returns any response as it came:
    turn a non-2xx answer into :class:`Gone` (410), :class:`VersionTooLarge` or an
    ``ApiException`` carrying the Status message, never into data."""
    if 200 <= response.status <= 299:
        return
    status = None
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
    if response.status == 504 and _too_large(status):
        raise VersionTooLarge(message)
    raise ApiException(status=response.status, reason=message or response.reason)


# --- JSON read while it arrives -------------------------------------------------------------

_DECODER = json.JSONDecoder()
_NOT_SPACE = re.compile(r"[^ \t\n\r]")


class _Ended(ValueError):
    """The text ended where more JSON was needed."""


class JSONStream:
    """JSON text arriving in byte chunks, read one value at a time with the C decoder.

    Only the value being read and the unread rest of the last chunk are held. A value cut
    by a chunk boundary is decoded again once more text has arrived; each retry at least
    doubles the text held, so no value is decoded more than a few times.
    """

    def __init__(self, chunks: AsyncIterator[bytes]):
        self._chunks = aiter(chunks)
        self._utf8 = codecs.getincrementaldecoder("utf-8")()
        self.text = ""
        self.pos = 0
        self.ended = False

    async def _more(self, at_least: int = 1) -> None:
        if self.ended:
            raise _Ended("the response ends in the middle of its JSON")
        parts, added = [self.text[self.pos :]], 0
        while added < at_least and not self.ended:
            try:
                chunk = await anext(self._chunks)
            except StopAsyncIteration:
                self.ended, chunk = True, b""
            piece = self._utf8.decode(chunk, final=self.ended)  # bad UTF-8: ValueError
            parts.append(piece)
            added += len(piece)
        self.text, self.pos = "".join(parts), 0

    async def peek(self) -> str:
        """The next character that is not whitespace, left unread."""
        while True:
            match = _NOT_SPACE.search(self.text, self.pos)
            if match:
                self.pos = match.start()
                return self.text[self.pos]
            self.pos = len(self.text)
            await self._more()

    async def take(self, allowed: str) -> str:
        """Read one of the structural characters in `allowed`."""
        char = await self.peek()
        if char not in allowed:
            raise ValueError(f"the JSON has {char!r} where one of {allowed!r} belongs")
        self.pos += 1
        return char

    async def value(self) -> Any:
        await self.peek()
        while True:
            try:
                value, end = _DECODER.raw_decode(self.text, self.pos)
            except json.JSONDecodeError:
                if self.ended:
                    raise
                await self._more(len(self.text) - self.pos)
                continue
            if end == len(self.text) and not self.ended:
                # A number cut by the chunk boundary reads as a shorter number: be sure.
                await self._more(len(self.text) - self.pos)
                continue
            self.pos = end
            return value

    async def at_end(self) -> bool:
        try:
            await self.peek()
        except _Ended:
            return True
        return False


async def read_list(chunks: AsyncIterator[bytes], on_item: Callable[[Any], None]) -> dict:
    """A Kubernetes list response parsed while it arrives: each element of its ``items``
    goes to `on_item` as soon as it is complete and is not kept. Returns the other top-level
    members (``kind``, ``apiVersion``, ``metadata``). ValueError when the body is not one
    JSON object."""
    stream = JSONStream(chunks)
    head: dict[str, Any] = {}
    await stream.take("{")
    if await stream.peek() == "}":
        stream.pos += 1
    else:
        while True:
            key = await stream.value()
            if not isinstance(key, str):
                raise ValueError("the JSON has an object key that is not a string")
            await stream.take(":")
            if key == "items" and await stream.peek() == "[":
                stream.pos += 1
                if await stream.peek() == "]":
                    stream.pos += 1
                else:
                    while True:
                        on_item(await stream.value())
                        if await stream.take(",]") == "]":
                            break
            else:
                head[key] = await stream.value()
            if await stream.take(",}") == "}":
                break
    if not await stream.at_end():
        raise ValueError("the response goes on after its JSON object")
    return head


# --- the reflector --------------------------------------------------------------------------


@dataclass
class WatchHealth:
    synced_once: bool = False
    restarts: int = 0  # watches resumed or relisted
    relists: int = 0  # after 410 Gone
    errors: int = 0
    listed: int = 0  # objects in the last full list
    last_error: str = ""
    unhealthy_since: float | None = field(default=None)  # wall-clock time
    last_list_s: float | None = None  # how long the last full list took, parsing included


class ResourceWatcher:
    """Keeps one resource type (nodes or pods, all namespaces, or what `lister` lists) in
    sync."""

    def __init__(
        self,
        api: client.ApiClient,
        kind: str,
        replace: Callable[[list], None],
        apply: Callable[[str, dict], None],
        on_change: Callable[[], None],
        on_health: Callable[[], None],
        page_size: int = 500,
        watch_timeout_s: int = 300,
        request_timeout_s: float = 30,
        min_backoff_s: float = 0.5,
        max_backoff_s: float = 10,
        prepare: Callable[[Any], Any] | None = None,
        lister: Callable[..., Any] | None = None,
    ):
        self.core = client.CoreV1Api(api)
        # Applied to each listed object as soon as it is parsed; `replace` gets what it
        # returns, so a large list is never held as whole objects.
        self.prepare = prepare
        self.kind = kind
        self.replace, self.apply = replace, apply
        self.on_change, self.on_health = on_change, on_health
        self.page_size = page_size
        self.watch_timeout_s = watch_timeout_s
        self.request_timeout_s = request_timeout_s
        self.min_backoff_s = min_backoff_s
        self.max_backoff_s = max(max_backoff_s, min_backoff_s)
        self.health = WatchHealth()
        # The newest resourceVersion seen, from a list, an event or a bookmark.
        self.resource_version = ""
        # The last list said that version is gone or ahead of the server: list the newest.
        self.version_unavailable = False
        # The resourceVersion=0 list came back in pages: this server pages every list (it
        # has no watch cache for the resource), so later lists are paged too.
        self.paged_at_zero = False
        # `lister`: another list call taking the same options (a namespace's Jobs, by label).
        self._list = lister or (
            self.core.list_node if kind == "nodes" else self.core.list_pod_for_all_namespaces
        )

    def list_options(self) -> tuple[str, int]:
        """(resourceVersion, limit) of the next list, chosen as client-go's reflector does."""
        if self.version_unavailable:
            version = ""  # the newest data: a consistent read
        elif not self.resource_version:
            version = "0"  # anything the server has: its watch cache
        else:
            version = self.resource_version  # at least as new as what was seen
        limit = self.page_size
        if version not in ("", "0") and not self.paged_at_zero:
            # The watch cache serves a list at a version only without a limit; paging it
            # would send every page to etcd.
            limit = 0
        return version, limit

    async def list_all(self) -> tuple[list, str]:
        """Every object (as `prepare` makes it) and the list's resourceVersion."""
        started = time.monotonic()
        version, limit = self.list_options()
        try:
            items, listed_version, paged = await self._list_at(version, limit)
        except (Gone, VersionTooLarge) as err:
            log.info(
                "%s list at resourceVersion %r refused (%s): listing the newest",
                self.kind,
                version,
                err,
            )
            self.version_unavailable = True
            version, limit = self.list_options()
            items, listed_version, paged = await self._list_at(version, limit)
        if version == "0" and paged:
            self.paged_at_zero = True
        self.version_unavailable = False
        self.health.last_list_s = time.monotonic() - started
        return items, listed_version

    async def _list_at(self, version: str, limit: int) -> tuple[list, str, bool]:
        """All objects at `version` in pages of `limit` (0: one response): the prepared
        items, the list's resourceVersion, and whether the server paged it."""
        items: list = []
        prepare = self.prepare
        keep = items.append if prepare is None else (lambda obj: items.append(prepare(obj)))
        token, paged = "", False
        while True:
            kwargs: dict[str, Any] = {
                "_preload_content": False,
                # Per read, not for the whole body: one unpaged list of 150,000 pods takes
                # longer than any sensible request timeout to arrive and be read.
                "_request_timeout": (self.request_timeout_s, self.request_timeout_s),
            }
            if token:
                kwargs["_continue"] = token  # a continue token carries its own version
            elif version:
                kwargs["resource_version"] = version
            if limit:
                kwargs["limit"] = limit
            response = await self._list(**kwargs)
            try:
                await _check_status(response)
            except Gone:
                if not token:
                    raise
                # The version the first page fixed was compacted while paging: as client-go's
                # pager, fall back to one unpaged list at the version first asked for.
                log.info("%s list expired while paging: listing in one piece", self.kind)
                items.clear()
                token, limit = "", 0
                continue
            try:
                head = await read_list(response.content.iter_any(), keep)
            finally:
                response.release()
            meta = head.get("metadata")
            if not isinstance(meta, dict) or not isinstance(meta.get("resourceVersion"), str):
                raise ValueError(f"the {self.kind} list is not a Kubernetes list")
            token = meta.get("continue") or ""
            if not isinstance(token, str):
                raise ValueError(f"the {self.kind} list has a continue token that is not text")
            if not token:
                return items, meta["resourceVersion"], paged
            paged = True

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
                if kind == "ERROR":
                    if obj.get("code") == 410:
                        raise Gone(obj.get("message", "410 Gone"))
                    if obj.get("code") == 504 and _too_large(obj):
                        raise VersionTooLarge(obj.get("message"))
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
                self.health.synced_once = True
                self.health.unhealthy_since = None
                self.health.last_error = ""
                self.health.listed = len(items)
                del items  # what replace kept is kept; the list itself can go now
                log.debug(
                    "%s listed: %d at resourceVersion %s", self.kind, self.health.listed, version
                )
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
            except (Gone, VersionTooLarge) as err:
                # 410 on a watch: relist at the last version seen (the cache can serve it).
                # A version ahead of the server: relist the newest.
                if isinstance(err, VersionTooLarge):
                    self.version_unavailable = True
                self.health.restarts += 1
                self.health.relists += 1
                expired_in_a_row += 1
                if isinstance(err, Gone):
                    log.info("%s watch expired (410 Gone: %s): relisting", self.kind, err)
                else:
                    log.info("%s watch ahead of the server (%s): relisting", self.kind, err)
                if expired_in_a_row > 2:  # the server expires even fresh lists: slow down
                    await asyncio.sleep(backoff)
                    backoff = min(backoff * 2, self.max_backoff_s)
            except Exception as err:  # network errors, 5xx, timeouts, bad JSON
                self.health.errors += 1
                self.health.last_error = describe_error(err)
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
