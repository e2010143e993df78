"""Versioned schema on both backends: an empty database gets every migration, a previous-version one the
missing ones (its rows kept), and a database newer than the binary stops the real CLI with exit 2."""

from __future__ import annotations

import sqlite3
import sys
import time
from contextlib import closing
from pathlib import Path

import anyio
import psycopg
import pytest

from tests.daemon.support import problem_lines
from tests.store.test_store import BACKENDS
from tracecanary.daemon.cluster.kafka_db import open_cluster_db
from tracecanary.daemon.store.migrations import LATEST, MIGRATIONS, SchemaTooNewError
from tracecanary.daemon.store.postgres_schema import migrate as pg_migrate
from tracecanary.daemon.store.sqlite import sqlite_path
from tracecanary.daemon.store.sqlite_schema import migrate as sqlite_migrate
from tracecanary.daemon.store.urls import open_store

V1_RUN = ("INSERT INTO runs (run_id, probe_id, kind, attempt, first_run_id, trace_id, started_ns, finished_ns, "
          "status, verdict, final) VALUES ('a1', 'p', 'http', 1, 'a1', 't', 1, 2, 'finished', 'fail', 0)")
"""A run as the version 1 schema stores it: a finished attempt waiting for its retry."""


@pytest.fixture(params=sorted(BACKENDS))
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    return BACKENDS[request.param](request, tmp_path)


def versions(url: str) -> list[int]:
    sql = "SELECT version FROM schema_version ORDER BY version"
    if url.startswith("sqlite"):
        with closing(sqlite3.connect(sqlite_path(url))) as con:
            return [r[0] for r in con.execute(sql)]
    with psycopg.connect(url) as conn:
        return [r[0] for r in conn.execute(sql)]


async def at_version(url: str, version: int) -> None:
    """Make the database as the release that wrote schema ``version`` left it, with one v1 run in it."""
    where = "test"
    if url.startswith("sqlite"):
        with closing(sqlite3.connect(sqlite_path(url))) as con:
            sqlite_migrate(con, where, target=version)
            con.execute(V1_RUN)
            con.commit()
        return
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        await pg_migrate(conn, where, target=version)
        await conn.execute(V1_RUN)


@pytest.mark.anyio
async def test_an_empty_database_gets_every_migration_once(url: str) -> None:
    for _ in range(2):
        store = open_store(url)
        await store.open()
        await store.aclose()
    assert versions(url) == [m.version for m in MIGRATIONS] == list(range(1, LATEST + 1))


@pytest.mark.anyio
async def test_a_previous_version_is_migrated_and_its_rows_kept(url: str) -> None:
    await at_version(url, LATEST - 1)
    assert versions(url) == list(range(1, LATEST))
    store = open_store(url)
    await store.open()
    try:
        [pending] = await store.pending_retries()  # the v1 row, read through the new columns
        assert (pending.run_id, pending.retry_at_ns, pending.retry_aborted) == ("a1", None, None)
    finally:
        await store.aclose()
    assert versions(url) == list(range(1, LATEST + 1))


@pytest.mark.anyio
async def test_a_sqlite_file_from_before_versioning_is_migrated(tmp_path: Path) -> None:
    db = tmp_path / "old.db"
    with closing(sqlite3.connect(db)) as con:  # the first release: its tables, no schema_version
        con.executescript(str(MIGRATIONS[0].sqlite))
        con.execute("ALTER TABLE runs ADD COLUMN retry_at_ns INTEGER")  # a later one added columns ad hoc
        con.execute(V1_RUN)
        con.commit()
    store = open_store(f"sqlite:///{db}")
    await store.open()
    try:
        assert [r.run_id for r in await store.pending_retries()] == ["a1"]
    finally:
        await store.aclose()
    assert versions(f"sqlite:///{db}") == list(range(1, LATEST + 1))


@pytest.mark.anyio
async def test_a_newer_schema_stops_the_daemon_with_exit_2(url: str, tmp_path: Path) -> None:
    await at_version(url, LATEST)
    newer = "INSERT INTO schema_version (version, summary, applied_ns) VALUES (%d, 'from the future', %d)"
    if url.startswith("sqlite"):
        with closing(sqlite3.connect(sqlite_path(url))) as con:
            con.execute(newer % (LATEST + 1, time.time_ns()))
            con.commit()
    else:
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute((newer % (LATEST + 1, time.time_ns())).encode())
    suite = tmp_path / "suite.yaml"
    suite.write_text("probes:\n  - id: p\n    kind: http\n    every: 1h\n    request: {url: 'http://127.0.0.1:9/'}\n")
    with anyio.fail_after(120):
        proc = await anyio.run_process(
            [sys.executable, "-m", "tracecanary.daemon.cli.main", "run", str(suite), "--store", url,
             "--listen", "127.0.0.1:0", "--otlp-http", "none", "--otlp-grpc", "none"], cwd=tmp_path, check=False)
    stderr = proc.stderr.decode()
    assert proc.returncode == 2, proc.stdout.decode() + stderr
    lines = problem_lines(stderr)
    assert len(lines) == 1, stderr
    assert f"database schema version {LATEST + 1} is newer than this tracecanary's ({LATEST})" in lines[0]
    assert lines[0].startswith("tracecanary: store ")
    assert versions(url)[-1] == LATEST + 1  # nothing written into the newer schema


KAFKA_VERSION = 4
KAFKA_TABLES = {"cluster_sessions", "cluster_leases", "results_outbox", "passive_counts"}


def tables(url: str) -> set[str]:
    if url.startswith("sqlite"):
        with closing(sqlite3.connect(sqlite_path(url))) as con:
            return {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    with psycopg.connect(url) as conn:
        return {r[0] for r in conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")}


@pytest.mark.anyio
async def test_kafka_mode_tables_are_a_postgres_migration(url: str) -> None:
    store = open_store(url)
    await store.open()
    await store.aclose()
    summary = MIGRATIONS[KAFKA_VERSION - 1].summary
    assert "kafka mode" in summary and KAFKA_VERSION in versions(url)  # recorded on both backends
    if url.startswith("sqlite"):
        assert not KAFKA_TABLES & tables(url)  # kafka mode requires PostgreSQL: an explicit no-op here
    else:
        assert KAFKA_TABLES <= tables(url)


@pytest.mark.anyio
async def test_the_cluster_pool_migrates_an_empty_database_before_the_store_opens(postgres_url: str) -> None:
    pool = await open_cluster_db(postgres_url)
    await pool.close()
    assert versions(postgres_url) == list(range(1, LATEST + 1))
    assert KAFKA_TABLES | {"runs", "kv"} <= tables(postgres_url)


@pytest.mark.anyio
async def test_kafka_tables_made_before_versioning_them_are_kept(postgres_url: str) -> None:
    """A cluster whose members created the tables themselves (``IF NOT EXISTS`` at start, schema 3) and
    left a lease and an unacknowledged outbox row: migration 4 keeps both."""
    await at_version(postgres_url, KAFKA_VERSION - 1)
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute(MIGRATIONS[KAFKA_VERSION - 1].postgres.encode())  # what kafka_db.py used to run
        conn.execute("INSERT INTO cluster_leases VALUES ('p', 'm1', 's1', 7, now())")
        conn.execute("INSERT INTO results_outbox (run_id, probe_id, session_id, epoch, payload) "
                     "VALUES ('r1', 'p', 's1', 7, '{}')")
    pool = await open_cluster_db(postgres_url)
    await pool.close()
    assert versions(postgres_url) == list(range(1, LATEST + 1))
    with psycopg.connect(postgres_url) as conn:
        assert conn.execute("SELECT probe_id, epoch FROM cluster_leases").fetchall() == [("p", 7)]
        assert conn.execute("SELECT run_id FROM results_outbox WHERE acked_at IS NULL").fetchall() == [("r1",)]


@pytest.mark.anyio
async def test_a_newer_schema_stops_a_kafka_member(postgres_url: str) -> None:
    await at_version(postgres_url, LATEST)
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute("INSERT INTO schema_version (version, summary, applied_ns) VALUES (%s, 'future', 0)",
                     (LATEST + 1,))
    with pytest.raises(SchemaTooNewError, match=f"schema version {LATEST + 1} is newer"):
        await open_cluster_db(postgres_url)
    assert versions(postgres_url)[-1] == LATEST + 1
