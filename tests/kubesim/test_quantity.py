"""kubesim's quantities against k8s.io/apimachinery's ParseQuantity and Quantity.String()."""

from decimal import Decimal

import pytest

from tests.kubesim.quantity import (
    QUANTITY_FORMAT_ERROR,
    QUANTITY_SUFFIX_ERROR,
    QuantityError,
    canonical,
    decode_quantity,
    milli_units,
    parse_quantity,
    parse_with_format,
    whole_units,
)


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("1", Decimal(1)),
        ("0", Decimal(0)),
        ("100m", Decimal("0.1")),
        ("1.5", Decimal("1.5")),
        ("2.5k", Decimal(2500)),
        ("1Ki", Decimal(1024)),
        ("1.5Gi", Decimal(1536 * 1024**2)),
        ("1Ei", Decimal(2**60)),
        ("3M", Decimal(3_000_000)),
        ("1E", Decimal(10**18)),  # exa, not an exponent
        ("1E3", Decimal(1000)),
        ("1e3", Decimal(1000)),
        ("1e+3", Decimal(1000)),
        ("15e-1", Decimal("1.5")),
        ("250u", Decimal("0.00025")),
        ("5n", Decimal("0.000000005")),
        ("-2", Decimal(-2)),
        ("+2", Decimal(2)),
        ("007", Decimal(7)),
        (".5", Decimal("0.5")),
        ("1.", Decimal(1)),
        # Go reads a lone sign or point as zero
        ("+", Decimal(0)),
        ("-", Decimal(0)),
        (".", Decimal(0)),
    ],
)
def test_parse_reads_every_suffix_family_exactly(text, value):
    assert parse_quantity(text) == value


@pytest.mark.parametrize(
    ("text", "fmt"),
    [("1Gi", "BinarySI"), ("1G", "DecimalSI"), ("1", "DecimalSI"), ("1e9", "DecimalExponent")],
)
def test_parse_reports_the_format_the_suffix_gives(text, fmt):
    assert parse_with_format(text)[1] == fmt


def test_values_finer_than_a_nano_unit_round_up_away_from_zero():
    assert parse_quantity("0.0000000001") == Decimal("1e-9")
    assert parse_quantity("1.0000000001") == Decimal("1.000000001")
    assert parse_quantity("-0.0000000001") == Decimal("-1e-9")
    assert parse_quantity("1e-12") == Decimal("1e-9")


def test_binary_and_decimal_si_values_cap_at_the_int64_maximum():
    assert parse_quantity("10E") == 2**63 - 1
    assert parse_quantity("8Ei") == 2**63 - 1
    assert parse_quantity("-10E") == -(2**63 - 1)
    assert parse_quantity("1e20") == Decimal(10**20)  # DecimalExponent has no cap


@pytest.mark.parametrize(
    ("text", "go_error"),
    [
        ("", QUANTITY_FORMAT_ERROR),
        ("8 GB", QUANTITY_FORMAT_ERROR),
        (" 1", QUANTITY_FORMAT_ERROR),  # the parser itself does not trim
        ("1.5.5", QUANTITY_FORMAT_ERROR),
        ("1e3.5", QUANTITY_FORMAT_ERROR),
        ("lots", QUANTITY_FORMAT_ERROR),
        ("1K", QUANTITY_SUFFIX_ERROR),  # k is kilo, Ki is kibi; K is neither
        ("1e", QUANTITY_SUFFIX_ERROR),
        ("1Gi5", QUANTITY_SUFFIX_ERROR),
        ("1m2", QUANTITY_SUFFIX_ERROR),
        ("1ee3", QUANTITY_SUFFIX_ERROR),
    ],
)
def test_what_is_not_a_quantity_is_refused_with_the_apiservers_error(text, go_error):
    with pytest.raises(QuantityError) as caught:
        parse_quantity(text)
    assert caught.value.go_error == go_error
    assert repr(text) in str(caught.value)


def test_absurd_exponents_and_lengths_are_refused_not_computed():
    with pytest.raises(QuantityError, match="out of range"):
        parse_quantity("1e9999999999")
    with pytest.raises(QuantityError, match="digits"):
        parse_quantity("1" * 500)


def test_decoding_trims_strings_and_reads_numbers_as_their_text():
    assert decode_quantity(" 2Gi ") == Decimal(2 * 1024**3)
    assert decode_quantity(2) == Decimal(2)
    assert decode_quantity(0.5) == Decimal("0.5")
    for bad in (True, None, [1], {"a": 1}, float("inf")):
        with pytest.raises(QuantityError):
            decode_quantity(bad)


@pytest.mark.parametrize(
    ("raw", "printed"),
    [
        ("2000m", "2"),
        ("0.5", "500m"),
        ("1024Mi", "1Gi"),
        ("1536Mi", "1536Mi"),
        ("1.5Gi", "1536Mi"),
        ("1.5Ki", "1536"),  # not a whole number of Ki: plain digits
        ("512", "512"),  # binary values under 1Ki print in decimal
        ("0.5Ki", "512"),
        ("1073741824", "1073741824"),  # decimal input stays decimal
        ("1500000", "1500k"),
        ("1000000000", "1G"),
        ("12345", "12345"),
        ("100k", "100k"),
        ("1e3", "1e3"),
        ("1000e0", "1e3"),
        ("1e-3", "1e-3"),
        ("1E", "1E"),
        ("0.1m", "100u"),
        (2, "2"),
        (0.25, "250m"),
        ("-1500m", "-1500m"),
        ("0", "0"),
        ("-0.0", "0"),
        ("00", "0"),
    ],
)
def test_canonical_form_is_what_the_apiserver_stores(raw, printed):
    assert canonical(raw) == printed


def test_scheduler_units_round_up():
    assert milli_units(parse_quantity("1n")) == 1
    assert milli_units(parse_quantity("1500u")) == 2
    assert milli_units(parse_quantity("2")) == 2000
    assert whole_units(parse_quantity("0.5")) == 1
    assert whole_units(parse_quantity("1Gi")) == 2**30
    assert whole_units(parse_quantity("1e30")) == 2**63 - 1  # saturates like int64


def test_repeated_strings_parse_once_and_stay_correct():
    first = parse_quantity("256Mi")
    assert parse_quantity("256Mi") is first
    assert first == 256 * 1024**2
