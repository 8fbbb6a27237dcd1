"""The image catalog: which notebook images users may start, stored in a SQL database.

An entry, as served (``GET /api/v1/images/jupyter`` lists the entries of kind ``jupyter``)::

    {"name": "pytorch-cuda",                  # DNS-1123 label, the key
     "display_name": "PyTorch (CUDA 12)",     # defaults to name
     "description": "...",                    # defaults to ""
     "default": false,                        # at most one default per kind
     "image": "quay.io/jupyter/pytorch-notebook:cuda12-2025-08-18",
     "tags": ["pytorch", "gpu"],
     "kind": "jupyter",                       # or "vscode", ...
     "pull_policy": "IfNotPresent",           # or "Always", "Never"
     "metadata": {"gpu_required": true,       # the fields the old catalog served
                  "cpu_limit": 8,             # cores, or null
                  "mem_limit": "32Gi",        # Kubernetes quantity, or null
                  "cloud_image": "runpod/pytorch:...",  # image for cloud GPUs, or null
                  "training": true}}          # runs training jobs (has thinkube-hub[train])

:func:`validate_entry` is pure: it returns the normalised entry or raises :class:`CatalogError`
naming the offending field. Every field is bounded (the MAX_* constants: a display name of 128
characters, a description of 2000, 32 tags of 64, image references of 255), text is valid
Unicode without control characters, ``cpu_limit`` is 0.001 to 4096 cores and ``mem_limit`` 1
byte to 1Pi (whole numbers of a unit, like ``16Gi``); the patterns are the ones
``hub_service/openapi.json`` gives. :class:`Catalog` stores entries (SQLite or PostgreSQL
through SQLAlchemy); every method is one short synchronous transaction and validates before
writing, so a rejected request changes nothing. Reads check every stored entry against the
same rules (rows an older version wrote may break them): text is repaired, an entry whose
other values break them is withheld, see :meth:`Catalog._served`.
"""

from __future__ import annotations

import json
import logging
import re
import threading
import zlib
from collections.abc import Iterable, Mapping
from contextlib import nullcontext
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    DateTime,
    Index,
    String,
    create_engine,
    delete,
    func,
    select,
    update,
)
from sqlalchemy import text as sql_text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker
from sqlalchemy.pool import StaticPool

from thinkube_core.quantity import QuantityError, format_bytes, parse_quantity

__all__ = [
    "DEFAULT_IMAGES",
    "IMAGE_REFERENCE_PATTERN",
    "LINE_PATTERN",
    "PULL_POLICIES",
    "MEMORY_PATTERN",
    "SLUG_PATTERN",
    "TEXT_PATTERN",
    "Catalog",
    "CatalogError",
    "CatalogFull",
    "is_valid_image_reference",
    "repaired_entry",
    "validate_entry",
]

PULL_POLICIES = ("IfNotPresent", "Always", "Never")

# Bounds of an entry, the same in hub_service/openapi.json (a test compares them): an entry
# is a few KB at most, so the catalog list and the availability answer stay small.
MAX_DISPLAY_NAME = 128  # characters
MAX_DESCRIPTION = 2000  # characters
MAX_TAGS = 32
MAX_TAG = 64  # characters
MAX_IMAGE_REFERENCE = 255  # characters: distribution's limit on the name, here on the whole
MAX_MEMORY_TEXT = 18  # characters of mem_limit: "1125899906842624" (1Pi in bytes) and a unit
CPU_LIMIT_MIN = Decimal("0.001")  # one millicore, the finest CPU amount Kubernetes keeps
CPU_LIMIT_MAX = Decimal(4096)  # cores
MEM_LIMIT_MAX = 2**50  # bytes: 1Pi
MAX_IMAGES = 256  # entries in the whole catalog

_TOP_LEVEL_FIELDS = (
    "name",
    "display_name",
    "description",
    "default",
    "image",
    "tags",
    "kind",
    "pull_policy",
    "metadata",
)
_METADATA_FIELDS = ("gpu_required", "cpu_limit", "mem_limit", "cloud_image", "training")

# Patterns, written so that Python's re.fullmatch and an ECMA-262 validator of the OpenAPI
# document read them alike (\uXXXX escapes, no named groups, no \s).
#
# A DNS-1123 label: what Kubernetes accepts as a name part, safe in URLs and labels.
SLUG_PATTERN = "^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$"
_SLUG_RULE = "lowercase letters, digits and '-', 1-63 characters, starting and ending alphanumeric"
# One line of text for people (display_name, a tag): no control character (Unicode category
# Cc), and something other than spaces (the spaces str.strip() removes, control characters
# aside).
_CONTROL = r"\u0000-\u001f\u007f-\u009f"
_SPACE = r"\u0020\u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000"
LINE_PATTERN = f"^[^{_CONTROL}]*[^{_CONTROL}{_SPACE}][^{_CONTROL}]*$"
# Text for people over several lines (description): tabs and line breaks, no other control.
TEXT_PATTERN = r"^[^\u0000-\u0008\u000b\u000c\u000e-\u001f\u007f-\u009f]*$"
# mem_limit: a whole number of bytes or of a unit (a Kubernetes quantity, in its plainest
# form: no sign, fraction or exponent, no leading zero), from 1 byte to 1Pi. The bound is in
# the pattern itself, so that what the pattern admits is exactly what the catalog stores.
MEMORY_UNITS = {
    "": 1,
    "k": 10**3,
    "M": 10**6,
    "G": 10**9,
    "T": 10**12,
    "P": 10**15,
    "Ki": 2**10,
    "Mi": 2**20,
    "Gi": 2**30,
    "Ti": 2**40,
    "Pi": 2**50,
}


def _whole_numbers_up_to(limit: int) -> str:
    """A regular expression for the whole numbers 1 to ``limit``, without leading zeros."""
    digits = str(limit)
    options = [f"[1-9][0-9]{{0,{len(digits) - 2}}}"] if len(digits) > 1 else []
    for position, digit in enumerate(digits):
        lowest = 1 if position == 0 else 0
        if int(digit) > lowest:
            rest = len(digits) - position - 1
            options.append(
                digits[:position]
                + f"[{lowest}-{int(digit) - 1}]"
                + (f"[0-9]{{{rest}}}" if rest else "")
            )
    options.append(digits)
    return "(?:" + "|".join(options) + ")"


MEMORY_PATTERN = (
    "^(?:"
    + "|".join(
        _whole_numbers_up_to(MEM_LIMIT_MAX // size) + unit for unit, size in MEMORY_UNITS.items()
    )
    + ")$"
)

# Image references, after github.com/distribution/reference regexp.go:
#   reference := name [ ":" tag ] [ "@" digest ];  name := [domain "/"] path-component ["/" ...]
# A first component is a domain only when a "/" follows it, so "ubuntu:24.04" is name + tag.
# A bare 64-hex-digit name is an image id, which docker refuses as a repository name.
_PATH_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_DOMAIN_COMPONENT = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_HOST = rf"(?:{_DOMAIN_COMPONENT}(?:\.{_DOMAIN_COMPONENT})*|\[[a-fA-F0-9:]+\])"
_IMAGE_NAME = rf"(?:{_HOST}(?::[0-9]+)?/)?{_PATH_COMPONENT}(?:/{_PATH_COMPONENT})*"
IMAGE_REFERENCE_PATTERN = (
    rf"^(?![a-f0-9]{{64}}(?::[A-Za-z0-9_.-]*)?(?:@|$)){_IMAGE_NAME}"
    r"(?::[A-Za-z0-9_][A-Za-z0-9_.-]{0,127})?"
    r"(?:@(?:sha256:[a-f0-9]{64}|sha512:[a-f0-9]{128}))?$"
)

_SLUG_RE = re.compile(SLUG_PATTERN)
_LINE_RE = re.compile(LINE_PATTERN)
_TEXT_RE = re.compile(TEXT_PATTERN)
_MEMORY_RE = re.compile(MEMORY_PATTERN)
_IMAGE_REFERENCE_RE = re.compile(IMAGE_REFERENCE_PATTERN)
_CONTROL_RE = re.compile(f"[{_CONTROL}]")
_SHOWN = 80  # characters of a refused value quoted back in an error

_log = logging.getLogger("thinkube.catalog")


class CatalogError(ValueError):
    """An entry the catalog refuses.

    ``field`` is the dotted path of the offending value (``"image"``, ``"metadata.cpu_limit"``,
    ``"tags.2"``), or ``None`` when the body as a whole is wrong. ``message`` is plain text
    without the field; ``str(error)`` is ``"<field>: <message>"``, prefixed with
    ``"seed entry <which>: "`` for an error in a seed list (``entry`` then names it).
    """

    def __init__(self, field: str | None, message: str, *, entry: str | None = None) -> None:
        self.field = field
        self.message = message
        self.entry = entry
        text = f"{field}: {message}" if field else message
        super().__init__(f"seed entry {entry}: {text}" if entry else text)


class CatalogFull(CatalogError):
    """A new entry when the catalog already holds MAX_IMAGES."""


# --- validation -----------------------------------------------------------------------------


def _shown(value: object) -> str:
    """A refused value as quoted back in an error: its repr, cut short."""
    if isinstance(value, str) and len(value) > _SHOWN:
        return repr(value[:_SHOWN]) + "..."
    if isinstance(value, int) and value.bit_length() > 4 * _SHOWN:
        return "a number of more digits than are worth showing"  # repr() refuses past 4300
    text = repr(value)
    return text if len(text) <= _SHOWN else text[:_SHOWN] + "..."


def _is_unicode(text: str) -> bool:
    """Whether ``text`` has no lone surrogate (no UTF-8 encoder can write one)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def is_valid_image_reference(reference: object) -> bool:
    """Whether ``reference`` is a well-formed image reference (``ubuntu:24.04``,
    ``quay.io/jupyter/base-notebook:2025-01-06``, ``host:5000/a/b@sha256:<64 hex>``), at most
    MAX_IMAGE_REFERENCE characters."""
    return (
        isinstance(reference, str)
        and len(reference) <= MAX_IMAGE_REFERENCE
        and _IMAGE_REFERENCE_RE.fullmatch(reference) is not None
    )


def _type_name(value: object) -> str:
    return "null" if value is None else type(value).__name__


def _reject_unknown_fields(body: Mapping[Any, Any], known: tuple[str, ...], prefix: str) -> None:
    unknown = sorted(str(key) for key in body if key not in known)
    if unknown:
        field = unknown[0] if len(unknown[0]) <= _SHOWN else unknown[0][:_SHOWN] + "..."
        raise CatalogError(prefix + field, "unknown field")


def _string(body: Mapping[str, Any], field: str, default: str | None) -> str:
    if field not in body:
        if default is None:
            raise CatalogError(field, "is required")
        return default
    value = body[field]
    if not isinstance(value, str):
        raise CatalogError(field, f"must be a string, not {_type_name(value)}")
    if not _is_unicode(value):
        raise CatalogError(field, "is not valid Unicode (a lone surrogate)")
    return value


def _line(value: str, field: str, limit: int) -> str:
    """One line of text for people, stripped: at most ``limit`` characters as sent."""
    if len(value) > limit:
        raise CatalogError(field, f"must be at most {limit} characters, not {len(value)}")
    if _CONTROL_RE.search(value):
        raise CatalogError(field, "must not contain control characters (tabs, line breaks, ...)")
    if not _LINE_RE.fullmatch(value):
        raise CatalogError(field, "must not be empty")
    return value.strip()


def _boolean(body: Mapping[str, Any], field: str, path: str = "") -> bool:
    value = body.get(field, False)
    if not isinstance(value, bool):
        raise CatalogError(path + field, f"must be true or false, not {_type_name(value)}")
    return value


def _slug(value: str, field: str) -> str:
    if not _SLUG_RE.fullmatch(value):
        raise CatalogError(field, f"{_shown(value)} is not a valid name ({_SLUG_RULE})")
    return value


def _image_reference(value: object, field: str) -> str:
    if not isinstance(value, str):
        raise CatalogError(field, f"must be a string, not {_type_name(value)}")
    if len(value) > MAX_IMAGE_REFERENCE:
        raise CatalogError(
            field, f"must be at most {MAX_IMAGE_REFERENCE} characters, not {len(value)}"
        )
    if not is_valid_image_reference(value):
        raise CatalogError(
            field,
            f"{_shown(value)} is not a valid image reference "
            "([registry[:port]/]lowercase/path[:tag][@sha256:<64 hex digits>])",
        )
    return value


def _tags(body: Mapping[str, Any]) -> list[str]:
    value = body.get("tags", [])
    if not isinstance(value, list):
        raise CatalogError("tags", f"must be a list of strings, not {_type_name(value)}")
    if len(value) > MAX_TAGS:
        raise CatalogError("tags", f"must hold at most {MAX_TAGS} tags, not {len(value)}")
    tags: list[str] = []
    for index, tag in enumerate(value):
        field = f"tags.{index}"
        if not isinstance(tag, str):
            raise CatalogError(field, f"must be a string, not {_type_name(tag)}")
        if not _is_unicode(tag):
            raise CatalogError(field, "is not valid Unicode (a lone surrogate)")
        tag = _line(tag, field, MAX_TAG)
        if tag not in tags:
            tags.append(tag)
    return tags


def _cpu_limit(value: object) -> int | float | None:
    field = "metadata.cpu_limit"
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise CatalogError(field, f"must be a number of cores or null, not {_type_name(value)}")
    rule = f"must be a number of cores from {CPU_LIMIT_MIN} to {CPU_LIMIT_MAX}"
    # An int is compared as it is (str() of one over 4300 digits raises); a float is read by
    # the one quantity parser, exactly, NaN and infinity refused.
    if isinstance(value, int):
        if not CPU_LIMIT_MIN <= value <= CPU_LIMIT_MAX:
            raise CatalogError(field, f"{rule}, not {_shown(value)}")
        return value
    try:
        cores = parse_quantity(value)
    except QuantityError:
        raise CatalogError(field, f"{rule}, not {_shown(value)}") from None
    if not CPU_LIMIT_MIN <= cores <= CPU_LIMIT_MAX:
        raise CatalogError(field, f"{rule}, not {_shown(value)}")
    return value


def _mem_limit(value: object) -> str | None:
    field = "metadata.mem_limit"
    if value is None:
        return None
    if not isinstance(value, str):
        raise CatalogError(
            field,
            f'must be a Kubernetes quantity string like "16Gi" or null, not {_type_name(value)}',
        )
    if len(value) > MAX_MEMORY_TEXT:
        raise CatalogError(field, f"must be at most {MAX_MEMORY_TEXT} characters, not {len(value)}")
    if not _MEMORY_RE.fullmatch(value):
        try:
            size = parse_quantity(value)
        except QuantityError as error:
            raise CatalogError(
                field, f'{_shown(value)} is not a Kubernetes quantity like "16Gi" ({error.reason})'
            ) from None
        if not 1 <= size <= MEM_LIMIT_MAX:
            raise CatalogError(field, f"must be from 1 byte to 1Pi, not {_shown(value)}")
        raise CatalogError(
            field,
            f"{_shown(value)} must be a whole number of bytes or of one unit (k, M, G, T, P, "
            f"Ki, Mi, Gi, Ti, Pi), like {format_bytes(size)!r}",
        )
    return value


def _metadata(body: Mapping[str, Any]) -> dict[str, Any]:
    metadata = body.get("metadata", {})
    if not isinstance(metadata, Mapping):
        raise CatalogError("metadata", f"must be an object, not {_type_name(metadata)}")
    _reject_unknown_fields(metadata, _METADATA_FIELDS, "metadata.")
    gpu_required = _boolean(metadata, "gpu_required", "metadata.")
    cloud_image = metadata.get("cloud_image")
    if cloud_image is not None:
        _image_reference(cloud_image, "metadata.cloud_image")
    checked = {
        "gpu_required": gpu_required,
        "cpu_limit": _cpu_limit(metadata.get("cpu_limit")),
        "mem_limit": _mem_limit(metadata.get("mem_limit")),
        "cloud_image": cloud_image,
    }
    if "training" in metadata:  # the image has thinkube-hub[train]: it runs training jobs
        checked["training"] = _boolean(metadata, "training", "metadata.")
    return checked


def validate_entry(name: str, body: object) -> dict[str, Any]:
    """Return the normalised entry for ``body`` stored under ``name`` (the name in the URL).

    Fills in defaults, copies (never aliases) lists and objects, and raises
    :class:`CatalogError` on the first problem found.
    """
    if not isinstance(name, str):
        raise CatalogError("name", f"must be a string, not {_type_name(name)}")
    _slug(name, "name")
    if not isinstance(body, Mapping):
        raise CatalogError(None, f"the entry must be a JSON object, not {_type_name(body)}")
    _reject_unknown_fields(body, _TOP_LEVEL_FIELDS, "")
    if "name" in body and body["name"] != name:
        raise CatalogError(
            "name", f"{_shown(body['name'])} does not match the name in the URL ({name!r})"
        )

    display_name = _line(_string(body, "display_name", name), "display_name", MAX_DISPLAY_NAME)
    description = _string(body, "description", "")
    if len(description) > MAX_DESCRIPTION:
        raise CatalogError(
            "description", f"must be at most {MAX_DESCRIPTION} characters, not {len(description)}"
        )
    if not _TEXT_RE.fullmatch(description):
        raise CatalogError(
            "description", "must not contain control characters other than tabs and line breaks"
        )
    default = _boolean(body, "default")
    image = _image_reference(_string(body, "image", None), "image")
    tags = _tags(body)
    kind = _slug(_string(body, "kind", "jupyter"), "kind")
    pull_policy = _string(body, "pull_policy", "IfNotPresent")
    if pull_policy not in PULL_POLICIES:
        raise CatalogError(
            "pull_policy",
            f"must be one of {', '.join(PULL_POLICIES)}, not {_shown(pull_policy)}",
        )
    return {
        "name": name,
        "display_name": display_name,
        "description": description,
        "default": default,
        "image": image,
        "tags": tags,
        "kind": kind,
        "pull_policy": pull_policy,
        "metadata": _metadata(body),
    }


# --- storage --------------------------------------------------------------------------------


class _Base(DeclarativeBase):
    pass


def _now() -> datetime:
    return datetime.now(UTC)


class _ImageRow(_Base):
    """One entry. ``name``, ``kind`` and ``default`` live in columns (the key, the filter and
    the one-default-per-kind rule); the rest of the entry is the JSON ``spec``."""

    __tablename__ = "images"

    name: Mapped[str] = mapped_column(String(63), primary_key=True)
    kind: Mapped[str] = mapped_column(String(63), index=True)
    is_default: Mapped[bool] = mapped_column(Boolean, default=False)
    spec: Mapped[dict[str, Any]] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=_now)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=_now)

    def stored(self) -> dict[str, Any]:
        """The entry as the database holds it, unchecked: a row written by an older version
        (or by hand) may break today's rules, and its ``spec`` may not even be an object."""
        spec = self.spec if isinstance(self.spec, Mapping) else {}
        return {
            **{key: value for key, value in spec.items() if key in _TOP_LEVEL_FIELDS},
            "name": self.name,
            "kind": self.kind,
            "default": self.is_default,
        }


# The database enforces one default per kind too, so two concurrent writers cannot both win.
# Partial unique indexes exist in SQLite and PostgreSQL; elsewhere put() alone keeps the rule
# (a plain unique index on kind would allow only one image per kind).
Index(
    "ix_images_one_default_per_kind",
    _ImageRow.kind,
    unique=True,
    sqlite_where=_ImageRow.is_default,
    postgresql_where=_ImageRow.is_default,
).ddl_if(dialect=("sqlite", "postgresql"))


def _spec_of(entry: Mapping[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in entry.items() if key not in ("name", "kind", "default")}


def _sort_key(entry: Mapping[str, Any]) -> tuple[bool, str, str]:
    return (not entry["default"], entry["display_name"].casefold(), entry["name"])


def _lenient_json(text: str) -> Any:
    """The spec column as read: JSON an older version (or a hand) wrote may not parse, or
    nest deeper than the parser recurses; such a row reads as no spec at all."""
    try:
        return json.loads(text)
    except (ValueError, RecursionError):
        return None


def _readable(value: object, limit: int, keep: str = "") -> str | None:
    """Text for people from a stored value, made valid: lone surrogates become U+FFFD,
    control characters (but those in ``keep``) are dropped, and what is longer than
    ``limit`` is cut, ending in an ellipsis. None for a value that is not a string."""
    if not isinstance(value, str):
        return None
    text = value
    if not _is_unicode(text):
        text = "".join("\ufffd" if "\ud800" <= c <= "\udfff" else c for c in text)
    text = _CONTROL_RE.sub(lambda match: match[0] if match[0] in keep else "", text)
    return text if len(text) <= limit else text[: limit - 1] + "\u2026"


def repaired_entry(stored: Mapping[str, Any]) -> dict[str, Any]:
    """An entry stored before today's rules, with its text for people made to fit them
    (see :func:`_readable`; a display name left empty falls back to the name, tags that
    are not text are dropped, the first MAX_TAGS kept) and a memory limit of another form
    written as a whole number of a unit. The values that decide what runs (image, kind,
    pull policy, the limits' amounts) are left as they are, for validate_entry to judge."""
    repaired = dict(stored)
    display_name = _readable(stored.get("display_name"), MAX_DISPLAY_NAME)
    if display_name is None or not display_name.strip():
        repaired.pop("display_name", None)
    else:
        repaired["display_name"] = display_name
    description = _readable(stored.get("description"), MAX_DESCRIPTION, keep="\t\n\r")
    repaired["description"] = description or ""
    tags = stored.get("tags")
    readable = [_readable(tag, MAX_TAG) for tag in tags] if isinstance(tags, list) else []
    repaired["tags"] = [tag for tag in readable if tag and tag.strip()][:MAX_TAGS]
    metadata = stored.get("metadata")
    if isinstance(metadata, Mapping) and isinstance(metadata.get("mem_limit"), str):
        # An older version took any quantity ("1.5Gi", "1e9"): the same amount, written
        # the way the catalog now takes it.
        try:
            size = parse_quantity(metadata["mem_limit"])
        except QuantityError:
            size = None
        if size is not None and 1 <= size <= MEM_LIMIT_MAX:
            repaired["metadata"] = {**metadata, "mem_limit": format_bytes(size)}
    return repaired


# PostgreSQL's deadlock_detected and serialization_failure: the transaction may be retried.
_RETRYABLE_STATES = {"40P01", "40001"}


def _retryable(err: Exception) -> bool:
    if isinstance(err, IntegrityError):
        return True
    return getattr(getattr(err, "orig", None), "sqlstate", None) in _RETRYABLE_STATES


class Catalog:
    """The image catalog in a database given by SQLAlchemy URL (``sqlite:///catalog.sqlite``,
    ``sqlite://`` in memory, ``postgresql+psycopg://...``). Creates its table if missing.

    Methods are synchronous and each runs one short transaction, so they may be called directly
    or through ``run_in_executor``. Entries returned are fresh dicts the caller may modify.
    """

    _WRITE_ATTEMPTS = 3  # a concurrent writer can win a race on the name or the default

    def __init__(self, db_url: str) -> None:
        engine_options: dict[str, Any] = {}
        url = make_url(db_url)
        is_sqlite = url.get_backend_name() == "sqlite"
        if is_sqlite:
            engine_options["connect_args"] = {"check_same_thread": False}
            if url.database in (None, "", ":memory:") or url.query.get("mode") == "memory":
                engine_options["poolclass"] = StaticPool  # one connection: one shared database
        self.engine = create_engine(db_url, json_deserializer=_lenient_json, **engine_options)
        # SQLite allows one writer at a time; queue this process's calls instead of having
        # them fail with "database is locked".
        self._lock: threading.Lock | nullcontext[None] = (
            threading.Lock() if is_sqlite else nullcontext()
        )
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)
        _Base.metadata.create_all(self.engine)
        self._reported: set[tuple[Any, ...]] = set()  # stored rows already logged as broken

    def _served(self, row: _ImageRow) -> dict[str, Any] | None:
        """The entry of ``row`` as served: checked against today's rules on every read, so
        a row an older version wrote cannot put text into an answer that no encoder can
        write, or megabytes into every spawn form. Text and forms that break the rules are
        repaired (repaired_entry); an entry whose image, kind, pull policy or limits break them is
        withheld (not listed, 404 alone) until it is replaced or deleted. Each is logged
        once per stored version."""
        stored = row.stored()
        try:
            return validate_entry(row.name, stored)
        except CatalogError:
            pass
        try:
            entry = validate_entry(row.name, repaired_entry(stored))
        except CatalogError as error:
            self._report(row, f"is withheld: {error} (replace or delete it)")
            return None
        self._report(row, "breaks the catalog's rules in its text or its form: served repaired")
        return entry

    def _report(self, row: _ImageRow, what: str) -> None:
        key = (row.name, row.updated_at, what)
        if key not in self._reported:
            self._reported.add(key)
            _log.warning("stored image %s %s", _shown(row.name), what)

    def close(self) -> None:
        """Release the database connections."""
        self.engine.dispose()

    def list(self, kind: str | None = None) -> list[dict[str, Any]]:
        """All entries, or those of ``kind``: defaults first, then by display name."""
        query = select(_ImageRow)
        if kind is not None:
            query = query.where(_ImageRow.kind == kind)
        with self._lock, self._sessions() as session:
            rows = list(session.scalars(query))
        entries = [entry for entry in map(self._served, rows) if entry is not None]
        return sorted(entries, key=_sort_key)

    def get(self, name: str) -> dict[str, Any] | None:
        """The entry called ``name``, or ``None``."""
        with self._lock, self._sessions() as session:
            row = session.get(_ImageRow, name)
        return self._served(row) if row is not None else None

    def put(self, name: str, body: object) -> tuple[dict[str, Any], bool]:
        """Create or replace the entry ``name``; returns ``(entry, created)``.

        Validates first (raising :class:`CatalogError` before touching the database). An entry
        made default takes the default away from the other entries of its kind. A new entry
        when the catalog holds MAX_IMAGES raises :class:`CatalogFull`.
        """
        entry = validate_entry(name, body)
        for attempt in range(self._WRITE_ATTEMPTS):
            try:
                with self._lock, self._sessions.begin() as session:
                    if session.get(_ImageRow, name) is None and self._count(session) >= MAX_IMAGES:
                        raise CatalogFull(
                            None,
                            f"the catalog holds {MAX_IMAGES} images, as many as it keeps: "
                            "delete one first",
                        )
                    return entry, self._write(session, entry)
            except (IntegrityError, OperationalError) as err:
                # A race on the name or the default (IntegrityError), or, on PostgreSQL, two
                # writers taking the default from each other (a deadlock the server broke)
                if attempt == self._WRITE_ATTEMPTS - 1 or not _retryable(err):
                    raise
        raise AssertionError("unreachable")  # pragma: no cover

    def delete(self, name: str) -> bool:
        """Remove the entry ``name``; returns whether there was one."""
        with self._lock, self._sessions.begin() as session:
            result = session.execute(delete(_ImageRow).where(_ImageRow.name == name))
            return bool(result.rowcount)

    def seed(self, entries: Iterable[Mapping[str, Any]]) -> bool:
        """Store ``entries`` (each with its ``name``) if the catalog is empty, as on first start.

        Every entry is validated whether or not the catalog is empty, so a bad configuration is
        reported on every start. Raises :class:`CatalogError` naming the bad entry, for a
        duplicate name and for two defaults of one kind. Returns whether it wrote.
        """
        validated = self._validate_seed(entries)
        try:
            with self._lock, self._sessions.begin() as session:
                if session.scalars(select(_ImageRow.name).limit(1)).first() is not None:
                    return False
                for entry in validated:
                    self._write(session, entry)
        except IntegrityError:  # another process seeded at the same moment
            return False
        return True

    @staticmethod
    def _count(session: Session) -> int:
        return session.scalar(select(func.count()).select_from(_ImageRow)) or 0

    @staticmethod
    def _validate_seed(entries: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
        validated: list[dict[str, Any]] = []
        default_of_kind: dict[str, str] = {}
        for index, body in enumerate(entries):
            name = body.get("name") if isinstance(body, Mapping) else None
            label = f"#{index} ({name!r})" if isinstance(name, str) else f"#{index}"
            try:
                if not isinstance(body, Mapping):
                    raise CatalogError(None, f"must be an object, not {_type_name(body)}")
                if "name" not in body:
                    raise CatalogError("name", "is required")
                entry = validate_entry(body["name"], body)
                if any(other["name"] == entry["name"] for other in validated):
                    raise CatalogError("name", f"{name!r} appears more than once")
                if entry["default"] and entry["kind"] in default_of_kind:
                    raise CatalogError(
                        "default",
                        f"{default_of_kind[entry['kind']]!r} is already the default "
                        f"of kind {entry['kind']!r}",
                    )
            except CatalogError as error:
                raise CatalogError(error.field, error.message, entry=label) from None
            if entry["default"]:
                default_of_kind[entry["kind"]] = entry["name"]
            validated.append(entry)
        return validated

    @staticmethod
    def _write(session: Session, entry: dict[str, Any]) -> bool:
        """Insert or replace ``entry`` in ``session``'s transaction; returns whether it is new."""
        if entry["default"]:
            if session.get_bind().dialect.name == "postgresql":
                # Writers of a kind's default take turns (to this transaction's end): without
                # it two of them deadlock on the unique index, or both find no default to clear
                session.execute(
                    sql_text("SELECT pg_advisory_xact_lock(:key)"),
                    {"key": zlib.crc32(f"thinkube-default:{entry['kind']}".encode())},
                )
            # Before this row becomes default, so the unique index never sees two.
            session.execute(
                update(_ImageRow)
                .where(
                    _ImageRow.kind == entry["kind"],
                    _ImageRow.is_default.is_(True),
                    _ImageRow.name != entry["name"],
                )
                .values(is_default=False, updated_at=_now())
            )
        row = session.get(_ImageRow, entry["name"])
        created = row is None
        if row is None:
            row = _ImageRow(name=entry["name"])
            session.add(row)
        row.kind = entry["kind"]
        row.is_default = entry["default"]
        row.spec = _spec_of(entry)
        row.updated_at = _now()
        session.flush()
        return created


# --- the seed shipped with the hub ----------------------------------------------------------

DEFAULT_IMAGES: tuple[dict[str, Any], ...] = (
    {
        "name": "scipy",
        "display_name": "Data science (SciPy)",
        "description": "Python with pandas, scikit-learn, matplotlib and the SciPy stack. CPU only.",
        "default": True,
        "image": "quay.io/jupyter/scipy-notebook:2025-08-18",
        "tags": ["python", "cpu"],
        "kind": "jupyter",
        "metadata": {
            "gpu_required": False,
            "cpu_limit": 4,
            "mem_limit": "8Gi",
            "cloud_image": None,
        },
    },
    {
        "name": "minimal",
        "display_name": "Minimal Python",
        "description": "JupyterLab with Python and conda, nothing more. Small and quick to start.",
        "default": False,
        "image": "quay.io/jupyter/minimal-notebook:2025-08-18",
        "tags": ["python", "cpu"],
        "kind": "jupyter",
        "metadata": {
            "gpu_required": False,
            "cpu_limit": 2,
            "mem_limit": "4Gi",
            "cloud_image": None,
        },
    },
    {
        "name": "pytorch-cuda",
        "display_name": "PyTorch (CUDA 12)",
        "description": "The data science stack plus PyTorch built for CUDA 12. Needs a GPU.",
        "default": False,
        "image": "quay.io/jupyter/pytorch-notebook:cuda12-2025-08-18",
        "tags": ["python", "pytorch", "gpu"],
        "kind": "jupyter",
        "metadata": {
            "gpu_required": True,
            "cpu_limit": 8,
            "mem_limit": "32Gi",
            "cloud_image": "runpod/pytorch:2.4.0-py3.11-cuda12.4.1-devel-ubuntu22.04",
            # no `training`: this public image lacks the trainer (docs/jobs.md, Fine-tuning)
        },
    },
)
