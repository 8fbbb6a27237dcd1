"""kubesim's garbage collector: dependents follow their owners, as kube-controller-manager's
garbage collector does it with ``metadata.ownerReferences``.

- Background deletion (the default for most kinds): the owner goes at once; its dependents
  are deleted afterwards. A dependent with another owner that still exists keeps living, its
  dangling reference removed.
- Foreground: the owner stays, with a deletionTimestamp and the ``foregroundDeletion``
  finalizer, until every dependent that blocks it (``blockOwnerDeletion``) is gone.
- Orphan: the owner gets the ``orphan`` finalizer; the collector removes the owner from its
  dependents' ownerReferences, then the finalizer, and the owner goes.

Work is queued from the store's change feed and done on the event loop's next turn (a store
listener must not write while the store is notifying). Only objects that carry
ownerReferences are indexed, so the generated population costs a dict lookup per write.
"""

from __future__ import annotations

import asyncio
import copy
import logging
from typing import TYPE_CHECKING, Any

from .resources import BY_KIND, BY_PLURAL
from .store import Change

if TYPE_CHECKING:
    from .sim import KubeSim

log = logging.getLogger("kubesim.garbage")

FOREGROUND = "foregroundDeletion"
ORPHAN = "orphan"
PROPAGATION_POLICIES = ("Background", "Foreground", "Orphan")

ObjectKey = tuple[str, str, str]  # (plural, namespace or "", name)


def owner_uids(meta: dict[str, Any]) -> tuple[str, ...]:
    return tuple(ref.get("uid", "") for ref in meta.get("ownerReferences") or ())


def controller_of(meta: dict[str, Any], kind: str) -> dict[str, Any] | None:
    """The ownerReference that controls the object, if it is of ``kind``."""
    for ref in meta.get("ownerReferences") or ():
        if ref.get("controller") and ref.get("kind") == kind:
            return ref
    return None


class GarbageCollector:
    def __init__(self, sim: KubeSim):
        self.sim = sim
        self.store = sim.store
        self._dependents: dict[str, set[ObjectKey]] = {}  # owner uid -> dependents
        self._owners: dict[ObjectKey, tuple[str, ...]] = {}  # dependent -> owner uids
        self._deleting_owners: dict[str, ObjectKey] = {}  # uid -> owner with our finalizer
        self._check_dependents: set[ObjectKey] = set()
        self._check_owners: set[ObjectKey] = set()
        self._scheduled = False
        self.store.subscribe(self.on_change)

    # -- the index -----------------------------------------------------------------

    def on_change(self, change: Change) -> None:
        meta = change.obj["metadata"]
        refs = meta.get("ownerReferences")
        if refs or self._owners:  # the common write (no owners anywhere) stops here
            key = (change.plural, meta.get("namespace", ""), meta["name"])
            if refs or key in self._owners:
                self._owner_changed(change, key, meta)
        if change.type == "DELETED":
            uid = meta.get("uid", "")
            self._deleting_owners.pop(uid, None)
            if uid in self._dependents:
                self._check_dependents |= self._dependents[uid]
                self._schedule()
        elif meta.get("deletionTimestamp"):
            finalizers = meta.get("finalizers") or ()
            if FOREGROUND in finalizers or ORPHAN in finalizers:
                key = (change.plural, meta.get("namespace", ""), meta["name"])
                self._deleting_owners[meta.get("uid", "")] = key
                self._check_owners.add(key)
                self._schedule()

    def _owner_changed(self, change: Change, key: ObjectKey, meta: dict) -> None:
        self._index(key, () if change.type == "DELETED" else owner_uids(meta))
        for owner in self._owners.get(key, ()) or owner_uids(meta):
            if owner in self._deleting_owners:  # a foreground owner may be free now
                self._check_owners.add(self._deleting_owners[owner])
                self._schedule()

    def _index(self, key: ObjectKey, owners: tuple[str, ...]) -> None:
        for uid in self._owners.pop(key, ()):
            dependents = self._dependents.get(uid)
            if dependents is not None:
                dependents.discard(key)
                if not dependents:
                    del self._dependents[uid]
        if owners:
            self._owners[key] = owners
            for uid in owners:
                self._dependents.setdefault(uid, set()).add(key)

    def dependents_of(self, uid: str) -> list[dict]:
        found = []
        for plural, namespace, name in sorted(self._dependents.get(uid, ())):
            rt = _by_plural(plural)
            obj = self.store.find(rt, namespace or None, name) if rt else None
            if obj is not None:
                found.append(obj)
        return found

    # -- the work ------------------------------------------------------------------

    def _schedule(self) -> None:
        if self._scheduled:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return  # objects loaded before the loop runs; start() catches up
        self._scheduled = True
        loop.call_soon(self._run)

    def start(self) -> None:
        if self._check_owners or self._check_dependents:
            self._schedule()

    def _run(self) -> None:
        self._scheduled = False
        owners, self._check_owners = self._check_owners, set()
        dependents, self._check_dependents = self._check_dependents, set()
        try:
            for key in sorted(owners):
                self._process_owner(key)
            for key in sorted(dependents):
                self._process_dependent(key)
        except Exception:  # keep the emulator alive; the test will see the log
            log.exception("garbage collection failed")

    def _find(self, key: ObjectKey) -> tuple[Any, dict | None]:
        rt = _by_plural(key[0])
        return rt, (self.store.find(rt, key[1] or None, key[2]) if rt else None)

    def _owner_exists(self, namespace: str, ref: dict) -> bool:
        rt = BY_KIND.get((ref.get("apiVersion"), ref.get("kind")))
        if rt is None:
            return False
        owner = self.store.find(rt, namespace if rt.namespaced else None, ref.get("name", ""))
        return owner is not None and owner["metadata"].get("uid") == ref.get("uid")

    def _process_dependent(self, key: ObjectKey) -> None:
        rt, obj = self._find(key)
        if obj is None or obj["metadata"].get("deletionTimestamp"):
            return
        refs = obj["metadata"].get("ownerReferences") or []
        alive = [ref for ref in refs if self._owner_exists(key[1], ref)]
        if not alive:
            self.sim.delete_object(rt, obj, policy="Background")
        elif len(alive) < len(refs):
            self._set_owner_references(rt, obj, alive)

    def _process_owner(self, key: ObjectKey) -> None:
        rt, owner = self._find(key)
        if owner is None or not owner["metadata"].get("deletionTimestamp"):
            return
        uid = owner["metadata"]["uid"]
        finalizers = owner["metadata"].get("finalizers") or []
        dependents = self.dependents_of(uid)
        if ORPHAN in finalizers:
            for dependent in dependents:
                refs = dependent["metadata"].get("ownerReferences") or []
                self._set_owner_references(
                    _by_plural_of(dependent), dependent, [r for r in refs if r.get("uid") != uid]
                )
            self._drop_finalizer(rt, owner, ORPHAN)
            return
        if FOREGROUND in finalizers:
            blocking = 0
            for dependent in dependents:
                ref = next(
                    r for r in dependent["metadata"].get("ownerReferences") or [] if r["uid"] == uid
                )
                if ref.get("blockOwnerDeletion"):
                    blocking += 1
                if not dependent["metadata"].get("deletionTimestamp"):
                    self.sim.delete_object(_by_plural_of(dependent), dependent, policy="Foreground")
            if not blocking:
                self._drop_finalizer(rt, owner, FOREGROUND)

    def _set_owner_references(self, rt, obj: dict, refs: list[dict]) -> None:
        meta = obj["metadata"]
        new = copy.deepcopy(obj)
        if refs:
            new["metadata"]["ownerReferences"] = refs
        else:
            new["metadata"].pop("ownerReferences", None)
        self.store.replace(rt, meta.get("namespace"), meta["name"], new, "all", check_version=False)

    def _drop_finalizer(self, rt, obj: dict, finalizer: str) -> None:
        meta = obj["metadata"]
        current = self.store.find(rt, meta.get("namespace"), meta["name"])
        if current is None:
            return
        new = copy.deepcopy(current)
        new["metadata"]["finalizers"] = [
            f for f in new["metadata"].get("finalizers") or [] if f != finalizer
        ]
        self.store.replace(rt, meta.get("namespace"), meta["name"], new, "all", check_version=False)


def _by_plural(plural: str):
    return BY_PLURAL.get(plural)


def _by_plural_of(obj: dict):
    return BY_KIND[(obj["apiVersion"], obj["kind"])]


__all__ = ["FOREGROUND", "ORPHAN", "PROPAGATION_POLICIES", "GarbageCollector", "controller_of"]
