from decimal import Decimal

import pytest

from thinkube_core.quantity import (
    QuantityError,
    format_bytes,
    format_cpu,
    int_value,
    milli_value,
    parse_quantity,
)

GI = 1024**3


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        # plain numbers and decimals
        ("0", Decimal(0)),
        ("-0", Decimal(0)),
        ("7", Decimal(7)),
        ("007", Decimal(7)),
        ("0.1", Decimal("0.1")),
        (".5", Decimal("0.5")),
        ("1.", Decimal(1)),
        ("+2", Decimal(2)),
        ("-3.25", Decimal("-3.25")),
        # binary suffixes: powers of 1024
        ("1Ki", Decimal(1024)),
        ("1Mi", Decimal(1024**2)),
        ("1Gi", Decimal(GI)),
        ("1.5Gi", Decimal(1610612736)),  # 1.5 * 1073741824
        ("1Ti", Decimal(1099511627776)),  # 1024**4
        ("2Pi", Decimal(2 * 1024**5)),
        ("1Ei", Decimal(1152921504606846976)),  # 2**60
        ("0.5Ki", Decimal(512)),
        # decimal suffixes: powers of 1000
        ("1n", Decimal("0.000000001")),
        ("250u", Decimal("0.00025")),
        ("100m", Decimal("0.1")),
        ("1k", Decimal(1000)),
        ("500M", Decimal(500_000_000)),
        ("1G", Decimal(10**9)),
        ("3T", Decimal(3 * 10**12)),
        ("1P", Decimal(10**15)),
        ("1E", Decimal(10**18)),  # a bare E is exa, not an exponent
        # decimal exponents
        ("1e3", Decimal(1000)),
        ("1E3", Decimal(1000)),
        ("1e+3", Decimal(1000)),
        ("1.5e-3", Decimal("0.0015")),
        ("-2E2", Decimal(-200)),
        ("12e0", Decimal(12)),
        # finer than nano rounds up (away from zero) to 1n, as the Go parser does
        ("0.1n", Decimal("0.000000001")),
        ("-0.1n", Decimal("-0.000000001")),
        ("1e-20", Decimal("0.000000001")),
        ("1.0000000001", Decimal("1.000000001")),
        # exact beyond float precision: 2**53 + 1 would round as a float
        ("9007199254740993", Decimal(9007199254740993)),
        ("12345678901234567890.123456789", Decimal("12345678901234567890.123456789")),
    ],
)
def test_parse_strings(text, expected):
    assert parse_quantity(text) == expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (0, Decimal(0)),
        (4, Decimal(4)),
        (10**30, Decimal(10**30)),
        (0.5, Decimal("0.5")),
        (0.1, Decimal("0.1")),  # via str(0.1) == "0.1", not the binary 0.1000000000000000055...
        (1e20, Decimal(10**20)),  # str() gives "1e+20"
        (Decimal("1.5"), Decimal("1.5")),
        (Decimal("1E+3"), Decimal(1000)),
    ],
)
def test_parse_numbers(value, expected):
    assert parse_quantity(value) == expected


def test_results_print_without_exponent_noise():
    assert str(parse_quantity("1.5Gi")) == "1610612736"
    assert str(parse_quantity("1e3")) == "1000"
    assert str(parse_quantity("100m")) == "0.1"


@pytest.mark.parametrize(
    "bad",
    [
        "",
        "Ki",  # a bare suffix
        "m",
        "e3",
        ".",
        "+",
        "-",
        "Kb",
        "1K",  # kilo is lower-case k
        "1KB",
        "1kb",
        "1b",
        "1.5.5",
        "1e",
        "1e1.5",  # the exponent is an integer
        "1Gi3",
        "1ki",
        " 1",
        "1 ",
        "1 Gi",
        "1\n",
        "1_000",
        "0x10",
        "١",  # non-ASCII digit
        "inf",
        "nan",
        "Infinity",
        "1e99999",
        "1e101",  # out of our bounded range
        "1" * 101,
    ],
)
def test_rejects_bad_strings(bad):
    with pytest.raises(QuantityError) as caught:
        parse_quantity(bad)
    assert repr(bad) in str(caught.value)


@pytest.mark.parametrize(
    "bad",
    [True, False, None, [], {}, b"1", float("inf"), float("nan"), Decimal("NaN"), Decimal("-Inf")],
)
def test_rejects_bad_types_and_non_finite(bad):
    with pytest.raises(QuantityError):
        parse_quantity(bad)


def test_quantity_error_is_value_error():
    assert issubclass(QuantityError, ValueError)


@pytest.mark.parametrize(
    ("cores", "text"),
    [
        ("2", "2"),
        ("0.5", "500m"),
        ("1.5", "1500m"),
        ("0.1", "100m"),
        ("0.00025", "250u"),
        ("0.000000005", "5n"),
        ("0", "0"),
        ("1000", "1000"),
        ("-0.5", "-500m"),
    ],
)
def test_format_cpu(cores, text):
    assert format_cpu(Decimal(cores)) == text


@pytest.mark.parametrize(
    ("size", "text"),
    [
        (GI, "1Gi"),
        (1610612736, "1536Mi"),  # 1.5Gi is not a whole Gi; 1536Mi is exact
        (1024, "1Ki"),
        (1024**4, "1Ti"),
        (1024**6 * 1024, "1024Ei"),
        (1000, "1000"),
        (500_000_000, "500000000"),
        (0, "0"),
        ("0.5", "1"),  # a fraction of a byte rounds up, like Quantity.Value()
    ],
)
def test_format_bytes(size, text):
    assert format_bytes(Decimal(size)) == text


def test_round_trip_through_format():
    for text in ["1Gi", "1536Mi", "64Ki", "3Ti"]:
        assert format_bytes(parse_quantity(text)) == text
    for text in ["2", "500m", "1500m", "250u"]:
        assert format_cpu(parse_quantity(text)) == text


def test_go_value_and_milli_value_round_away_from_zero():
    assert int_value(Decimal("0.5")) == 1
    assert int_value(Decimal("-0.5")) == -1
    assert int_value(Decimal(GI)) == GI
    assert milli_value(Decimal("0.0001")) == 1  # 100u -> 1m
    assert milli_value(Decimal("1.5")) == 1500
