"""SQLite results store (WAL). The default backend: one file, no server.

One plain ``sqlite3`` connection on its own thread (``connthread.py``) serves reads and writes in
order; writes go through the group commit (``groupcommit.py``).
"""

from __future__ import annotations

import json
import logging
import sqlite3
import time
from pathlib import Path
from typing import Any

from tracecanary.assertions.verdict import Finding, Verdict
from tracecanary.daemon.store.base import ProbeRow, RunRecord, RunStatus
from tracecanary.daemon.store.connthread import ConnectionThread
from tracecanary.daemon.store.groupcommit import GroupCommit, apply_batch
from tracecanary.daemon.store.snapshot import decode_spans, encode_spans

log = logging.getLogger("tracecanary.store")

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
    span_count INTEGER NOT NULL DEFAULT 0, time_to_verdict_s REAL, spans BLOB
);
CREATE INDEX IF NOT EXISTS runs_by_probe ON runs (probe_id, started_ns DESC);
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

_RUN_COLUMNS = (
    "run_id, probe_id, kind, attempt, first_run_id, trace_id, started_ns, finished_ns, status, abort_reason, "
    "verdict, final, findings, response, trace_report, side_effects, outputs, links, log, span_count, "
    "time_to_verdict_s"
)
_INSERT_RUN = f"INSERT INTO runs ({_RUN_COLUMNS}) VALUES ({', '.join('?' * 21)})"
_INSERT_RUN_SPANS = f"INSERT INTO runs ({_RUN_COLUMNS}, spans) VALUES ({', '.join('?' * 22)})"
_UPDATE_RUN = (f"UPDATE runs SET {', '.join(f'{c.strip()}=?' for c in _RUN_COLUMNS.split(',')[1:])}, spans=? "
               "WHERE run_id=?")


def sqlite_path(url: str) -> str:
    """``sqlite:////abs/path.db`` → ``/abs/path.db``; ``sqlite:///rel.db`` → ``rel.db``; ``sqlite://`` → memory."""
    if url.startswith("sqlite:///"):
        return url[len("sqlite:///"):] or ":memory:"
    if url in ("sqlite://", "sqlite:"):
        return ":memory:"
    if "://" in url:
        raise ValueError(f"not a sqlite URL: {url!r}")
    return url


def _dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), default=str)


def _setup(conn: sqlite3.Connection) -> None:
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.execute("PRAGMA busy_timeout=5000")
    conn.executescript(SCHEMA)
    conn.commit()


class SqliteStore:
    """The Store protocol on one SQLite file (WAL mode, one connection on its own thread).

    Writes go through a group commit: concurrent writers share one commit on the connection thread,
    and each write is committed (durable) before its call returns.
    """

    def __init__(self, url: str) -> None:
        self.path = sqlite_path(url)
        self._conn: ConnectionThread | None = None
        self._writes = GroupCommit(self._run_batch)

    def _connection(self) -> ConnectionThread:
        if self._conn is None:
            raise RuntimeError("store is not open")
        return self._conn

    async def open(self) -> None:
        if self._conn is not None:
            return
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        conn = ConnectionThread(self.path)
        await conn.start(_setup)
        self._conn = conn

    async def _run_batch(self, batch: list[Any]) -> None:
        await self._connection().call(lambda conn: apply_batch(conn, batch))

    async def _write(self, sql: str, args: tuple[Any, ...]) -> int:
        """Execute one statement in the next group commit; returns its row count."""
        return await self._writes.write(lambda conn: conn.execute(sql, args).rowcount)

    async def _query(self, sql: str, args: tuple[Any, ...] = ()) -> list[Any]:
        """The rows of one read, run on the connection thread (after the writes queued before it)."""
        return await self._connection().call(lambda conn: conn.execute(sql, args).fetchall())

    async def aclose(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            await conn.aclose()

    # --- probes --------------------------------------------------------------------------------
    async def upsert_probe(self, probe_id: str, kind: str, spec: dict[str, Any], tags: list[str]) -> None:
        await self._write(
            "INSERT INTO probes (probe_id, kind, spec, tags, updated_ns) VALUES (?, ?, ?, ?, ?) "
            "ON CONFLICT(probe_id) DO UPDATE SET kind=excluded.kind, spec=excluded.spec, tags=excluded.tags, "
            "updated_ns=excluded.updated_ns",
            (probe_id, kind, _dumps(spec), _dumps(tags), time.time_ns()),
        )

    async def list_probes(self) -> list[ProbeRow]:
        rows = await self._query("SELECT probe_id, kind, spec, tags, updated_ns FROM probes ORDER BY probe_id")
        return [ProbeRow(r[0], r[1], json.loads(r[2]), json.loads(r[3]), r[4]) for r in rows]

    # --- runs ----------------------------------------------------------------------------------
    def _run_values(self, run: RunRecord) -> tuple[Any, ...]:
        return (
            run.run_id, run.probe_id, run.kind, run.attempt, run.first_run_id, run.trace_id, run.started_ns,
            run.finished_ns, run.status.value, run.abort_reason, run.verdict.value if run.verdict else None,
            1 if run.final else 0, _dumps([f.model_dump(mode="json") for f in run.findings]),
            _dumps(run.response) if run.response is not None else None,
            _dumps(run.trace_report) if run.trace_report is not None else None,
            _dumps(run.side_effects), _dumps(run.outputs), _dumps(run.links), run.log, run.span_count,
            run.time_to_verdict_s,
        )

    async def insert_run(self, run: RunRecord) -> None:
        await self._write(_INSERT_RUN, self._run_values(run))

    async def finish_run(self, run: RunRecord) -> None:
        blob = encode_spans(run.spans) if run.spans else None
        values = self._run_values(run)

        def upsert(conn: sqlite3.Connection) -> None:
            if conn.execute(_UPDATE_RUN, (*values[1:], blob, run.run_id)).rowcount == 0:
                conn.execute(_INSERT_RUN_SPANS, (*values, blob))

        await self._writes.write(upsert)

    def _row_to_run(self, r: Any, spans_blob: bytes | None = None) -> RunRecord:
        run = RunRecord(
            run_id=r[0], probe_id=r[1], kind=r[2], attempt=r[3], first_run_id=r[4], trace_id=r[5],
            started_ns=r[6], finished_ns=r[7], status=RunStatus(r[8]), abort_reason=r[9],
            verdict=Verdict(r[10]) if r[10] else None, final=bool(r[11]),
            findings=[Finding.model_validate(f) for f in json.loads(r[12])],
            response=json.loads(r[13]) if r[13] else None,
            trace_report=json.loads(r[14]) if r[14] else None,
            side_effects=json.loads(r[15]), outputs=json.loads(r[16]), links=json.loads(r[17]), log=r[18],
            span_count=r[19], time_to_verdict_s=r[20],
        )
        if spans_blob:
            run.spans = decode_spans(spans_blob)
        return run

    async def get_run(self, run_id: str, *, with_spans: bool = False) -> RunRecord | None:
        cols = _RUN_COLUMNS + (", spans" if with_spans else "")
        rows = await self._query(f"SELECT {cols} FROM runs WHERE run_id=?", (run_id,))
        if not rows:
            return None
        r = rows[0]
        return self._row_to_run(r, r[21] if with_spans else None)

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
        sql = f"SELECT {_RUN_COLUMNS} FROM runs {clause} ORDER BY started_ns DESC LIMIT ?"
        rows = await self._query(sql, (*args, limit))
        return [self._row_to_run(r) for r in rows]

    async def runs_for_trace(self, trace_id: str) -> list[RunRecord]:
        sql = f"SELECT {_RUN_COLUMNS} FROM runs WHERE trace_id=? OR run_id=? ORDER BY started_ns"
        rows = await self._query(sql, (trace_id, trace_id))
        return [self._row_to_run(r) for r in rows]

    async def abort_running(self, reason: str) -> int:
        return await self._write(
            "UPDATE runs SET status=?, abort_reason=?, finished_ns=COALESCE(finished_ns, ?), verdict=NULL "
            "WHERE status=?",
            (RunStatus.ABORTED.value, reason, time.time_ns(), RunStatus.RUNNING.value),
        )

    async def apply_retention(self, *, max_age_s: float, max_runs_per_probe: int) -> int:
        horizon = time.time_ns() - int(max_age_s * 1e9)

        def delete(conn: sqlite3.Connection) -> int:
            c1 = conn.execute("DELETE FROM runs WHERE started_ns < ? AND status != ?", (horizon, "running"))
            c2 = conn.execute(
                "DELETE FROM runs WHERE run_id IN (SELECT run_id FROM (SELECT run_id, ROW_NUMBER() OVER "
                "(PARTITION BY probe_id ORDER BY started_ns DESC) AS rn FROM runs) WHERE rn > ?)",
                (max_runs_per_probe,),
            )
            return int(c1.rowcount) + int(c2.rowcount)

        return await self._writes.write(delete)

    # --- events --------------------------------------------------------------------------------
    async def append_event(self, kind: str, data: dict[str, Any]) -> int:
        args = (time.time_ns(), kind, _dumps(data))
        return await self._writes.write(
            lambda conn: int(conn.execute("INSERT INTO events (time_ns, kind, data) VALUES (?, ?, ?)", args)
                             .lastrowid or 0))

    async def list_events(self, kind: str | None = None, *, limit: int = 100) -> list[dict[str, Any]]:
        if kind is None:
            sql, args = "SELECT id, time_ns, kind, data FROM events ORDER BY id DESC LIMIT ?", (limit,)
        else:
            sql = "SELECT id, time_ns, kind, data FROM events WHERE kind=? ORDER BY id DESC LIMIT ?"
            args = (kind, limit)  # type: ignore[assignment]
        rows = await self._query(sql, args)
        return [{"id": r[0], "time_ns": r[1], "kind": r[2], "data": json.loads(r[3])} for r in rows]

    # --- key-value -----------------------------------------------------------------------------
    async def kv_get(self, namespace: str, key: str) -> Any | None:
        rows = await self._query("SELECT value FROM kv WHERE namespace=? AND key=?", (namespace, key))
        return json.loads(rows[0][0]) if rows else None

    async def kv_put(self, namespace: str, key: str, value: Any) -> None:
        await self._write(
            "INSERT INTO kv (namespace, key, value) VALUES (?, ?, ?) "
            "ON CONFLICT(namespace, key) DO UPDATE SET value=excluded.value",
            (namespace, key, _dumps(value)),
        )

    async def kv_put_if_absent(self, namespace: str, key: str, value: Any) -> bool:
        inserted = await self._write(
            "INSERT INTO kv (namespace, key, value) VALUES (?, ?, ?) ON CONFLICT(namespace, key) DO NOTHING",
            (namespace, key, _dumps(value)),
        )
        return inserted == 1

    async def kv_delete(self, namespace: str, key: str) -> None:
        await self._write("DELETE FROM kv WHERE namespace=? AND key=?", (namespace, key))

    async def kv_list(self, namespace: str) -> dict[str, Any]:
        rows = await self._query("SELECT key, value FROM kv WHERE namespace=?", (namespace,))
        return {r[0]: json.loads(r[1]) for r in rows}


def open_store(url: str) -> SqliteStore:
    """The store for a URL (``sqlite:///…``; ``postgresql://`` arrives with scale-out)."""
    if url.startswith(("postgres://", "postgresql://")):
        from tracecanary.errors import StartupError

        raise StartupError(f"store {url!r}: the Postgres backend is not built yet; use sqlite:///PATH")
    return SqliteStore(url)
