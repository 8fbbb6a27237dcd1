"""thinkube_core.scheduling: the one feasibility filter, against Kubernetes' own semantics
(kube-scheduler's NodeUnschedulable, NodeName, TaintToleration, NodeAffinity and
NodeResourcesFit), on node documents as the service makes them."""

from __future__ import annotations

from decimal import Decimal as D

import pytest

from hub_service.nodes import free_units
from thinkube_core.accounting import MalformedObject
from thinkube_core.scheduling import (
    PodRules,
    Toleration,
    demand_reason,
    node_reason,
    pod_demand,
    rules_reason,
)

GI = 1024**3


def node(name="n1", labels=None, taints=(), ready=True, cordoned=False, free=None, pods=110):
    return {
        "name": name,
        "labels": labels or {},
        "taints": [{"key": k, "value": v, "effect": e} for k, v, e in taints],
        "ready": ready,
        "unschedulable": cordoned,
        "free": {"cpu": 4000, "memory": 8 * GI, "pods": pods, **(free or {})},
        "pods_allocatable": 110,
    }


def rules(**spec) -> PodRules:
    return PodRules.of_pod_spec(spec)


def affinity(*terms) -> dict:
    return {
        "nodeAffinity": {
            "requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": list(terms)}
        }
    }


# --- TaintToleration -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("toleration", "taint", "tolerated"),
    [
        (
            {"key": "team", "operator": "Equal", "value": "nlp", "effect": "NoSchedule"},
            ("team", "nlp", "NoSchedule"),
            True,
        ),
        (
            {"key": "team", "operator": "Equal", "value": "nlp", "effect": "NoSchedule"},
            ("team", "vision", "NoSchedule"),
            False,
        ),
        (
            {"key": "team", "value": "nlp"},
            ("team", "nlp", "NoExecute"),
            True,
        ),  # Equal is the default; no effect: all
        ({"key": "team", "operator": "Exists"}, ("team", "anything", "NoSchedule"), True),
        (
            {"key": "team", "operator": "Exists", "effect": "NoExecute"},
            ("team", "x", "NoSchedule"),
            False,
        ),
        ({"operator": "Exists"}, ("whatever", "x", "NoExecute"), True),  # empty key + Exists: all
        ({"operator": "Equal", "value": "x"}, ("whatever", "x", "NoSchedule"), False),
        ({"key": "other", "operator": "Exists"}, ("team", "x", "NoSchedule"), False),
        ({"key": "team", "operator": "Equal"}, ("team", "", "NoSchedule"), True),  # empty value
    ],
)
def test_tolerations_follow_kubernetes(toleration, taint, tolerated):
    key, value, effect = taint
    assert (
        Toleration.of(toleration).tolerates({"key": key, "value": value, "effect": effect})
        is tolerated
    )
    reason = rules_reason(rules(tolerations=[toleration]), node(taints=[taint]))
    assert (reason is None) is tolerated
    if not tolerated:
        assert reason == f"tainted {key}{'=' + value if value else ''}:{effect}, not tolerated"


def test_prefer_no_schedule_never_refuses():
    assert rules_reason(rules(), node(taints=[("team", "x", "PreferNoSchedule")])) is None
    assert rules_reason(rules(), node(taints=[("team", "x", "NoExecute")])) == (
        "tainted team=x:NoExecute, not tolerated"
    )


# --- NodeUnschedulable, NodeName --------------------------------------------------------------


def test_cordoned_and_not_ready_nodes():
    assert rules_reason(rules(), node(cordoned=True)) == "cordoned"
    tolerant = rules(
        tolerations=[
            {
                "key": "node.kubernetes.io/unschedulable",
                "operator": "Exists",
                "effect": "NoSchedule",
            }
        ]
    )
    assert rules_reason(tolerant, node(cordoned=True)) is None
    assert (
        rules_reason(rules(tolerations=[{"operator": "Exists"}]), node(ready=False)) == "not ready"
    )


def test_a_bound_pod_fits_only_its_node():
    assert rules_reason(rules(nodeName="n2"), node("n1")) == "the pod is bound to n2"
    assert rules_reason(rules(nodeName="n1"), node("n1")) is None


# --- NodeAffinity ----------------------------------------------------------------------------


def test_node_selector():
    pool = rules(nodeSelector={"pool": "notebooks", "zone": "a"})
    assert rules_reason(pool, node(labels={"pool": "notebooks", "zone": "a", "x": "y"})) is None
    assert (
        rules_reason(pool, node(labels={"pool": "notebooks"})) == "nodeSelector zone=a not matched"
    )
    assert rules_reason(pool, node(labels={"pool": "batch", "zone": "a"})) == (
        "nodeSelector pool=notebooks not matched"
    )


@pytest.mark.parametrize(
    ("expression", "labels", "matches"),
    [
        ({"key": "zone", "operator": "In", "values": ["a", "b"]}, {"zone": "b"}, True),
        ({"key": "zone", "operator": "In", "values": ["a", "b"]}, {"zone": "c"}, False),
        ({"key": "zone", "operator": "In", "values": ["a"]}, {}, False),
        ({"key": "zone", "operator": "NotIn", "values": ["a"]}, {"zone": "b"}, True),
        ({"key": "zone", "operator": "NotIn", "values": ["a"]}, {}, True),  # absent: not in
        ({"key": "zone", "operator": "NotIn", "values": ["a"]}, {"zone": "a"}, False),
        ({"key": "gpu", "operator": "Exists"}, {"gpu": ""}, True),
        ({"key": "gpu", "operator": "Exists"}, {}, False),
        ({"key": "gpu", "operator": "DoesNotExist"}, {}, True),
        ({"key": "gpu", "operator": "DoesNotExist"}, {"gpu": "1"}, False),
        ({"key": "cores", "operator": "Gt", "values": ["8"]}, {"cores": "16"}, True),
        ({"key": "cores", "operator": "Gt", "values": ["8"]}, {"cores": "8"}, False),
        ({"key": "cores", "operator": "Lt", "values": ["8"]}, {"cores": "4"}, True),
        ({"key": "cores", "operator": "Gt", "values": ["8"]}, {"cores": "many"}, False),
        ({"key": "cores", "operator": "Gt", "values": ["8"]}, {}, False),
    ],
)
def test_match_expressions(expression, labels, matches):
    reason = rules_reason(
        rules(affinity=affinity({"matchExpressions": [expression]})), node(labels=labels)
    )
    assert (reason is None) is matches
    if not matches:
        assert reason.startswith("required node affinity not matched (")


def test_terms_are_ored_and_their_requirements_anded():
    either = rules(
        affinity=affinity(
            {
                "matchExpressions": [
                    {"key": "zone", "operator": "In", "values": ["a"]},
                    {"key": "gpu", "operator": "Exists"},
                ]
            },
            {"matchExpressions": [{"key": "zone", "operator": "In", "values": ["b"]}]},
        )
    )
    assert rules_reason(either, node(labels={"zone": "a", "gpu": "1"})) is None
    assert rules_reason(either, node(labels={"zone": "b"})) is None
    assert rules_reason(either, node(labels={"zone": "a"})) == (
        "required node affinity not matched (gpu Exists)"
    )


def test_match_fields_name_the_node_and_an_empty_term_matches_nothing():
    pinned = rules(
        affinity=affinity(
            {"matchFields": [{"key": "metadata.name", "operator": "In", "values": ["n2"]}]}
        )
    )
    assert rules_reason(pinned, node("n2")) is None
    assert rules_reason(pinned, node("n1")) == (
        "required node affinity not matched (metadata.name In [n2])"
    )
    assert (
        rules_reason(rules(affinity=affinity({})), node()) == "required node affinity not matched"
    )
    assert rules_reason(rules(affinity=affinity()), node()) == "required node affinity not matched"


def test_a_spec_that_is_not_a_spec_is_malformed():
    with pytest.raises(MalformedObject):
        PodRules.of_pod_spec({"nodeSelector": {"a": 1}})
    with pytest.raises(MalformedObject):
        PodRules.of_pod_spec({"tolerations": "all"})
    with pytest.raises(MalformedObject):
        PodRules.of_pod_spec({"affinity": affinity({"matchExpressions": [{"operator": "In"}]})})


# --- NodeResourcesFit ------------------------------------------------------------------------


def test_fit_is_exact_at_the_limit():
    free = node(free={"cpu": 1000, "memory": 2 * GI})
    assert demand_reason({"cpu": 1000, "memory": 2 * GI}, free) is None
    assert demand_reason({"cpu": 1001, "memory": 2 * GI + 1}, free) == (
        "needs 1.001 CPU, 1 free; needs 2 GiB memory, 2 free"
    )


def test_a_resource_the_node_lacks_is_zero_and_a_zero_request_always_fits():
    assert demand_reason({"nvidia.com/gpu": 1}, node()) == "needs 1 GPU, 0 free"
    assert demand_reason({"nvidia.com/mig-1g.10gb": 2}, node()) == "needs 2 × mig-1g.10gb, 0 free"
    assert demand_reason({"nvidia.com/gpu": 0, "cpu": 0}, node()) is None


def test_the_pod_count_is_a_resource_too():
    assert demand_reason({"cpu": 1}, node(pods=1)) is None
    assert demand_reason({"cpu": 1}, node(pods=0)) == "110/110 pods"


def test_free_room_in_scheduler_units_from_requests():
    """cpu in millicores, rounded up like the scheduler; an over-allocated node has less
    than nothing."""
    free = free_units(
        {"cpu": D("1.5"), "memory": D(4 * GI), "pods": D(110)}, {"cpu": D("0.0004")}, 3
    )
    assert free == {"cpu": 1499, "memory": 4 * GI, "pods": 107}
    over = free_units({"cpu": D(1), "pods": D(10)}, {"cpu": D(2)}, 1)
    assert over["cpu"] == -1000
    assert (
        demand_reason({"cpu": 100}, {"free": over, "pods_allocatable": 10})
        == "needs 0.1 CPU, 0 free"
    )


def test_demand_is_what_the_api_server_and_the_scheduler_count():
    spec = {
        "containers": [
            {
                "name": "a",
                "resources": {"limits": {"cpu": "2", "memory": "1Gi", "nvidia.com/gpu": "1"}},
            },
            {"name": "b", "resources": {"requests": {"cpu": "100u"}}},
        ],
        "initContainers": [{"name": "i", "resources": {"requests": {"memory": "3Gi"}}}],
        "overhead": {"cpu": "250m"},
    }
    # limits only: requests default to them; 100u is one millicore; the init container's
    # memory peak beats the containers' sum; overhead adds
    assert pod_demand(spec) == {"cpu": 2251, "memory": 3 * GI, "nvidia.com/gpu": 1}


def test_node_reason_is_rules_first_then_room():
    tainted_full = node(taints=[("team", "x", "NoSchedule")], free={"cpu": 0})
    assert node_reason(rules(), {"cpu": 1000}, tainted_full) == (
        "tainted team=x:NoSchedule, not tolerated"
    )
    assert node_reason(
        rules(tolerations=[{"operator": "Exists"}]), {"cpu": 1000}, tainted_full
    ) == ("needs 1 CPU, 0 free")
    assert node_reason(rules(), {"cpu": 1000}, node()) is None
