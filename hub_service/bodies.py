"""Request bodies at the service's edge: the media type, the size and strict JSON.

:func:`parse_json_body` is pure: it takes the bytes and the ``Content-Type`` a request came
with and returns the parsed document, or raises :class:`BodyError` with the HTTP status to
answer and, where one value is at fault, the dotted path of that value (``"metadata.cpu_limit"``,
``"tags.2"``), as the catalog's own errors name fields.

What it refuses, beyond what ``json.loads`` refuses: a media type other than
``application/json``; a ``charset`` other than UTF-8; bytes that are not UTF-8 (a UTF-16 body
is not); a byte order mark; ``NaN`` and ``Infinity``; a key twice in one object (``json``
would keep the last, silently); nesting deeper than ``MAX_DEPTH`` (``json`` would recurse
until it fails); a number that is not finite as a float (``1e400``) or an integer longer
than ``MAX_INTEGER_DIGITS`` digits; a lone surrogate (``"\\ud800"``), in a key or a value,
which no UTF-8 encoder can write back.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

__all__ = [
    "MAX_DEPTH",
    "MAX_INTEGER_DIGITS",
    "BodyError",
    "parse_json_body",
]

MAX_DEPTH = 16  # arrays and objects inside each other; a catalog entry needs 2
MAX_INTEGER_DIGITS = 20  # every integer this service reads is far shorter

# A JSON string (escapes included), to be skipped when counting brackets.
_JSON_STRING_RE = re.compile(r'"(?:[^"\\]|\\.)*"', re.DOTALL)
_BRACKETS_RE = re.compile(r"[\[\]{}]")


class BodyError(ValueError):
    """A request body the service refuses: ``status`` is the HTTP status to answer (400,
    415), ``field`` the dotted path of the value at fault or ``None`` for the body as a
    whole; ``str(error)`` is ``"<field>: <message>"`` like the catalog's errors."""

    def __init__(self, status: int, field: str | None, message: str) -> None:
        self.status = status
        self.field = field
        self.message = message
        super().__init__(f"{field}: {message}" if field else message)


def check_json_media_type(content_type: str | None) -> None:
    """Refuse (415) anything but ``application/json``, with no charset or UTF-8."""
    if not content_type:
        raise BodyError(415, None, "send the body as JSON, with Content-Type: application/json")
    media_type, *parameters = content_type.split(";")
    if media_type.strip().lower() != "application/json":
        shown = media_type.strip()[:60]
        raise BodyError(
            415,
            None,
            f"the body must be JSON (Content-Type: application/json), not {shown!r}",
        )
    for parameter in parameters:
        name, _, value = parameter.partition("=")
        if name.strip().lower() == "charset":
            charset = value.strip().strip('"').lower()
            if charset != "utf-8":
                raise BodyError(
                    415, None, f"the body must be UTF-8 (charset=utf-8), not {value.strip()[:40]!r}"
                )


def _nesting_depth_exceeds(text: str, limit: int) -> bool:
    """Whether arrays and objects in the JSON text nest deeper than ``limit`` (brackets inside
    strings do not count). Checked before parsing: the parser itself recurses."""
    depth = 0
    for bracket in _BRACKETS_RE.findall(_JSON_STRING_RE.sub("", text)):
        if bracket in "[{":
            depth += 1
            if depth > limit:
                return True
        else:
            depth -= 1
    return False


class _Object(dict):
    """A parsed JSON object; ``repeated`` is a key that appeared more than once in it."""

    repeated: str | None = None


def _object(pairs: list[tuple[str, Any]]) -> _Object:
    result = _Object()
    for key, value in pairs:
        if key in result and result.repeated is None:
            result.repeated = key
        result[key] = value
    return result


class _LongInteger:
    """An integer literal too long to be a value this service reads (kept as text, never
    converted: Python refuses to convert more than 4300 digits and is slow near that)."""

    def __init__(self, text: str) -> None:
        self.text = text


def _integer(text: str) -> int | _LongInteger:
    return int(text) if len(text.lstrip("-")) <= MAX_INTEGER_DIGITS else _LongInteger(text)


def _refuse_constant(name: str) -> None:
    raise ValueError(f"{name} is not a JSON number")


def _path(parent: str, key: str | int) -> str:
    return f"{parent}.{key}" if parent else str(key)


def _is_unicode(text: str) -> bool:
    """Whether ``text`` has no lone surrogate (``"\\ud800"`` parses, but is no character)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _check(value: Any, path: str) -> None:
    """Refuse what json.loads let through: repeated keys, lone surrogates, numbers that are
    not finite or too long. Iterative, so a wide document costs no recursion."""
    pending: list[tuple[Any, str]] = [(value, path)]
    while pending:
        value, path = pending.pop()
        if isinstance(value, str):
            if not _is_unicode(value):
                raise BodyError(400, path or None, "is not valid Unicode (a lone surrogate)")
        elif isinstance(value, float):
            if not math.isfinite(value):
                raise BodyError(400, path or None, "is out of range (not a finite number)")
        elif isinstance(value, _LongInteger):
            raise BodyError(
                400, path or None, f"is out of range (more than {MAX_INTEGER_DIGITS} digits)"
            )
        elif isinstance(value, _Object):
            for key, item in value.items():
                if not _is_unicode(key):
                    raise BodyError(400, path or None, "has a key that is not valid Unicode")
                pending.append((item, _path(path, key)))
            if value.repeated is not None:
                raise BodyError(400, _path(path, value.repeated), "appears more than once")
        elif isinstance(value, list):
            pending.extend((item, _path(path, index)) for index, item in enumerate(value))


def parse_json_body(body: bytes, content_type: str | None) -> Any:
    """The JSON document in ``body``, sent with ``content_type``; :class:`BodyError` when
    the service refuses it (see the module's description)."""
    check_json_media_type(content_type)
    if not body.strip():
        raise BodyError(400, None, "the body is empty: send a JSON object")
    if body.startswith(b"\xef\xbb\xbf"):
        raise BodyError(400, None, "the body starts with a byte order mark: send plain UTF-8")
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as error:
        raise BodyError(
            400, None, f"the body is not UTF-8 text (a byte that cannot be at {error.start})"
        ) from None
    if _nesting_depth_exceeds(text, MAX_DEPTH):
        raise BodyError(400, None, f"the body nests arrays and objects more than {MAX_DEPTH} deep")
    try:
        document = json.loads(
            text,
            object_pairs_hook=_object,
            parse_int=_integer,
            parse_constant=_refuse_constant,
        )
    except json.JSONDecodeError as error:
        raise BodyError(
            400,
            None,
            f"the body is not valid JSON ({error.msg.lower()} at line {error.lineno}, "
            f"column {error.colno})",
        ) from None
    except ValueError as error:  # NaN, Infinity
        raise BodyError(400, None, f"the body is not valid JSON ({error})") from None
    _check(document, "")
    return document
