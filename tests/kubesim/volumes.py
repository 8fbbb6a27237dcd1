"""kubesim's storage: PersistentVolumeClaims bound to PersistentVolumes, as the controllers
of a real cluster do it.

- DefaultStorageClass admission: a new claim that names no class (the field absent, not
  ``""``) gets the default class, the newest one annotated
  ``storageclass.kubernetes.io/is-default-class: "true"``; a claim created before any default
  existed gets it later (retroactive default class assignment).
- The PV controller (k8s.io/kubernetes pkg/controller/volume/persistentvolume): a Pending claim
  binds to the smallest Available volume that fits (class, access modes, volume mode, label
  selector, capacity >= request), or one pre-bound to it either way round. With no such volume
  a claim with a class is provisioned (kubesim plays the external provisioner: a volume
  ``pvc-<claim uid>`` of the requested size, bound at once); a class missing or a claim
  without any class leaves it Pending with the controller's event. Volumes go Available ->
  Bound -> Released (or are deleted, with reclaim policy Delete, when their claim goes).
- WaitForFirstConsumer classes: the claim waits Pending until the scheduler places a pod that
  uses it; the scheduler then binds or provisions for that node (``bind_for_node``).
- Storage object in use protection: claims and volumes carry the kubernetes.io/pvc-protection
  and pv-protection finalizers; a deleted claim stays Terminating while a scheduled pod uses
  it, a deleted volume while it is Bound.

The matching and the scheduler's VolumeBinding checks are pure functions; ``VolumeController``
applies them to the store.
"""

from __future__ import annotations

import asyncio
import copy
import logging
from collections.abc import Iterable, Mapping
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from .filters import (
    UNBOUND_IMMEDIATE_CLAIMS,
    VOLUME_BIND_CONFLICT,
    VOLUME_MISSING,
    VOLUME_NODE_CONFLICT,
    Rejection,
    claim_names,
    required_node_affinity,
)
from .quantity import QuantityError, decode_quantity
from .resources import BY_PATH
from .selectors import SelectorError, label_selector_from_object
from .store import Change

if TYPE_CHECKING:
    from .sim import KubeSim

log = logging.getLogger("kubesim.volumes")

CLAIMS = BY_PATH[("", "v1", "persistentvolumeclaims")]
VOLUMES = BY_PATH[("", "v1", "persistentvolumes")]
CLASSES = BY_PATH[("storage.k8s.io", "v1", "storageclasses")]
PODS = BY_PATH[("", "v1", "pods")]

DEFAULT_CLASS_ANNOTATION = "storageclass.kubernetes.io/is-default-class"
BETA_CLASS_ANNOTATION = "volume.beta.kubernetes.io/storage-class"
BIND_COMPLETED = "pv.kubernetes.io/bind-completed"
BOUND_BY_CONTROLLER = "pv.kubernetes.io/bound-by-controller"
PROVISIONED_BY = "pv.kubernetes.io/provisioned-by"
STORAGE_PROVISIONER = "volume.kubernetes.io/storage-provisioner"
BETA_STORAGE_PROVISIONER = "volume.beta.kubernetes.io/storage-provisioner"
SELECTED_NODE = "volume.kubernetes.io/selected-node"
CLAIM_PROTECTION = "kubernetes.io/pvc-protection"
VOLUME_PROTECTION = "kubernetes.io/pv-protection"
NO_PROVISIONER = "kubernetes.io/no-provisioner"
CONTROLLER = "persistentvolume-controller"

Obj = dict[str, Any]


# -- reading claims, volumes and classes --------------------------------------------------------


def _meta(obj: Mapping[str, Any]) -> Mapping[str, Any]:
    return obj.get("metadata") or {}


def _annotations(obj: Mapping[str, Any]) -> Mapping[str, str]:
    return _meta(obj).get("annotations") or {}


def claim_class(claim: Mapping[str, Any]) -> str:
    """``GetPersistentVolumeClaimClass``: the beta annotation wins over the field."""
    annotations = _annotations(claim)
    if BETA_CLASS_ANNOTATION in annotations:
        return annotations[BETA_CLASS_ANNOTATION]
    return (claim.get("spec") or {}).get("storageClassName") or ""


def volume_class(volume: Mapping[str, Any]) -> str:
    annotations = _annotations(volume)
    if BETA_CLASS_ANNOTATION in annotations:
        return annotations[BETA_CLASS_ANNOTATION]
    return (volume.get("spec") or {}).get("storageClassName") or ""


def _storage(resources: object) -> Decimal:
    try:
        return decode_quantity((resources or {}).get("storage", "0"))  # type: ignore[union-attr]
    except (QuantityError, AttributeError):
        return Decimal(0)


def claim_request(claim: Mapping[str, Any]) -> Decimal:
    return _storage(((claim.get("spec") or {}).get("resources") or {}).get("requests"))


def volume_capacity(volume: Mapping[str, Any]) -> Decimal:
    return _storage((volume.get("spec") or {}).get("capacity"))


def is_fully_bound(claim: Mapping[str, Any]) -> bool:
    """What the scheduler counts as bound: a volume name and the controller's mark."""
    return bool((claim.get("spec") or {}).get("volumeName")) and BIND_COMPLETED in _annotations(
        claim
    )


def is_default_class(storage_class: Mapping[str, Any]) -> bool:
    return _annotations(storage_class).get(DEFAULT_CLASS_ANNOTATION) == "true"


def default_class(classes: Iterable[Mapping[str, Any]]) -> Mapping[str, Any] | None:
    """The default class; with several, the newest (then the first by name) wins."""
    defaults = [c for c in classes if is_default_class(c)]
    if not defaults:
        return None
    defaults.sort(key=lambda c: _meta(c).get("name", ""))
    defaults.sort(key=lambda c: _meta(c).get("creationTimestamp", ""), reverse=True)
    return defaults[0]


def is_delay_binding(claim: Mapping[str, Any], classes: Mapping[str, Mapping[str, Any]]) -> bool:
    storage_class = classes.get(claim_class(claim))
    return bool(storage_class) and storage_class.get("volumeBindingMode") == "WaitForFirstConsumer"


def volume_bound_to(volume: Mapping[str, Any], claim: Mapping[str, Any]) -> bool:
    """``IsVolumeBoundToClaim``: the volume's claimRef names the claim (and its uid, if set)."""
    ref = (volume.get("spec") or {}).get("claimRef")
    if not ref:
        return False
    meta = _meta(claim)
    if ref.get("name") != meta.get("name") or ref.get("namespace") != meta.get("namespace"):
        return False
    return not ref.get("uid") or ref.get("uid") == meta.get("uid")


def _volume_mode(obj: Mapping[str, Any]) -> str:
    return (obj.get("spec") or {}).get("volumeMode") or "Filesystem"


def access_modes_fit(claim: Mapping[str, Any], volume: Mapping[str, Any]) -> bool:
    wanted = set((claim.get("spec") or {}).get("accessModes") or [])
    return wanted <= set((volume.get("spec") or {}).get("accessModes") or [])


def volume_fits_node(volume: Mapping[str, Any], node: Mapping[str, Any]) -> bool:
    required = ((volume.get("spec") or {}).get("nodeAffinity") or {}).get("required")
    if required is None:
        return True
    spec = {
        "affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": required}}
    }
    return required_node_affinity(spec).matches(node)


def find_matching_volume(
    claim: Mapping[str, Any],
    volumes: Iterable[Mapping[str, Any]],
    node: Mapping[str, Any] | None = None,
    delay_binding: bool = False,
) -> Mapping[str, Any] | None:
    """``FindMatchingVolume``: a volume pre-bound to the claim, else the smallest Available
    one of the claim's class that satisfies it. ``node`` is the scheduler's question (the
    volume must be usable there); without it, a delayed-binding claim only takes a volume
    pre-bound to it."""
    request = claim_request(claim)
    wanted_class = claim_class(claim)
    try:
        selector = (
            label_selector_from_object((claim.get("spec") or {}).get("selector"))
            if (claim.get("spec") or {}).get("selector") is not None
            else None
        )
    except SelectorError:
        return None
    best, best_size = None, None
    for volume in volumes:
        pre_bound = volume_bound_to(volume, claim)
        if (volume.get("spec") or {}).get("claimRef") and not pre_bound:
            continue
        size = volume_capacity(volume)
        if size < request or _volume_mode(volume) != _volume_mode(claim):
            continue
        if _meta(volume).get("deletionTimestamp"):
            continue
        fits_node = node is None or volume_fits_node(volume, node)
        if pre_bound:
            return volume if fits_node else None
        if node is None and delay_binding:
            continue
        if (volume.get("status") or {}).get("phase") != "Available":
            continue
        if selector is not None and not selector.matches(_meta(volume).get("labels")):
            continue
        if volume_class(volume) != wanted_class or not fits_node:
            continue
        if not access_modes_fit(claim, volume):
            continue
        if best_size is None or size < best_size:
            best, best_size = volume, size
    return best


def can_provision_on(storage_class: Mapping[str, Any] | None, node: Mapping[str, Any]) -> bool:
    """Whether the class's provisioner can make a volume reachable from the node."""
    if not storage_class or storage_class.get("provisioner") in (None, "", NO_PROVISIONER):
        return False
    topologies = storage_class.get("allowedTopologies") or []
    if not topologies:
        return True
    labels = _meta(node).get("labels") or {}
    return any(
        all(
            labels.get(expression.get("key")) in (expression.get("values") or [])
            for expression in term.get("matchLabelExpressions") or []
        )
        for term in topologies
    )


# -- the scheduler's VolumeBinding plugin ----------------------------------------------------------


def volume_binding_prefilter(
    spec: Mapping[str, Any],
    claims: Mapping[str, Mapping[str, Any] | None],
    classes: Mapping[str, Mapping[str, Any]],
) -> tuple[Rejection | None, list[Mapping[str, Any]], list[Mapping[str, Any]]]:
    """(rejection, bound claims, claims waiting for a node) for a pod's claims.

    ``claims`` maps each claim name the pod uses to the claim, or None when it does not exist.
    """
    bound, delayed, unbound_immediate = [], [], False
    for name in claim_names(spec):
        claim = claims.get(name)
        if claim is None:
            return Rejection((f'persistentvolumeclaim "{name}" not found',)), [], []
        if (claim.get("status") or {}).get("phase") == "Lost":
            volume_name = (claim.get("spec") or {}).get("volumeName", "")
            message = f'persistentvolumeclaim "{name}" bound to non-existent persistentvolume "{volume_name}"'
            return Rejection((message,)), [], []
        if _meta(claim).get("deletionTimestamp"):
            return Rejection((f'persistentvolumeclaim "{name}" is being deleted',)), [], []
    for name in claim_names(spec):
        claim = claims[name]
        if is_fully_bound(claim):  # type: ignore[arg-type]
            bound.append(claim)
        elif is_delay_binding(claim, classes):  # type: ignore[arg-type]
            delayed.append(claim)
        else:
            unbound_immediate = True
    if unbound_immediate:
        return Rejection((UNBOUND_IMMEDIATE_CLAIMS,)), [], []
    return None, bound, delayed  # type: ignore[return-value]


def volume_binding_filter(
    node: Mapping[str, Any],
    bound: list[Mapping[str, Any]],
    delayed: list[Mapping[str, Any]],
    volumes: Mapping[str, Mapping[str, Any]],
    classes: Mapping[str, Mapping[str, Any]],
) -> Rejection | None:
    """Whether the pod's volumes can be used on the node (``FindPodVolumes``)."""
    reasons = []
    for claim in bound:
        volume = volumes.get((claim.get("spec") or {}).get("volumeName", ""))
        if volume is None:
            return Rejection((VOLUME_MISSING,))
        if not volume_fits_node(volume, node) and VOLUME_NODE_CONFLICT not in reasons:
            reasons.append(VOLUME_NODE_CONFLICT)
    taken: set[str] = set()  # one volume per claim
    for claim in delayed:
        free = [volume for name, volume in volumes.items() if name not in taken]
        volume = find_matching_volume(claim, free, node=node, delay_binding=True)
        if volume is not None:
            taken.add(volume["metadata"]["name"])
        elif not can_provision_on(classes.get(claim_class(claim)), node):
            if VOLUME_BIND_CONFLICT not in reasons:
                reasons.append(VOLUME_BIND_CONFLICT)
    return Rejection(tuple(reasons)) if reasons else None


# -- objects the controllers write --------------------------------------------------------------


def claim_ref(claim: Mapping[str, Any]) -> dict[str, str]:
    meta = _meta(claim)
    return {
        "kind": "PersistentVolumeClaim",
        "namespace": meta.get("namespace", ""),
        "name": meta.get("name", ""),
        "uid": meta.get("uid", ""),
        "apiVersion": "v1",
        "resourceVersion": meta.get("resourceVersion", ""),
    }


def provisioned_volume(
    claim: Mapping[str, Any], storage_class: Mapping[str, Any], node_name: str | None = None
) -> Obj:
    """The volume a CSI provisioner makes for a claim: named after the claim's uid, the size
    and access modes the claim asked for, the class's reclaim policy."""
    spec = claim.get("spec") or {}
    provisioner = storage_class["provisioner"]
    name = f"pvc-{_meta(claim).get('uid', '')}"
    volume: Obj = {
        "metadata": {
            "name": name,
            "annotations": {PROVISIONED_BY: provisioner},
            "finalizers": [VOLUME_PROTECTION],
        },
        "spec": {
            "capacity": {
                "storage": ((spec.get("resources") or {}).get("requests") or {}).get("storage", "0")
            },
            "accessModes": list(spec.get("accessModes") or []),
            "claimRef": claim_ref(claim),
            "persistentVolumeReclaimPolicy": storage_class.get("reclaimPolicy") or "Delete",
            "storageClassName": claim_class(claim),
            "volumeMode": _volume_mode(claim),
            "csi": {"driver": provisioner, "volumeHandle": name},
        },
        "status": {"phase": "Pending"},
    }
    if node_name:
        volume["spec"]["nodeAffinity"] = {
            "required": {
                "nodeSelectorTerms": [
                    {
                        "matchExpressions": [
                            {
                                "key": "kubernetes.io/hostname",
                                "operator": "In",
                                "values": [node_name],
                            }
                        ]
                    }
                ]
            }
        }
    if storage_class.get("mountOptions"):
        volume["spec"]["mountOptions"] = list(storage_class["mountOptions"])
    return volume


# -- the controller -----------------------------------------------------------------------------


class VolumeController:
    """Keeps claims and volumes moving (see the module docstring). Every change to claims,
    volumes or classes asks for one reconciliation pass, run on the event loop's next turn
    (a store listener must not write while the store is notifying)."""

    def __init__(self, sim: KubeSim):
        self.sim = sim
        self.store = sim.store
        self._scheduled = False
        self._dirty = False
        self._terminating_claims = 0
        self._events: dict[tuple[str, str], tuple[str, str]] = {}  # claim -> (reason, message)
        self.store.subscribe(self.on_change)

    # -- admission (a new claim or volume) ---------------------------------------------

    def admit_new(self, kind: str, obj: Obj) -> Obj:
        """DefaultStorageClass and StorageObjectInUseProtection for a new object."""
        if kind not in ("PersistentVolumeClaim", "PersistentVolume"):
            return obj
        obj = copy.deepcopy(obj)
        meta = obj.setdefault("metadata", {})
        finalizer = CLAIM_PROTECTION if kind == "PersistentVolumeClaim" else VOLUME_PROTECTION
        finalizers = meta.setdefault("finalizers", [])
        if finalizer not in finalizers:
            finalizers.append(finalizer)
        obj["status"] = {"phase": "Pending"}
        if kind == "PersistentVolumeClaim":
            spec = obj.setdefault("spec", {})
            no_class = spec.get("storageClassName") is None
            if no_class and BETA_CLASS_ANNOTATION not in (meta.get("annotations") or {}):
                default = default_class(self.store.objects(CLASSES))
                if default is not None:
                    spec["storageClassName"] = default["metadata"]["name"]
        return obj

    # -- triggers --------------------------------------------------------------------

    def on_change(self, change: Change) -> None:
        if change.plural in ("persistentvolumeclaims", "persistentvolumes", "storageclasses"):
            if change.plural == "persistentvolumeclaims":
                self._count_terminating(change)
            self.request_reconcile()
        elif change.plural == "pods" and self._terminating_claims:
            self.request_reconcile()  # a pod going away may release a deleted claim

    def _count_terminating(self, change: Change) -> None:
        was = bool(change.old and _meta(change.old).get("deletionTimestamp"))
        now = change.type != "DELETED" and bool(_meta(change.obj).get("deletionTimestamp"))
        self._terminating_claims += int(now) - int(was)

    def request_reconcile(self) -> None:
        self._dirty = True
        if self._scheduled:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return  # objects loaded before the event loop runs: start() catches up
        self._scheduled = True
        loop.call_soon(self._run)

    def start(self) -> None:
        if self._dirty:
            self.request_reconcile()

    def _run(self) -> None:
        self._scheduled = False
        self._dirty = False
        try:
            self.reconcile()
        except Exception:  # keep the emulator alive; the test will see the log
            log.exception("volume reconciliation failed")

    # -- one pass ----------------------------------------------------------------------

    def _classes(self) -> dict[str, Obj]:
        return {c["metadata"]["name"]: c for c in self.store.objects(CLASSES)}

    def reconcile(self) -> None:
        classes = self._classes()
        for claim in sorted(self.store.objects(CLAIMS), key=lambda c: _meta(c).get("name", "")):
            current = self.store.find(
                CLAIMS, claim["metadata"]["namespace"], claim["metadata"]["name"]
            )
            if current is not None:
                self._sync_claim(current, classes)
        for volume in list(self.store.objects(VOLUMES)):
            current = self.store.find(VOLUMES, None, volume["metadata"]["name"])
            if current is not None:
                self._sync_volume(current)
        self._release_protected()

    def _sync_claim(self, claim: Obj, classes: Mapping[str, Obj]) -> None:
        meta, spec = claim["metadata"], claim.get("spec") or {}
        if meta.get("deletionTimestamp"):
            return
        if is_fully_bound(claim):
            volume = self.store.find(VOLUMES, None, spec["volumeName"])
            if volume is None:
                if (claim.get("status") or {}).get("phase") != "Lost":
                    self._write_claim_status(claim, {"phase": "Lost"})
                    self._event(
                        claim,
                        "Warning",
                        "ClaimLost",
                        "Bound claim has lost its PersistentVolume. Data on the volume is lost!",
                    )
            return
        if spec.get("volumeName"):  # pre-bound by its author to a named volume
            volume = self.store.find(VOLUMES, None, spec["volumeName"])
            if volume is not None and find_matching_volume(claim, [volume]) is not None:
                self.bind(volume, claim)
            else:
                self._pending(claim)
            return
        if spec.get("storageClassName") is None and BETA_CLASS_ANNOTATION not in (
            meta.get("annotations") or {}
        ):
            default = default_class(classes.values())
            if default is not None:  # retroactive default class assignment
                updated = copy.deepcopy(claim)
                updated["spec"]["storageClassName"] = default["metadata"]["name"]
                self.store.replace(
                    CLAIMS, meta["namespace"], meta["name"], updated, check_version=False
                )
                return
        delay = is_delay_binding(claim, classes)
        volume = find_matching_volume(claim, self.store.objects(VOLUMES), delay_binding=delay)
        if volume is not None:
            self.bind(volume, claim)
            return
        if delay and SELECTED_NODE not in (meta.get("annotations") or {}):
            self._pending(
                claim,
                (
                    "Normal",
                    "WaitForFirstConsumer",
                    "waiting for first consumer to be created before binding",
                ),
            )
            return
        class_name = claim_class(claim)
        if not class_name:
            self._pending(
                claim,
                (
                    "Normal",
                    "FailedBinding",
                    "no persistent volumes available for this claim and no storage class is set",
                ),
            )
            return
        storage_class = classes.get(class_name)
        if storage_class is None:
            message = f'storageclass.storage.k8s.io "{class_name}" not found'
            self._pending(claim, ("Warning", "ProvisioningFailed", message))
            return
        if storage_class.get("provisioner") == NO_PROVISIONER:
            self._pending(claim)
            return
        self._provision(claim, storage_class, (meta.get("annotations") or {}).get(SELECTED_NODE))

    def _provision(self, claim: Obj, storage_class: Obj, node_name: str | None) -> None:
        provisioner = storage_class["provisioner"]
        meta = claim["metadata"]
        annotations = meta.get("annotations") or {}
        if annotations.get(STORAGE_PROVISIONER) != provisioner:
            updated = copy.deepcopy(claim)
            updated["metadata"].setdefault("annotations", {}).update(
                {STORAGE_PROVISIONER: provisioner, BETA_STORAGE_PROVISIONER: provisioner}
            )
            claim = self.store.replace(
                CLAIMS, meta["namespace"], meta["name"], updated, check_version=False
            )
        volume = provisioned_volume(claim, storage_class, node_name)
        if self.store.find(VOLUMES, None, volume["metadata"]["name"]) is None:
            self.store.create(VOLUMES, None, volume)
            self._event(
                claim,
                "Normal",
                "ProvisioningSucceeded",
                f"Successfully provisioned volume {volume['metadata']['name']}",
                provisioner,
            )
        created = self.store.find(VOLUMES, None, volume["metadata"]["name"])
        current = self.store.find(CLAIMS, meta["namespace"], meta["name"])
        if created is not None and current is not None:
            self.bind(created, current)

    def bind(self, volume: Obj, claim: Obj) -> None:
        """Bind both ways: the volume's claimRef, then the claim's volumeName and status."""
        claim_meta = claim["metadata"]
        if (
            not volume_bound_to(volume, claim)
            or (volume.get("status") or {}).get("phase") != "Bound"
        ):
            updated = copy.deepcopy(volume)
            if not (updated["spec"].get("claimRef")):
                updated["metadata"].setdefault("annotations", {})[BOUND_BY_CONTROLLER] = "yes"
            updated["spec"]["claimRef"] = claim_ref(claim)
            updated["status"] = {"phase": "Bound"}
            volume = self.store.replace(
                VOLUMES, None, volume["metadata"]["name"], updated, "all", check_version=False
            )
        updated = copy.deepcopy(claim)
        annotations = updated["metadata"].setdefault("annotations", {})
        if not updated["spec"].get("volumeName"):
            annotations[BOUND_BY_CONTROLLER] = "yes"
        annotations[BIND_COMPLETED] = "yes"
        updated["spec"]["volumeName"] = volume["metadata"]["name"]
        updated["status"] = {
            "phase": "Bound",
            "accessModes": list(volume["spec"].get("accessModes") or []),
            "capacity": dict(volume["spec"].get("capacity") or {}),
        }
        self.store.replace(
            CLAIMS, claim_meta["namespace"], claim_meta["name"], updated, "all", check_version=False
        )
        self._events.pop((claim_meta["namespace"], claim_meta["name"]), None)

    def bind_for_node(self, claim: Mapping[str, Any], node: Mapping[str, Any]) -> None:
        """The scheduler placed a pod using this WaitForFirstConsumer claim on ``node``: bind
        it to a volume usable there, or have one provisioned for that node."""
        meta = claim["metadata"]
        current = self.store.find(CLAIMS, meta["namespace"], meta["name"])
        if current is None or is_fully_bound(current):
            return
        volume = find_matching_volume(
            current, self.store.objects(VOLUMES), node=node, delay_binding=True
        )
        if volume is not None:
            self.bind(volume, current)
            return
        updated = copy.deepcopy(current)
        updated["metadata"].setdefault("annotations", {})[SELECTED_NODE] = node["metadata"]["name"]
        current = self.store.replace(
            CLAIMS, meta["namespace"], meta["name"], updated, check_version=False
        )
        storage_class = self._classes().get(claim_class(current))
        if can_provision_on(storage_class, node):
            self._provision(current, storage_class, node["metadata"]["name"])  # type: ignore[arg-type]

    def _sync_volume(self, volume: Obj) -> None:
        spec = volume.get("spec") or {}
        phase = (volume.get("status") or {}).get("phase")
        ref = spec.get("claimRef")
        if not ref:
            wanted = "Available"
        else:
            claim = self.store.find(CLAIMS, ref.get("namespace"), ref.get("name") or "")
            if claim is not None and volume_bound_to(volume, claim):
                bound = (claim.get("spec") or {}).get("volumeName") == volume["metadata"]["name"]
                wanted = "Bound" if bound else "Available"
            elif not ref.get("uid"):
                wanted = "Available"  # pre-bound to a claim that does not exist yet
            else:
                wanted = "Released"
        if wanted == "Released" and spec.get("persistentVolumeReclaimPolicy") == "Delete":
            self.store.remove(VOLUMES, None, volume["metadata"]["name"])
            return
        if phase != wanted and not volume["metadata"].get("deletionTimestamp"):
            updated = copy.deepcopy(volume)
            updated["status"] = {"phase": wanted}
            self.store.replace(
                VOLUMES, None, volume["metadata"]["name"], updated, "status", check_version=False
            )

    def _release_protected(self) -> None:
        if self._terminating_claims:
            for claim in list(self.store.objects(CLAIMS)):
                meta = claim["metadata"]
                if (
                    meta.get("deletionTimestamp")
                    and CLAIM_PROTECTION in (meta.get("finalizers") or [])
                    and not self._claim_in_use(claim)
                ):
                    self._drop_finalizer(CLAIMS, claim, CLAIM_PROTECTION)
        for volume in list(self.store.objects(VOLUMES)):
            meta = volume["metadata"]
            if (
                meta.get("deletionTimestamp")
                and VOLUME_PROTECTION in (meta.get("finalizers") or [])
                and (volume.get("status") or {}).get("phase") != "Bound"
            ):
                self._drop_finalizer(VOLUMES, volume, VOLUME_PROTECTION)

    def _claim_in_use(self, claim: Mapping[str, Any]) -> bool:
        """A scheduled pod in the claim's namespace names it (the kubelet may be using it)."""
        meta = claim["metadata"]
        for pod in self.store.objects(PODS):
            if pod["metadata"].get("namespace") != meta["namespace"]:
                continue
            spec = pod.get("spec") or {}
            if spec.get("nodeName") and meta["name"] in claim_names(spec):
                return True
        return False

    def _drop_finalizer(self, rt, obj: Obj, finalizer: str) -> None:
        updated = copy.deepcopy(obj)
        updated["metadata"]["finalizers"] = [
            f for f in updated["metadata"].get("finalizers") or [] if f != finalizer
        ]
        meta = obj["metadata"]
        self.store.replace(
            rt, meta.get("namespace"), meta["name"], updated, "all", check_version=False
        )

    # -- claim status and events -------------------------------------------------------

    def _write_claim_status(self, claim: Obj, status: dict) -> None:
        updated = copy.deepcopy(claim)
        updated["status"] = status
        meta = claim["metadata"]
        self.store.replace(
            CLAIMS, meta["namespace"], meta["name"], updated, "status", check_version=False
        )

    def _pending(self, claim: Obj, event: tuple[str, str, str] | None = None) -> None:
        if (claim.get("status") or {}).get("phase") != "Pending":
            self._write_claim_status(claim, {"phase": "Pending"})
        if event is not None:
            self._event(claim, *event)

    def _event(
        self, claim: Obj, type_: str, reason: str, message: str, component: str = CONTROLLER
    ) -> None:
        """Record an event about the claim once per distinct message, as its latest word."""
        key = (claim["metadata"]["namespace"], claim["metadata"]["name"])
        if self._events.get(key) == (reason, message):
            return
        self._events[key] = (reason, message)
        self.sim.record_event(claim, type_, reason, message, component)
