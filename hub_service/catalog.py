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
                  "cloud_image": "runpod/pytorch:..."}}  # image for cloud GPUs, or null

:func:`validate_entry` is pure: it returns the normalised entry or raises :class:`CatalogError`
naming the offending field. :class:`Catalog` stores entries (SQLite or PostgreSQL through
SQLAlchemy); every method is one short synchronous transaction and validates before writing,
so a rejected request changes nothing.
"""

from __future__ import annotations

import math
import re
import threading
from collections.abc import Iterable, Mapping
from contextlib import nullcontext
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    DateTime,
    Index,
    String,
    create_engine,
    delete,
    select,
    update,
)
from sqlalchemy.engine import make_url
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker
from sqlalchemy.pool import StaticPool

from thinkube_core.quantity import QuantityError, parse_quantity

__all__ = [
    "DEFAULT_IMAGES",
    "PULL_POLICIES",
    "Catalog",
    "CatalogError",
    "is_valid_image_reference",
    "validate_entry",
]

PULL_POLICIES = ("IfNotPresent", "Always", "Never")

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
_METADATA_FIELDS = ("gpu_required", "cpu_limit", "mem_limit", "cloud_image")

# A DNS-1123 label: what Kubernetes accepts as a name part, safe in URLs and labels.
_SLUG_RE = re.compile(r"[a-z0-9](?:[-a-z0-9]{0,61}[a-z0-9])?", re.ASCII)
_SLUG_RULE = "lowercase letters, digits and '-', 1-63 characters, starting and ending alphanumeric"

# Image references, after github.com/distribution/reference regexp.go:
#   reference := name [ ":" tag ] [ "@" digest ];  name := [domain "/"] path-component ["/" ...]
# A first component is a domain only when a "/" follows it, so "ubuntu:24.04" is name + tag.
_PATH_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_DOMAIN_COMPONENT = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_HOST = rf"(?:{_DOMAIN_COMPONENT}(?:\.{_DOMAIN_COMPONENT})*|\[[a-fA-F0-9:]+\])"
_IMAGE_NAME = rf"(?:{_HOST}(?::[0-9]+)?/)?{_PATH_COMPONENT}(?:/{_PATH_COMPONENT})*"
_IMAGE_REFERENCE_RE = re.compile(
    rf"(?P<name>{_IMAGE_NAME})"
    r"(?::(?P<tag>\w[\w.-]{0,127}))?"
    r"(?:@(?P<digest>sha256:[a-f0-9]{64}|sha512:[a-f0-9]{128}))?",
    re.ASCII,
)
_IMAGE_NAME_MAX = 255  # distribution's NameTotalLengthMax
_IMAGE_REFERENCE_MAX = 512  # bounds the regex work; name + tag + digest stay under it
_BARE_IDENTIFIER_RE = re.compile(r"[a-f0-9]{64}")  # docker refuses these as repository names


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


# --- validation -----------------------------------------------------------------------------


def is_valid_image_reference(reference: object) -> bool:
    """Whether ``reference`` is a well-formed image reference (``ubuntu:24.04``,
    ``quay.io/jupyter/base-notebook:2025-01-06``, ``host:5000/a/b@sha256:<64 hex>``)."""
    if not isinstance(reference, str) or len(reference) > _IMAGE_REFERENCE_MAX:
        return False
    match = _IMAGE_REFERENCE_RE.fullmatch(reference)
    return (
        match is not None
        and len(match["name"]) <= _IMAGE_NAME_MAX
        and not _BARE_IDENTIFIER_RE.fullmatch(match["name"])
    )


def _type_name(value: object) -> str:
    return "null" if value is None else type(value).__name__


def _reject_unknown_fields(body: Mapping[Any, Any], known: tuple[str, ...], prefix: str) -> None:
    unknown = sorted(str(key) for key in body if key not in known)
    if unknown:
        raise CatalogError(prefix + unknown[0], "unknown field")


def _string(body: Mapping[str, Any], field: str, default: str | None) -> str:
    if field not in body:
        if default is None:
            raise CatalogError(field, "is required")
        return default
    value = body[field]
    if not isinstance(value, str):
        raise CatalogError(field, f"must be a string, not {_type_name(value)}")
    return value


def _boolean(body: Mapping[str, Any], field: str, path: str = "") -> bool:
    value = body.get(field, False)
    if not isinstance(value, bool):
        raise CatalogError(path + field, f"must be true or false, not {_type_name(value)}")
    return value


def _slug(value: str, field: str) -> str:
    if not _SLUG_RE.fullmatch(value):
        raise CatalogError(field, f"{value!r} is not a valid name ({_SLUG_RULE})")
    return value


def _image_reference(value: object, field: str) -> str:
    if not isinstance(value, str):
        raise CatalogError(field, f"must be a string, not {_type_name(value)}")
    if not is_valid_image_reference(value):
        raise CatalogError(
            field,
            f"{value!r} is not a valid image reference "
            "([registry[:port]/]lowercase/path[:tag][@sha256:<64 hex digits>])",
        )
    return value


def _tags(body: Mapping[str, Any]) -> list[str]:
    value = body.get("tags", [])
    if not isinstance(value, list):
        raise CatalogError("tags", f"must be a list of strings, not {_type_name(value)}")
    tags: list[str] = []
    for index, tag in enumerate(value):
        if not isinstance(tag, str):
            raise CatalogError(f"tags.{index}", f"must be a string, not {_type_name(tag)}")
        if not tag.strip():
            raise CatalogError(f"tags.{index}", "must not be empty")
        if tag.strip() not in tags:
            tags.append(tag.strip())
    return tags


def _metadata(body: Mapping[str, Any]) -> dict[str, Any]:
    metadata = body.get("metadata", {})
    if not isinstance(metadata, Mapping):
        raise CatalogError("metadata", f"must be an object, not {_type_name(metadata)}")
    _reject_unknown_fields(metadata, _METADATA_FIELDS, "metadata.")
    gpu_required = _boolean(metadata, "gpu_required", "metadata.")

    cpu_limit = metadata.get("cpu_limit")
    if cpu_limit is not None:
        if isinstance(cpu_limit, bool) or not isinstance(cpu_limit, int | float):
            raise CatalogError(
                "metadata.cpu_limit",
                f"must be a number of cores or null, not {_type_name(cpu_limit)}",
            )
        if not math.isfinite(cpu_limit) or cpu_limit <= 0:
            raise CatalogError("metadata.cpu_limit", f"must be a positive number, not {cpu_limit}")

    mem_limit = metadata.get("mem_limit")
    if mem_limit is not None:
        if not isinstance(mem_limit, str):
            raise CatalogError(
                "metadata.mem_limit",
                f'must be a Kubernetes quantity string like "16Gi" or null, not {_type_name(mem_limit)}',
            )
        try:
            size = parse_quantity(mem_limit)
        except QuantityError as error:
            raise CatalogError(
                "metadata.mem_limit",
                f'{mem_limit!r} is not a Kubernetes quantity like "16Gi" ({error.reason})',
            ) from None
        if size <= 0:
            raise CatalogError("metadata.mem_limit", f"must be positive, not {mem_limit!r}")

    cloud_image = metadata.get("cloud_image")
    if cloud_image is not None:
        _image_reference(cloud_image, "metadata.cloud_image")

    return {
        "gpu_required": gpu_required,
        "cpu_limit": cpu_limit,
        "mem_limit": mem_limit,
        "cloud_image": cloud_image,
    }


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
            "name", f"{body['name']!r} does not match the name in the URL ({name!r})"
        )

    display_name = _string(body, "display_name", name).strip()
    if not display_name:
        raise CatalogError("display_name", "must not be empty")
    description = _string(body, "description", "")
    default = _boolean(body, "default")
    image = _image_reference(_string(body, "image", None), "image")
    tags = _tags(body)
    kind = _slug(_string(body, "kind", "jupyter"), "kind")
    pull_policy = _string(body, "pull_policy", "IfNotPresent")
    if pull_policy not in PULL_POLICIES:
        raise CatalogError(
            "pull_policy", f"must be one of {', '.join(PULL_POLICIES)}, not {pull_policy!r}"
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

    def to_entry(self) -> dict[str, Any]:
        spec = self.spec
        return {
            "name": self.name,
            "display_name": spec["display_name"],
            "description": spec["description"],
            "default": self.is_default,
            "image": spec["image"],
            "tags": list(spec["tags"]),
            "kind": self.kind,
            "pull_policy": spec["pull_policy"],
            "metadata": dict(spec["metadata"]),
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
        self.engine = create_engine(db_url, **engine_options)
        # SQLite allows one writer at a time; queue this process's calls instead of having
        # them fail with "database is locked".
        self._lock: threading.Lock | nullcontext[None] = (
            threading.Lock() if is_sqlite else nullcontext()
        )
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)
        _Base.metadata.create_all(self.engine)

    def close(self) -> None:
        """Release the database connections."""
        self.engine.dispose()

    def list(self, kind: str | None = None) -> list[dict[str, Any]]:
        """All entries, or those of ``kind``: defaults first, then by display name."""
        query = select(_ImageRow)
        if kind is not None:
            query = query.where(_ImageRow.kind == kind)
        with self._lock, self._sessions() as session:
            entries = [row.to_entry() for row in session.scalars(query)]
        return sorted(entries, key=_sort_key)

    def get(self, name: str) -> dict[str, Any] | None:
        """The entry called ``name``, or ``None``."""
        with self._lock, self._sessions() as session:
            row = session.get(_ImageRow, name)
            return row.to_entry() if row is not None else None

    def put(self, name: str, body: object) -> tuple[dict[str, Any], bool]:
        """Create or replace the entry ``name``; returns ``(entry, created)``.

        Validates first (raising :class:`CatalogError` before touching the database). An entry
        made default takes the default away from the other entries of its kind.
        """
        entry = validate_entry(name, body)
        for attempt in range(self._WRITE_ATTEMPTS):
            try:
                with self._lock, self._sessions.begin() as session:
                    return entry, self._write(session, entry)
            except IntegrityError:
                if attempt == self._WRITE_ATTEMPTS - 1:
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
        },
    },
)
