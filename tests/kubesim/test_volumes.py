"""PersistentVolumeClaims, PersistentVolumes and StorageClasses: binding, provisioning, the
default class, in-use protection, and the scheduler's VolumeBinding plugin."""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest
from kubernetes_asyncio import client
from kubernetes_asyncio.client.exceptions import ApiException

from tests.conftest import api_client_for
from tests.kubesim.generator import make_node
from tests.kubesim.volumes import (
    default_class,
    find_matching_volume,
    volume_binding_filter,
    volume_binding_prefilter,
)
from tests.utils import eventually


def claim(name="data", size="1Gi", modes=("ReadWriteOnce",), storage_class=None, **spec) -> dict:
    body = {
        "metadata": {"name": name, "namespace": "default", "uid": f"uid-{name}"},
        "spec": {
            "accessModes": list(modes),
            "resources": {"requests": {"storage": size}},
            **spec,
        },
    }
    if storage_class is not None:
        body["spec"]["storageClassName"] = storage_class
    return body


def volume(
    name, size="10Gi", modes=("ReadWriteOnce",), storage_class="", phase="Available", **spec
):
    return {
        "metadata": {"name": name, "labels": {"volume": name}},
        "spec": {
            "capacity": {"storage": size},
            "accessModes": list(modes),
            "storageClassName": storage_class,
            "hostPath": {"path": f"/srv/{name}"},
            **spec,
        },
        "status": {"phase": phase},
    }


def storage_class(name, provisioner="example.com/csi", default=False, **fields) -> dict:
    body = {"metadata": {"name": name}, "provisioner": provisioner, **fields}
    if default:
        body["metadata"]["annotations"] = {"storageclass.kubernetes.io/is-default-class": "true"}
    return body


# -- matching, as pure functions --------------------------------------------------------------


def test_the_smallest_available_volume_that_satisfies_the_claim_wins():
    volumes = [
        volume("big", "100Gi"),
        volume("small", "500Mi"),  # too small
        volume("right", "2Gi"),
        volume("taken", "1Gi", phase="Bound", claimRef={"namespace": "x", "name": "y"}),
        volume("rwx-only", "1Gi", modes=("ReadWriteMany",)),
        volume("classy", "1Gi", storage_class="fast"),
        volume("blocky", "1Gi", volumeMode="Block"),
    ]
    assert find_matching_volume(claim(), volumes)["metadata"]["name"] == "right"
    assert find_matching_volume(claim(size="200Gi"), volumes) is None
    assert find_matching_volume(claim(storage_class="fast"), volumes)["metadata"]["name"] == (
        "classy"
    )
    selected = claim(selector={"matchLabels": {"volume": "big"}})
    assert find_matching_volume(selected, volumes)["metadata"]["name"] == "big"
    assert find_matching_volume(claim(selector={"matchLabels": {"volume": "x"}}), volumes) is None


def test_a_volume_pre_bound_to_the_claim_is_taken_whatever_its_phase():
    pre_bound = volume(
        "reserved",
        "5Gi",
        phase="Pending",
        claimRef={"namespace": "default", "name": "data"},
    )
    assert find_matching_volume(claim(), [volume("other", "1Gi"), pre_bound]) is pre_bound
    # a claimRef with another uid belongs to an earlier claim of the same name
    pre_bound["spec"]["claimRef"]["uid"] = "someone-else"
    assert find_matching_volume(claim(), [pre_bound]) is None


def test_delayed_binding_claims_match_per_node():
    node_a, node_b = make_node("a", 4, 16), make_node("b", 4, 16)
    local = volume(
        "local-a",
        "5Gi",
        storage_class="local",
        nodeAffinity={
            "required": {
                "nodeSelectorTerms": [
                    {
                        "matchExpressions": [
                            {"key": "kubernetes.io/hostname", "operator": "In", "values": ["a"]}
                        ]
                    }
                ]
            }
        },
    )
    waiting = claim(storage_class="local")
    assert find_matching_volume(waiting, [local], delay_binding=True) is None  # not without a node
    assert find_matching_volume(waiting, [local], node=node_a, delay_binding=True) is local
    assert find_matching_volume(waiting, [local], node=node_b, delay_binding=True) is None
    classes = {"local": storage_class("local", "kubernetes.io/no-provisioner")}
    classes["local"]["volumeBindingMode"] = "WaitForFirstConsumer"
    volumes = {"local-a": local}
    assert volume_binding_filter(node_a, [], [waiting], volumes, classes) is None
    assert volume_binding_filter(node_b, [], [waiting], volumes, classes).reasons == (
        "node(s) didn't find available persistent volumes to bind",
    )


def test_prefilter_rejects_missing_deleted_lost_and_unbound_immediate_claims():
    spec = {"volumes": [{"name": "home", "persistentVolumeClaim": {"claimName": "data"}}]}
    assert volume_binding_prefilter(spec, {"data": None}, {})[0].reasons == (
        'persistentvolumeclaim "data" not found',
    )
    deleting = claim()
    deleting["metadata"]["deletionTimestamp"] = "2025-01-01T00:00:00Z"
    assert volume_binding_prefilter(spec, {"data": deleting}, {})[0].reasons == (
        'persistentvolumeclaim "data" is being deleted',
    )
    lost = claim(volumeName="gone")
    lost["status"] = {"phase": "Lost"}
    assert volume_binding_prefilter(spec, {"data": lost}, {})[0].reasons == (
        'persistentvolumeclaim "data" bound to non-existent persistentvolume "gone"',
    )
    assert volume_binding_prefilter(spec, {"data": claim()}, {})[0].reasons == (
        "pod has unbound immediate PersistentVolumeClaims",
    )
    bound = claim(volumeName="pv-1")
    bound["metadata"]["annotations"] = {"pv.kubernetes.io/bind-completed": "yes"}
    assert volume_binding_prefilter(spec, {"data": bound}, {}) == (None, [bound], [])
    assert volume_binding_filter(make_node("a", 4, 16), [bound], [], {}, {}).reasons == (
        "node(s) unavailable due to one or more pvc(s) bound to non-existent pv(s)",
    )


def test_the_newest_default_class_is_the_default():
    old = storage_class("old", default=True)
    old["metadata"]["creationTimestamp"] = "2024-01-01T00:00:00Z"
    new = storage_class("new", default=True)
    new["metadata"]["creationTimestamp"] = "2025-01-01T00:00:00Z"
    assert default_class([old, new, storage_class("plain")]) is new
    assert default_class([storage_class("plain")]) is None


# -- through the API ----------------------------------------------------------------------------


@pytest.fixture
async def core(kubesim):
    kubesim.load([make_node("worker", 16, 64, None, 0), make_node("worker-2", 16, 64, None, 1)])
    api = await api_client_for(kubesim.kubeconfig)
    yield client.CoreV1Api(api)
    await api.close()


async def read_claim(core, name="data"):
    return await core.read_namespaced_persistent_volume_claim(name, "default")


def pod_using(name: str, claim_name: str = "data") -> dict:
    return {
        "metadata": {"name": name},
        "spec": {
            "containers": [
                {
                    "name": "c",
                    "image": "busybox",
                    "volumeMounts": [{"name": "home", "mountPath": "/home/jovyan"}],
                }
            ],
            "volumes": [{"name": "home", "persistentVolumeClaim": {"claimName": claim_name}}],
        },
    }


async def claim_phase(core, name="data"):
    return (await read_claim(core, name)).status.phase


async def failed_scheduling(kubesim, name):
    events = [e for e in kubesim.events_for("default", name) if e["reason"] == "FailedScheduling"]
    return events[-1]["message"] if events else None


async def test_crud_discovery_and_defaults_for_the_storage_kinds(kubesim, core):
    storage = client.StorageV1Api(core.api_client)
    created = await storage.create_storage_class(storage_class("standard"))
    assert created.reclaim_policy == "Delete" and created.volume_binding_mode == "Immediate"
    listed = await storage.list_storage_class()
    assert [c.metadata.name for c in listed.items] == ["standard"]
    resources = await storage.get_api_resources()
    entry = {r.name: r for r in resources.resources}["storageclasses"]
    assert not entry.namespaced and entry.short_names == ["sc"]
    pv = await core.create_persistent_volume(volume("manual", storage_class="none"))
    assert pv.spec.persistent_volume_reclaim_policy == "Retain"
    assert pv.metadata.finalizers == ["kubernetes.io/pv-protection"]
    await eventually(lambda: _volume_phase(core, "manual", "Available"))
    await storage.delete_storage_class("standard")
    assert (await storage.list_storage_class()).items == []


async def _volume_phase(core, name, phase):
    try:
        found = await core.read_persistent_volume(name)
    except ApiException:
        return phase is None
    return found.status.phase == phase


async def test_invalid_claims_are_refused_with_the_apiservers_message(core):
    with pytest.raises(ApiException) as refused:
        await core.create_namespaced_persistent_volume_claim(
            "default", {"metadata": {"name": "bad"}, "spec": {"resources": {"requests": {}}}}
        )
    assert refused.value.status == 422
    assert json.loads(refused.value.body)["message"] == (
        'PersistentVolumeClaim "bad" is invalid: [spec.accessModes: Required value: at least 1 '
        "access mode is required, spec.resources[storage]: Required value]"
    )


async def test_a_claim_binds_to_a_matching_volume(core):
    await core.create_persistent_volume(volume("pv-small", "1Gi", storage_class="manual"))
    await core.create_persistent_volume(volume("pv-big", "50Gi", storage_class="manual"))
    body = claim(storage_class="manual", size="800Mi")
    body["metadata"].pop("uid")
    await core.create_namespaced_persistent_volume_claim("default", body)
    await eventually(lambda: _claim_is(core, "data", "Bound"))
    bound = await read_claim(core)
    assert bound.spec.volume_name == "pv-small"
    assert bound.status.capacity == {"storage": "1Gi"}
    assert bound.status.access_modes == ["ReadWriteOnce"]
    assert bound.metadata.annotations["pv.kubernetes.io/bind-completed"] == "yes"
    pv = await core.read_persistent_volume("pv-small")
    assert pv.status.phase == "Bound" and pv.spec.claim_ref.name == "data"
    assert pv.spec.claim_ref.uid == bound.metadata.uid
    assert (await core.read_persistent_volume("pv-big")).status.phase == "Available"

    # deleting the claim releases a Retain volume and keeps it
    await core.delete_namespaced_persistent_volume_claim("data", "default")
    await eventually(lambda: _volume_phase(core, "pv-small", "Released"))


async def _claim_is(core, name, phase):
    try:
        return (await read_claim(core, name)).status.phase == phase
    except ApiException:
        return phase is None


async def test_a_claim_of_a_class_is_provisioned_and_deleted_with_its_volume(kubesim, core):
    storage = client.StorageV1Api(core.api_client)
    await storage.create_storage_class(storage_class("standard", "rancher.io/local-path"))
    body = claim(storage_class="standard", size="5Gi", modes=("ReadWriteOnce",))
    body["metadata"].pop("uid")
    created = await core.create_namespaced_persistent_volume_claim("default", body)
    assert created.status.phase == "Pending"
    await eventually(lambda: _claim_is(core, "data", "Bound"))
    bound = await read_claim(core)
    assert bound.spec.volume_name == f"pvc-{bound.metadata.uid}"
    assert bound.metadata.annotations["volume.kubernetes.io/storage-provisioner"] == (
        "rancher.io/local-path"
    )
    pv = await core.read_persistent_volume(bound.spec.volume_name)
    assert pv.spec.capacity == {"storage": "5Gi"}
    assert pv.spec.persistent_volume_reclaim_policy == "Delete"
    assert pv.metadata.annotations["pv.kubernetes.io/provisioned-by"] == "rancher.io/local-path"
    events = [e["reason"] for e in kubesim.events_for("default", "data")]
    assert "ProvisioningSucceeded" in events
    await core.delete_namespaced_persistent_volume_claim("data", "default")
    await eventually(lambda: _volume_phase(core, bound.spec.volume_name, None))


async def test_the_default_class_is_filled_in_now_or_later(kubesim, core):
    storage = client.StorageV1Api(core.api_client)
    early = claim("early")
    early["metadata"].pop("uid")
    await core.create_namespaced_persistent_volume_claim("default", early)
    await asyncio.sleep(0.1)
    assert (await read_claim(core, "early")).spec.storage_class_name is None
    messages = [e["message"] for e in kubesim.events_for("default", "early")]
    assert messages == [
        "no persistent volumes available for this claim and no storage class is set"
    ]
    await storage.create_storage_class(storage_class("standard", default=True))
    await eventually(lambda: _claim_is(core, "early", "Bound"))
    assert (await read_claim(core, "early")).spec.storage_class_name == "standard"

    late = claim("late")
    late["metadata"].pop("uid")
    created = await core.create_namespaced_persistent_volume_claim("default", late)
    assert created.spec.storage_class_name == "standard"
    # an explicit "" means "no class", never the default
    none = claim("none", storage_class="")
    none["metadata"].pop("uid")
    created = await core.create_namespaced_persistent_volume_claim("default", none)
    assert created.spec.storage_class_name == ""
    await asyncio.sleep(0.1)
    assert (await read_claim(core, "none")).status.phase == "Pending"


async def test_a_missing_class_is_reported_on_the_claim(kubesim, core):
    body = claim(storage_class="nope")
    body["metadata"].pop("uid")
    await core.create_namespaced_persistent_volume_claim("default", body)

    async def reported():
        return [e for e in kubesim.events_for("default", "data") if e["type"] == "Warning"]

    events = await eventually(reported)
    assert events[0]["reason"] == "ProvisioningFailed"
    assert events[0]["message"] == 'storageclass.storage.k8s.io "nope" not found'


async def test_a_pod_waits_for_its_claim_to_exist_and_bind(kubesim, core):
    await core.create_namespaced_pod("default", pod_using("notebook"))
    message = await eventually(lambda: failed_scheduling(kubesim, "notebook"))
    assert message == (
        '0/2 nodes are available: persistentvolumeclaim "data" not found. '
        "preemption: 0/2 nodes are available: 2 Preemption is not helpful for scheduling."
    )
    body = claim(storage_class="later")
    body["metadata"].pop("uid")
    await core.create_namespaced_persistent_volume_claim("default", body)

    async def unbound_reported():
        text = await failed_scheduling(kubesim, "notebook")
        return text if text and "unbound" in text else None

    assert await eventually(unbound_reported) == (
        "0/2 nodes are available: pod has unbound immediate PersistentVolumeClaims. "
        "preemption: 0/2 nodes are available: 2 Preemption is not helpful for scheduling."
    )
    scheduled = (await core.read_namespaced_pod("notebook", "default")).status.conditions
    assert scheduled[0].reason == "Unschedulable" and "unbound" in scheduled[0].message

    # the class appears, the claim is provisioned and bound, the scheduler's retry places the pod
    storage = client.StorageV1Api(core.api_client)
    await storage.create_storage_class(storage_class("later"))

    async def placed():
        found = await core.read_namespaced_pod("notebook", "default")
        return found if found.spec.node_name else None

    assert (await eventually(placed)).spec.node_name in ("worker", "worker-2")
    assert await claim_phase(core) == "Bound"


async def test_wait_for_first_consumer_binds_on_the_pods_node(kubesim, core):
    storage = client.StorageV1Api(core.api_client)
    await storage.create_storage_class(
        storage_class(
            "local-path", "rancher.io/local-path", volumeBindingMode="WaitForFirstConsumer"
        )
    )
    body = claim(storage_class="local-path")
    body["metadata"].pop("uid")
    await core.create_namespaced_persistent_volume_claim("default", body)
    await asyncio.sleep(0.1)
    assert await claim_phase(core) == "Pending"
    reasons = [e["reason"] for e in kubesim.events_for("default", "data")]
    assert reasons == ["WaitForFirstConsumer"]

    pod = pod_using("notebook")
    pod["spec"]["nodeSelector"] = {"kubernetes.io/hostname": "worker-2"}
    await core.create_namespaced_pod("default", pod)

    async def placed():
        found = await core.read_namespaced_pod("notebook", "default")
        return found if found.spec.node_name else None

    assert (await eventually(placed)).spec.node_name == "worker-2"
    bound = await read_claim(core)
    assert bound.status.phase == "Bound"
    assert bound.metadata.annotations["volume.kubernetes.io/selected-node"] == "worker-2"
    pv = await core.read_persistent_volume(bound.spec.volume_name)
    term = pv.spec.node_affinity.required.node_selector_terms[0]
    assert term.match_expressions[0].values == ["worker-2"]


async def test_a_claim_in_use_stays_until_its_pod_is_gone(kubesim, core):
    storage = client.StorageV1Api(core.api_client)
    await storage.create_storage_class(storage_class("standard", default=True))
    body = claim()
    body["metadata"].pop("uid")
    created = await core.create_namespaced_persistent_volume_claim("default", body)
    assert created.metadata.finalizers == ["kubernetes.io/pvc-protection"]
    await core.create_namespaced_pod("default", pod_using("user"))

    async def placed():
        found = await core.read_namespaced_pod("user", "default")
        return found if found.spec.node_name else None

    await eventually(placed)
    await core.delete_namespaced_persistent_volume_claim("data", "default")
    await asyncio.sleep(0.1)
    terminating = await read_claim(core)
    assert terminating.metadata.deletion_timestamp and terminating.status.phase == "Bound"

    # a new pod naming the claim is refused while it is being deleted
    await core.create_namespaced_pod("default", pod_using("second"))
    message = await eventually(lambda: failed_scheduling(kubesim, "second"))
    assert message.startswith(
        '0/2 nodes are available: persistentvolumeclaim "data" is being deleted.'
    )

    await core.delete_namespaced_pod("user", "default", grace_period_seconds=0)
    await eventually(lambda: _claim_is(core, "data", None))


async def test_kubectl_tables_for_claims_and_classes(kubesim, core):
    storage = client.StorageV1Api(core.api_client)
    await storage.create_storage_class(storage_class("standard", default=True))
    body = claim(size="2Gi", modes=("ReadWriteOnce", "ReadOnlyMany"))
    body["metadata"].pop("uid")
    await core.create_namespaced_persistent_volume_claim("default", body)
    await eventually(lambda: _claim_is(core, "data", "Bound"))
    headers = {"Accept": "application/json;as=Table;v=v1;g=meta.k8s.io"}
    async with httpx.AsyncClient(base_url=kubesim.url, headers=headers) as http:
        claims = (await http.get("/api/v1/namespaces/default/persistentvolumeclaims")).json()
        classes = (await http.get("/apis/storage.k8s.io/v1/storageclasses")).json()
    columns = [c["name"] for c in claims["columnDefinitions"]]
    row = dict(zip(columns, claims["rows"][0]["cells"], strict=True))
    assert row["Status"] == "Bound" and row["Capacity"] == "2Gi"
    assert row["Access Modes"] == "RWO,ROX" and row["StorageClass"] == "standard"
    assert classes["rows"][0]["cells"][:4] == [
        "standard (default)",
        "example.com/csi",
        "Delete",
        "Immediate",
    ]
