"""Kubernetes resource quantities, parsed and printed the way k8s.io/apimachinery does.

``parse_quantity`` follows ``resource.ParseQuantity``: an optional sign, digits with an
optional fraction (``1.``, ``.5``; a lone sign or ``.`` is zero), then a suffix — binary
``Ki Mi Gi Ti Pi Ei`` (powers of 1024), decimal ``n u m "" k M G T P E`` (powers of 1000),
or a decimal exponent ``e``/``E`` followed by a signed integer (``1E`` alone is exa). Values
are exact ``Decimal``s, except where Go itself changes them: a value finer than 1n rounds up
(away from zero) to the next nano unit, and a binary or decimal-SI value whose magnitude
exceeds 2^63-1 is capped there. Exponents must fit an int32 (Go silently wraps wider ones).

``decode_quantity`` is the JSON decoder's view (``Quantity.UnmarshalJSON``): strings are
trimmed, JSON numbers are read as their text. ``canonical`` is ``Quantity.String()``, the form
the apiserver stores and prints. ``milli_units`` and ``whole_units`` are ``MilliValue()`` and
``Value()``, the integers kube-scheduler compares.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from decimal import ROUND_CEILING, ROUND_UP, Context, Decimal

__all__ = [
    "BINARY_SI",
    "DECIMAL_EXPONENT",
    "DECIMAL_SI",
    "QUANTITY_FORMAT_ERROR",
    "QUANTITY_SUFFIX_ERROR",
    "QuantityError",
    "QuantityParts",
    "canonical",
    "decode_quantity",
    "milli_units",
    "parse_quantity",
    "parse_with_format",
    "quantity_parts",
    "quantity_text",
    "whole_units",
]

BINARY_SI, DECIMAL_SI, DECIMAL_EXPONENT = "BinarySI", "DecimalSI", "DecimalExponent"

# The errors resource.ParseQuantity returns, which the apiserver shows as they are.
QUANTITY_FORMAT_ERROR = (
    "quantities must match the regular expression '^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$'"
)
QUANTITY_SUFFIX_ERROR = "unable to parse quantity's suffix"

_DECIMAL_SUFFIXES = {"n": -9, "u": -6, "m": -3, "": 0, "k": 3, "M": 6, "G": 9, "T": 12}
_DECIMAL_SUFFIXES.update({"P": 15, "E": 18})
_BINARY_SUFFIXES = {"Ki": 10, "Mi": 20, "Gi": 30, "Ti": 40, "Pi": 50, "Ei": 60}
_DECIMAL_SUFFIX_OF = {exponent: suffix for suffix, exponent in _DECIMAL_SUFFIXES.items()}
_BINARY_SUFFIX_OF = {power: suffix for suffix, power in _BINARY_SUFFIXES.items()}
_SUFFIX_CHARACTERS = frozenset("eEinumkKMGTP")
_DIGITS = frozenset("0123456789")
_INT32 = 2**31
_INT64_MAX = 2**63 - 1
_NANO = Decimal("1e-9")
_MAX_DIGITS = 400  # Go reads any length; nobody writes more, and this keeps results exact
_CONTEXT = Context(prec=_MAX_DIGITS + 100, Emax=2 * _INT32, Emin=-2 * _INT32)


class QuantityError(ValueError):
    """Not a Kubernetes quantity; ``str()`` says why in plain words, ``go_error`` is the
    error text the apiserver answers with."""

    def __init__(self, message: str, go_error: str = QUANTITY_FORMAT_ERROR):
        super().__init__(message)
        self.go_error = go_error


def _split(text: str) -> tuple[str, str, str, str]:
    """(sign, whole digits, fraction digits, suffix) as Go's parseQuantityString cuts them."""
    position, end = 0, len(text)
    sign = ""
    if position < end and text[position] in "+-":
        sign, position = text[position], position + 1
    start = position
    while position < end and text[position] in _DIGITS:
        position += 1
    whole = text[start:position]
    fraction = ""
    if position < end and text[position] == ".":
        position += 1
        start = position
        while position < end and text[position] in _DIGITS:
            position += 1
        fraction = text[start:position]
    suffix_start = position
    while position < end and text[position] in _SUFFIX_CHARACTERS:
        position += 1
    if position < end and text[position] in "+-":
        position += 1
    while position < end and text[position] in _DIGITS:
        position += 1
    if position != end:
        raise QuantityError(f"{text!r} is not a quantity: {QUANTITY_FORMAT_ERROR}")
    return sign, whole, fraction, text[suffix_start:]


def _interpret(text: str, suffix: str) -> tuple[int, int, str]:
    """(power of ten, power of two, format) a suffix stands for."""
    if suffix in _DECIMAL_SUFFIXES:
        return _DECIMAL_SUFFIXES[suffix], 0, DECIMAL_SI
    if suffix in _BINARY_SUFFIXES:
        return 0, _BINARY_SUFFIXES[suffix], BINARY_SI
    exponent = suffix[1:]
    digits = exponent[1:] if exponent[:1] in ("+", "-") else exponent
    if suffix[:1] in ("e", "E") and digits and set(digits) <= _DIGITS:
        value = int(exponent)
        if -_INT32 <= value < _INT32:
            return value, 0, DECIMAL_EXPONENT
        raise QuantityError(f"{text!r} is not a quantity: its exponent is out of range")
    raise QuantityError(
        f"{text!r} is not a quantity: unknown suffix {suffix!r}", QUANTITY_SUFFIX_ERROR
    )


@dataclass(frozen=True)
class QuantityParts:
    """A quantity string cut up as ``ParseQuantity`` cuts it (for Go-faithful messages)."""

    sign: str  # "", "+" or "-"
    numerator: str  # whole digits without leading zeros, "0" when none are left
    denominator: str  # fraction digits as written
    suffix: str
    format: str
    exponent: int  # the suffix's power of ten, or of two for BinarySI


def quantity_parts(raw: object) -> QuantityParts:
    text = quantity_text(raw)
    sign, whole, fraction, suffix = _split(text)
    power_of_ten, power_of_two, fmt = _interpret(text, suffix)
    exponent = power_of_two if fmt == BINARY_SI else power_of_ten
    return QuantityParts(sign, whole.lstrip("0") or "0", fraction, suffix, fmt, exponent)


def parse_with_format(text: str) -> tuple[Decimal, str]:
    """The exact value of a quantity string and its format (BinarySI, DecimalSI or
    DecimalExponent), as ``resource.ParseQuantity`` reads it."""
    if not isinstance(text, str):
        raise QuantityError(f"{text!r} is not a quantity: expected a string")
    return _parse(text)


@functools.lru_cache(maxsize=8192)  # a cluster repeats the same few strings many times
def _parse(text: str) -> tuple[Decimal, str]:
    if not text:
        raise QuantityError("'' is not a quantity: it is empty")
    sign, whole, fraction, suffix = _split(text)
    power_of_ten, power_of_two, fmt = _interpret(text, suffix)
    digits = (whole + fraction).lstrip("0") or "0"
    if len(digits) > _MAX_DIGITS:
        raise QuantityError(f"{text[:20]!r}... is not a quantity: more than {_MAX_DIGITS} digits")
    value = Decimal(f"{sign}{digits}E{power_of_ten - len(fraction)}")  # exact
    if power_of_two:
        value = _CONTEXT.multiply(value, Decimal(2**power_of_two))
    if value.as_tuple().exponent < -9:  # type: ignore[operator]
        value = value.quantize(_NANO, rounding=ROUND_UP, context=_CONTEXT)
    if fmt != DECIMAL_EXPONENT and abs(value) > _INT64_MAX:
        value = Decimal(_INT64_MAX).copy_sign(value)
    if value == 0:
        value = Decimal(0)  # no "-0", no "0E-9"
    return value, fmt


def parse_quantity(text: str) -> Decimal:
    """The exact value of a quantity string (``"1.5Gi"`` -> ``Decimal(1610612736)``)."""
    return parse_with_format(text)[0]


def quantity_text(raw: object) -> str:
    """The text the decoder parses: a JSON string trimmed, a JSON number as written."""
    if isinstance(raw, str):
        return raw.strip()
    if isinstance(raw, int | float) and not isinstance(raw, bool):
        text = repr(raw)
        if text in ("inf", "-inf", "nan"):
            raise QuantityError(f"{text} is not a quantity")
        return text
    raise QuantityError(f"a quantity must be a string or a number, not {type(raw).__name__}")


def decode_quantity(raw: object) -> Decimal:
    """A quantity as it arrives in a JSON body: a string (trimmed) or a number."""
    return parse_quantity(quantity_text(raw))


def _trailing_zeros(number: int) -> tuple[int, int]:
    """``number`` without its factors of ten, and how many there were."""
    times = 0
    while number and number % 10 == 0:
        number, times = number // 10, times + 1
    return number, times


def canonical(raw: object) -> str:
    """``Quantity.String()`` of a decoded quantity: ``"2000m"`` -> ``"2"``, ``"0.5"`` ->
    ``"500m"``, ``"1024Mi"`` -> ``"1Gi"``, ``"1e3"`` -> ``"1e3"``."""
    value, fmt = parse_with_format(quantity_text(raw))
    if value == 0:
        return "0"
    if fmt == BINARY_SI and (abs(value) < 1024 or value != value.to_integral_value()):
        fmt = DECIMAL_SI  # small or fractional binary values print in decimal
    if fmt == BINARY_SI:
        amount, power = int(value), 0
        while amount % 1024 == 0 and power < 60:
            amount, power = amount // 1024, power + 10
        return f"{amount}{_BINARY_SUFFIX_OF.get(power, '')}"
    sign, digit_tuple, exponent = value.as_tuple()
    mantissa, removed = _trailing_zeros(int("".join(map(str, digit_tuple))))
    exponent += removed  # type: ignore[operator]
    shift = exponent % 3  # type: ignore[operator]
    mantissa, exponent = mantissa * 10**shift, exponent - shift  # type: ignore[operator]
    number = f"{'-' if sign else ''}{mantissa}"
    if fmt == DECIMAL_EXPONENT:
        return number + (f"e{exponent}" if exponent else "")
    suffix = _DECIMAL_SUFFIX_OF.get(exponent)  # type: ignore[call-overload]
    return number + (suffix if suffix is not None else f"e{exponent}")


def _ceiling(value: Decimal) -> int:
    if value > _INT64_MAX:  # Go's int64 arithmetic cannot hold more; neither do we
        return _INT64_MAX
    return int(value.to_integral_value(rounding=ROUND_CEILING))


def whole_units(value: Decimal) -> int:
    """``Quantity.Value()``: whole units, a fraction rounding up (``0.5`` -> 1)."""
    return _ceiling(value)


def milli_units(value: Decimal) -> int:
    """``Quantity.MilliValue()``: thousandths, rounding up (cpu millicores)."""
    return _ceiling(value.scaleb(3, context=_CONTEXT))
