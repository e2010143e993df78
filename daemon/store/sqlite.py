"""SQLite results store (aiosqlite, WAL). The default backend: one file, no server."""

from __future__ import annotations

import json
import logging
import sqlite3
import time
from pathlib import Path
from typing import Any

import aiosqlite

from tracecanary.assertions.verdict import Finding, Verdict
from tracecanary.daemon.store.base import ProbeRow, RunRecord, RunStatus
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


class SqliteStore:
    """The Store protocol on one SQLite file (WAL mode, one connection).

    Writes go through a group commit: concurrent writers share one commit on the connection thread,
    and each write is committed (durable) before its call returns.
    """

    def __init__(self, url: str) -> None:
        self.path = sqlite_path(url)
        self._db: aiosqlite.Connection | None = None
        self._writes = GroupCommit(self._run_batch)

    @property
    def db(self) -> aiosqlite.Connection:
        if self._db is None:
            raise RuntimeError("store is not open")
        return self._db

    async def open(self) -> None:
        if self._db is not None:
            return
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        self._db = await aiosqlite.connect(self.path)
        await self._db.execute("PRAGMA journal_mode=WAL")
        await self._db.execute("PRAGMA synchronous=NORMAL")
        await self._db.execute("PRAGMA busy_timeout=5000")
        await self._db.executescript(SCHEMA)
        await self._db.commit()

    async def _run_batch(self, batch: list[Any]) -> None:
        db = self.db
        # aiosqlite's own queue-a-function entry point: the batch runs on the connection's thread.
        run_on_thread = getattr(db, "_execute")  # noqa: B009
        await run_on_thread(apply_batch, getattr(db, "_conn"), batch)  # noqa: B009

    async def _write(self, sql: str, args: tuple[Any, ...]) -> int:
        """Execute one statement in the next group commit; returns its row count."""
        return await self._writes.write(lambda conn: conn.execute(sql, args).rowcount)

    async def aclose(self) -> None:
        db, self._db = self._db, None
        if db is not None:
            await db.close()

    # --- probes --------------------------------------------------------------------------------
    async def upsert_probe(self, probe_id: str, kind: str, spec: dict[str, Any], tags: list[str]) -> None:
        await self._write(
            "INSERT INTO probes (probe_id, kind, spec, tags, updated_ns) VALUES (?, ?, ?, ?, ?) "
            "ON CONFLICT(probe_id) DO UPDATE SET kind=excluded.kind, spec=excluded.spec, tags=excluded.tags, "
            "updated_ns=excluded.updated_ns",
            (probe_id, kind, _dumps(spec), _dumps(tags), time.time_ns()),
        )

    async def list_probes(self) -> list[ProbeRow]:
        async with self.db.execute("SELECT probe_id, kind, spec, tags, updated_ns FROM probes ORDER BY probe_id") as cur:
            rows = await cur.fetchall()
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
        async with self.db.execute(f"SELECT {cols} FROM runs WHERE run_id=?", (run_id,)) as cur:
            r = await cur.fetchone()
        if r is None:
            return None
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
        async with self.db.execute(sql, (*args, limit)) as cur:
            rows = await cur.fetchall()
        return [self._row_to_run(r) for r in rows]

    async def runs_for_trace(self, trace_id: str) -> list[RunRecord]:
        sql = f"SELECT {_RUN_COLUMNS} FROM runs WHERE trace_id=? OR run_id=? ORDER BY started_ns"
        async with self.db.execute(sql, (trace_id, trace_id)) as cur:
            rows = await cur.fetchall()
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
        async with self.db.execute(sql, args) as cur:
            rows = await cur.fetchall()
        return [{"id": r[0], "time_ns": r[1], "kind": r[2], "data": json.loads(r[3])} for r in rows]

    # --- key-value -----------------------------------------------------------------------------
    async def kv_get(self, namespace: str, key: str) -> Any | None:
        async with self.db.execute("SELECT value FROM kv WHERE namespace=? AND key=?", (namespace, key)) as cur:
            r = await cur.fetchone()
        return json.loads(r[0]) if r else None

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
        async with self.db.execute("SELECT key, value FROM kv WHERE namespace=?", (namespace,)) as cur:
            rows = await cur.fetchall()
        return {r[0]: json.loads(r[1]) for r in rows}


def open_store(url: str) -> SqliteStore:
    """The store for a URL (``sqlite:///…``; ``postgresql://`` arrives with scale-out)."""
    if url.startswith(("postgres://", "postgresql://")):
        from tracecanary.errors import StartupError

        raise StartupError(f"store {url!r}: the Postgres backend is not built yet; use sqlite:///PATH")
    return SqliteStore(url)
