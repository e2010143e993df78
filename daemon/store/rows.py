"""What both SQL backends share: the run row's columns and codec, and the SQL they both speak.

SQL here uses ``?`` placeholders (SQLite's); the PostgreSQL store turns them into ``%s``. JSON values
are stored as TEXT and the span snapshot as a blob in both, so one codec reads and writes both.
"""

from __future__ import annotations

import json
from typing import Any

from tracecanary.assertions.verdict import Finding, Verdict
from tracecanary.daemon.store.base import RunRecord, RunStatus
from tracecanary.daemon.store.snapshot import decode_spans

HEALTH_NS = "tracecanary.store"
"""kv namespace of the proving writes (``opened_ns`` at open, ``checked_ns`` at each health check)."""

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
RETENTION_BY_AGE = "DELETE FROM runs WHERE started_ns < ? AND status != 'running'"
RETENTION_BY_COUNT = (
    "DELETE FROM runs WHERE run_id IN (SELECT run_id FROM (SELECT run_id, ROW_NUMBER() OVER "
    "(PARTITION BY probe_id ORDER BY started_ns DESC) AS rn FROM runs) AS ranked WHERE rn > ?)"
)
ABORT_RUNNING = ("UPDATE runs SET status=?, abort_reason=?, finished_ns=COALESCE(finished_ns, ?), verdict=NULL "
                 "WHERE status=?")
LIGHT_COLUMNS = (
    "run_id, probe_id, kind, attempt, first_run_id, trace_id, started_ns, finished_ns, status, abort_reason, "
    "verdict, final, findings, NULL, NULL, '[]', '{}', links, '', span_count, time_to_verdict_s, retry_at_ns, "
    "retry_aborted"
)
"""RUN_COLUMNS with the payloads (response, report, side effects, outputs, log) left out: for lists."""
KV_PUT = ("INSERT INTO kv (namespace, key, value) VALUES (?, ?, ?) "
          "ON CONFLICT(namespace, key) DO UPDATE SET value=excluded.value")


def dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), default=str)


def run_values(run: RunRecord) -> tuple[Any, ...]:
    """The row of ``run`` in :data:`RUN_COLUMNS` order (the span snapshot apart)."""
    return (
        run.run_id, run.probe_id, run.kind, run.attempt, run.first_run_id, run.trace_id, run.started_ns,
        run.finished_ns, run.status.value, run.abort_reason, run.verdict.value if run.verdict else None,
        1 if run.final else 0, dumps([f.model_dump(mode="json") for f in run.findings]),
        dumps(run.response) if run.response is not None else None,
        dumps(run.trace_report) if run.trace_report is not None else None,
        dumps(run.side_effects), dumps(run.outputs), dumps(run.links), run.log, run.span_count,
        run.time_to_verdict_s, run.retry_at_ns, run.retry_aborted,
    )


def row_to_run(r: Any, spans_blob: bytes | None = None) -> RunRecord:
    """A row of :data:`RUN_COLUMNS` (and its snapshot, when read) back into a record."""
    run = RunRecord(
        run_id=r[0], probe_id=r[1], kind=r[2], attempt=r[3], first_run_id=r[4], trace_id=r[5],
        started_ns=r[6], finished_ns=r[7], status=RunStatus(r[8]), abort_reason=r[9],
        verdict=Verdict(r[10]) if r[10] else None, final=bool(r[11]),
        findings=[Finding.model_validate(f) for f in json.loads(r[12])],
        response=json.loads(r[13]) if r[13] else None,
        trace_report=json.loads(r[14]) if r[14] else None,
        side_effects=json.loads(r[15]), outputs=json.loads(r[16]), links=json.loads(r[17]), log=r[18],
        span_count=r[19], time_to_verdict_s=r[20], retry_at_ns=r[21], retry_aborted=r[22],
    )
    if spans_blob:
        run.spans = decode_spans(bytes(spans_blob))
    return run
