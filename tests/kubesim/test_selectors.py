"""Label and field selectors against the apiserver's grammar, matching and error texts."""

import pytest

from tests.kubesim.selectors import (
    FieldSelector,
    LabelRequirement,
    SelectorError,
    label_selector_from_object,
    parse_field_selector,
    parse_label_selector,
)

POD_LABELS = {"app.kubernetes.io/name": "jupyterhub", "component": "singleuser-server", "tier": "3"}


@pytest.mark.parametrize(
    ("selector", "expected"),
    [
        ("", True),
        ("component=singleuser-server", True),
        ("component==singleuser-server", True),
        ("component!=singleuser-server", False),
        ("component!=hub", True),
        ("missing!=x", True),  # != and notin match objects without the label
        ("app.kubernetes.io/name in (jupyterhub, other)", True),
        ("app.kubernetes.io/name notin (jupyterhub)", False),
        ("missing notin (a,b)", True),
        ("component", True),
        ("!component", False),
        ("!missing", True),
        ("tier>2", True),
        ("tier<3", False),
        ("component>2", False),  # gt/lt never match a non-integer value
        ("  component = singleuser-server ,  app.kubernetes.io/name  ", True),
        ("component=singleuser-server,missing", False),
    ],
)
def test_label_selector_matches_like_the_apiserver(selector, expected):
    assert parse_label_selector(selector).matches(POD_LABELS) is expected


def test_empty_label_selector_matches_objects_without_labels():
    assert parse_label_selector("").matches(None) is True
    assert parse_label_selector("a!=b").matches(None) is True
    assert parse_label_selector("a").matches(None) is False


def test_label_requirements_are_sorted_by_key_with_set_values_deduplicated():
    selector = parse_label_selector("z in (b,a,b),a=1,m")
    assert selector.requirements == (
        LabelRequirement("a", "=", ("1",)),
        LabelRequirement("m", "exists", ()),
        LabelRequirement("z", "in", ("a", "b")),
    )
    assert selector.exact_value("a") == "1"
    assert selector.exact_value("z") is None
    assert parse_label_selector("x in (foo,,baz)").requirements[0].values == ("", "baz", "foo")
    assert parse_label_selector("x in ()").requirements[0].values == ("",)


def test_in_and_notin_are_plain_values_inside_a_value_position():
    assert parse_label_selector("mode in (in, notin)").matches({"mode": "notin"}) is True
    assert parse_label_selector("mode=in").matches({"mode": "in"}) is True


@pytest.mark.parametrize(
    ("selector", "message"),
    [
        ("a in b", "unable to parse requirement: found 'b' expected: '('"),
        ("a in (b", "unable to parse requirement: found '', expected: ',' or ')'"),
        ("a=b c", "found 'c', expected: ',' or 'end of string'"),
        ("a=b,", "found '', expected: identifier after ','"),
        ("!a=b", "found '=', expected: ',' or 'end of string'"),
        ("a=(", "unable to parse requirement: found '(', expected: identifier"),
        (",a", "found ',', expected: !, identifier, or 'end of string'"),
        (
            "-bad=x",
            'unable to parse requirement: <nil>: Invalid value: "-bad": name part must consist '
            "of alphanumeric characters, '-', '_' or '.', and must start and end with an "
            "alphanumeric character (e.g. 'MyName',  or 'my.name',  or '123-abc', regex used "
            "for validation is '([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]')",
        ),
        (
            "a=@bad",
            'unable to parse requirement: values[0][a]: Invalid value: "@bad": a valid label '
            "must be an empty string or consist of alphanumeric characters, '-', '_' or '.', and "
            "must start and end with an alphanumeric character (e.g. 'MyValue',  or 'my_value',  "
            "or '12345', regex used for validation is '(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?')",
        ),
    ],
)
def test_invalid_label_selectors_raise_the_apiserver_message(selector, message):
    with pytest.raises(SelectorError) as raised:
        parse_label_selector(selector)
    assert str(raised.value) == message
    assert isinstance(raised.value, ValueError)


def test_label_selector_object_with_match_labels_and_expressions():
    selector = label_selector_from_object(
        {
            "matchLabels": {"component": "singleuser-server"},
            "matchExpressions": [
                {"key": "tier", "operator": "In", "values": ["3", "4"]},
                {"key": "gone", "operator": "DoesNotExist"},
            ],
        }
    )
    assert selector.matches(POD_LABELS) is True
    assert selector.matches({**POD_LABELS, "gone": "x"}) is False
    assert selector.matches({**POD_LABELS, "tier": "5"}) is False


def test_label_selector_object_nil_selects_nothing_and_empty_selects_everything():
    assert label_selector_from_object(None).matches(POD_LABELS) is False
    assert label_selector_from_object({}).matches(POD_LABELS) is True
    assert label_selector_from_object({"matchLabels": {}}).matches(None) is True


def test_label_selector_object_errors():
    with pytest.raises(SelectorError, match='^"Equals" is not a valid label selector operator$'):
        label_selector_from_object({"matchExpressions": [{"key": "a", "operator": "Equals"}]})
    with pytest.raises(SelectorError) as raised:
        label_selector_from_object({"matchExpressions": [{"key": "a", "operator": "In"}]})
    assert str(raised.value) == (
        "values: Invalid value: []string(nil): for 'in', 'notin' operators, values set can't be empty"
    )


POD = {
    "metadata": {"name": "jupyter-alice", "namespace": "jhub"},
    "spec": {"nodeName": "gpu-node-1"},
    "status": {"phase": "Running"},
}
POD_FIELDS = {
    "metadata.name",
    "metadata.namespace",
    "spec.nodeName",
    "status.phase",
    "spec.hostNetwork",
}


def test_field_selector_matches_dotted_paths():
    selector = parse_field_selector("spec.nodeName=gpu-node-1,status.phase!=Failed", POD_FIELDS)
    assert selector.matches(POD) is True
    assert parse_field_selector("status.phase==Succeeded", POD_FIELDS).matches(POD) is False
    assert parse_field_selector("metadata.namespace=jhub", POD_FIELDS).matches(POD) is True


def test_missing_field_reads_as_empty_string_so_unbound_pods_match_empty_node_name():
    unbound = {"metadata": {"name": "p"}, "spec": {}, "status": {"phase": "Pending"}}
    assert parse_field_selector("spec.nodeName=", POD_FIELDS).matches(unbound) is True
    assert parse_field_selector("spec.nodeName=", POD_FIELDS).matches(POD) is False
    assert parse_field_selector("spec.nodeName!=", POD_FIELDS).matches(POD) is True
    # Booleans render like strconv.FormatBool, an unset one as "false".
    assert parse_field_selector("spec.hostNetwork=false", POD_FIELDS).matches(unbound) is True


def test_field_selector_exact_value_gives_the_pinned_node():
    selector = parse_field_selector("status.phase!=Failed,spec.nodeName=gpu-node-1", POD_FIELDS)
    assert selector.exact_value("spec.nodeName") == "gpu-node-1"
    assert selector.exact_value("status.phase") is None
    assert parse_field_selector("", POD_FIELDS) == FieldSelector()
    assert parse_field_selector("", POD_FIELDS).matches(POD) is True


def test_field_selector_escapes():
    selector = parse_field_selector(r"metadata.name=a\,b\=c\\d", POD_FIELDS)
    assert selector.exact_value("metadata.name") == "a,b=c\\d"


@pytest.mark.parametrize(
    ("selector", "message"),
    [
        ("spec.schedulerName=x", "field label not supported: spec.schedulerName"),
        ("spec.nodeName = x", "field label not supported: spec.nodeName "),  # nothing is trimmed
        ("spec.nodeName", "invalid selector: 'spec.nodeName'; can't understand 'spec.nodeName'"),
        ("metadata.name=a=b", "invalid field selector: unescaped character in value: 61"),
        (r"metadata.name=a\q", r"invalid field selector: invalid escape sequence: \q"),
    ],
)
def test_invalid_field_selectors_raise_the_apiserver_message(selector, message):
    with pytest.raises(SelectorError) as raised:
        parse_field_selector(selector, POD_FIELDS)
    assert str(raised.value) == message
