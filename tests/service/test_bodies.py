"""hub_service.bodies: the service's strict reading of a JSON request body (pure, no server;
tests/service/test_edge.py sends the same bodies to a live service)."""

from __future__ import annotations

import json

import pytest

from hub_service.bodies import MAX_DEPTH, MAX_INTEGER_DIGITS, BodyError, parse_json_body

JSON = "application/json"


def refused(body: bytes, content_type: str | None = JSON) -> BodyError:
    with pytest.raises(BodyError) as caught:
        parse_json_body(body, content_type)
    return caught.value


@pytest.mark.parametrize(
    "content_type",
    [
        "application/json",
        "Application/JSON",
        "application/json; charset=utf-8",
        'application/json;charset="UTF-8"',
    ],
)
def test_json_in_utf8_is_read(content_type):
    body = '{"a": [1, 2.5, "ü", {"b": null}], "c": true}'.encode()
    assert parse_json_body(body, content_type) == {"a": [1, 2.5, "ü", {"b": None}], "c": True}


@pytest.mark.parametrize(
    "content_type",
    [None, "", "text/plain", "application/x-www-form-urlencoded", "application/json-seq"],
)
def test_other_media_types_are_415(content_type):
    error = refused(b'{"a": 1}', content_type)
    assert (error.status, error.field) == (415, None)
    assert "Content-Type: application/json" in error.message


@pytest.mark.parametrize("charset", ["utf-16", "latin-1", "utf8", "us-ascii"])
def test_a_charset_other_than_utf8_is_415(charset):
    error = refused(b'{"a": 1}', f"application/json; charset={charset}")
    assert error.status == 415
    assert error.message == f"the body must be UTF-8 (charset=utf-8), not {charset!r}"


@pytest.mark.parametrize(
    ("body", "says"),
    [
        ('{"image": "x"}'.encode("utf-16"), "not UTF-8"),
        (b'{"a": "\xff"}', "not UTF-8"),
        (b'{"a": "\xed\xa0\x80"}', "not UTF-8"),  # a surrogate encoded as UTF-8
        (b"\xef\xbb\xbf{}", "byte order mark"),
        (b"", "empty"),
        (b"  \n", "empty"),
        (b"{not json", "not valid JSON"),
        (b'{"a": 1} {"b": 2}', "not valid JSON"),
        (b'{"a": NaN}', "NaN is not a JSON number"),
        (b'{"a": Infinity}', "Infinity is not a JSON number"),
        (b'{"a": -Infinity}', "-Infinity is not a JSON number"),
    ],
)
def test_bodies_that_are_not_json_text_are_400(body, says):
    error = refused(body)
    assert (error.status, error.field) == (400, None)
    assert says in error.message


def test_nesting_is_bounded_before_parsing():
    deepest = b"[" * MAX_DEPTH + b"]" * MAX_DEPTH
    assert parse_json_body(deepest, JSON) is not None
    for body in (
        b"[" * (MAX_DEPTH + 1) + b"]" * (MAX_DEPTH + 1),
        b"[" * 100_000,
        b'{"a":' * 50_000,
    ):
        error = refused(body)
        assert (error.status, error.field) == (400, None)
        assert f"more than {MAX_DEPTH} deep" in error.message
    # brackets inside strings are text, not nesting
    text = json.dumps({"a": "[" * 1000 + '"\\' + "{" * 1000}).encode()
    assert parse_json_body(text, JSON) == {"a": "[" * 1000 + '"\\' + "{" * 1000}


@pytest.mark.parametrize(
    ("body", "field"),
    [
        (b'{"image": "a", "image": "b"}', "image"),
        (b'{"metadata": {"cpu_limit": 1, "cpu_limit": 2}}', "metadata.cpu_limit"),
        (b'{"tags": [{"x": 1, "x": 1}]}', "tags.0.x"),
    ],
)
def test_a_key_twice_in_one_object_is_400_naming_it(body, field):
    error = refused(body)
    assert (error.status, error.field, error.message) == (400, field, "appears more than once")


@pytest.mark.parametrize(
    ("body", "field"),
    [
        (b'{"description": "\\ud800"}', "description"),
        (b'{"tags": ["ok", "x\\udfff"]}', "tags.1"),
        (b'{"metadata": {"\\ud83d": 1}}', "metadata"),  # in a key
        (b'"\\udc00"', None),
    ],
)
def test_a_lone_surrogate_anywhere_is_400(body, field):
    error = refused(body)
    assert (error.status, error.field) == (400, field)
    assert "not valid Unicode" in error.message


def test_a_surrogate_pair_is_one_character():
    assert parse_json_body(b'{"a": "\\ud83d\\ude00"}', JSON) == {"a": "\U0001f600"}


@pytest.mark.parametrize(
    ("body", "field"),
    [
        (b'{"metadata": {"cpu_limit": 1e400}}', "metadata.cpu_limit"),
        (b'{"a": [-1e999]}', "a.0"),
        (('{"metadata": {"cpu_limit": ' + "9" * 4000 + "}}").encode(), "metadata.cpu_limit"),
        (('{"a": -' + "1" * (MAX_INTEGER_DIGITS + 1) + "}").encode(), "a"),
    ],
)
def test_numbers_out_of_range_are_400_naming_the_field(body, field):
    error = refused(body)
    assert (error.status, error.field) == (400, field)
    assert "out of range" in error.message


def test_long_integers_within_bounds_and_tiny_floats_are_read():
    assert parse_json_body(("[" + "9" * MAX_INTEGER_DIGITS + "]").encode(), JSON) == [
        int("9" * MAX_INTEGER_DIGITS)
    ]
    # underflow is a number (0.0): the catalog's own range says whether it is acceptable
    assert parse_json_body(b"[1e-400]", JSON) == [0.0]


def test_errors_read_like_the_catalogs():
    error = refused(b'{"metadata": {"cpu_limit": 1e400}}')
    assert str(error) == "metadata.cpu_limit: is out of range (not a finite number)"
    assert str(refused(b"")) == "the body is empty: send a JSON object"
