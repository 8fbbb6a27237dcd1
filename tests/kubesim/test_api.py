"""kubesim's API semantics through the real kubernetes_asyncio client.

Tests that take the `cluster` fixture also run against a real cluster when
KUBESIM_REAL_CLUSTER=1; those that need kubesim's internals take `kubesim`.
"""

from __future__ import annotations

import asyncio
import json

import pytest
from kubernetes_asyncio import client, watch
from kubernetes_asyncio.client.exceptions import ApiException

from tests.conftest import api_client_for


def status_of(err: ApiException) -> dict:
    return json.loads(err.body)


def configmap(name: str, labels: dict | None = None, data: dict | None = None) -> dict:
    return {"metadata": {"name": name, "labels": labels or {}}, "data": data or {"k": "v"}}


def pod(name: str, resources: dict | None = None, **spec) -> dict:
    container = {"name": "main", "image": "busybox:1.36", "command": ["sleep", "3600"]}
    if resources is not None:
        container["resources"] = resources
    return {"metadata": {"name": name}, "spec": {"containers": [container], **spec}}


async def test_discovery(cluster):
    version = await client.VersionApi(cluster.api).get_code()
    assert int(version.major) == 1 and version.git_version.startswith("v1.")
    core_versions = await client.CoreApi(cluster.api).get_api_versions()
    assert "v1" in core_versions.versions
    groups = await client.ApisApi(cluster.api).get_api_versions()
    names = {g.name for g in groups.groups}
    assert {"batch", "rbac.authorization.k8s.io"} <= names
    resources = await cluster.core.get_api_resources()
    by_name = {r.name: r for r in resources.resources}
    assert by_name["pods"].namespaced and not by_name["nodes"].namespaced
    assert "pods/status" in by_name and "watch" in by_name["pods"].verbs


async def test_crud_versions_and_errors(cluster):
    core, ns = cluster.core, cluster.namespace
    created = await core.create_namespaced_config_map(ns, configmap("settings"))
    assert created.metadata.uid and created.metadata.creation_timestamp
    first_rv = int(created.metadata.resource_version)

    fetched = await core.read_namespaced_config_map("settings", ns)
    assert fetched.data == {"k": "v"} and fetched.metadata.uid == created.metadata.uid

    fetched.data = {"k": "changed"}
    replaced = await core.replace_namespaced_config_map("settings", ns, fetched)
    assert int(replaced.metadata.resource_version) > first_rv

    # A write based on the old version is refused: optimistic concurrency.
    with pytest.raises(ApiException) as stale:
        await core.replace_namespaced_config_map("settings", ns, created)
    assert stale.value.status == 409 and status_of(stale.value)["reason"] == "Conflict"

    with pytest.raises(ApiException) as exists:
        await core.create_namespaced_config_map(ns, configmap("settings"))
    assert exists.value.status == 409 and status_of(exists.value)["reason"] == "AlreadyExists"

    patched = await core.patch_namespaced_config_map("settings", ns, {"data": {"extra": "1"}})
    assert patched.data == {"k": "changed", "extra": "1"}

    generated = await core.create_namespaced_config_map(
        ns, {"metadata": {"generateName": "gen-"}, "data": {}}
    )
    assert generated.metadata.name.startswith("gen-") and len(generated.metadata.name) > 4

    await core.delete_namespaced_config_map("settings", ns)
    with pytest.raises(ApiException) as missing:
        await core.read_namespaced_config_map("settings", ns)
    body = status_of(missing.value)
    assert missing.value.status == 404
    assert body["kind"] == "Status" and body["reason"] == "NotFound"
    assert body["message"] == 'configmaps "settings" not found'

    with pytest.raises(ApiException) as invalid:
        await core.create_namespaced_config_map(ns, configmap("Not_A_DNS_Name"))
    assert invalid.value.status == 422
    body = status_of(invalid.value)
    assert body["reason"] == "Invalid" and body["details"]["causes"][0]["field"] == "metadata.name"


async def test_resource_versions_increase_across_objects(cluster):
    core, ns = cluster.core, cluster.namespace
    versions = []
    for i in range(5):
        cm = await core.create_namespaced_config_map(ns, configmap(f"cm-{i}"))
        versions.append(int(cm.metadata.resource_version))
    assert versions == sorted(versions) and len(set(versions)) == 5
    listed = await core.list_namespaced_config_map(ns)
    assert int(listed.metadata.resource_version) >= versions[-1]


async def test_label_and_field_selectors(cluster):
    core, ns = cluster.core, cluster.namespace
    await core.create_namespaced_config_map(ns, configmap("a", {"app": "web", "tier": "front"}))
    await core.create_namespaced_config_map(ns, configmap("b", {"app": "web", "tier": "back"}))
    await core.create_namespaced_config_map(ns, configmap("c", {"app": "db"}))
    await core.create_namespaced_config_map(ns, configmap("d", {}))

    async def names(**kwargs) -> list[str]:
        listed = await core.list_namespaced_config_map(ns, **kwargs)
        return sorted(i.metadata.name for i in listed.items if i.metadata.name in "abcd")

    assert await names(label_selector="app=web") == ["a", "b"]
    assert await names(label_selector="app==web,tier!=front") == ["b"]
    assert await names(label_selector="app in (db, web),tier notin (back)") == ["a", "c"]
    assert await names(label_selector="tier") == ["a", "b"]
    assert await names(label_selector="!tier") == ["c", "d"]
    assert await names(field_selector="metadata.name=c") == ["c"]
    assert await names(field_selector="metadata.name!=c,metadata.name!=d") == ["a", "b"]
    with pytest.raises(ApiException) as bad:
        await core.list_namespaced_config_map(ns, field_selector="data.k=v")
    assert bad.value.status == 400


async def test_chunked_list(cluster):
    core, ns = cluster.core, cluster.namespace
    for i in range(7):
        await core.create_namespaced_config_map(ns, configmap(f"page-{i}"))
    seen, token, pages = [], None, 0
    while True:
        kwargs = {"limit": 3}
        if token:
            kwargs["_continue"] = token
        page = await core.list_namespaced_config_map(ns, **kwargs)
        pages += 1
        seen += [i.metadata.name for i in page.items]
        token = page.metadata._continue
        if not token:
            break
        assert page.metadata.remaining_item_count is not None
    assert pages == 3
    assert [n for n in seen if n.startswith("page-")] == [f"page-{i}" for i in range(7)]


async def test_a_list_at_resource_version_0_comes_whole_from_the_watch_cache(kubesim):
    # Kubernetes 1.32: resourceVersion=0 is served from the watch cache, which ignores limit
    # (serving pages from the cache came with 1.33's ListFromCacheSnapshot).
    api = await api_client_for(kubesim.kubeconfig)
    core = client.CoreV1Api(api)
    for i in range(5):
        await core.create_namespaced_config_map("default", configmap(f"cached-{i}"))
    whole = await core.list_namespaced_config_map("default", limit=2, resource_version="0")
    assert [i.metadata.name for i in whole.items] == [f"cached-{i}" for i in range(5)]
    assert whole.metadata._continue is None and whole.metadata.remaining_item_count is None
    assert int(whole.metadata.resource_version) == kubesim.store.resource_version
    selected = await core.list_namespaced_config_map(
        "default", resource_version="0", field_selector="metadata.name=cached-3"
    )
    assert [i.metadata.name for i in selected.items] == ["cached-3"]
    paged = await core.list_namespaced_config_map("default", limit=2)
    assert len(paged.items) == 2 and paged.metadata._continue
    await api.close()


async def test_watch_from_resource_version(cluster):
    core, ns = cluster.core, cluster.namespace
    listed = await core.list_namespaced_config_map(ns)
    start = listed.metadata.resource_version
    await core.create_namespaced_config_map(ns, configmap("w"))
    await core.patch_namespaced_config_map("w", ns, {"data": {"k": "2"}})
    await core.delete_namespaced_config_map("w", ns)

    events = []
    w = watch.Watch()
    async with w.stream(
        core.list_namespaced_config_map, ns, resource_version=start, timeout_seconds=2
    ) as stream:
        async for event in stream:
            events.append((event["type"], event["object"].metadata.name, event["object"].data))
            if len(events) == 3:
                w.stop()
    assert events == [
        ("ADDED", "w", {"k": "v"}),
        ("MODIFIED", "w", {"k": "2"}),
        ("DELETED", "w", {"k": "2"}),
    ]


async def test_watch_timeout_and_bookmarks(cluster):
    core, ns = cluster.core, cluster.namespace
    listed = await core.list_namespaced_config_map(ns)
    loop = asyncio.get_running_loop()
    started = loop.time()
    raw_events = []
    response = await core.list_namespaced_config_map(
        ns,
        watch=True,
        resource_version=listed.metadata.resource_version,
        allow_watch_bookmarks=True,
        timeout_seconds=2,
        _preload_content=False,
    )
    async for line in response.content:
        raw_events.append(json.loads(line))
    elapsed = loop.time() - started
    assert 1.5 <= elapsed < 10
    if cluster.sim is not None:  # a real apiserver sends bookmarks about once a minute
        bookmarks = [e for e in raw_events if e["type"] == "BOOKMARK"]
        assert bookmarks and int(bookmarks[-1]["object"]["metadata"]["resourceVersion"]) >= int(
            listed.metadata.resource_version
        )


async def test_watch_too_old_resource_version_is_gone(make_kubesim):
    sim = await make_kubesim(history_window=5)
    api = await api_client_for(sim.kubeconfig)
    core = client.CoreV1Api(api)
    first = await core.create_namespaced_config_map("default", configmap("x0"))
    for i in range(1, 10):
        await core.create_namespaced_config_map("default", configmap(f"x{i}"))
    response = await core.list_namespaced_config_map(
        "default",
        watch=True,
        resource_version=first.metadata.resource_version,
        _preload_content=False,
    )
    lines = [json.loads(line) async for line in response.content]
    assert lines[0]["type"] == "ERROR"
    assert lines[0]["object"]["code"] == 410 and lines[0]["object"]["reason"] == "Expired"
    # kubernetes_asyncio's Watch turns that into an ApiException(410), which reflectors relist on.
    w = watch.Watch()
    with pytest.raises(ApiException) as gone:
        async with w.stream(
            core.list_namespaced_config_map,
            "default",
            resource_version=first.metadata.resource_version,
        ) as stream:
            async for _ in stream:
                pass
    assert gone.value.status == 410
    await api.close()


async def test_watch_latency_and_selector_transitions(kubesim):
    api = await api_client_for(kubesim.kubeconfig)
    core = client.CoreV1Api(api)
    listed = await core.list_namespaced_config_map("default")
    w = watch.Watch()
    received: list[tuple[str, str]] = []

    async def follow():
        async with w.stream(
            core.list_namespaced_config_map,
            "default",
            label_selector="team=a",
            resource_version=listed.metadata.resource_version,
        ) as stream:
            async for event in stream:
                received.append((event["type"], event["object"].metadata.name))
                if len(received) == 3:
                    return

    task = asyncio.ensure_future(follow())
    await asyncio.sleep(0.1)
    await core.create_namespaced_config_map("default", configmap("moves", {"team": "b"}))
    await core.patch_namespaced_config_map(
        "moves", "default", {"metadata": {"labels": {"team": "a"}}}
    )
    await core.patch_namespaced_config_map("moves", "default", {"data": {"k": "3"}})
    await core.patch_namespaced_config_map(
        "moves", "default", {"metadata": {"labels": {"team": "c"}}}
    )
    await asyncio.wait_for(task, 5)
    # Entering the selector is ADDED, leaving it is DELETED, as the apiserver's watch cache does.
    assert received == [("ADDED", "moves"), ("MODIFIED", "moves"), ("DELETED", "moves")]
    await api.close()


async def test_pod_defaults_status_subresource_and_graceful_delete(cluster):
    core, ns = cluster.core, cluster.namespace
    created = await core.create_namespaced_pod(ns, pod("graceful", terminationGracePeriodSeconds=1))
    assert created.spec.restart_policy == "Always" and created.spec.dns_policy == "ClusterFirst"
    assert created.status.phase == "Pending" and created.status.qos_class == "BestEffort"
    for _ in range(100):
        current = await core.read_namespaced_pod("graceful", ns)
        if current.status.phase == "Running":
            break
        await asyncio.sleep(0.1)
    assert current.status.phase == "Running" and current.status.pod_ip
    assert (
        current.status.container_statuses[0].ready
        and current.status.container_statuses[0].state.running
    )
    deleted = await core.delete_namespaced_pod("graceful", ns)
    assert deleted.metadata.deletion_timestamp is not None
    for _ in range(100):
        try:
            await core.read_namespaced_pod("graceful", ns)
        except ApiException as err:
            assert err.status == 404
            break
        await asyncio.sleep(0.1)
    else:
        pytest.fail("the pod was never removed after its grace period")


async def test_status_subresource_keeps_spec(kubesim):
    api = await api_client_for(kubesim.kubeconfig)
    core = client.CoreV1Api(api)
    await core.create_namespaced_service(
        "default",
        {
            "metadata": {"name": "web"},
            "spec": {"type": "LoadBalancer", "ports": [{"port": 80}], "selector": {"app": "web"}},
        },
    )
    ingress = {"status": {"loadBalancer": {"ingress": [{"ip": "192.0.2.10"}]}}}
    # A status write through the main resource is ignored; the status subresource sets it.
    await core.patch_namespaced_service("web", "default", ingress)
    balancer = (await core.read_namespaced_service("web", "default")).status.load_balancer
    assert balancer is None or not balancer.ingress
    await core.patch_namespaced_service_status("web", "default", ingress)
    service = await core.read_namespaced_service("web", "default")
    assert service.status.load_balancer.ingress[0].ip == "192.0.2.10"
    assert service.spec.selector == {"app": "web"}
    await api.close()


@pytest.mark.parametrize(
    ("resources", "message"),
    [
        (
            {"requests": {"nvidia.com/gpu": "1"}},
            "Limit must be set for non overcommitable resources",
        ),
        (
            {"requests": {"nvidia.com/gpu": "1"}, "limits": {"nvidia.com/gpu": "2"}},
            "must be equal to nvidia.com/gpu limit",
        ),
        ({"limits": {"nvidia.com/gpu": "500m"}}, "must be an integer"),
        (
            {"requests": {"cpu": "2"}, "limits": {"cpu": "1"}},
            "must be less than or equal to cpu limit",
        ),
        ({"requests": {"memory": "lots"}}, "quantities must match the regular expression"),
    ],
)
async def test_admission_rejects_invalid_resources(cluster, resources, message):
    with pytest.raises(ApiException) as rejected:
        await cluster.core.create_namespaced_pod(cluster.namespace, pod("bad", resources))
    body = status_of(rejected.value)
    assert rejected.value.status in (400, 422), body
    assert message in body["message"]
    # Nothing was created.
    listed = await cluster.core.list_namespaced_pod(cluster.namespace)
    assert [p.metadata.name for p in listed.items] == []
