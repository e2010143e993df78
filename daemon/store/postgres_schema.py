"""The PostgreSQL store's SQL: the shared ``?`` statements in psycopg's form, the run upsert, the versioned
schema (``migrations.py``) applied under an advisory lock, and what counts as a connection fault."""

from __future__ import annotations

import functools
import time
from typing import Any

import psycopg
import psycopg_pool
from psycopg.conninfo import conninfo_to_dict

from tracecanary.daemon.store.migrations import CURRENT, RECORD, VERSION_TABLE, pending
from tracecanary.daemon.store.rows import N_COLUMNS, RUN_COLUMNS

MIGRATE_LOCK_KEY = 0x7472616365_01
"""``pg_advisory_xact_lock`` key taken while migrating: replicas that start together migrate once.
(Other advisory keys of tracecanary, such as the standby election's, must differ.)"""

UPSERT_RUN = (
    f"INSERT INTO runs ({RUN_COLUMNS}, spans) VALUES ({', '.join(['%s'] * (N_COLUMNS + 1))}) "
    "ON CONFLICT (run_id) DO UPDATE SET "
    + ", ".join(f"{c.strip()}=excluded.{c.strip()}" for c in RUN_COLUMNS.split(",")[1:])
    + ", spans=COALESCE(excluded.spans, runs.spans)"
)
"""A finished run in one round trip; finished without spans, it keeps a snapshot stored earlier."""

RETRYABLE = (psycopg.OperationalError, psycopg.InterfaceError, psycopg_pool.PoolTimeout, TimeoutError)
"""Errors of the connection or the server rather than of the statement: retried, then a StoreFault."""
FAULTS = (*RETRYABLE, psycopg.errors.ReadOnlySqlTransaction)
"""Errors that make the store unable to do its job (a read-only server: a replica or a failed-over primary)."""


@functools.lru_cache(maxsize=512)
def pg_sql(sql: str) -> str:
    """A ``?``-placeholder statement (``rows.py``, ``sqlbase.py``) in psycopg's ``%s`` form; a ``?``
    inside a quoted literal stays, and ``%`` is escaped."""
    out, quoted = [], False
    for ch in sql:
        if ch == "'":
            quoted = not quoted
        if ch == "%":
            out.append("%%")
        elif ch == "?" and not quoted:
            out.append("%s")
        else:
            out.append(ch)
    return "".join(out)


def display_url(url: str) -> str:
    """The URL without its password, for messages and logs: ``postgresql://user@host:port/db``."""
    try:
        info = conninfo_to_dict(url)
    except psycopg.ProgrammingError:
        return "postgresql://(invalid URL)"
    user = f"{info['user']}@" if info.get("user") else ""
    port = f":{info['port']}" if info.get("port") else ""
    return f"postgresql://{user}{info.get('host', '')}{port}/{info.get('dbname', '')}"


def one_line(e: BaseException) -> str:
    text = " ".join(str(e).split()) or type(e).__name__
    return text if isinstance(e, psycopg.Error) else f"{type(e).__name__}: {text}"


async def migrate(conn: psycopg.AsyncConnection[tuple[Any, ...]], where: str, *,
                  target: int | None = None) -> list[int]:
    """Apply the migrations the database lacks in one transaction, under :data:`MIGRATE_LOCK_KEY`;
    the versions applied. :class:`SchemaTooNewError` when the database is ahead of this binary."""
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATE_LOCK_KEY,))
        await conn.execute(VERSION_TABLE["postgres"])
        row = await (await conn.execute(CURRENT)).fetchone()
        applied = []
        for step in pending(int(row[0]) if row else 0, where, target=target):
            await conn.execute(step.postgres.encode())  # a script: several statements, no parameters
            await conn.execute(pg_sql(RECORD), (step.version, step.summary, time.time_ns()))
            applied.append(step.version)
    return applied
