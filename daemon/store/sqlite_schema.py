"""The SQLite store's schema: tables, the columns added since (migrated on open), the run columns'
SQL, and the connection setup that proves a write."""

from __future__ import annotations

import logging
import sqlite3
import time

from tracecanary.daemon.store.stats import ROLLUP_SCHEMA

log = logging.getLogger("tracecanary.store")

BUSY_TIMEOUT_MS = 5000
HEALTH_NS = "tracecanary.store"
"""kv namespace of the proving writes (``opened_ns`` at open, ``checked_ns`` at each health check)."""

SCHEMA = """
CREATE TABLE IF NOT EXISTS probes (
    probe_id TEXT PRIMARY KEY, kind TEXT NOT NULL, spec TEXT NOT NULL, tags TEXT NOT NULL, updated_ns INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS runs (
    run_id TEXT PRIMARY KEY, probe_id TEXT NOT NULL, kind TEXT NOT NULL, attempt INTEGER NOT NULL,
    first_run_id TEXT NOT NULL, trace_id TEXT NOT NULL, started_ns INTEGER NOT NULL, finished_ns INTEGER,
    status TEXT NOT NULL, abort_reason TEXT, verdict TEXT, final INTEGER NOT NULL DEFAULT 1,
    findings TEXT NOT NULL DEFAULT '[]', response TEXT, trace_report TEXT, side_effects TEXT NOT NULL DEFAULT '[]',
    outputs TEXT NOT NULL DEFAULT '{}', links TEXT NOT NULL DEFAULT '{}', log TEXT NOT NULL DEFAULT '',
    span_count INTEGER NOT NULL DEFAULT 0, time_to_verdict_s REAL, spans BLOB, retry_at_ns INTEGER,
    retry_aborted TEXT
);
CREATE INDEX IF NOT EXISTS runs_by_probe ON runs (probe_id, started_ns DESC);
CREATE INDEX IF NOT EXISTS runs_retry_pending ON runs (first_run_id) WHERE final = 0;
CREATE INDEX IF NOT EXISTS runs_by_status ON runs (status);
CREATE INDEX IF NOT EXISTS runs_by_trace ON runs (trace_id);
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY AUTOINCREMENT, time_ns INTEGER NOT NULL, kind TEXT NOT NULL, data TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS events_by_kind ON events (kind, id DESC);
CREATE TABLE IF NOT EXISTS kv (
    namespace TEXT NOT NULL, key TEXT NOT NULL, value TEXT NOT NULL, PRIMARY KEY (namespace, key)
);
"""

MIGRATIONS = (("runs", "retry_at_ns", "INTEGER"), ("runs", "retry_aborted", "TEXT"))
"""Columns added since the first schema: ``ALTER TABLE … ADD COLUMN`` on a database that lacks them."""

RUN_COLUMNS = (
    "run_id, probe_id, kind, attempt, first_run_id, trace_id, started_ns, finished_ns, status, abort_reason, "
    "verdict, final, findings, response, trace_report, side_effects, outputs, links, log, span_count, "
    "time_to_verdict_s, retry_at_ns, retry_aborted"
)
N_COLUMNS = len(RUN_COLUMNS.split(","))
INSERT_RUN = f"INSERT INTO runs ({RUN_COLUMNS}) VALUES ({', '.join('?' * N_COLUMNS)})"
INSERT_RUN_SPANS = f"INSERT INTO runs ({RUN_COLUMNS}, spans) VALUES ({', '.join('?' * (N_COLUMNS + 1))})"
# A run finished without spans keeps a snapshot stored earlier (a chain ended after a restart).
UPDATE_RUN = (f"UPDATE runs SET {', '.join(f'{c.strip()}=?' for c in RUN_COLUMNS.split(',')[1:])}, "
               "spans=COALESCE(?, spans) WHERE run_id=?")
PENDING_RETRIES = (
    f"SELECT {RUN_COLUMNS}, (SELECT 'attempt ' || n.attempt || ' was aborted: ' || COALESCE(n.abort_reason, '?') "
    "FROM runs n WHERE n.first_run_id = r.first_run_id AND n.attempt > r.attempt ORDER BY n.attempt DESC LIMIT 1) "
    "FROM runs r WHERE final = 0 AND status = 'finished' AND NOT EXISTS (SELECT 1 FROM runs n "
    "WHERE n.first_run_id = r.first_run_id AND n.attempt > r.attempt AND n.status != 'aborted') ORDER BY started_ns"
)
"""Attempts whose retry never completed: not final, and no later attempt of the chain other than aborted
ones (killed during the retry); the last column says which attempt was aborted and why."""



def migrate(conn: sqlite3.Connection) -> list[str]:
    """Add the columns a database created by an older release lacks; the ones added."""
    added = []
    for table, column, decl in MIGRATIONS:
        if column not in {row[1] for row in conn.execute(f"PRAGMA table_info({table})")}:
            conn.execute(f"ALTER TABLE {table} ADD COLUMN {column} {decl}")
            added.append(f"{table}.{column}")
    return added


def setup_connection(conn: sqlite3.Connection) -> None:
    """Pragmas, schema, migrations, then one real write: an unwritable file fails here, at open."""
    conn.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.executescript(SCHEMA)
    added = migrate(conn)
    conn.executescript(ROLLUP_SCHEMA)
    if added:
        log.info("store schema migrated added=%s", ",".join(added))
    conn.execute("INSERT INTO kv (namespace, key, value) VALUES (?, 'opened_ns', ?) ON CONFLICT(namespace, key) "
                 "DO UPDATE SET value=excluded.value", (HEALTH_NS, str(time.time_ns())))
    conn.commit()

