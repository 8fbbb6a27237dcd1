"""What a job submission's checks (spec, placement) share: the error they raise — what is
wrong, and which field of the submission it is about — and the reader of a whole number."""

from __future__ import annotations

from collections.abc import Mapping
from decimal import Decimal
from typing import Any

__all__ = ["JobError", "whole_number"]


class JobError(ValueError):
    """A submission that cannot be queued; `field` names what is wrong."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


def whole_number(
    fields: Mapping[str, Any], name: str, default: int, lowest: int, highest: int, message: str
) -> int:
    """`fields[name]` as a whole number from `lowest` to `highest` (`default` when absent or
    empty); JobError(name, message) otherwise (booleans, fractions, text, infinities)."""
    value = fields.get(name, default)
    if value in (None, ""):
        return default
    try:
        number = Decimal(str(value).strip())
    except ArithmeticError:
        number = None
    if (
        isinstance(value, bool)
        or number is None
        or not number.is_finite()
        or number != number.to_integral_value()
        or not lowest <= number <= highest
    ):
        raise JobError(name, message)
    return int(number)
