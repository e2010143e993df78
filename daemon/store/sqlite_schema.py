"""The SQLite store's connection setup: pragmas, the versioned schema (``migrations.py``) brought up
to date, and one real write that proves the file takes writes."""

from __future__ import annotations

import logging
import sqlite3
import time

from tracecanary.daemon.store.migrations import CURRENT, RECORD, VERSION_TABLE, pending
from tracecanary.daemon.store.rows import HEALTH_NS, KV_PUT

log = logging.getLogger("tracecanary.store")

BUSY_TIMEOUT_MS = 5000


def _statements(script: str) -> list[str]:
    """A script split into complete statements (``executescript`` would commit our transaction)."""
    out, buf = [], ""
    for part in script.split(";"):
        buf += part + ";"
        if sqlite3.complete_statement(buf):
            if buf.strip(" \n;"):
                out.append(buf.strip())
            buf = ""
    return out


def migrate(conn: sqlite3.Connection, where: str, *, target: int | None = None) -> list[int]:
    """Apply the migrations the file lacks, in order, each in one write transaction with its
    ``schema_version`` row; the versions applied. A file made before versioning counts as version 0
    (its tables exist: the first steps find them and only add what is missing)."""
    conn.execute(VERSION_TABLE["sqlite"])
    conn.commit()
    applied: list[int] = []
    while True:
        conn.execute("BEGIN IMMEDIATE")  # the version is read under the write lock: one process migrates
        try:
            todo = pending(conn.execute(CURRENT).fetchone()[0], where, target=target)
            if not todo:
                conn.rollback()
                return applied
            step = todo[0]
            if isinstance(step.sqlite, str):
                for statement in _statements(step.sqlite):
                    conn.execute(statement)
            else:
                step.sqlite(conn)
            conn.execute(RECORD, (step.version, step.summary, time.time_ns()))
            conn.commit()
        except BaseException:
            conn.rollback()
            raise
        applied.append(step.version)


def setup_connection(conn: sqlite3.Connection, where: str) -> None:
    """Pragmas, schema, migrations, then one real write: an unwritable file fails here, at open."""
    conn.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    applied = migrate(conn, where)
    if applied:
        log.info("store schema migrated store=%s versions=%s", where, ",".join(map(str, applied)))
    conn.execute(KV_PUT, (HEALTH_NS, "opened_ns", str(time.time_ns())))
    conn.commit()
