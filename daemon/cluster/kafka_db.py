"""The PostgreSQL tables of kafka mode: per-probe leases, member sessions, the results outbox and
the members' passive counts (``kafka_passive.py``).

They are created idempotently (``IF NOT EXISTS``) under a transaction-level advisory lock, so members
starting together create them once. They live beside the store's versioned schema, not in its
``MIGRATIONS`` list, while three branches add migrations in parallel; fold them in as one entry when
the store's versions settle (the SQL below is that entry's ``postgres`` step).
"""

from __future__ import annotations

from typing import Any

import anyio
import psycopg
import psycopg_pool

from tracecanary.errors import StartupError

Conn = psycopg.AsyncConnection[tuple[Any, ...]]
_SCHEMA_LOCK = 0x7C_0516  # advisory lock key: "issue 16" schema creation

SCHEMA = """
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


def new_pool(url: str, *, size: int = 4, timeout_s: float = 10.0) -> psycopg_pool.AsyncConnectionPool[Conn]:
    """An autocommit pool (each statement its own transaction unless a block says otherwise)."""
    return psycopg_pool.AsyncConnectionPool(
        url, min_size=1, max_size=size, open=False, timeout=timeout_s, name="tracecanary-cluster",
        kwargs={"autocommit": True, "connect_timeout": max(1, round(timeout_s)),
                "application_name": "tracecanary-cluster"},
    )


async def open_cluster_db(url: str, *, timeout_s: float = 15.0) -> psycopg_pool.AsyncConnectionPool[Conn]:
    """Open a pool on the store's database and make sure the kafka-mode tables exist."""
    pool = new_pool(url, timeout_s=timeout_s)
    try:
        with anyio.fail_after(timeout_s):
            await pool.open(wait=True, timeout=timeout_s)
            async with pool.connection() as conn, conn.transaction():
                await conn.execute("SELECT pg_advisory_xact_lock(%s)", (_SCHEMA_LOCK,))
                await conn.execute(SCHEMA)
    except (psycopg.Error, psycopg_pool.PoolTimeout, TimeoutError, OSError) as e:
        with anyio.CancelScope(shield=True):
            await pool.close(timeout=1.0)
        raise StartupError(f"kafka mode: cannot prepare the cluster tables: {e}") from e
    return pool
