"""hub_service.jobs.store on real databases (SQLite, and PostgreSQL where it is installed):
entries outlive the service."""

from __future__ import annotations

import pytest
from sqlalchemy import create_engine, text

from hub_service.jobs.store import JobStore
from tests.postgres import postgres_server


@pytest.fixture(scope="module")
def postgres():
    with postgres_server() as url:
        yield url


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request, tmp_path):
    """A fresh, empty database of each kind."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'service.sqlite'}"
    url = request.getfixturevalue("postgres")
    engine = create_engine(url)
    with engine.begin() as connection:
        connection.execute(text("DROP SCHEMA public CASCADE; CREATE SCHEMA public"))
    engine.dispose()
    return url


def entry(entry_id, user="alice", at=1.0, status="queued", project="", metadata=None):
    return {
        "id": entry_id,
        "user": user,
        "status": status,
        "project": project,
        "request": {"gpus": 1},
        "script": "print(1)",
        "metadata": metadata or {},
        "expected_s": 600.0,
        "submitted_at": at,
    }


def test_entries_survive_a_restart_and_finish_once(database_url):
    url = database_url
    store = JobStore(create_engine(url))
    store.add(entry("j1", at=1))
    store.add(entry("j2", at=2, user="bob"))
    store.update("j1", status="running", started_at=5.0, node="gpu-1")
    store.engine.dispose()

    again = JobStore(create_engine(url))  # the service restarted
    assert [(e["id"], e["status"]) for e in again.active()] == [("j1", "running"), ("j2", "queued")]
    first = again.finish("j1", "completed", "Completed", at=9.0, exit_code=0)
    assert (first["status"], first["reason"], first["exit_code"]) == ("completed", "Completed", 0)
    # a later ending (a cancel that lost the race) changes nothing
    late = again.finish("j1", "cancelled", "Cancelled", at=10.0)
    assert (late["status"], late["finished_at"]) == ("completed", 9.0)
    assert [e["id"] for e in again.active()] == ["j2"]


def test_search_filters_and_pages(database_url):
    store = JobStore(create_engine(database_url))
    for i in range(5):
        store.add(entry(f"a{i}", at=i, project="vision", metadata={"run": str(i % 2)}))
    store.add(entry("b0", user="bob", at=10, project="nlp"))
    rows, total = store.search(users=["alice"], limit=2)
    assert ([r["id"] for r in rows], total) == (["a4", "a3"], 5)  # newest first
    rows, total = store.search(users=["alice"], offset=2, limit=2)
    assert [r["id"] for r in rows] == ["a2", "a1"]
    rows, total = store.search(project="nlp")
    assert ([r["id"] for r in rows], total) == (["b0"], 1)
    rows, total = store.search(metadata={"run": "1"})
    assert ([r["id"] for r in rows], total) == (["a3", "a1"], 2)
    rows, _ = store.search(statuses=["running"])
    assert rows == []
