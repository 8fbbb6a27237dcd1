"""kube-scheduler's filter plugins and FitError message, as pure functions."""

import pytest

from tests.kubesim.filters import (
    Rejection,
    failure_message,
    filter_node,
    first_untolerated_taint,
    node_name_candidates,
    required_node_affinity,
    tolerates,
)
from tests.kubesim.generator import GPU_MODELS, make_node
from tests.kubesim.noderesources import node_allocatable_units

GPU_TAINT = {"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"}


@pytest.mark.parametrize(
    ("toleration", "tolerated"),
    [
        ({"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}, True),
        ({"key": "nvidia.com/gpu", "operator": "Exists"}, True),  # empty effect: all effects
        ({"key": "nvidia.com/gpu", "operator": "Equal", "value": "present"}, True),
        ({"key": "nvidia.com/gpu", "value": "present"}, True),  # Equal is the default
        ({"key": "nvidia.com/gpu", "value": "absent"}, False),
        ({"key": "nvidia.com/gpu"}, False),  # Equal with an empty value
        ({"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoExecute"}, False),
        ({"key": "other", "operator": "Exists"}, False),
        ({"operator": "Exists"}, True),  # empty key with Exists tolerates everything
        ({"operator": "Exists", "effect": "NoExecute"}, False),
        ({"key": "nvidia.com/gpu", "operator": "Bogus"}, False),
    ],
)
def test_toleration_matching(toleration, tolerated):
    assert tolerates(toleration, GPU_TAINT) is tolerated


def test_only_noschedule_and_noexecute_taints_block_and_the_first_one_is_named():
    taints = [
        {"key": "soft", "effect": "PreferNoSchedule"},
        {"key": "a", "value": "1", "effect": "NoExecute"},
        {"key": "b", "effect": "NoSchedule"},
    ]
    assert first_untolerated_taint(taints, []) == taints[1]
    assert first_untolerated_taint(taints, [{"key": "a", "operator": "Exists"}]) == taints[2]
    assert first_untolerated_taint(taints[:1], []) is None


def node_with(name="n1", labels=None, **spec):
    node = make_node(name, 16, 64)
    node["metadata"]["labels"].update(labels or {})
    node["spec"].update(spec)
    return node


def affinity_spec(*terms, node_selector=None):
    spec = {"affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {}}}}
    spec["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"] = {
        "nodeSelectorTerms": list(terms)
    }
    if node_selector:
        spec["nodeSelector"] = node_selector
    return spec


def expr(key, operator, *values):
    return {"key": key, "operator": operator, "values": list(values)}


@pytest.mark.parametrize(
    ("expression", "matches"),
    [
        (expr("zone", "In", "a", "b"), True),
        (expr("zone", "In", "c"), False),
        (expr("zone", "NotIn", "c"), True),
        (expr("missing", "NotIn", "c"), True),  # NotIn matches a node without the label
        (expr("zone", "Exists"), True),
        (expr("missing", "DoesNotExist"), True),
        (expr("zone", "DoesNotExist"), False),
        (expr("gpus", "Gt", "3"), True),
        (expr("gpus", "Gt", "4"), False),
        (expr("gpus", "Lt", "5"), True),
        (expr("zone", "Gt", "1"), False),  # not an integer label: no match
        (expr("gpus", "Gt", "1", "2"), False),  # Gt takes exactly one value: the term is void
        (expr("zone", "In"), False),  # In without values is invalid: the term is void
        (expr("zone", "Exists", "a"), False),
        (expr("zone", "Near", "a"), False),
    ],
)
def test_match_expressions(expression, matches):
    node = node_with(labels={"zone": "a", "gpus": "4"})
    assert (
        required_node_affinity(affinity_spec({"matchExpressions": [expression]})).matches(node)
        is matches
    )


def test_terms_are_ored_and_expressions_within_a_term_anded():
    node = node_with(labels={"zone": "a", "disk": "ssd"})
    both = {"matchExpressions": [expr("zone", "In", "a"), expr("disk", "In", "hdd")]}
    assert not required_node_affinity(affinity_spec(both)).matches(node)
    either = affinity_spec(both, {"matchExpressions": [expr("disk", "In", "ssd")]})
    assert required_node_affinity(either).matches(node)
    # an empty term selects nothing, and so does an empty term list
    assert not required_node_affinity(affinity_spec({})).matches(node)
    assert not required_node_affinity(affinity_spec()).matches(node)


def test_node_selector_and_affinity_must_both_match():
    node = node_with(labels={"zone": "a"})
    spec = affinity_spec({"matchExpressions": [expr("zone", "Exists")]}, node_selector={"x": "y"})
    assert not required_node_affinity(spec).matches(node)
    spec["nodeSelector"] = {"zone": "a"}
    assert required_node_affinity(spec).matches(node)
    assert required_node_affinity({"nodeSelector": {"zone": "b"}}).matches(node) is False
    assert required_node_affinity({}).trivial


def test_match_fields_select_by_node_name():
    spec = affinity_spec({"matchFields": [expr("metadata.name", "In", "n1")]})
    assert required_node_affinity(spec).matches(node_with("n1"))
    assert not required_node_affinity(spec).matches(node_with("n2"))
    spec = affinity_spec({"matchFields": [expr("metadata.name", "NotIn", "n1")]})
    assert not required_node_affinity(spec).matches(node_with("n1"))
    spec = affinity_spec({"matchFields": [expr("metadata.name", "In", "n1", "n2")]})
    assert not required_node_affinity(spec).matches(node_with("n1"))  # exactly one value


def test_prefilter_node_names_from_match_fields():
    pinned = {"matchFields": [expr("metadata.name", "In", "n1", "n2")]}
    assert node_name_candidates(affinity_spec(pinned)) == {"n1", "n2"}
    narrowed = {
        "matchFields": [expr("metadata.name", "In", "n1", "n2"), expr("metadata.name", "In", "n2")]
    }
    assert node_name_candidates(affinity_spec(narrowed, pinned)) == {"n1", "n2"}
    assert node_name_candidates(affinity_spec(narrowed)) == {"n2"}
    conflict = {
        "matchFields": [expr("metadata.name", "In", "n1"), expr("metadata.name", "In", "n2")]
    }
    assert node_name_candidates(affinity_spec(conflict)) == set()
    labels_only = {"matchExpressions": [expr("zone", "Exists")]}
    assert node_name_candidates(affinity_spec(pinned, labels_only)) is None
    assert node_name_candidates({}) is None


def gpu_node(name="gpu"):
    model = GPU_MODELS[0]
    return make_node(name, model.cpu, model.memory_gi, model)


def check(spec, node, request=None, requested=None, pods=0):
    return filter_node(
        spec,
        required_node_affinity(spec),
        request or {},
        node,
        node_allocatable_units(node),
        requested or {},
        pods,
    )


def test_filters_run_in_kube_schedulers_order_and_stop_at_the_first_rejection():
    node = gpu_node()
    node["spec"]["unschedulable"] = True
    spec = {"nodeSelector": {"nope": "x"}}
    assert check(spec, node) == Rejection(("node(s) were unschedulable",))
    # tolerating the unschedulable taint gets past a cordon
    spec["tolerations"] = [{"key": "node.kubernetes.io/unschedulable", "operator": "Exists"}]
    assert check(spec, node) == Rejection(
        ("node(s) had untolerated taint {nvidia.com/gpu: present}",)
    )
    spec["tolerations"].append({"key": "nvidia.com/gpu", "operator": "Exists"})
    assert check(spec, node) == Rejection(("node(s) didn't match Pod's node affinity/selector",))
    del spec["nodeSelector"]
    too_big = {"nvidia.com/gpu": 5, "cpu": 1000}
    assert check(spec, node, too_big) == Rejection(
        ("Insufficient nvidia.com/gpu",), unresolvable=False
    )
    assert check(spec, node, {"nvidia.com/gpu": 4}) is None
    assert check({**spec, "nodeName": "elsewhere"}, node) == Rejection(
        ("node(s) didn't match the requested node name",)
    )


def test_failure_message_form():
    rejections = {
        "a": Rejection(("Insufficient cpu", "Insufficient memory"), unresolvable=False),
        "b": Rejection(("Insufficient cpu",), unresolvable=False),
        "c": Rejection(("node(s) had untolerated taint {k: v}",)),
    }
    assert failure_message(3, rejections) == (
        "0/3 nodes are available: 1 Insufficient memory, 1 node(s) had untolerated taint {k: v}, "
        "2 Insufficient cpu. preemption: 0/3 nodes are available: "
        "1 Preemption is not helpful for scheduling, 2 No preemption victims found for incoming pod."
    )


def test_failure_message_for_prefilter_rejections_and_narrowed_node_sets():
    missing = Rejection(('persistentvolumeclaim "data" not found',))
    assert failure_message(2, {}, missing) == (
        '0/2 nodes are available: persistentvolumeclaim "data" not found. '
        "preemption: 0/2 nodes are available: 2 Preemption is not helpful for scheduling."
    )
    # nodes a PreFilter left out count with their own reason
    assert failure_message(3, {"n1": Rejection(("Too many pods",), unresolvable=False)}) == (
        "0/3 nodes are available: 1 Too many pods, 2 node(s) didn't satisfy plugin(s) "
        "[NodeAffinity]. preemption: 0/3 nodes are available: 1 No preemption victims found "
        "for incoming pod, 2 Preemption is not helpful for scheduling."
    )
    assert failure_message(0, {}) == "no nodes available to schedule pods"


def test_a_pod_that_may_not_preempt_says_so():
    rejections = {"a": Rejection(("Insufficient cpu",), unresolvable=False)}
    assert failure_message(1, rejections, preemption_policy="Never") == (
        "0/1 nodes are available: 1 Insufficient cpu. "
        "preemption: not eligible due to preemptionPolicy=Never."
    )
