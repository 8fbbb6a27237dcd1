"""Yes/no values as people and forms write them, read one way everywhere (REST options,
query arguments): true, yes, on, 1 and false, no, off, 0 (any case), or a JSON boolean."""

from __future__ import annotations

from typing import Any

TRUE_WORDS = frozenset({"true", "yes", "on", "1"})
FALSE_WORDS = frozenset({"false", "no", "off", "0"})


def parse_flag(value: Any, empty: bool | None = None) -> bool | None:
    """The flag's value; `empty` for an empty string; None when it is not a flag."""
    if isinstance(value, bool):
        return value
    if not isinstance(value, str):
        return None
    text = value.strip().lower()
    if text == "":
        return empty
    if text in TRUE_WORDS:
        return True
    if text in FALSE_WORDS:
        return False
    return None
