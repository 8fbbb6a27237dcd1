"""Exact Kubernetes resource quantities, as ``decimal.Decimal``.

Grammar (k8s.io/apimachinery/pkg/api/resource/quantity.go, ``ParseQuantity``)::

    <quantity>        ::= <signedNumber><suffix>
    <signedNumber>    ::= [+|-] <number>
    <number>          ::= <digits> | <digits>.<digits> | <digits>. | .<digits>
    <suffix>          ::= <binarySI> | <decimalExponent> | <decimalSI>
    <binarySI>        ::= Ki | Mi | Gi | Ti | Pi | Ei              (powers of 1024)
    <decimalSI>       ::= n | u | m | "" | k | M | G | T | P | E   (powers of 1000)
    <decimalExponent> ::= e <signed integer> | E <signed integer>

``1E`` is exa while ``1E3`` is an exponent; ``K`` alone is not a suffix (``k`` and ``Ki``
are). Like the Go parser, a non-zero value finer than one nano unit is rounded up (away from
zero) to 1n, so a value read back from the API server compares equal to the one sent.
The Go code also accepts a bare sign or ``.`` as zero; the documented grammar does not, and
neither do we. Values are kept exact: arithmetic goes through ``EXACT_CONTEXT``, which raises
instead of rounding.
"""

from __future__ import annotations

import re
from decimal import (
    ROUND_UP,
    Context,
    Decimal,
    DecimalException,
    Inexact,
    InvalidOperation,
    Overflow,
)

__all__ = [
    "EXACT_CONTEXT",
    "QuantityError",
    "format_bytes",
    "format_cpu",
    "int_value",
    "milli_value",
    "parse_quantity",
]

# Wide enough for any accepted quantity and sums of many of them; traps rounding so that a
# result is exact or an exception, never silently rounded.
EXACT_CONTEXT = Context(prec=400, traps=[InvalidOperation, Overflow, Inexact])
_ROUNDING_CONTEXT = Context(prec=400, traps=[InvalidOperation, Overflow])

_MAX_DIGITS = 100  # mantissa digits; far beyond any int64-backed Go Quantity
_MAX_EXPONENT = 100  # |power of ten| after applying the suffix

_BINARY_POWERS = {"Ki": 1, "Mi": 2, "Gi": 3, "Ti": 4, "Pi": 5, "Ei": 6}  # of 1024
_DECIMAL_EXPONENTS = {"n": -9, "u": -6, "m": -3, "k": 3, "M": 6, "G": 9, "T": 12, "P": 15, "E": 18}
_NANO = Decimal("1e-9")

_QUANTITY_RE = re.compile(
    r"(?P<sign>[+-]?)(?P<whole>[0-9]*)(?:\.(?P<fraction>[0-9]*))?"
    # Order matters: "Ei" before exponent "E3" before exa "E".
    r"(?P<suffix>[KMGTPE]i|[eE][+-]?[0-9]+|[numkMGTPE])?",
    re.ASCII,
)


class QuantityError(ValueError):
    """A value that is not a valid Kubernetes quantity."""

    def __init__(self, value: object, reason: str) -> None:
        super().__init__(f"invalid quantity {value!r}: {reason}")
        self.value = value
        self.reason = reason


def parse_quantity(value: str | int | float | Decimal) -> Decimal:
    """Return the exact value of a quantity (``"1.5Gi"`` -> ``Decimal(1610612736)``).

    Accepts the string forms above, ints, finite floats (via ``str()``) and finite Decimals.
    """
    if isinstance(value, bool) or not isinstance(value, str | int | float | Decimal):
        raise QuantityError(value, f"expected a string or number, not {type(value).__name__}")
    text = value if isinstance(value, str) else str(value)
    match = _QUANTITY_RE.fullmatch(text)
    if match is None:
        raise QuantityError(value, "does not match <sign><number><suffix>")
    whole, fraction = match["whole"], match["fraction"] or ""
    if not whole and not fraction:
        raise QuantityError(value, "no digits")
    digits = (whole + fraction).lstrip("0") or "0"
    if len(digits) > _MAX_DIGITS:
        raise QuantityError(value, f"more than {_MAX_DIGITS} significant digits")

    suffix = match["suffix"] or ""
    power_of_ten = -len(fraction)
    binary_power = 0
    if suffix in _BINARY_POWERS:
        binary_power = 10 * _BINARY_POWERS[suffix]
    elif suffix in _DECIMAL_EXPONENTS:
        power_of_ten += _DECIMAL_EXPONENTS[suffix]
    elif suffix:  # e/E exponent; bound its length before turning it into a number
        exponent_text = suffix[1:].lstrip("+")
        negative_exponent = exponent_text.startswith("-")
        exponent_digits = exponent_text.lstrip("-").lstrip("0") or "0"
        if len(exponent_digits) > 4:
            raise QuantityError(value, "exponent out of range")
        power_of_ten += -int(exponent_digits) if negative_exponent else int(exponent_digits)
    if abs(power_of_ten) > _MAX_EXPONENT:
        raise QuantityError(value, "exponent out of range")

    number = Decimal(f"{match['sign']}{digits}E{power_of_ten}")  # string -> Decimal is exact
    try:
        if binary_power:
            number = EXACT_CONTEXT.multiply(number, Decimal(1 << binary_power))
        return _canonical(number)
    except DecimalException as error:  # pragma: no cover - bounded above
        raise QuantityError(value, "out of range") from error


def _canonical(number: Decimal) -> Decimal:
    """Round up to nano precision like Go does, then drop exponent noise for readable reprs."""
    if number.as_tuple().exponent < -9:  # type: ignore[operator]
        number = number.quantize(_NANO, rounding=ROUND_UP, context=_ROUNDING_CONTEXT)
    if number == 0:
        return Decimal(0)
    if number == number.to_integral_value():
        return number.quantize(Decimal(1), context=EXACT_CONTEXT)
    return number.normalize(context=EXACT_CONTEXT)


def _round_away_from_zero(number: Decimal) -> Decimal:
    return number.quantize(Decimal(1), rounding=ROUND_UP, context=_ROUNDING_CONTEXT)


def int_value(amount: Decimal) -> int:
    """Go's ``Quantity.Value()``: whole units, rounded up away from zero (``0.5`` -> 1)."""
    return int(_round_away_from_zero(amount))


def milli_value(amount: Decimal) -> int:
    """Go's ``Quantity.MilliValue()``: thousandths, rounded up away from zero (cpu millicores)."""
    return int_value(EXACT_CONTEXT.multiply(amount, Decimal(1000)))


def _plain(integral: Decimal) -> str:
    """Digits of an integral value without exponent notation ("1E+3" -> "1000")."""
    if integral == 0:
        return "0"  # not "-0"
    return format(integral.quantize(Decimal(1), context=EXACT_CONTEXT), "f")


def format_cpu(cores: Decimal) -> str:
    """Cores the way kubectl prints them: ``2``, ``500m``, ``250u``, ``5n``."""
    for suffix, scale in (("", 1), ("m", 1000), ("u", 1000**2)):
        scaled = EXACT_CONTEXT.multiply(cores, Decimal(scale))
        if scaled == scaled.to_integral_value():
            return _plain(scaled) + suffix
    nanos = _round_away_from_zero(EXACT_CONTEXT.multiply(cores, Decimal(1000**3)))
    return _plain(nanos) + "n"


def format_bytes(size: Decimal) -> str:
    """Bytes with the largest exact binary suffix (``1Gi``, ``1536Mi``), else plain digits.

    A fractional byte count is rounded up, as Go's ``Quantity.Value()`` does.
    """
    size = _round_away_from_zero(size)
    if size != 0:
        for suffix, power in sorted(_BINARY_POWERS.items(), key=lambda item: -item[1]):
            unit = Decimal(1 << (10 * power))
            if EXACT_CONTEXT.remainder(size, unit) == 0:
                return _plain(EXACT_CONTEXT.divide_int(size, unit)) + suffix
    return _plain(size)
