"""The Store methods both SQL backends implement the same way, over two primitives of their own.

A backend supplies ``_write(sql, args)`` (one statement, committed; its row count) and ``_query(sql,
args)`` (the rows of one read), with SQL in ``?`` form (``rows.py``), plus what differs: open/close,
health, ``finish_run`` (the span snapshot), ``apply_retention`` and ``append_event``.
"""

from __future__ import annotations

import json
import time
from abc import ABC, abstractmethod
from typing import Any

from tracecanary.daemon.store.base import ProbeRow, RunRecord, RunStatus
from tracecanary.daemon.store.rows import (
    ABORT_RUNNING,
    INSERT_RUN,
    KV_PUT,
    N_COLUMNS,
    PENDING_RETRIES,
    RUN_COLUMNS,
    dumps,
    row_to_run,
    run_values,
)


class SqlStore(ABC):
    """Probes, run reads, events and key-value in shared SQL; the backend owns connections and faults."""

    @abstractmethod
    async def _write(self, sql: str, args: tuple[Any, ...]) -> int:
        """Execute one statement and commit it; its row count. Storage errors are StoreFaults."""

    @abstractmethod
    async def _query(self, sql: str, args: tuple[Any, ...] = ()) -> list[Any]:
        """The rows of one read. Storage errors are StoreFaults."""

    # --- probes --------------------------------------------------------------------------------
    async def upsert_probe(self, probe_id: str, kind: str, spec: dict[str, Any], tags: list[str]) -> None:
        await self._write(
            "INSERT INTO probes (probe_id, kind, spec, tags, updated_ns) VALUES (?, ?, ?, ?, ?) "
            "ON CONFLICT(probe_id) DO UPDATE SET kind=excluded.kind, spec=excluded.spec, tags=excluded.tags, "
            "updated_ns=excluded.updated_ns",
            (probe_id, kind, dumps(spec), dumps(tags), time.time_ns()),
        )

    async def list_probes(self) -> list[ProbeRow]:
        rows = await self._query("SELECT probe_id, kind, spec, tags, updated_ns FROM probes ORDER BY probe_id")
        return [ProbeRow(r[0], r[1], json.loads(r[2]), json.loads(r[3]), r[4]) for r in rows]

    # --- runs ----------------------------------------------------------------------------------
    async def insert_run(self, run: RunRecord) -> None:
        await self._write(INSERT_RUN, run_values(run))

    async def get_run(self, run_id: str, *, with_spans: bool = False) -> RunRecord | None:
        cols = RUN_COLUMNS + (", spans" if with_spans else "")
        rows = await self._query(f"SELECT {cols} FROM runs WHERE run_id=?", (run_id,))
        if not rows:
            return None
        r = rows[0]
        return row_to_run(r, r[N_COLUMNS] if with_spans else None)

    async def list_runs(
        self, probe_id: str | None = None, *, limit: int = 50, before_ns: int | None = None
    ) -> list[RunRecord]:
        where: list[str] = []
        args: list[Any] = []
        if probe_id is not None:
            where.append("probe_id=?")
            args.append(probe_id)
        if before_ns is not None:
            where.append("started_ns<?")
            args.append(before_ns)
        clause = f"WHERE {' AND '.join(where)}" if where else ""
        sql = f"SELECT {RUN_COLUMNS} FROM runs {clause} ORDER BY started_ns DESC LIMIT ?"
        rows = await self._query(sql, (*args, limit))
        return [row_to_run(r) for r in rows]

    async def runs_for_trace(self, trace_id: str) -> list[RunRecord]:
        sql = f"SELECT {RUN_COLUMNS} FROM runs WHERE trace_id=? OR run_id=? ORDER BY started_ns"
        rows = await self._query(sql, (trace_id, trace_id))
        return [row_to_run(r) for r in rows]

    async def abort_running(self, reason: str) -> int:
        return await self._write(ABORT_RUNNING, (RunStatus.ABORTED.value, reason, time.time_ns(),
                                                 RunStatus.RUNNING.value))

    async def pending_retries(self) -> list[RunRecord]:
        out = []
        for r in await self._query(PENDING_RETRIES):
            run = row_to_run(r)
            run.retry_aborted = run.retry_aborted or r[N_COLUMNS]
            out.append(run)
        return out

    # --- events --------------------------------------------------------------------------------
    async def list_events(self, kind: str | None = None, *, limit: int = 100) -> list[dict[str, Any]]:
        args: tuple[Any, ...]
        if kind is None:
            sql, args = "SELECT id, time_ns, kind, data FROM events ORDER BY id DESC LIMIT ?", (limit,)
        else:
            sql = "SELECT id, time_ns, kind, data FROM events WHERE kind=? ORDER BY id DESC LIMIT ?"
            args = (kind, limit)
        rows = await self._query(sql, args)
        return [{"id": r[0], "time_ns": r[1], "kind": r[2], "data": json.loads(r[3])} for r in rows]

    # --- key-value -----------------------------------------------------------------------------
    async def kv_get(self, namespace: str, key: str) -> Any | None:
        rows = await self._query("SELECT value FROM kv WHERE namespace=? AND key=?", (namespace, key))
        return json.loads(rows[0][0]) if rows else None

    async def kv_put(self, namespace: str, key: str, value: Any) -> None:
        await self._write(KV_PUT, (namespace, key, dumps(value)))

    async def kv_put_if_absent(self, namespace: str, key: str, value: Any) -> bool:
        inserted = await self._write(
            "INSERT INTO kv (namespace, key, value) VALUES (?, ?, ?) ON CONFLICT(namespace, key) DO NOTHING",
            (namespace, key, dumps(value)),
        )
        return inserted == 1

    async def kv_delete(self, namespace: str, key: str) -> None:
        await self._write("DELETE FROM kv WHERE namespace=? AND key=?", (namespace, key))

    async def kv_list(self, namespace: str) -> dict[str, Any]:
        rows = await self._query("SELECT key, value FROM kv WHERE namespace=?", (namespace,))
        return {r[0]: json.loads(r[1]) for r in rows}
