"""JSON merge patch, strategic merge patch and JSON patch as the apiserver applies them."""

import copy

import pytest

from tests.kubesim.patch import (
    PatchError,
    UnsupportedPatchError,
    json_merge_patch,
    json_patch,
    strategic_merge_patch,
)

# -- RFC 7386 ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("target", "patch", "expected"),
    [  # the examples of RFC 7386 appendix A
        ({"a": "b"}, {"a": "c"}, {"a": "c"}),
        ({"a": "b"}, {"b": "c"}, {"a": "b", "b": "c"}),
        ({"a": "b"}, {"a": None}, {}),
        ({"a": "b", "b": "c"}, {"a": None}, {"b": "c"}),
        ({"a": ["b"]}, {"a": "c"}, {"a": "c"}),
        ({"a": "c"}, {"a": ["b"]}, {"a": ["b"]}),
        ({"a": {"b": "c"}}, {"a": {"b": "d", "c": None}}, {"a": {"b": "d"}}),
        ({"a": [{"b": "c"}]}, {"a": [1]}, {"a": [1]}),
        (["a", "b"], ["c", "d"], ["c", "d"]),
        ({"a": "b"}, ["c"], ["c"]),
        ({"a": "foo"}, None, None),
        ({"a": "foo"}, "bar", "bar"),
        ({"e": None}, {"a": 1}, {"e": None, "a": 1}),
        ([1, 2], {"a": "b", "c": None}, {"a": "b"}),
        ({}, {"a": {"bb": {"ccc": None}}}, {"a": {"bb": {}}}),
    ],
)
def test_json_merge_patch_rfc7386_examples(target, patch, expected):
    assert json_merge_patch(target, patch) == expected


def test_json_merge_patch_does_not_mutate_its_inputs():
    target = {"metadata": {"labels": {"a": "1"}}}
    patch = {"metadata": {"labels": {"a": None, "b": "2"}}}
    result = json_merge_patch(target, patch)
    result["metadata"]["labels"]["c"] = "3"
    assert target == {"metadata": {"labels": {"a": "1"}}}
    assert patch == {"metadata": {"labels": {"a": None, "b": "2"}}}


# -- strategic merge patch --------------------------------------------------------------------

POD = {
    "apiVersion": "v1",
    "kind": "Pod",
    "metadata": {
        "name": "jupyter-alice",
        "labels": {"app": "jupyterhub", "component": "singleuser-server"},
        "finalizers": ["example.com/a"],
        "ownerReferences": [{"apiVersion": "v1", "kind": "X", "name": "x", "uid": "u1"}],
    },
    "spec": {
        "containers": [
            {
                "name": "notebook",
                "image": "jupyter/base:1",
                "env": [{"name": "A", "value": "1"}, {"name": "B", "value": "2"}],
                "ports": [{"containerPort": 8888, "name": "notebook-port"}],
                "volumeMounts": [{"name": "home", "mountPath": "/home/jovyan"}],
            },
            {"name": "sidecar", "image": "proxy:1"},
        ],
        "volumes": [{"name": "home", "emptyDir": {}}],
        "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
        "nodeSelector": {"pool": "gpu"},
    },
    "status": {
        "conditions": [
            {"type": "Ready", "status": "False"},
            {"type": "Initialized", "status": "True"},
        ]
    },
}


def smp(patch, target=POD):
    return strategic_merge_patch(target, patch, "Pod")


def names(items):
    return [item["name"] for item in items]


def test_containers_merge_by_name_and_new_ones_follow_the_patch_order():
    result = smp(
        {
            "spec": {
                "containers": [
                    {"name": "sidecar", "image": "proxy:2"},
                    {"name": "extra", "image": "e"},
                ]
            }
        }
    )
    assert names(result["spec"]["containers"]) == ["notebook", "sidecar", "extra"]
    assert result["spec"]["containers"][1] == {"name": "sidecar", "image": "proxy:2"}
    assert result["spec"]["containers"][0] == POD["spec"]["containers"][0]


def test_an_item_new_to_a_list_goes_before_server_only_items():
    # strategicpatch.mergeSortedSlice puts patch items the server does not know first.
    result = smp({"spec": {"containers": [{"name": "extra", "image": "e"}]}})
    assert names(result["spec"]["containers"]) == ["extra", "notebook", "sidecar"]


def test_nested_merge_lists_env_by_name_ports_by_container_port_mounts_by_path():
    patch = {
        "spec": {
            "containers": [
                {
                    "name": "notebook",
                    "env": [{"name": "B", "value": "20"}, {"name": "C", "value": "3"}],
                    "ports": [{"containerPort": 8888, "protocol": "TCP"}],
                    "volumeMounts": [{"name": "scratch", "mountPath": "/home/jovyan"}],
                }
            ]
        }
    }
    notebook = smp(patch)["spec"]["containers"][0]
    assert notebook["env"] == [
        {"name": "A", "value": "1"},
        {"name": "B", "value": "20"},
        {"name": "C", "value": "3"},
    ]
    assert notebook["ports"] == [
        {"containerPort": 8888, "name": "notebook-port", "protocol": "TCP"}
    ]
    assert notebook["volumeMounts"] == [{"name": "scratch", "mountPath": "/home/jovyan"}]


def test_tolerations_have_no_merge_key_so_the_list_is_replaced():
    patch = {"spec": {"tolerations": [{"key": "other", "operator": "Exists"}]}}
    assert smp(patch)["spec"]["tolerations"] == [{"key": "other", "operator": "Exists"}]


def test_null_deletes_a_key_and_maps_merge():
    result = smp(
        {"metadata": {"labels": {"app": None, "user": "alice"}}, "spec": {"nodeSelector": None}}
    )
    assert result["metadata"]["labels"] == {"component": "singleuser-server", "user": "alice"}
    assert "nodeSelector" not in result["spec"]


def test_patch_delete_directive_in_a_list_item():
    result = smp({"spec": {"containers": [{"name": "sidecar", "$patch": "delete"}]}})
    assert names(result["spec"]["containers"]) == ["notebook"]


def test_patch_replace_directive_in_a_list_and_in_a_map():
    result = smp(
        {
            "spec": {
                "containers": [{"name": "only", "image": "o"}, {"$patch": "replace"}],
                "nodeSelector": {"$patch": "replace", "zone": "a"},
            }
        }
    )
    assert result["spec"]["containers"] == [{"name": "only", "image": "o"}]
    assert result["spec"]["nodeSelector"] == {"zone": "a"}


def test_patch_delete_directive_on_a_map_leaves_it_empty():
    assert smp({"spec": {"nodeSelector": {"$patch": "delete"}}})["spec"]["nodeSelector"] == {}


def test_finalizers_merge_as_a_set_and_delete_from_primitive_list():
    result = smp({"metadata": {"finalizers": ["example.com/b", "example.com/a"]}})
    assert result["metadata"]["finalizers"] == ["example.com/b", "example.com/a"]
    result = smp({"metadata": {"$deleteFromPrimitiveList/finalizers": ["example.com/a"]}})
    assert "finalizers" not in result["metadata"]  # emptied, and Go's omitempty drops it


def test_conditions_merge_by_type_and_owner_references_by_uid():
    result = smp(
        {
            "status": {"conditions": [{"type": "Ready", "status": "True"}]},
            "metadata": {"ownerReferences": [{"uid": "u1", "name": "renamed"}]},
        }
    )
    assert result["status"]["conditions"] == [
        {"type": "Ready", "status": "True"},
        {"type": "Initialized", "status": "True"},
    ]
    assert result["metadata"]["ownerReferences"][0]["name"] == "renamed"


def test_set_element_order_reorders_and_retain_keys_clears_other_sources():
    result = smp(
        {
            "spec": {
                "$setElementOrder/containers": [{"name": "sidecar"}, {"name": "notebook"}],
                "volumes": [
                    {
                        "name": "home",
                        "$retainKeys": ["configMap", "name"],
                        "configMap": {"name": "cm"},
                    }
                ],
            }
        }
    )
    assert names(result["spec"]["containers"]) == ["sidecar", "notebook"]
    assert result["spec"]["volumes"] == [{"name": "home", "configMap": {"name": "cm"}}]


def test_service_ports_merge_by_port():
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "spec": {"ports": [{"port": 80, "name": "http"}, {"port": 443}]},
    }
    result = strategic_merge_patch(
        service, {"spec": {"ports": [{"port": 443, "name": "https"}]}}, "Service"
    )
    assert result["spec"]["ports"] == [{"port": 80, "name": "http"}, {"port": 443, "name": "https"}]


def test_strategic_merge_patch_does_not_mutate_its_inputs():
    target, patch = (
        copy.deepcopy(POD),
        {"spec": {"containers": [{"name": "notebook", "image": "x", "$patch": "replace"}]}},
    )
    frozen_patch = copy.deepcopy(patch)
    smp(patch, target)
    assert target == POD
    assert patch == frozen_patch


def test_strategic_merge_patch_errors():
    with pytest.raises(PatchError, match="does not contain declared merge key: name"):
        smp({"spec": {"containers": [{"image": "x"}]}})
    with pytest.raises(UnsupportedPatchError) as raised:
        strategic_merge_patch({"apiVersion": "example.com/v1", "kind": "Widget"}, {}, "Widget")
    assert raised.value.status == 415
    assert str(raised.value).startswith("the body of the request was in an unknown format")


# -- RFC 6902 ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("target", "operations", "expected"),
    [  # the examples of RFC 6902 appendix A
        (
            {"foo": "bar"},
            [{"op": "add", "path": "/baz", "value": "qux"}],
            {"baz": "qux", "foo": "bar"},
        ),
        (
            {"foo": ["bar", "baz"]},
            [{"op": "add", "path": "/foo/1", "value": "qux"}],
            {"foo": ["bar", "qux", "baz"]},
        ),
        ({"baz": "qux", "foo": "bar"}, [{"op": "remove", "path": "/baz"}], {"foo": "bar"}),
        (
            {"foo": ["bar", "qux", "baz"]},
            [{"op": "remove", "path": "/foo/1"}],
            {"foo": ["bar", "baz"]},
        ),
        (
            {"baz": "qux", "foo": "bar"},
            [{"op": "replace", "path": "/baz", "value": "boo"}],
            {"baz": "boo", "foo": "bar"},
        ),
        (
            {"foo": {"bar": "baz", "waldo": "fred"}, "qux": {"corge": "grault"}},
            [{"op": "move", "from": "/foo/waldo", "path": "/qux/thud"}],
            {"foo": {"bar": "baz"}, "qux": {"corge": "grault", "thud": "fred"}},
        ),
        (
            {"foo": ["all", "grass", "cows", "eat"]},
            [{"op": "move", "from": "/foo/1", "path": "/foo/3"}],
            {"foo": ["all", "cows", "eat", "grass"]},
        ),
        (
            {"foo": "bar"},
            [{"op": "add", "path": "/child", "value": {"grandchild": {}}}],
            {"foo": "bar", "child": {"grandchild": {}}},
        ),
        (
            {"foo": ["bar"]},
            [{"op": "add", "path": "/foo/-", "value": ["abc", "def"]}],
            {"foo": ["bar", ["abc", "def"]]},
        ),
        ({"/": 9, "~1": 10}, [{"op": "test", "path": "/~01", "value": 10}], {"/": 9, "~1": 10}),
        (
            {"a": {"b": 1}},
            [
                {"op": "copy", "from": "/a", "path": "/c"},
                {"op": "test", "path": "/c/b", "value": 1.0},
            ],
            {"a": {"b": 1}, "c": {"b": 1}},
        ),
        ({"a": 1}, [{"op": "replace", "path": "", "value": [1]}], [1]),
    ],
)
def test_json_patch_rfc6902_examples(target, operations, expected):
    assert json_patch(target, operations) == expected


@pytest.mark.parametrize(
    ("operations", "message"),
    [
        (
            [{"op": "test", "path": "/baz", "value": "bar"}],
            "testing value /baz failed: test failed",
        ),
        ([{"op": "test", "path": "/n", "value": True}], "testing value /n failed: test failed"),
        (
            [{"op": "add", "path": "/baz/bat", "value": "qux"}],
            'add operation does not apply: doc is missing path: "/baz/bat": missing value',
        ),
        (
            [{"op": "remove", "path": "/nope"}],
            'error in remove for path: "/nope": Unable to remove nonexistent key: nope: missing value',
        ),
        (
            [{"op": "replace", "path": "/nope", "value": 1}],
            "replace operation does not apply: doc is missing key: /nope: missing value",
        ),
        (
            [{"op": "add", "path": "/list/5", "value": 1}],
            "Unable to access invalid index: 5: invalid index referenced",
        ),
        ([{"op": "frobnicate", "path": "/n"}], "Unexpected kind: frobnicate"),
    ],
)
def test_json_patch_failures(operations, message):
    with pytest.raises(PatchError) as raised:
        json_patch({"baz": "qux", "n": 1, "list": [0]}, operations)
    assert str(raised.value) == message


def test_json_patch_is_all_or_nothing_and_does_not_mutate():
    target = {"metadata": {"labels": {"a": "1"}}}
    operations = [
        {"op": "add", "path": "/metadata/labels/b", "value": "2"},
        {"op": "test", "path": "/metadata/labels/a", "value": "0"},
    ]
    with pytest.raises(PatchError):
        json_patch(target, operations)
    assert target == {"metadata": {"labels": {"a": "1"}}}
