"""Pod requests and NodeResourcesFit, worked out by hand from Kubernetes' documented rules."""

from decimal import Decimal

import pytest

from tests.kubesim.generator import make_node
from tests.kubesim.noderesources import (
    MalformedPod,
    insufficient_resources,
    is_extended_resource,
    node_allocatable_units,
    pod_request_units,
    pod_requests,
    scheduler_units,
)


def container(name: str, restart_policy: str | None = None, **requests: str) -> dict:
    c = {"name": name, "image": "busybox", "resources": {"requests": dict(requests)}}
    if restart_policy:
        c["restartPolicy"] = restart_policy
    return c


def pod(containers=(), init=(), **spec) -> dict:
    return {
        "metadata": {"name": "p", "namespace": "default"},
        "spec": {"containers": list(containers), "initContainers": list(init), **spec},
    }


def test_app_containers_add_up():
    requests = pod_requests(
        pod([container("a", cpu="250m", memory="1Gi"), container("b", cpu="0.5", memory="512Mi")])
    )
    assert requests == {"cpu": Decimal("0.75"), "memory": Decimal(1536 * 1024**2)}


def test_a_classic_init_container_counts_only_while_it_is_bigger():
    # The init container runs alone before the app: 2 cpu at start, 1 cpu afterwards.
    requests = pod_requests(
        pod([container("app", cpu="1", memory="1Gi")], [container("init", cpu="2", memory="64Mi")])
    )
    assert requests == {"cpu": Decimal(2), "memory": Decimal(1024**3)}


def test_sidecars_add_to_the_app_and_to_later_init_containers():
    # sidecar 100m runs for the whole pod; init-b (500m) starts after it, so needs 600m;
    # the app (1 cpu) plus the sidecar needs 1100m: the larger wins.
    requests = pod_requests(
        pod(
            [container("app", cpu="1")],
            [
                container("init-a", cpu="300m"),
                container("sidecar", "Always", cpu="100m"),
                container("init-b", cpu="500m"),
            ],
        )
    )
    assert requests == {"cpu": Decimal("1.1")}
    # A big init container after the sidecar needs its own amount plus the sidecar.
    requests = pod_requests(
        pod(
            [container("app", cpu="1")],
            [container("sidecar", "Always", cpu="100m"), container("init", cpu="2")],
        )
    )
    assert requests == {"cpu": Decimal("2.1")}


def test_an_init_container_before_the_sidecar_does_not_need_the_sidecars_room():
    requests = pod_requests(
        pod(
            [container("app", cpu="100m")],
            [container("init", cpu="1"), container("sidecar", "Always", cpu="200m")],
        )
    )
    assert requests == {"cpu": Decimal(1)}


def test_pod_level_resources_replace_cpu_memory_and_hugepages_only():
    spec_resources = {
        "requests": {"cpu": "4", "memory": "8Gi", "hugepages-2Mi": "2Mi", "nvidia.com/gpu": "9"}
    }
    requests = pod_requests(
        pod(
            [container("app", cpu="1", memory="1Gi", **{"nvidia.com/gpu": "1"})],
            resources=spec_resources,
        )
    )
    assert requests == {
        "cpu": Decimal(4),
        "memory": Decimal(8 * 1024**3),
        "hugepages-2Mi": Decimal(2 * 1024**2),
        "nvidia.com/gpu": Decimal(1),  # extended resources still come from the containers
    }


def test_overhead_is_added_on_top():
    requests = pod_requests(
        pod([container("app", cpu="1")], overhead={"cpu": "250m", "memory": "120Mi"})
    )
    assert requests == {"cpu": Decimal("1.25"), "memory": Decimal(120 * 1024**2)}


def test_a_pod_without_requests_requests_nothing():
    assert pod_requests(pod([{"name": "c", "image": "busybox"}])) == {}
    assert pod_request_units(pod([{"name": "c", "image": "busybox"}])) == {}


def test_scheduler_units_round_each_total_up_and_drop_untracked_names():
    units = scheduler_units(
        {
            "cpu": Decimal("0.0001"),
            "memory": Decimal("100.5"),
            "ephemeral-storage": Decimal(10),
            "nvidia.com/gpu": Decimal(2),
            "hugepages-1Gi": Decimal(2**30),
            "example.kubernetes.io/widget": Decimal(1),
            "attachable-volumes-csi-x": Decimal(3),
            "storage": Decimal(5),  # unprefixed and not native to pods: not tracked
        }
    )
    assert units == {
        "cpu": 1,
        "memory": 101,
        "ephemeral-storage": 10,
        "nvidia.com/gpu": 2,
        "hugepages-1Gi": 2**30,
        "example.kubernetes.io/widget": 1,
        "attachable-volumes-csi-x": 3,
    }


@pytest.mark.parametrize(
    ("name", "extended"),
    [
        ("nvidia.com/gpu", True),
        ("example.com/dongle", True),
        ("cpu", False),
        ("kubernetes.io/something", False),
        ("requests.example.com/x", False),
        ("bad name/x", False),
    ],
)
def test_extended_resource_names(name, extended):
    assert is_extended_resource(name) is extended


def test_node_allocatable_falls_back_to_capacity_and_skips_what_is_not_a_quantity():
    node = make_node("n", 4, 16)
    assert node_allocatable_units(node) == {
        "cpu": 3900,
        "memory": (16 * 1024 * 1024 - 1024 * 1024) * 1024,
        "pods": 110,
        "ephemeral-storage": 976284404 * 1024,
        "hugepages-2Mi": 0,
    }
    del node["status"]["allocatable"]
    assert node_allocatable_units(node)["cpu"] == 4000
    node["status"]["capacity"]["cpu"] = "lots"
    assert "cpu" not in node_allocatable_units(node)


def test_fit_reports_every_short_resource_and_the_pod_count():
    allocatable = {"cpu": 4000, "memory": 8 * 2**30, "pods": 2, "nvidia.com/gpu": 1}
    requested = {"cpu": 3000, "memory": 2**30, "nvidia.com/gpu": 1}
    request = {"cpu": 1500, "memory": 2**30, "nvidia.com/gpu": 1}
    assert insufficient_resources(request, allocatable, requested, 2) == [
        "Too many pods",
        "Insufficient cpu",
        "Insufficient nvidia.com/gpu",
    ]
    assert insufficient_resources({"cpu": 1000}, allocatable, requested, 1) == []


def test_fit_skips_resources_the_pod_does_not_ask_for():
    overcommitted = {"cpu": 5000}
    assert insufficient_resources({}, {"cpu": 4000, "pods": 10}, overcommitted, 0) == []
    assert insufficient_resources({"cpu": 0}, {"cpu": 4000, "pods": 10}, overcommitted, 0) == []
    # a node that does not list the resource has none of it
    assert insufficient_resources({"example.com/x": 1}, {"pods": 10}, {}, 0) == [
        "Insufficient example.com/x"
    ]
    # and a node that does not list pods takes none
    assert insufficient_resources({}, {}, {}, 0) == ["Too many pods"]


@pytest.mark.parametrize(
    "bad",
    [
        {"spec": {"containers": {"name": "c"}}},
        {"spec": {"containers": [{"name": "c", "resources": {"requests": {"cpu": "1.2.3"}}}]}},
        {"spec": {"containers": [{"name": "c", "resources": "big"}]}},
        {"spec": "nope"},
    ],
)
def test_unreadable_pods_raise_malformed_pod(bad):
    with pytest.raises(MalformedPod):
        pod_requests(bad)
