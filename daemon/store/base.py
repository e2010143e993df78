"""The results store protocol: probes, runs, an append-only event log and a small key-value space.

One protocol, two backends (SQLite, the default; PostgreSQL), one test suite for all
(tests/store/test_store.py runs against every backend in ``BACKENDS``); ``urls.open_store`` picks one by
URL. Run writes happen inside a shielded scope in the runner so cancellation cannot lose a result.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING, Any, Protocol

from tracecanary.assertions.spans import Span
from tracecanary.assertions.verdict import Finding, Verdict
from tracecanary.errors import TracecanaryError

if TYPE_CHECKING:
    from tracecanary.daemon.store.stats import RunHead, RunStats


class StoreFault(TracecanaryError):
    """The store cannot do its job right now: not writable, disk full, I/O error, file deleted or
    replaced, locked. The message is one line naming the cause; the original error is ``__cause__``.

    Other exceptions from a store (a constraint violated, a bug) are not faults of the store itself.
    """


class RunStatus(StrEnum):
    """Lifecycle of a run; separate from its verdict. An aborted or skipped run has no verdict, and a
    reason (``abort_reason``); skipped: a ``requires:`` precondition was unmet, nothing was sent."""

    RUNNING = "running"
    FINISHED = "finished"
    ABORTED = "aborted"
    SKIPPED = "skipped"


@dataclass
class RunRecord:
    """One probe run (every retry attempt is its own record, linked by ``first_run_id``)."""

    run_id: str
    probe_id: str
    kind: str
    attempt: int
    first_run_id: str
    trace_id: str
    started_ns: int
    status: RunStatus = RunStatus.RUNNING
    finished_ns: int | None = None
    verdict: Verdict | None = None
    abort_reason: str | None = None
    """Why the run was aborted, or skipped (each unmet precondition, joined by "; ")."""
    findings: list[Finding] = field(default_factory=list)
    response: dict[str, Any] | None = None
    trace_report: dict[str, Any] | None = None
    """The judge's JSON report: matched nodes, missing nodes with candidates, unexpected spans."""
    side_effects: list[dict[str, Any]] = field(default_factory=list)
    outputs: dict[str, Any] = field(default_factory=dict)
    links: dict[str, str] = field(default_factory=dict)
    log: str = ""
    span_count: int = 0
    time_to_verdict_s: float | None = None
    final: bool = True
    """False when a retry follows this attempt."""
    retry_at_ns: int | None = None
    """While a retry is pending (``final`` False): when the next attempt is due (epoch ns). A restarted
    daemon finds such chains with ``Store.pending_retries`` and resumes or ends them."""
    retry_aborted: str | None = None
    """Why the retry planned after this attempt never ran (shutdown during the retry delay, restart
    too late, probe removed); such an attempt is then the final run of its chain."""
    spans: list[Span] = field(default_factory=list)
    """Snapshot of the judged spans (stored compressed; empty when loaded without spans)."""

    @property
    def duration_s(self) -> float | None:
        if self.finished_ns is None:
            return None
        return (self.finished_ns - self.started_ns) / 1e9


FinishStatement = tuple[str, Sequence[Any]]
FinishExtra = Callable[["RunRecord"], FinishStatement | None]
"""A statement (PostgreSQL SQL with ``%s`` parameters; an INSERT/UPDATE/DELETE, written as a data-modifying
CTE of the run's upsert) to write in the same statement as a finished run, or None for this run.
PostgreSQL only (``PostgresStore.finish_extras``; ``GuardedStore.add_finish_extra`` registers one): mode
kafka writes each final run's results-outbox row so, saving a round trip per run."""


@dataclass
class ProbeRow:
    probe_id: str
    kind: str
    spec: dict[str, Any]
    tags: list[str]
    updated_ns: int


class Store(Protocol):
    """What the daemon, `check`, alerts, API and dashboard need from a results store."""

    async def open(self) -> None:
        """Connect, create or migrate the schema and prove a write; :class:`StoreFault` when that fails."""
        ...
    async def aclose(self) -> None: ...
    async def health(self) -> str | None:
        """None when the store reads and writes where it was opened; else why not, in one line.

        Called periodically by the engine; it may re-open a store whose file was replaced.
        """
        ...

    async def upsert_probe(self, probe_id: str, kind: str, spec: dict[str, Any], tags: list[str]) -> None: ...
    async def list_probes(self) -> list[ProbeRow]: ...

    async def insert_run(self, run: RunRecord) -> None: ...
    async def finish_run(self, run: RunRecord) -> None: ...
    async def get_run(self, run_id: str, *, with_spans: bool = False) -> RunRecord | None: ...
    async def list_runs(
        self, probe_id: str | None = None, *, limit: int = 50, before_ns: int | None = None
    ) -> list[RunRecord]: ...
    async def runs_for_trace(self, trace_id: str) -> list[RunRecord]: ...
    async def run_stats(
        self, since_ns: int, until_ns: int, *, probe_id: str | None = None, bucket_ns: int | None = None
    ) -> dict[tuple[str, int], RunStats]:
        """Judged runs started in [since, until) summed per (probe, bucket index) — ``stats.py`` says what
        counts. Without ``bucket_ns`` every key's index is 0 (one sum per probe); with it, bucket i covers
        [since + i·bucket, since + (i+1)·bucket). Served from hour and day rollups plus the raw edges."""
        ...
    async def recent_runs(self, probe_ids: list[str], *, limit: int) -> dict[str, list[RunHead]]:
        """The latest ``limit`` runs of each probe, newest first (the status strip)."""
        ...
    async def latest_runs(self, probe_ids: list[str]) -> dict[str, RunRecord]:
        """Each probe's newest run with its findings, without spans, response, report, log or side effects."""
        ...
    async def abort_running(self, reason: str) -> int: ...
    async def pending_retries(self) -> list[RunRecord]:
        """Attempts whose retry never completed, oldest first, without spans: not final, and every later
        attempt of the chain (if any) aborted — then ``retry_aborted`` says so (``attempt 2 was aborted:
        daemon restart``) and the chain is to be ended, not resumed."""
        ...
    async def apply_retention(self, *, max_age_s: float, max_runs_per_probe: int) -> int: ...

    async def append_event(self, kind: str, data: dict[str, Any]) -> int: ...
    async def list_events(self, kind: str | None = None, *, limit: int = 100) -> list[dict[str, Any]]: ...

    async def kv_get(self, namespace: str, key: str) -> Any | None: ...
    async def kv_put(self, namespace: str, key: str, value: Any) -> None: ...
    async def kv_put_if_absent(self, namespace: str, key: str, value: Any) -> bool:
        """Atomic claim: store only when the key is absent; True when this call stored it."""
        ...
    async def kv_delete(self, namespace: str, key: str) -> None: ...
    async def kv_list(self, namespace: str) -> dict[str, Any]: ...
