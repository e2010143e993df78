"""The PostgreSQL tables of kafka mode: per-probe leases, member sessions, the results outbox and
the members' passive counts (``kafka_passive.py``).

They are part of the store's versioned schema (``daemon/store/migrations.py``, migration 4):
opening the cluster's pool brings the database up to date the way the store does (one transaction under
the store's migration lock, so members starting together migrate once), whether or not the store itself
opened first. A database newer than this binary stops the member (SchemaTooNewError, exit 2).
"""

from __future__ import annotations

import logging
from typing import Any

import anyio
import psycopg
import psycopg_pool

from tracecanary.daemon.store.postgres_schema import display_url, migrate
from tracecanary.errors import StartupError

log = logging.getLogger("tracecanary.cluster.kafka")

Conn = psycopg.AsyncConnection[tuple[Any, ...]]


def new_pool(url: str, *, size: int = 4, timeout_s: float = 10.0) -> psycopg_pool.AsyncConnectionPool[Conn]:
    """An autocommit pool (each statement its own transaction unless a block says otherwise)."""
    return psycopg_pool.AsyncConnectionPool(
        url, min_size=1, max_size=size, open=False, timeout=timeout_s, name="tracecanary-cluster",
        kwargs={"autocommit": True, "connect_timeout": max(1, round(timeout_s)),
                "application_name": "tracecanary-cluster"},
    )


async def open_cluster_db(url: str, *, timeout_s: float = 15.0) -> psycopg_pool.AsyncConnectionPool[Conn]:
    """Open a pool on the store's database, its schema brought up to date (the kafka-mode tables included)."""
    pool = new_pool(url, timeout_s=timeout_s)
    try:
        with anyio.fail_after(timeout_s):
            await pool.open(wait=True, timeout=timeout_s)
            async with pool.connection() as conn:
                applied = await migrate(conn, display_url(url))
            if applied:
                log.info("store schema migrated store=%s versions=%s", display_url(url), ",".join(map(str, applied)))
    except BaseException as e:  # a schema too new (a StartupError already) or no database: no pool left open
        with anyio.CancelScope(shield=True):
            await pool.close(timeout=1.0)
        if isinstance(e, (psycopg.Error, psycopg_pool.PoolTimeout, TimeoutError, OSError)):
            raise StartupError(f"kafka mode: cannot prepare the cluster tables: {e}") from e
        raise
    return pool
