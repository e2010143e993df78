"""What the API and the dashboard both show: probe states, run summaries, trace trees, redaction.

Pure over the store's records (plus the Control's schedule and silences), so the JSON API and the
server-rendered pages agree on every number.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

from tracecanary.assertions.spans import Span, Trace, group_traces, span_to_dict
from tracecanary.assertions.verdict import Verdict
from tracecanary.daemon.store.base import RunRecord, RunStatus, Store
from tracecanary.daemon.web.control import Control
from tracecanary.daemon.web.schema import (
    FindingOut,
    HistoryItem,
    ProbeStatus,
    RunDetail,
    RunSummary,
    SpanOut,
    TraceTree,
    TreeNode,
)
from tracecanary.probes.base import ProbeSpec

DAY_NS = 86_400 * 10**9
HISTORY_RUNS = 30
WINDOW_RUNS = 500
MAX_TREE_DEPTH = 64
STATE_ORDER = {"failing": 0, "unknown": 1, "degraded": 2, "skipped": 3, "pending": 4, "ok": 5, "silenced": 6}
"""Overview order; ``unknown``: the last final run got no spans from its services (shown "no telemetry");
``skipped``: the last run was skipped, a ``requires:`` precondition unmet (its reason is shown)."""
_SECRET_KEY = re.compile(
    r"(?i)(authorization|cookie|token|secret|password|passwd|api[-_]?key|signature|dsn|private)"
)
REDACTED = "[redacted]"


def redact(value: Any, depth: int = 0) -> Any:
    """Mask values whose key looks secret, recursively (responses, outputs, settings).

    A second line of defence for what the target sent back (its ``Set-Cookie`` …): the config's own
    secrets are masked by value in every API response and page (``Control.secrets``)."""
    if depth > 20:
        return value
    if isinstance(value, dict):
        return {
            k: REDACTED if isinstance(k, str) and _SECRET_KEY.search(k) and v not in (None, "")
            else redact(v, depth + 1)
            for k, v in value.items()
        }
    if isinstance(value, list | tuple):
        return [redact(v, depth + 1) for v in value]
    return value


def iso_ns(ns: int) -> str:
    return datetime.fromtimestamp(ns / 1e9, tz=UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def run_summary(run: RunRecord) -> RunSummary:
    return RunSummary(
        run_id=run.run_id, probe_id=run.probe_id, kind=run.kind, attempt=run.attempt,
        first_run_id=run.first_run_id, trace_id=run.trace_id, status=str(run.status),
        verdict=str(run.verdict) if run.verdict is not None else None,
        started_ns=run.started_ns, started_at=iso_ns(run.started_ns), finished_ns=run.finished_ns,
        duration_s=run.duration_s, abort_reason=run.abort_reason, final=run.final,
        span_count=run.span_count or len(run.spans), time_to_verdict_s=run.time_to_verdict_s,
        finding_count=len(run.findings), top_finding=run.findings[0].message if run.findings else None,
    )


def schedule_text(probe: ProbeSpec) -> str:
    if probe.every is not None:
        return f"every {probe.every:g}s"
    if probe.cron is not None:
        return f"cron {probe.cron} ({probe.timezone})"
    return "manual"


def p95(values: list[float]) -> float | None:
    """Nearest-rank 95th percentile."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(0, math.ceil(0.95 * len(ordered)) - 1)]


async def silence_check(control: Control) -> Callable[[ProbeSpec], bool]:
    """A predicate: is the probe covered by an active silence now? (always False without alerting)."""
    if control.alerts is None:
        return lambda probe: False
    active = [s.settings for s in await control.alerts.list_silences() if s.active]
    return lambda probe: any(s.matches_probe(probe.id, list(probe.tags)) for s in active)


def _state(last_final: RunRecord | None, silenced: bool, last: RunRecord | None = None) -> str:
    if silenced:
        return "silenced"
    if last is not None and last.status is RunStatus.SKIPPED:
        return "skipped"
    if last_final is None or last_final.verdict is None:
        return "pending"
    if last_final.verdict is Verdict.PASS:
        return "ok"
    if last_final.verdict is Verdict.DEGRADED:
        return "degraded"
    if last_final.verdict is Verdict.UNKNOWN:
        return "unknown"
    return "failing"


class RunWindows:
    """Per-probe cache of the latest runs, re-read only when the newest run changed.

    The overview refreshes every few seconds; re-reading 500 runs per probe each time would cost ~45 ms
    per probe on SQLite. Asking for the newest run is cheap, and a window holding a running run is
    never cached (its status is about to change).
    """

    def __init__(self, max_probes: int = 10_000) -> None:
        self._cache: dict[str, tuple[tuple[str, str], list[RunRecord]]] = {}
        self._max_probes = max_probes

    async def latest(self, store: Store, probe_id: str) -> list[RunRecord]:
        head = await store.list_runs(probe_id, limit=1)
        if not head:
            self._cache.pop(probe_id, None)
            return []
        key = (head[0].run_id, str(head[0].status))
        hit = self._cache.get(probe_id)
        if hit is not None and hit[0] == key:
            return hit[1]
        runs = [
            replace(r, response=None, trace_report=None, log="", side_effects=[], outputs={}, spans=[])
            for r in await store.list_runs(probe_id, limit=WINDOW_RUNS)
        ]
        if all(r.status is not RunStatus.RUNNING for r in runs):
            if len(self._cache) >= self._max_probes:
                self._cache.pop(next(iter(self._cache)))
            self._cache[probe_id] = (key, runs)
        return runs


async def probe_status(
    control: Control, probe: ProbeSpec, now_ns: int | None = None, windows: RunWindows | None = None,
    silenced_fn: Callable[[ProbeSpec], bool] | None = None,
) -> ProbeStatus:
    """One probe's overview row, from its latest runs in the store."""
    now_ns = now_ns or time.time_ns()
    runs = await (windows or RunWindows()).latest(control.store, probe.id)
    judged = [r for r in runs if r.status is RunStatus.FINISHED and r.verdict is not None and r.final]
    last_final = judged[0] if judged else None
    day = [r for r in judged if r.started_ns >= now_ns - DAY_NS]
    durations = [d for r in judged[:100] if (d := r.duration_s) is not None]
    silenced = (silenced_fn or await silence_check(control))(probe)
    nxt = control.next_run(probe.id)
    return ProbeStatus(
        id=probe.id, kind=probe.kind, description=probe.description, tags=list(probe.tags),
        paused=probe.pause, schedule=schedule_text(probe),
        state=_state(last_final, silenced, runs[0] if runs else None),  # type: ignore[arg-type]
        silenced=silenced, last_run=run_summary(runs[0]) if runs else None,
        last_verdict=str(last_final.verdict) if last_final else None,
        last_verdict_age_s=(now_ns - (last_final.finished_ns or last_final.started_ns)) / 1e9 if last_final else None,
        next_run=nxt.astimezone(UTC).isoformat(timespec="seconds").replace("+00:00", "Z") if nxt else None,
        success_ratio_24h=(sum(1 for r in day if r.verdict and r.verdict.ok) / len(day)) if day else None,
        runs_24h=len(day), p95_duration_s=p95(durations),
        history=[
            HistoryItem(run_id=r.run_id, verdict=str(r.verdict) if r.verdict else None,
                        status=str(r.status), started_ns=r.started_ns)
            for r in runs[:HISTORY_RUNS]
        ],
    )


async def probe_statuses(control: Control, windows: RunWindows | None = None) -> list[ProbeStatus]:
    """Every probe, failing first, then unknown, degraded, pending, ok, silenced (config order within a state)."""
    now_ns = time.time_ns()
    silenced_fn = await silence_check(control)
    rows = [await probe_status(control, p, now_ns, windows, silenced_fn) for p in control.probes()]
    return sorted(rows, key=lambda r: STATE_ORDER[r.state])


def _node(trace: Trace, span: Span, orphan: bool, depth: int) -> TreeNode:
    kids = [] if depth >= MAX_TREE_DEPTH else [_node(trace, c, False, depth + 1) for c in trace.children(span)]
    return TreeNode(span_id=span.span_id, name=span.name, service=span.service, orphan=orphan, children=kids)


def trace_trees(spans: list[Span], main_trace_id: str) -> list[TraceTree]:
    """The spans as trees, one per trace; the run's own trace first, then linked traces by start time."""
    traces = sorted(
        group_traces(spans).values(), key=lambda t: (t.trace_id != main_trace_id, t.start_ns)
    )
    return [
        TraceTree(
            trace_id=t.trace_id,
            roots=[_node(t, s, False, 0) for s in t.roots] + [_node(t, s, True, 0) for s in t.orphans],
        )
        for t in traces
    ]


async def run_detail(control: Control, run: RunRecord) -> RunDetail:
    """A run with its spans: the stored snapshot, or the live buffer while the run is going."""
    spans = list(run.spans)
    live = False
    if run.status is RunStatus.RUNNING and not spans:
        spans = list(control.live_spans(run.trace_id))
        live = True
    links = dict(run.links)
    if not links and run.trace_id:
        links = dict(control.links_for(run.trace_id, run.run_id, run.probe_id))
    return RunDetail(
        run=run_summary(run),
        findings=[FindingOut.model_validate(f.model_dump(mode="json")) for f in run.findings],
        response=redact(run.response) if run.response is not None else None,
        trace_report=run.trace_report,
        side_effects=redact(list(run.side_effects)),
        outputs=redact(dict(run.outputs)),
        links=links, log=run.log, live=live,
        spans=[SpanOut.model_validate(span_to_dict(s)) for s in sorted(spans, key=lambda s: s.start_ns)],
        traces=trace_trees(spans, run.trace_id),
    )


def fmt_age(seconds: float | None) -> str:
    """``42s``, ``5m``, ``3h``, ``2d`` (``–`` for None)."""
    if seconds is None:
        return "–"
    s = max(0.0, seconds)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if s >= size:
            return f"{s / size:.0f}{unit}"
    return f"{s:.0f}s"
