"""The resource types kubesim serves, and what discovery says about them."""

from __future__ import annotations

from dataclasses import dataclass, field

ALL_VERBS = ["create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"]


@dataclass(frozen=True)
class ResourceType:
    group: str  # "" for the core group
    version: str
    kind: str
    plural: str
    namespaced: bool
    short_names: tuple[str, ...] = ()
    # Field selectors the apiserver accepts for this type, beyond metadata.name/namespace.
    fields: frozenset[str] = field(default_factory=frozenset)
    has_status: bool = False
    # Served only when the emulator runs this add-on ("kueue"), as CRDs are.
    addon: str = ""

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def singular(self) -> str:
        return self.kind.lower()

    @property
    def supported_fields(self) -> set[str]:
        base = {"metadata.name"}
        if self.namespaced:
            base.add("metadata.namespace")
        return base | set(self.fields)

    def discovery_entries(self) -> list[dict]:
        entries = [
            {
                "name": self.plural,
                "singularName": self.singular,
                "namespaced": self.namespaced,
                "kind": self.kind,
                "verbs": ALL_VERBS,
                **({"shortNames": list(self.short_names)} if self.short_names else {}),
                "storageVersionHash": "",
            }
        ]
        if self.has_status:
            entries.append(
                {
                    "name": f"{self.plural}/status",
                    "singularName": "",
                    "namespaced": self.namespaced,
                    "kind": self.kind,
                    "verbs": ["get", "patch", "update"],
                }
            )
        return entries


_POD_FIELDS = frozenset(
    {
        "spec.nodeName",
        "spec.restartPolicy",
        "spec.schedulerName",
        "spec.serviceAccountName",
        "spec.hostNetwork",
        "status.phase",
        "status.podIP",
        "status.nominatedNodeName",
    }
)
_EVENT_FIELDS = frozenset(
    {
        "involvedObject.kind",
        "involvedObject.namespace",
        "involvedObject.name",
        "involvedObject.uid",
        "involvedObject.apiVersion",
        "involvedObject.resourceVersion",
        "involvedObject.fieldPath",
        "reason",
        "reportingComponent",
        "source",
        "type",
    }
)

RESOURCE_TYPES: tuple[ResourceType, ...] = (
    ResourceType(
        "", "v1", "Namespace", "namespaces", False, ("ns",), frozenset({"status.phase"}), True
    ),
    ResourceType(
        "", "v1", "Node", "nodes", False, ("no",), frozenset({"spec.unschedulable"}), True
    ),
    ResourceType("", "v1", "Pod", "pods", True, ("po",), _POD_FIELDS, True),
    ResourceType("", "v1", "Event", "events", True, ("ev",), _EVENT_FIELDS),
    ResourceType("", "v1", "Service", "services", True, ("svc",), has_status=True),
    ResourceType("", "v1", "Secret", "secrets", True, (), frozenset({"type"})),
    ResourceType("", "v1", "ConfigMap", "configmaps", True, ("cm",)),
    ResourceType("", "v1", "ServiceAccount", "serviceaccounts", True, ("sa",)),
    ResourceType(
        "", "v1", "PersistentVolumeClaim", "persistentvolumeclaims", True, ("pvc",), has_status=True
    ),
    ResourceType(
        "", "v1", "PersistentVolume", "persistentvolumes", False, ("pv",), has_status=True
    ),
    ResourceType("storage.k8s.io", "v1", "StorageClass", "storageclasses", False, ("sc",)),
    ResourceType("batch", "v1", "Job", "jobs", True, (), has_status=True),
    ResourceType("rbac.authorization.k8s.io", "v1", "ClusterRole", "clusterroles", False),
    ResourceType(
        "rbac.authorization.k8s.io", "v1", "ClusterRoleBinding", "clusterrolebindings", False
    ),
    ResourceType("rbac.authorization.k8s.io", "v1", "Role", "roles", True),
    ResourceType("rbac.authorization.k8s.io", "v1", "RoleBinding", "rolebindings", True),
    ResourceType("coordination.k8s.io", "v1", "Lease", "leases", True),
    # Kueue's custom resources (kueue.x-k8s.io, storage version v1beta2).
    ResourceType(
        "kueue.x-k8s.io",
        "v1beta2",
        "ResourceFlavor",
        "resourceflavors",
        False,
        ("flavor", "flavors", "rf"),
        addon="kueue",
    ),
    ResourceType(
        "kueue.x-k8s.io",
        "v1beta2",
        "ClusterQueue",
        "clusterqueues",
        False,
        ("cq",),
        has_status=True,
        addon="kueue",
    ),
    ResourceType(
        "kueue.x-k8s.io",
        "v1beta2",
        "LocalQueue",
        "localqueues",
        True,
        ("queue", "queues", "lq"),
        has_status=True,
        addon="kueue",
    ),
    ResourceType(
        "kueue.x-k8s.io",
        "v1beta2",
        "Workload",
        "workloads",
        True,
        ("kwl", "kueueworkload", "kueueworkloads"),
        has_status=True,
        addon="kueue",
    ),
    ResourceType(
        "kueue.x-k8s.io",
        "v1beta2",
        "WorkloadPriorityClass",
        "workloadpriorityclasses",
        False,
        ("wpc",),
        addon="kueue",
    ),
)

BY_PATH: dict[tuple[str, str, str], ResourceType] = {
    (rt.group, rt.version, rt.plural): rt for rt in RESOURCE_TYPES
}
BY_KIND: dict[tuple[str, str], ResourceType] = {
    (rt.api_version, rt.kind): rt for rt in RESOURCE_TYPES
}
BY_PLURAL: dict[str, ResourceType] = {rt.plural: rt for rt in RESOURCE_TYPES}


def served(addons: frozenset[str] | set[str] = frozenset()) -> list[ResourceType]:
    """The types an emulator with these add-ons serves."""
    return [rt for rt in RESOURCE_TYPES if not rt.addon or rt.addon in addons]


def groups(addons: frozenset[str] | set[str] = frozenset()) -> dict[str, list[ResourceType]]:
    """Named API groups (not the core group) with their resource types."""
    named: dict[str, list[ResourceType]] = {}
    for rt in served(addons):
        if rt.group:
            named.setdefault(rt.group, []).append(rt)
    return named
