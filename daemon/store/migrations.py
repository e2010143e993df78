"""The store schema's history: ordered migrations, each with the SQL of both backends, applied at open.

A database records the migrations applied to it in ``schema_version`` (one row each: version,
summary, when); its version is the highest one there. Opening a store applies the missing ones in
order, each in its own transaction with its row (SQLite: under its write lock; PostgreSQL: under a
transaction-level advisory lock, so replicas starting together migrate once). A database whose
version is newer than :data:`LATEST` was written by a newer tracecanary: :class:`SchemaTooNewError`
(a startup error, exit 2) — an older binary never writes into a schema it does not know.

Adding a table or a column is one entry at the end of :data:`MIGRATIONS`; never edit an entry
that has shipped. A step is an SQL script, or for SQLite a function of the connection where a
script cannot say it (``ADD COLUMN`` has no ``IF NOT EXISTS`` there).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from dataclasses import dataclass

from tracecanary.errors import StartupError

SqliteStep = str | Callable[[sqlite3.Connection], None]


@dataclass(frozen=True)
class Migration:
    """One step of the schema: ``version`` (1, 2, …, no gaps) and the SQL of each backend."""

    version: int
    summary: str
    sqlite: SqliteStep
    postgres: str


class SchemaTooNewError(StartupError):
    """The database's schema version is newer than this binary knows."""


def _sqlite_add_columns(table: str, columns: tuple[tuple[str, str], ...]) -> Callable[[sqlite3.Connection], None]:
    """``ALTER TABLE … ADD COLUMN`` for each column the table lacks (a file from before versioning may
    already have some: the releases before it added columns without recording a version)."""
    def step(conn: sqlite3.Connection) -> None:
        have = {row[1] for row in conn.execute(f"PRAGMA table_info({table})")}
        for name, decl in columns:
            if name not in have:
                conn.execute(f"ALTER TABLE {table} ADD COLUMN {name} {decl}")
    return step


_V1_SQLITE = """
CREATE TABLE IF NOT EXISTS probes (
    probe_id TEXT PRIMARY KEY, kind TEXT NOT NULL, spec TEXT NOT NULL, tags TEXT NOT NULL, updated_ns INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS runs (
    run_id TEXT PRIMARY KEY, probe_id TEXT NOT NULL, kind TEXT NOT NULL, attempt INTEGER NOT NULL,
    first_run_id TEXT NOT NULL, trace_id TEXT NOT NULL, started_ns INTEGER NOT NULL, finished_ns INTEGER,
    status TEXT NOT NULL, abort_reason TEXT, verdict TEXT, final INTEGER NOT NULL DEFAULT 1,
    findings TEXT NOT NULL DEFAULT '[]', response TEXT, trace_report TEXT, side_effects TEXT NOT NULL DEFAULT '[]',
    outputs TEXT NOT NULL DEFAULT '{}', links TEXT NOT NULL DEFAULT '{}', log TEXT NOT NULL DEFAULT '',
    span_count INTEGER NOT NULL DEFAULT 0, time_to_verdict_s REAL, spans BLOB
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
"""The first release's tables (``IF NOT EXISTS``: a file made before versioning already has them)."""

# The same tables in PostgreSQL: nanosecond times are BIGINT, the span snapshot BYTEA; JSON stays TEXT
# so both backends share one row codec (rows.py).
_V1_POSTGRES = (
    _V1_SQLITE.replace("INTEGER", "BIGINT").replace("REAL", "DOUBLE PRECISION").replace("BLOB", "BYTEA")
    .replace("id BIGINT PRIMARY KEY AUTOINCREMENT", "id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY")
)

_V3 = """
CREATE TABLE IF NOT EXISTS run_rollup (
    grain_ns BIGINT NOT NULL, bucket_ns BIGINT NOT NULL, probe_id TEXT NOT NULL, bin INTEGER NOT NULL,
    up INTEGER NOT NULL, down INTEGER NOT NULL, unknown INTEGER NOT NULL,
    PRIMARY KEY (grain_ns, bucket_ns, probe_id, bin)
);
CREATE TABLE IF NOT EXISTS run_rollup_filled (
    grain_ns BIGINT NOT NULL, bucket_ns BIGINT NOT NULL, PRIMARY KEY (grain_ns, bucket_ns)
);
CREATE INDEX IF NOT EXISTS run_rollup_by_probe ON run_rollup (probe_id, grain_ns, bucket_ns);
CREATE TABLE IF NOT EXISTS run_rollup_version (one INTEGER PRIMARY KEY, version BIGINT NOT NULL);
CREATE INDEX IF NOT EXISTS runs_by_start ON runs (started_ns, probe_id, final, status, verdict, finished_ns);
"""
"""The console's rollups (``stats.py``), their version (bumped whenever a filled bucket changes: replicas
keep sums in memory while it holds) and the covering index their fills and raw edges read: the same SQL
on both backends."""

_V4_KAFKA = """
CREATE SEQUENCE IF NOT EXISTS cluster_epoch;
CREATE TABLE IF NOT EXISTS cluster_sessions (
    session_id TEXT PRIMARY KEY, member_id TEXT NOT NULL, ttl_s DOUBLE PRECISION NOT NULL,
    started_at TIMESTAMPTZ NOT NULL DEFAULT now(), seen_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    address TEXT, epoch BIGINT, partitions INTEGER[], probes INTEGER
);
CREATE TABLE IF NOT EXISTS cluster_leases (
    probe_id TEXT PRIMARY KEY, member_id TEXT NOT NULL, session_id TEXT NOT NULL,
    epoch BIGINT NOT NULL, expires_at TIMESTAMPTZ NOT NULL
);
CREATE TABLE IF NOT EXISTS results_outbox (
    run_id TEXT PRIMARY KEY, probe_id TEXT NOT NULL, session_id TEXT NOT NULL, epoch BIGINT NOT NULL,
    payload TEXT NOT NULL, created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    acked_at TIMESTAMPTZ, result_partition INTEGER, result_offset BIGINT
);
CREATE INDEX IF NOT EXISTS results_outbox_unacked ON results_outbox (session_id) WHERE acked_at IS NULL;
CREATE INDEX IF NOT EXISTS results_outbox_acked ON results_outbox (result_partition, result_offset)
    WHERE acked_at IS NOT NULL;
CREATE TABLE IF NOT EXISTS passive_counts (
    id BIGSERIAL PRIMARY KEY, probe_id TEXT NOT NULL, member_id TEXT NOT NULL, session_id TEXT NOT NULL,
    judged INTEGER NOT NULL, failed INTEGER NOT NULL, degraded INTEGER NOT NULL, dropped INTEGER NOT NULL,
    kinds JSONB NOT NULL, worst TEXT[] NOT NULL, created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    consumed_at TIMESTAMPTZ, consumed_by TEXT
);
CREATE INDEX IF NOT EXISTS passive_counts_open ON passive_counts (probe_id) WHERE consumed_at IS NULL;
"""
"""Kafka mode's tables (``daemon/cluster/kafka_*.py``): the group epoch sequence, member sessions, per-probe
leases, the results outbox and the members' passive counts. ``IF NOT EXISTS``: members of the releases
before this migration created them themselves at start."""


def _sqlite_nothing(conn: sqlite3.Connection) -> None:
    """No SQLite tables: kafka mode requires a PostgreSQL store (a config error otherwise); the version
    is still recorded, so both backends count the same versions."""


MIGRATIONS: tuple[Migration, ...] = (
    Migration(1, "probes, runs, events, kv", _V1_SQLITE, _V1_POSTGRES),
    Migration(2, "runs.retry_at_ns, runs.retry_aborted: retry chains survive a restart",
              _sqlite_add_columns("runs", (("retry_at_ns", "INTEGER"), ("retry_aborted", "TEXT"))),
              "ALTER TABLE runs ADD COLUMN IF NOT EXISTS retry_at_ns BIGINT, "
              "ADD COLUMN IF NOT EXISTS retry_aborted TEXT"),
    Migration(3, "run_rollup, run_rollup_filled, runs_by_start: the console's uptime and percentiles (stats.py)",
              _V3, _V3),
    Migration(4, "cluster_sessions, cluster_leases, results_outbox, passive_counts: kafka mode (PostgreSQL only)",
              _sqlite_nothing, _V4_KAFKA),
)
LATEST = MIGRATIONS[-1].version
"""The schema version this binary writes."""

VERSION_TABLE = {
    "sqlite": "CREATE TABLE IF NOT EXISTS schema_version (version INTEGER PRIMARY KEY, summary TEXT NOT NULL, "
              "applied_ns INTEGER NOT NULL)",
    "postgres": "CREATE TABLE IF NOT EXISTS schema_version (version INTEGER PRIMARY KEY, summary TEXT NOT NULL, "
                "applied_ns BIGINT NOT NULL)",
}
RECORD = "INSERT INTO schema_version (version, summary, applied_ns) VALUES (?, ?, ?)"
CURRENT = "SELECT COALESCE(MAX(version), 0) FROM schema_version"


def pending(found: int, where: str, *, target: int | None = None) -> list[Migration]:
    """The migrations a database at version ``found`` still needs to reach ``target`` (default: LATEST).

    :class:`SchemaTooNewError` when ``found`` is beyond what this binary knows.
    """
    if found > LATEST:
        raise SchemaTooNewError(
            f"store {where}: database schema version {found} is newer than this tracecanary's ({LATEST}); "
            "it was written by a newer release: run that release, or restore a backup made before the upgrade")
    goal = LATEST if target is None else target
    return [m for m in MIGRATIONS if found < m.version <= goal]
