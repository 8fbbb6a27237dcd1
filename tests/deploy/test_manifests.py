"""helm-values/manifests/: valid Kubernetes 1.32 objects (kubernetes-validate, strict:
unknown fields are errors), created through the API of kubesim, and saying what they must:
read-only RBAC on nodes and pods for the hub's ServiceAccount (every install), and, for the
lab overlay only (manifests/lab/), ReadWriteMany SeaweedFS volumes bound to the claims
lab.yaml mounts."""

from __future__ import annotations

import kubernetes_validate
import pytest
from kubernetes_asyncio import client

from tests.conftest import api_client_for
from tests.deploy.z2jh import (
    LAB,
    LAB_MANIFESTS,
    MANIFESTS,
    all_manifests,
    get_path,
    load_yaml,
    manifest_documents,
    manifest_files,
)

K8S_VERSION = "1.32"
NAMESPACE = "jupyterhub"
CLAIMS = {
    "thinkube-notebooks": "/home/jovyan/notebooks",
    "thinkube-datasets": "/datasets",
    "thinkube-models": "/models",
}


def by_kind(kind: str) -> list[dict]:
    return [doc for _, doc in all_manifests() if doc["kind"] == kind]


def test_there_are_manifests():
    names = [str(p.relative_to(MANIFESTS)) for p in manifest_files()]
    assert names == ["hub-cluster-rbac.yaml", "lab/storage.yaml"]
    # The minimal install applies the RBAC only; storage is the lab's.
    minimal = [doc["kind"] for name, doc in all_manifests() if not name.startswith("lab/")]
    assert sorted(minimal) == ["ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding"]
    lab = sorted(doc["kind"] for _, doc in all_manifests(LAB_MANIFESTS))
    assert lab == ["PersistentVolume"] * 3 + ["PersistentVolumeClaim"] * 3


@pytest.mark.parametrize("name,doc", all_manifests(), ids=[n for n, _ in all_manifests()])
def test_manifest_is_valid_kubernetes(name, doc):
    kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def test_strict_validation_rejects_unknown_fields():
    pv = dict(by_kind("PersistentVolume")[0])
    pv["spec"] = {**pv["spec"], "acessModes": ["ReadWriteMany"]}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(pv, K8S_VERSION, strict=True)


def test_cluster_role_reads_nodes_and_pods_and_storage_classes_only():
    (role,) = by_kind("ClusterRole")
    assert role["rules"] == [
        {"apiGroups": [""], "resources": ["nodes", "pods"], "verbs": ["get", "list", "watch"]},
        # the spawner tells a shared claim waiting for its first consumer from a stuck one
        {"apiGroups": ["storage.k8s.io"], "resources": ["storageclasses"], "verbs": ["get"]},
    ]
    (binding,) = by_kind("ClusterRoleBinding")
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "ClusterRole",
        "name": role["metadata"]["name"],
    }
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": "hub", "namespace": NAMESPACE}
    ]


def test_the_jobs_role_runs_jobs_in_the_hubs_namespace_only():
    (role,) = by_kind("Role")
    assert role["metadata"]["namespace"] == NAMESPACE
    granted = {
        (r["apiGroups"][0], res): set(r["verbs"]) for r in role["rules"] for res in r["resources"]
    }
    assert granted == {
        ("batch", "jobs"): {"get", "list", "watch", "create", "delete"},
        ("", "configmaps"): {"get", "create", "delete"},
        ("", "pods"): {"delete"},
        ("", "pods/log"): {"get"},
        ("visibility.kueue.x-k8s.io", "localqueues/pendingworkloads"): {"get"},
    }
    (binding,) = by_kind("RoleBinding")
    assert binding["roleRef"]["name"] == role["metadata"]["name"]
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": "hub", "namespace": NAMESPACE}
    ]


def test_lab_storage_is_what_the_lab_overlay_mounts():
    mounted = get_path(load_yaml(LAB), "hub.config.ThinkubeSpawner.shared_volumes")
    assert {v["claim"]: v["mount_path"] for v in mounted} == CLAIMS
    volumes = {pv["metadata"]["name"]: pv for pv in by_kind("PersistentVolume")}
    claims = {pvc["metadata"]["name"]: pvc for pvc in by_kind("PersistentVolumeClaim")}
    assert set(volumes) == set(claims) == set(CLAIMS)
    for name, pvc in claims.items():
        pv = volumes[name]
        assert pvc["metadata"]["namespace"] == NAMESPACE
        assert pv["spec"]["accessModes"] == pvc["spec"]["accessModes"] == ["ReadWriteMany"]
        assert pv["spec"]["csi"]["driver"] == "seaweedfs-csi"
        assert pv["spec"]["persistentVolumeReclaimPolicy"] == "Retain"
        # Bound to each other, not to whatever a storage class would provision.
        assert pvc["spec"]["volumeName"] == name and pvc["spec"]["storageClassName"] == ""
        assert pv["spec"]["claimRef"] == {"namespace": NAMESPACE, "name": name}
        assert pv["spec"]["storageClassName"] == ""
        assert pvc["spec"]["resources"]["requests"]["storage"] == pv["spec"]["capacity"]["storage"]
    # Distinct folders and handles.
    assert len({pv["spec"]["csi"]["volumeHandle"] for pv in volumes.values()}) == 3
    assert len({pv["spec"]["csi"]["volumeAttributes"]["path"] for pv in volumes.values()}) == 3


async def create(api: client.ApiClient, doc: dict) -> dict:
    """Create one manifest through the typed client, as kubectl create would."""
    core, rbac = client.CoreV1Api(api), client.RbacAuthorizationV1Api(api)
    kind = doc["kind"]
    if kind == "ClusterRole":
        made = await rbac.create_cluster_role(doc)
    elif kind == "ClusterRoleBinding":
        made = await rbac.create_cluster_role_binding(doc)
    elif kind == "Role":
        made = await rbac.create_namespaced_role(doc["metadata"]["namespace"], doc)
    elif kind == "RoleBinding":
        made = await rbac.create_namespaced_role_binding(doc["metadata"]["namespace"], doc)
    elif kind == "PersistentVolume":
        made = await core.create_persistent_volume(doc)
    elif kind == "PersistentVolumeClaim":
        made = await core.create_namespaced_persistent_volume_claim(
            doc["metadata"]["namespace"], doc
        )
    else:
        raise AssertionError(f"no create call for {kind}")
    return api.sanitize_for_serialization(made)


async def test_kubesim_accepts_every_manifest(kubesim):
    api = await api_client_for(kubesim.kubeconfig)
    try:
        core, rbac = client.CoreV1Api(api), client.RbacAuthorizationV1Api(api)
        await core.create_namespace({"metadata": {"name": NAMESPACE}})
        for path in manifest_files():
            for doc in manifest_documents(path):
                made = await create(api, doc)
                assert made["metadata"]["name"] == doc["metadata"]["name"]
                assert made["metadata"].get("uid")
        role = await rbac.read_cluster_role("thinkube-hub-cluster-reader")
        assert role.rules[0].resources == ["nodes", "pods"]
        pvs = await core.list_persistent_volume()
        assert sorted(pv.metadata.name for pv in pvs.items) == sorted(CLAIMS)
        pvcs = await core.list_namespaced_persistent_volume_claim(NAMESPACE)
        for pvc in pvcs.items:
            assert pvc.spec.access_modes == ["ReadWriteMany"]
            assert pvc.spec.volume_name == pvc.metadata.name
    finally:
        await api.close()


async def test_kubesim_rejects_a_broken_manifest(kubesim):
    # The acceptance above means something: kubesim refuses what an apiserver refuses.
    api = await api_client_for(kubesim.kubeconfig)
    try:
        pv = by_kind("PersistentVolume")[0]
        broken = {**pv, "spec": {**pv["spec"], "capacity": {"storage": "lots"}}}
        with pytest.raises(client.ApiException) as caught:
            await create(api, broken)
        assert caught.value.status in (400, 422)
    finally:
        await api.close()


def test_kubesim_load_accepts_the_manifests(kubesim):
    created = kubesim.load([doc for _, doc in all_manifests()])
    assert len(created) == len(all_manifests())
