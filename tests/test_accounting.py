from decimal import Decimal

import pytest

from hub_service.nodes import free_units
from thinkube_core.accounting import (
    MalformedObject,
    PodSummary,
    node_allocatable,
    node_capacity,
    percent,
    pod_limits,
    pod_requests,
    sum_resources,
    summarize_pod,
)
from thinkube_core.scheduling import demand_reason

GI = 1024**3
MI = 1024**2
D = Decimal


def container(name="c", requests=None, limits=None, restart_policy=None):
    spec = {"name": name, "image": "busybox", "resources": {}}
    if requests is not None:
        spec["resources"]["requests"] = requests
    if limits is not None:
        spec["resources"]["limits"] = limits
    if restart_policy is not None:
        spec["restartPolicy"] = restart_policy
    return spec


def pod(containers, init_containers=None, name="p", phase="Running", node="node-1", **spec):
    obj = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": "jupyter", "uid": f"uid-{name}"},
        "spec": {"containers": containers, "nodeName": node, **spec},
        "status": {"phase": phase},
    }
    if init_containers is not None:
        obj["spec"]["initContainers"] = init_containers
    return obj


# --- pod requests and limits --------------------------------------------------------------


def test_containers_are_summed():
    p = pod(
        [
            container("a", {"cpu": "100m", "memory": "128Mi"}, {"cpu": "1", "memory": "1Gi"}),
            container("b", {"cpu": "250m", "memory": "1Gi"}, {"memory": "2Gi"}),
        ]
    )
    # cpu 100m + 250m = 350m; memory 128Mi + 1024Mi = 1152Mi
    assert pod_requests(p) == {"cpu": D("0.35"), "memory": D(1152 * MI)}
    # cpu limit only on "a": 1; memory 1Gi + 2Gi = 3Gi
    assert pod_limits(p) == {"cpu": D(1), "memory": D(3 * GI)}


def test_pod_without_resources_has_none():
    p = pod([container("a")])
    assert pod_requests(p) == {}
    assert pod_limits(p) == {}


def test_sidecar_example_from_the_kep():
    p = pod(
        containers=[container("app", {"cpu": "1"}, {"cpu": "1"})],
        init_containers=[
            container("A", {"cpu": "1"}, {"cpu": "1"}),
            container("B", {"cpu": "500m"}, {"cpu": "500m"}, restart_policy="Always"),
            container("C", {"cpu": "2"}, {"cpu": "2"}),
        ],
    )
    # app containers: 1
    # A (normal init):   needs 1 + sidecars so far (0)    = 1    -> peak 1
    # B (sidecar):       keeps running, so app sum 1 + 0.5 = 1.5; sidecars = 0.5; peak 1
    # C (normal init):   needs 2 + sidecars so far (0.5)  = 2.5  -> peak 2.5
    # pod = max(running sum 1.5, init peak 2.5) = 2.5 cores
    assert pod_requests(p) == {"cpu": D("2.5")}
    assert pod_limits(p) == {"cpu": D("2.5")}


def test_sidecar_adds_to_the_running_sum():
    p = pod(
        containers=[container("app", {"cpu": "1", "memory": "1Gi"})],
        init_containers=[
            container("setup", {"cpu": "1200m"}),
            container("proxy", {"cpu": "500m", "memory": "256Mi"}, restart_policy="Always"),
        ],
    )
    # running: app 1 + proxy 0.5 = 1.5 cpu, 1Gi + 256Mi memory
    # init peak: setup 1.2 (no sidecar before it); proxy 0.5 -> 1.2
    # max(1.5, 1.2) = 1.5; memory max(1280Mi, 256Mi) = 1280Mi
    assert pod_requests(p) == {"cpu": D("1.5"), "memory": D(1280 * MI)}


def test_restart_policy_on_app_container_is_not_a_sidecar():
    # restartPolicy on a regular container has no effect on accounting.
    p = pod(
        containers=[container("app", {"cpu": "1"}, restart_policy="Always")],
        init_containers=[container("init", {"cpu": "3"}, restart_policy="OnFailure")],
    )
    assert pod_requests(p) == {"cpu": D(3)}  # max(1, 3)


def test_resource_only_in_init_container_is_counted():
    p = pod(
        containers=[container("app", {"cpu": "1"})],
        init_containers=[container("download", {"ephemeral-storage": "10Gi"})],
    )
    assert pod_requests(p) == {"cpu": D(1), "ephemeral-storage": D(10 * GI)}


def test_overhead_added_to_requests_and_only_to_present_non_zero_limits():
    p = pod(
        [container("app", {"cpu": "1", "memory": "1Gi"}, {"cpu": "2", "ephemeral-storage": "0"})],
        overhead={"cpu": "250m", "memory": "120Mi", "ephemeral-storage": "1Gi"},
    )
    # requests: cpu 1 + 0.25; memory 1024Mi + 120Mi; ephemeral-storage 0 + 1Gi (new entry)
    assert pod_requests(p) == {
        "cpu": D("1.25"),
        "memory": D(1144 * MI),
        "ephemeral-storage": D(GI),
    }
    # limits: cpu 2 + 0.25; memory has no limit (unlimited) so stays absent;
    # ephemeral-storage limit 0 stays 0
    assert pod_limits(p) == {"cpu": D("2.25"), "ephemeral-storage": D(0)}


def test_pod_level_resources_replace_cpu_and_memory_but_keep_gpu_from_containers():
    p = pod(
        [
            container(
                "app", {"cpu": "1", "memory": "1Gi", "nvidia.com/gpu": "1"}, {"nvidia.com/gpu": "1"}
            ),
            container("side", {"cpu": "500m", "ephemeral-storage": "1Gi"}),
        ],
        resources={
            "requests": {"cpu": "4", "memory": "8Gi", "nvidia.com/gpu": "5"},
            "limits": {"cpu": "6", "hugepages-2Mi": "4Mi"},
        },
    )
    # cpu/memory come from spec.resources (4, 8Gi), not the container sum (1.5, 1Gi);
    # nvidia.com/gpu is not a pod-level resource: the 5 there is ignored, containers give 1;
    # ephemeral-storage is not pod-level either and keeps the container value.
    assert pod_requests(p) == {
        "cpu": D(4),
        "memory": D(8 * GI),
        "nvidia.com/gpu": D(1),
        "ephemeral-storage": D(GI),
    }
    # limits: cpu 6 and hugepages-2Mi 4Mi from the pod level; gpu 1 from the container
    assert pod_limits(p) == {"cpu": D(6), "hugepages-2Mi": D(4 * MI), "nvidia.com/gpu": D(1)}


def test_pod_level_requests_then_overhead():
    p = pod(
        [container("app", {"cpu": "1"})],
        resources={"requests": {"cpu": "2"}, "limits": {"cpu": "2"}},
        overhead={"cpu": "100m"},
    )
    # pod level 2, then overhead 0.1 on top
    assert pod_requests(p) == {"cpu": D("2.1")}
    assert pod_limits(p) == {"cpu": D("2.1")}


def test_limits_only_pod_counts_the_requests_that_are_present():
    # As written by hand: limits only. The API server would have copied the limits into
    # requests on create; accounting reads the object as it is, so requests are empty here.
    as_written = pod([container("app", limits={"cpu": "2", "nvidia.com/gpu": "1"})])
    assert pod_requests(as_written) == {}
    assert pod_limits(as_written) == {"cpu": D(2), "nvidia.com/gpu": D(1)}

    # The same pod as read back from the API server, after defaulting.
    as_stored = pod(
        [
            container(
                "app",
                requests={"cpu": "2", "nvidia.com/gpu": "1"},
                limits={"cpu": "2", "nvidia.com/gpu": "1"},
            )
        ]
    )
    assert pod_requests(as_stored) == {"cpu": D(2), "nvidia.com/gpu": D(1)}


def test_quantities_stay_exact():
    p = pod([container(str(i), {"cpu": "0.1"}) for i in range(10)])
    assert pod_requests(p) == {"cpu": D(1)}  # float 0.1 * 10 would be 0.9999999999999999


# --- summaries and node totals ------------------------------------------------------------


def test_summarize_pod():
    p = pod([container("a", {"cpu": "100m"}, {"cpu": "200m"})], name="jupyter-ana")
    p["metadata"]["deletionTimestamp"] = "2025-01-01T00:00:00Z"
    summary = summarize_pod(p)
    assert summary == PodSummary(
        namespace="jupyter",
        name="jupyter-ana",
        uid="uid-jupyter-ana",
        node_name="node-1",
        phase="Running",
        terminating=True,
        requests={"cpu": D("0.1")},
        limits={"cpu": D("0.2")},
    )
    with pytest.raises(TypeError):
        summary.requests["cpu"] = D(5)  # read-only


def test_summarize_unscheduled_pod_without_status():
    p = pod([container("a")], node=None)
    del p["status"]
    summary = summarize_pod(p)
    assert summary.node_name is None
    assert summary.phase == ""
    assert summary.terminating is False
    assert summary.counts_on_node


@pytest.mark.parametrize(
    ("phase", "counts"),
    [
        ("Pending", True),
        ("Running", True),
        ("Unknown", True),
        ("Succeeded", False),
        ("Failed", False),
    ],
)
def test_counts_on_node(phase, counts):
    assert summarize_pod(pod([container()], phase=phase)).counts_on_node is counts


def test_sum_resources_skips_finished_pods_only():
    pending = pod(
        [container("a", {"cpu": "1", "memory": "1Gi"}, {"cpu": "2"})], name="a", phase="Pending"
    )
    running = pod(
        [container("b", {"cpu": "500m", "nvidia.com/gpu": "1"}, {"nvidia.com/gpu": "1"})], name="b"
    )
    terminating = pod([container("c", {"memory": "512Mi"})], name="c")
    terminating["metadata"]["deletionTimestamp"] = "2025-01-01T00:00:00Z"
    done = pod([container("d", {"cpu": "8"}, {"cpu": "8"})], name="d", phase="Succeeded")
    failed = pod([container("e", {"cpu": "8"})], name="e", phase="Failed")

    requests, limits = sum_resources(
        summarize_pod(p) for p in [pending, running, terminating, done, failed]
    )
    # cpu 1 + 0.5; memory 1Gi + 512Mi; gpu 1; the 8-cpu finished pods are left out
    assert requests == {"cpu": D("1.5"), "memory": D(1536 * MI), "nvidia.com/gpu": D(1)}
    assert limits == {"cpu": D(2), "nvidia.com/gpu": D(1)}


def test_sum_of_nothing():
    assert sum_resources([]) == ({}, {})


def node(allocatable=None, capacity=None):
    status = {}
    if allocatable is not None:
        status["allocatable"] = allocatable
    if capacity is not None:
        status["capacity"] = capacity
    return {"kind": "Node", "metadata": {"name": "node-1"}, "status": status}


def test_node_allocatable_falls_back_to_capacity_per_resource():
    n = node(
        allocatable={"cpu": "3920m", "memory": "15Gi", "pods": "110"},
        capacity={"cpu": "4", "memory": "16Gi", "pods": "110", "nvidia.com/gpu": "1"},
    )
    assert node_allocatable(n) == {
        "cpu": D("3.92"),
        "memory": D(15 * GI),
        "pods": D(110),
        "nvidia.com/gpu": D(1),  # missing from allocatable, taken from capacity
    }
    assert node_capacity(n)["cpu"] == D(4)


def test_node_without_status_has_no_resources():
    assert node_allocatable({"metadata": {"name": "new"}}) == {}
    assert node_capacity({"metadata": {"name": "new"}}) == {}


def test_describe_node_allocated_resources_end_to_end():
    n = node(allocatable={"cpu": "3920m", "memory": "15Gi", "nvidia.com/gpu": "1", "pods": "110"})
    pods = [
        pod(
            [container("a", {"cpu": "1", "memory": "2Gi"}, {"cpu": "2", "memory": "4Gi"})], name="a"
        ),
        pod([container("b", {"cpu": "250m", "memory": "512Mi"})], name="b"),
        pod(
            [container("c", {"cpu": "100m", "nvidia.com/gpu": "1"}, {"nvidia.com/gpu": "1"})],
            name="c",
        ),
    ]
    allocatable = node_allocatable(n)
    requests, limits = sum_resources(summarize_pod(p) for p in pods)
    assert requests == {"cpu": D("1.35"), "memory": D(2560 * MI), "nvidia.com/gpu": D(1)}
    # kubectl: cpu 1350m / 3920m = 34.43...% -> 34; limits 2000m / 3920m = 51.02% -> 51
    assert percent(requests["cpu"], allocatable["cpu"]) == 34
    assert percent(limits["cpu"], allocatable["cpu"]) == 51
    # memory 2560Mi / 15360Mi = 16.66% -> 16; limits 4Gi / 15Gi = 26.66% -> 26
    assert percent(requests["memory"], allocatable["memory"]) == 16
    assert percent(limits["memory"], allocatable["memory"]) == 26
    # the GPU is taken: another GPU pod does not fit, a cpu-only pod does (the filter on
    # the free room these totals leave)
    room = {"free": free_units(allocatable, requests, len(pods)), "pods_allocatable": 110}
    assert demand_reason({"nvidia.com/gpu": 1}, room) == "needs 1 GPU, 0 free"
    assert demand_reason({"cpu": 2500}, room) is None


# --- resource names and percentages -------------------------------------------------------


@pytest.mark.parametrize(
    ("part", "whole", "expected"),
    [
        ("0.5", "4", 12),  # 500m / 4000m = 12.5% -> 12 (truncated)
        ("2", "4", 50),
        ("3.92", "3.92", 100),
        ("0.29", "1", 28),  # float64(290)/float64(1000)*100 = 28.999999999999996 -> 28
        ("0.57", "1", 56),  # 56.99999999999999 -> 56
        ("8", "4", 200),  # overcommitted limits go past 100
        ("0", "4", 0),
        ("1", "0", 0),  # kubectl prints 0% when allocatable is 0
        ("0.0001", "1", 0),  # 100u -> MilliValue 1 -> 0.1% -> 0
        (str(1536 * MI), str(15 * GI), 10),  # 1.5Gi / 15Gi
        (str(GI - 1), str(GI), 99),
    ],
)
def test_percent_like_kubectl(part, whole, expected):
    assert percent(D(part), D(whole)) == expected


def test_percent_units_can_be_forced():
    # kubectl counts memory with Value(): 0.5 bytes rounds up to 1 -> 1/2 = 50%
    assert percent(D("0.5"), D(2), milli=False) == 50
    # and cpu in millicores: 2 cores / 4 cores = 2000m / 4000m
    assert percent(D(2), D(4), milli=True) == 50


# --- malformed objects --------------------------------------------------------------------


def good_pod():
    return pod([container("a", {"cpu": "1"})])


def broken(mutate):
    p = good_pod()
    mutate(p)
    return p


def requests_of_first(p):
    return p["spec"]["containers"][0]["resources"]["requests"]


@pytest.mark.parametrize(
    "bad_pod",
    [
        None,
        [],
        "pod",
        {},
        {"spec": None},
        {"spec": []},
        broken(lambda p: p["spec"].pop("containers")),
        broken(lambda p: p["spec"].update(containers={"a": {}})),
        broken(lambda p: p["spec"].update(containers="a")),
        broken(lambda p: p["spec"].update(initContainers={})),
        broken(lambda p: p["spec"]["containers"].append("not a container")),
        broken(lambda p: p["spec"]["containers"].append(None)),
        broken(lambda p: p["spec"]["containers"][0].update(resources=["cpu"])),
        broken(lambda p: p["spec"].update(initContainers=[container("i", restart_policy=1)])),
        broken(lambda p: p["spec"].update(overhead={"cpu": "Kb"})),
        broken(lambda p: p["spec"].update(overhead=5)),
        broken(lambda p: p["spec"].update(resources="big")),
    ],
)
def test_malformed_pods_raise_malformed_object(bad_pod):
    for read in (pod_requests, pod_limits, summarize_pod):
        with pytest.raises(MalformedObject):
            read(bad_pod)


@pytest.mark.parametrize(
    "bad_pod",
    [
        broken(lambda p: p["spec"]["containers"][0]["resources"].update(requests=["1"])),
        broken(lambda p: requests_of_first(p).update(cpu="lots")),
        broken(lambda p: requests_of_first(p).update(cpu=None)),
        broken(lambda p: requests_of_first(p).update(memory="1 Gi")),
        broken(lambda p: requests_of_first(p).update({5: "1"})),
        broken(lambda p: p["spec"].update(initContainers=[container("i", {"cpu": "1.5.5"})])),
        broken(lambda p: p["spec"].update(resources={"requests": {"cpu": True}})),
    ],
)
def test_malformed_requests_raise_where_requests_are_read(bad_pod):
    # pod_limits reads only limits, so it does not look at these.
    for read in (pod_requests, summarize_pod):
        with pytest.raises(MalformedObject):
            read(bad_pod)


def test_malformed_limits_raise_where_limits_are_read():
    bad_pod = broken(lambda p: p["spec"]["containers"][0]["resources"].update(limits="1"))
    for read in (pod_limits, summarize_pod):
        with pytest.raises(MalformedObject):
            read(bad_pod)


@pytest.mark.parametrize(
    "bad_pod",
    [
        broken(lambda p: p.update(metadata="x")),
        broken(lambda p: p["metadata"].update(name=5)),
        broken(lambda p: p["spec"].update(nodeName=["node-1"])),
        broken(lambda p: p.update(status=[])),
        broken(lambda p: p["status"].update(phase=1)),
    ],
)
def test_malformed_pod_metadata_raises_malformed_object(bad_pod):
    with pytest.raises(MalformedObject):
        summarize_pod(bad_pod)


def test_malformed_message_names_the_place_and_value():
    p = good_pod()
    p["spec"]["containers"][0]["resources"]["requests"]["memory"] = "12XB"
    with pytest.raises(MalformedObject, match=r"spec\.containers\[0\]\.resources\.requests.*12XB"):
        pod_requests(p)


@pytest.mark.parametrize(
    "bad_node",
    [
        None,
        [],
        {"status": "Ready"},
        {"status": {"allocatable": ["cpu"]}},
        {"status": {"capacity": {"cpu": "four"}}},
        {"status": {"allocatable": {"memory": "1.5.5Gi"}}},
    ],
)
def test_malformed_nodes_raise_malformed_object(bad_node):
    with pytest.raises(MalformedObject):
        node_allocatable(bad_node)


def test_malformed_object_is_value_error():
    assert issubclass(MalformedObject, ValueError)
