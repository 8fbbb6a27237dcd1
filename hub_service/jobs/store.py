"""The queue's entries in the service's database (SQLite by default, PostgreSQL by URL):
every job and waiting server request, from submission to its result, so that a restarted
service loses none and re-attaches to what runs.

One row per entry. The request (what was asked) is kept as submitted and checked; what
happened (status, times, node, exit code, reason) is updated as it happens. Rows are plain
dicts outside this module; every method is one short transaction.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Mapping
from contextlib import nullcontext
from typing import Any

from sqlalchemy import (
    JSON,
    Float,
    Index,
    Integer,
    String,
    Text,
    func,
    inspect,
    select,
    text,
    update,
)
from sqlalchemy.engine import Engine
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, sessionmaker

__all__ = ["ACTIVE", "FINISHED", "JobStore"]

QUEUED, RUNNING = "queued", "running"
COMPLETED, FAILED, CANCELLED, LOST = "completed", "failed", "cancelled", "lost"
ACTIVE = (QUEUED, RUNNING)
FINISHED = (COMPLETED, FAILED, CANCELLED, LOST)


class _Base(DeclarativeBase):
    pass


class _Entry(_Base):
    __tablename__ = "thinkube_queue"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    kind: Mapped[str] = mapped_column(String(16), default="job")  # job | server
    user: Mapped[str] = mapped_column(String(255))
    name: Mapped[str] = mapped_column(String(63), default="")
    project: Mapped[str] = mapped_column(String(63), default="")
    status: Mapped[str] = mapped_column(String(16), default=QUEUED)
    reason: Mapped[str | None] = mapped_column(String(32), nullable=True)
    message: Mapped[str | None] = mapped_column(Text, nullable=True)
    exit_code: Mapped[int | None] = mapped_column(Integer, nullable=True)
    priority: Mapped[int] = mapped_column(Integer, default=0)
    request: Mapped[dict] = mapped_column(JSON)  # what was asked, checked
    script: Mapped[str] = mapped_column(Text, default="")
    metadata_: Mapped[dict] = mapped_column("metadata", JSON, default=dict)
    expected_s: Mapped[float] = mapped_column(Float)
    submitted_at: Mapped[float] = mapped_column(Float)
    started_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    finished_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    deadline_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    node: Mapped[str | None] = mapped_column(String(253), nullable=True)
    placement: Mapped[dict] = mapped_column(JSON, default=dict)  # backend's own record
    # What the job wrote, kept at its end where the backend's own copy does not last (a
    # Kubernetes Job's pod is deleted after a while): {"text", "truncated", "skipped_lines"}.
    output: Mapped[dict | None] = mapped_column(JSON, nullable=True)

    __table_args__ = (
        Index("ix_thinkube_queue_status", "status"),
        Index("ix_thinkube_queue_user", "user"),
        Index("ix_thinkube_queue_project", "project"),
    )


_FIELDS = [c.key for c in _Entry.__mapper__.column_attrs]


def _as_dict(row: _Entry) -> dict[str, Any]:
    entry = {name: getattr(row, name) for name in _FIELDS}
    entry["metadata"] = entry.pop("metadata_") or {}
    return entry


class JobStore:
    """Entries in the database behind `engine` (the service's, shared with the catalog)."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        # SQLite takes one writer at a time; the service writes from a thread pool.
        self._lock: threading.Lock | nullcontext[None] = (
            threading.Lock() if engine.url.get_backend_name() == "sqlite" else nullcontext()
        )
        self._sessions = sessionmaker(engine, expire_on_commit=False)
        _Base.metadata.create_all(engine)
        self._add_missing_columns()

    def _add_missing_columns(self) -> None:
        """A table made by an older version lacks the newer nullable columns: add them, so
        an existing database keeps working (create_all never alters a table)."""
        table = _Entry.__table__
        present = {c["name"] for c in inspect(self.engine).get_columns(table.name)}
        with self._lock, self.engine.begin() as connection:
            for column in table.columns:
                if column.name in present or not column.nullable:
                    continue
                kind = column.type.compile(dialect=self.engine.dialect)
                connection.execute(
                    text(f'ALTER TABLE {table.name} ADD COLUMN "{column.name}" {kind}')
                )

    def add(self, entry: Mapping[str, Any]) -> dict[str, Any]:
        return self.add_many([entry])[0]

    def add_many(self, entries: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
        """Add entries in one transaction (one commit for a burst of submissions)."""
        rows = []
        for entry in entries:
            values = dict(entry)
            values["metadata_"] = values.pop("metadata", {}) or {}
            rows.append(_Entry(**values))
        with self._lock, self._sessions.begin() as session:
            session.add_all(rows)
        return [_as_dict(row) for row in rows]

    def get(self, entry_id: str) -> dict[str, Any] | None:
        with self._lock, self._sessions() as session:
            row = session.get(_Entry, entry_id)
            return _as_dict(row) if row else None

    def update(self, entry_id: str, **changes: Any) -> dict[str, Any] | None:
        if "metadata" in changes:
            changes["metadata_"] = changes.pop("metadata")
        with self._lock, self._sessions.begin() as session:
            session.execute(update(_Entry).where(_Entry.id == entry_id).values(**changes))
            row = session.get(_Entry, entry_id)
            return _as_dict(row) if row else None

    def finish(
        self, entry_id: str, status: str, reason: str, at: float, **changes: Any
    ) -> dict[str, Any] | None:
        """Mark an entry ended, once: an entry already finished keeps its first ending."""
        with self._lock, self._sessions.begin() as session:
            session.execute(
                update(_Entry)
                .where(_Entry.id == entry_id, _Entry.status.in_(ACTIVE))
                .values(status=status, reason=reason, finished_at=at, **changes)
            )
            row = session.get(_Entry, entry_id)
            return _as_dict(row) if row else None

    def active(self) -> list[dict[str, Any]]:
        """Every queued and running entry, oldest first (what the queue works from)."""
        with self._lock, self._sessions() as session:
            rows = session.scalars(
                select(_Entry).where(_Entry.status.in_(ACTIVE)).order_by(_Entry.submitted_at)
            )
            return [_as_dict(row) for row in rows]

    def search(
        self,
        *,
        users: Iterable[str] | None = None,
        statuses: Iterable[str] | None = None,
        project: str | None = None,
        metadata: Mapping[str, str] | None = None,
        kinds: Iterable[str] | None = None,
        offset: int = 0,
        limit: int = 100,
    ) -> tuple[list[dict[str, Any]], int]:
        """Entries matching every filter given, newest first, and how many match in all.
        Metadata filters are applied after the query (values live in JSON)."""
        query = select(_Entry)
        if users is not None:
            query = query.where(_Entry.user.in_(list(users)))
        if statuses is not None:
            query = query.where(_Entry.status.in_(list(statuses)))
        if project is not None:
            query = query.where(_Entry.project == project)
        if kinds is not None:
            query = query.where(_Entry.kind.in_(list(kinds)))
        query = query.order_by(_Entry.submitted_at.desc(), _Entry.id)
        with self._lock, self._sessions() as session:
            if not metadata:
                total = session.scalar(select(func.count()).select_from(query.subquery()))
                rows = session.scalars(query.offset(offset).limit(limit))
                return [_as_dict(row) for row in rows], int(total or 0)
            matching = [
                _as_dict(row)
                for row in session.scalars(query)
                if all((row.metadata_ or {}).get(k) == v for k, v in metadata.items())
            ]
        return matching[offset : offset + limit], len(matching)
