"""kubesim's object store: the etcd + apiserver registry part of the emulator.

Objects are raw JSON dicts, each kept with its serialised bytes so that a list of 50,000
pods is a join, not 50,000 json.dumps calls. Every write takes the next cluster-wide
resourceVersion, is appended to a bounded history (the watch cache), and is pushed to
matching watchers at once. A watch that starts before the oldest retained event gets
410 Gone, as on a real apiserver after etcd compaction.
"""

from __future__ import annotations

import asyncio
import base64
import bisect
import copy
import json
import uuid
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from .resources import ResourceType
from .selectors import FieldSelector, LabelSelector

Obj = dict[str, Any]


def now_rfc3339() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def dumps(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


class ApiError(Exception):
    """An error the apiserver answers with a Status body."""

    def __init__(
        self,
        code: int,
        reason: str,
        message: str,
        details: dict | None = None,
    ):
        super().__init__(message)
        self.code = code
        self.reason = reason
        self.message = message
        self.details = details

    def status(self) -> Obj:
        body: Obj = {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        }
        if self.details:
            body["details"] = self.details
        return body


def not_found(rt: ResourceType, name: str) -> ApiError:
    group_plural = f"{rt.plural}.{rt.group}" if rt.group else rt.plural
    return ApiError(
        404,
        "NotFound",
        f'{group_plural} "{name}" not found',
        {"name": name, "group": rt.group, "kind": rt.plural},
    )


def gone(message: str) -> ApiError:
    return ApiError(410, "Expired", message)


@dataclass(slots=True)
class Entry:
    obj: Obj
    raw: bytes


@dataclass(slots=True)
class Change:
    """One write, as the history and watchers see it."""

    resource_version: int
    plural: str
    type: str  # ADDED MODIFIED DELETED
    obj: Obj
    raw: bytes
    old: Obj | None


@dataclass(eq=False)
class Watcher:
    rt: ResourceType
    namespace: str | None
    labels: LabelSelector
    fields: FieldSelector
    queue: asyncio.Queue = field(default_factory=asyncio.Queue)
    closed: bool = False

    def matches(self, obj: Obj | None) -> bool:
        if obj is None:
            return False
        meta = obj.get("metadata", {})
        if self.namespace is not None and meta.get("namespace") != self.namespace:
            return False
        return self.labels.matches(meta.get("labels")) and self.fields.matches(obj)

    def offer(self, change: Change) -> None:
        """Queue the event this watcher sees for a change, if any.

        Like the apiserver's watch cache: an object that starts matching the selector
        arrives as ADDED, one that stops matching as DELETED.
        """
        if self.closed:
            return
        now_matches = self.matches(change.obj)
        if change.type == "DELETED":
            kind = "DELETED" if now_matches else None
        elif change.type == "ADDED":
            kind = "ADDED" if now_matches else None
        else:
            was = self.matches(change.old)
            if was and now_matches:
                kind = "MODIFIED"
            elif now_matches:
                kind = "ADDED"
            elif was:
                kind = "DELETED"
            else:
                kind = None
        if kind:
            self.queue.put_nowait(b'{"type":"%s","object":%s}\n' % (kind.encode(), change.raw))

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.queue.put_nowait(None)


Listener = Callable[[Change], None]


class Store:
    def __init__(self, history_window: int = 10000):
        self.resource_version = 0
        self._objects: dict[str, dict[tuple[str, str], Entry]] = {}
        self._sorted_keys: dict[str, list[tuple[str, str]] | None] = {}
        self.history: deque[Change] = deque(maxlen=history_window)
        # The newest resourceVersion no longer in the history; older watches get 410.
        self.compacted_rv = 0
        self._watchers: dict[str, set[Watcher]] = {}
        self._listeners: list[Listener] = []

    # -- reading ---------------------------------------------------------------

    def _table(self, rt: ResourceType) -> dict[tuple[str, str], Entry]:
        return self._objects.setdefault(rt.plural, {})

    def get(self, rt: ResourceType, namespace: str | None, name: str) -> Obj:
        entry = self._table(rt).get((namespace or "", name))
        if entry is None:
            raise not_found(rt, name)
        return entry.obj

    def find(self, rt: ResourceType, namespace: str | None, name: str) -> Obj | None:
        entry = self._table(rt).get((namespace or "", name))
        return entry.obj if entry else None

    def raw(self, rt: ResourceType, namespace: str | None, name: str) -> bytes:
        entry = self._table(rt).get((namespace or "", name))
        if entry is None:
            raise not_found(rt, name)
        return entry.raw

    def objects(self, rt: ResourceType) -> Iterable[Obj]:
        return [entry.obj for entry in self._table(rt).values()]

    def count(self, rt: ResourceType) -> int:
        return len(self._table(rt))

    def _keys_in_order(self, rt: ResourceType) -> list[tuple[str, str]]:
        # etcd returns keys in /registry/<plural>/<namespace>/<name> order.
        keys = self._sorted_keys.get(rt.plural)
        if keys is None:
            keys = sorted(self._table(rt))
            self._sorted_keys[rt.plural] = keys
        return keys

    def list(
        self,
        rt: ResourceType,
        namespace: str | None,
        labels: LabelSelector,
        fields: FieldSelector,
        limit: int = 0,
        continue_token: str = "",
    ) -> tuple[list[bytes], int, str, int | None]:
        """Matching objects' bytes, the list's resourceVersion, the next continue token
        and the remaining item count (None when there is no next page)."""
        list_rv = self.resource_version
        start_after: tuple[str, str] | None = None
        if continue_token:
            try:
                token = json.loads(base64.b64decode(continue_token))
                list_rv = int(token["rv"])
                start_after = (token["start"][0], token["start"][1])
            except (ValueError, KeyError, TypeError, IndexError) as err:
                raise ApiError(400, "BadRequest", "continue key is not valid") from err
            if list_rv < self.compacted_rv:
                raise gone(
                    "The provided continue parameter is too old to display a consistent "
                    "list result. You can start a new list without the continue parameter."
                )
        table = self._table(rt)
        node_name = fields.exact_value("spec.nodeName") if rt.plural == "pods" else None
        items: list[bytes] = []
        keys = self._keys_in_order(rt)
        start = bisect.bisect_right(keys, start_after) if start_after is not None else 0
        if namespace is None and labels.empty and fields.empty:
            # Unfiltered (an informer's list): a page costs its own size, not the table's,
            # and the remaining count is arithmetic, so 150,000 pods list in linear time.
            end = min(len(keys), start + limit) if limit else len(keys)
            items = [table[key].raw for key in keys[start:end]]
            if limit and end < len(keys) and items:
                token = base64.b64encode(dumps({"rv": list_rv, "start": list(keys[end - 1])}))
                return items, list_rv, token.decode(), len(keys) - end
            return items, list_rv, "", None
        keys = keys[start:]
        last_key = None
        matched_after_limit = 0
        for key in keys:
            if namespace is not None and key[0] != namespace:
                continue
            entry = table[key]
            obj = entry.obj
            if node_name is not None and obj.get("spec", {}).get("nodeName", "") != node_name:
                continue
            if not labels.matches(obj.get("metadata", {}).get("labels")):
                continue
            if not fields.matches(obj):
                continue
            if limit and len(items) >= limit:
                matched_after_limit += 1
                continue
            items.append(entry.raw)
            last_key = key
        token = ""
        remaining = None
        if limit and matched_after_limit and last_key is not None:
            token = base64.b64encode(dumps({"rv": list_rv, "start": list(last_key)})).decode()
            remaining = matched_after_limit
        return items, list_rv, token, remaining

    # -- writing ---------------------------------------------------------------

    def subscribe(self, listener: Listener) -> None:
        self._listeners.append(listener)

    def _commit(self, rt: ResourceType, kind: str, obj: Obj, old: Obj | None) -> Obj:
        self.resource_version += 1
        obj["metadata"]["resourceVersion"] = str(self.resource_version)
        raw = dumps(obj)
        key = (obj["metadata"].get("namespace", ""), obj["metadata"]["name"])
        table = self._table(rt)
        if kind == "DELETED":
            table.pop(key, None)
            self._sorted_keys[rt.plural] = None
        else:
            if key not in table:
                self._sorted_keys[rt.plural] = None
            table[key] = Entry(obj, raw)
        change = Change(self.resource_version, rt.plural, kind, obj, raw, old)
        if len(self.history) == self.history.maxlen:
            self.compacted_rv = self.history[0].resource_version
        self.history.append(change)
        for watcher in list(self._watchers.get(rt.plural, ())):
            watcher.offer(change)
        for listener in self._listeners:
            listener(change)
        return obj

    def create(self, rt: ResourceType, namespace: str | None, obj: Obj) -> Obj:
        obj = copy.deepcopy(obj)
        meta = obj.setdefault("metadata", {})
        if not meta.get("name") and meta.get("generateName"):
            meta["name"] = meta["generateName"] + uuid.uuid4().hex[:5]
        name = meta.get("name")
        if not name:
            raise ApiError(
                422,
                "Invalid",
                f'{rt.kind} in version "{rt.version}" cannot be handled as a {rt.kind}: '
                "name or generateName is required",
            )
        if rt.namespaced:
            meta["namespace"] = namespace or meta.get("namespace") or "default"
        else:
            meta.pop("namespace", None)
        if (meta.get("namespace", ""), name) in self._table(rt):
            group_plural = f"{rt.plural}.{rt.group}" if rt.group else rt.plural
            raise ApiError(
                409,
                "AlreadyExists",
                f'{group_plural} "{name}" already exists',
                {"name": name, "group": rt.group, "kind": rt.plural},
            )
        obj["apiVersion"] = rt.api_version
        obj["kind"] = rt.kind
        # The API path gives every new object its uid before admission (a Job's selector
        # names it); objects made here without one get theirs now.
        meta["uid"] = meta.get("uid") or str(uuid.uuid4())
        meta["creationTimestamp"] = now_rfc3339()
        meta.pop("deletionTimestamp", None)
        meta.pop("resourceVersion", None)
        meta["generation"] = 1
        return self._commit(rt, "ADDED", obj, None)

    def insert(self, rt: ResourceType, obj: Obj) -> Obj:
        """Add a complete, trusted object without copying it: the bulk path kubesim's
        generator uses to load 50,000 pods quickly. It still takes a resourceVersion."""
        meta = obj["metadata"]
        meta.setdefault("uid", str(uuid.uuid4()))
        meta.setdefault("creationTimestamp", now_rfc3339())
        obj["apiVersion"], obj["kind"] = rt.api_version, rt.kind
        return self._commit(rt, "ADDED", obj, None)

    def replace(
        self,
        rt: ResourceType,
        namespace: str | None,
        name: str,
        obj: Obj,
        subresource: str | None = None,
        check_version: bool = True,
    ) -> Obj:
        """Update an object; `subresource="status"` changes only its status, a main
        update only the rest (for types with a status subresource), and "all" (for
        kubesim's own controllers) both at once."""
        current = self.get(rt, namespace, name)
        new = copy.deepcopy(obj)
        meta = new.setdefault("metadata", {})
        wanted_rv = meta.get("resourceVersion")
        if check_version and wanted_rv and wanted_rv != current["metadata"]["resourceVersion"]:
            group_plural = f"{rt.plural}.{rt.group}" if rt.group else rt.plural
            raise ApiError(
                409,
                "Conflict",
                f'Operation cannot be fulfilled on {group_plural} "{name}": the object has '
                "been modified; please apply your changes to the latest version and try again",
                {"name": name, "group": rt.group, "kind": rt.plural},
            )
        if meta.get("name", name) != name:
            raise ApiError(
                400,
                "BadRequest",
                f"the name of the object ({meta.get('name')}) does not match the name on "
                f"the URL ({name})",
            )
        if subresource == "status":
            merged = copy.deepcopy(current)
            merged["status"] = new.get("status", {})
            new = merged
        elif rt.has_status and subresource != "all":
            new["status"] = copy.deepcopy(current.get("status", {}))
        # Server-owned metadata cannot be changed by a client.
        for owned in (
            "uid",
            "creationTimestamp",
            "deletionTimestamp",
            "deletionGracePeriodSeconds",
            "namespace",
        ):
            if owned in current["metadata"]:
                new["metadata"][owned] = current["metadata"][owned]
            else:
                new["metadata"].pop(owned, None)
        new["metadata"]["name"] = name
        new["apiVersion"] = rt.api_version
        new["kind"] = rt.kind
        generation = current["metadata"].get("generation", 1)
        if subresource != "status" and new.get("spec") != current.get("spec"):
            generation += 1
        new["metadata"]["generation"] = generation
        if current["metadata"].get("deletionTimestamp") and not new["metadata"].get("finalizers"):
            # A terminating object whose last finalizer is removed goes away; a pod only once
            # its kubelet is done with it (its grace period cut to zero).
            if rt.plural != "pods" or new["metadata"].get("deletionGracePeriodSeconds") == 0:
                return self._commit(rt, "DELETED", new, current)
        return self._commit(rt, "MODIFIED", new, current)

    def mark_terminating(self, rt: ResourceType, obj: Obj, grace_seconds: int) -> Obj:
        new = copy.deepcopy(obj)
        meta = new["metadata"]
        if not meta.get("deletionTimestamp"):
            meta["deletionTimestamp"] = now_rfc3339()
        meta["deletionGracePeriodSeconds"] = grace_seconds
        return self._commit(rt, "MODIFIED", new, obj)

    def remove(self, rt: ResourceType, namespace: str | None, name: str) -> Obj:
        current = self.get(rt, namespace, name)
        return self._commit(rt, "DELETED", copy.deepcopy(current), current)

    # -- watching --------------------------------------------------------------

    def watch(
        self,
        rt: ResourceType,
        namespace: str | None,
        labels: LabelSelector,
        fields: FieldSelector,
        resource_version: str,
    ) -> Watcher:
        """Open a watch. `resource_version` "" or "0" starts with the current state as
        ADDED events; a number replays the history after it, or raises 410 Gone."""
        watcher = Watcher(rt, namespace, labels, fields)
        if resource_version in ("", "0"):
            for key in self._keys_in_order(rt):
                entry = self._table(rt)[key]
                if watcher.matches(entry.obj):
                    watcher.queue.put_nowait(b'{"type":"ADDED","object":%s}\n' % entry.raw)
        else:
            try:
                since = int(resource_version)
            except ValueError as err:
                raise ApiError(
                    400, "BadRequest", f"invalid resource version: {resource_version}"
                ) from err
            if since < self.compacted_rv:
                raise gone(f"too old resource version: {since} ({self.compacted_rv + 1})")
            for change in self.history:
                if change.resource_version > since and change.plural == rt.plural:
                    watcher.offer(change)
        self._watchers.setdefault(rt.plural, set()).add(watcher)
        return watcher

    def unwatch(self, watcher: Watcher) -> None:
        self._watchers.get(watcher.rt.plural, set()).discard(watcher)
        watcher.close()

    def drop_watches(self) -> int:
        """Close every open watch stream (a fault, or an apiserver restart)."""
        dropped = 0
        for watchers in self._watchers.values():
            for watcher in list(watchers):
                watcher.close()
                dropped += 1
            watchers.clear()
        return dropped

    def compact(self) -> None:
        """Forget the history, so that every client watching from a version it already
        has gets 410 Gone and must relist (the version moves on past all of them)."""
        self.resource_version += 1
        self.compacted_rv = self.resource_version
        self.history.clear()
