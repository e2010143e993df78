"""What the API and the dashboard both show: probe states, run summaries, trace trees, redaction.

Pure over the store's records (plus the Control's schedule and silences), so the JSON API and the
server-rendered pages agree on every number.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from tracecanary.assertions.spans import Span, Trace, group_traces, span_to_dict
from tracecanary.assertions.verdict import Verdict
from tracecanary.daemon.store.base import RunRecord, RunStatus
from tracecanary.daemon.store.stats import DAY_NS, RANGES_NS, RunHead, RunStats
from tracecanary.daemon.web.control import Control
from tracecanary.daemon.web.schema import (
    FindingOut,
    HistoryItem,
    ProbeState,
    ProbeStatus,
    RunDetail,
    RunSummary,
    SpanOut,
    TraceTree,
    TreeNode,
)
from tracecanary.probes.base import ProbeSpec

HISTORY_RUNS = 30
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


async def silence_check(control: Control) -> Callable[[ProbeSpec], bool]:
    """A predicate: is the probe covered by an active silence now? (always False without alerting)."""
    if control.alerts is None:
        return lambda probe: False
    active = [s.settings for s in await control.alerts.list_silences() if s.active]
    return lambda probe: any(s.matches_probe(probe.id, list(probe.tags)) for s in active)


def _state(last_final: RunHead | None, silenced: bool, last: RunRecord | None = None) -> ProbeState:
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


def _range_ns(range_key: str) -> int:
    if range_key not in RANGES_NS:
        raise ValueError(f"unknown range {range_key!r} (one of {', '.join(RANGES_NS)})")
    return RANGES_NS[range_key]


class Strips:
    """The status strips built so far, per probe, reused while the probe's latest runs are the same
    (15k small models for 500 probes were most of the overview's time). Bounded by the probe count."""

    def __init__(self, max_probes: int = 10_000) -> None:
        self._built: dict[str, tuple[tuple[RunHead, ...], list[HistoryItem]]] = {}
        self._max = max_probes

    def strip(self, probe_id: str, heads: list[RunHead]) -> list[HistoryItem]:
        key = tuple(heads)
        hit = self._built.get(probe_id)
        if hit is not None and hit[0] == key:
            return hit[1]
        items = [HistoryItem.model_construct(run_id=h.run_id, verdict=h.verdict.value if h.verdict else None,
                                             status=h.status.value, started_ns=h.started_ns) for h in heads]
        if len(self._built) >= self._max:
            self._built.pop(next(iter(self._built)))
        self._built[probe_id] = (key, items)
        return items


def _row(probe: ProbeSpec, heads: list[RunHead], history: list[HistoryItem], latest: RunRecord | None,
         stats: RunStats, day: RunStats, silenced: bool, nxt: datetime | None, range_key: str,
         now_ns: int) -> ProbeStatus:
    last_final = next((h for h in heads if h.status is RunStatus.FINISHED and h.verdict is not None and h.final),
                      None)
    return ProbeStatus(
        id=probe.id, kind=probe.kind, description=probe.description, tags=list(probe.tags),
        paused=probe.pause, schedule=schedule_text(probe), state=_state(last_final, silenced, latest),
        silenced=silenced, last_run=run_summary(latest) if latest else None,
        last_verdict=str(last_final.verdict) if last_final else None,
        last_verdict_age_s=(now_ns - (last_final.finished_ns or last_final.started_ns)) / 1e9 if last_final else None,
        next_run=nxt.astimezone(UTC).isoformat(timespec="seconds").replace("+00:00", "Z") if nxt else None,
        success_ratio_24h=day.uptime, runs_24h=day.runs, range=range_key, uptime=stats.uptime,
        runs_in_range=stats.runs, p50_duration_s=stats.quantile_s(0.5), p95_duration_s=stats.quantile_s(0.95),
        history=history,
    )


async def probe_statuses(control: Control, range_key: str = "24h", probes: list[ProbeSpec] | None = None,
                         now_ns: int | None = None, strips: Strips | None = None) -> list[ProbeStatus]:
    """Every probe (or ``probes``), failing first, then unknown, degraded, pending, ok, silenced (config order
    within a state), with uptime and percentiles over ``range_key`` (``1h`` | ``24h`` | ``7d`` | ``30d``).

    A fixed number of store reads whatever the probe count: the strip's runs, the newest runs, and the
    aggregates over the range (and over 24 h) from the store's rollups."""
    span_ns = _range_ns(range_key)
    now_ns = now_ns or time.time_ns()
    specs = control.probes() if probes is None else probes
    ids = [p.id for p in specs]
    store = control.store
    heads = await store.recent_runs(ids, limit=HISTORY_RUNS)
    latest = await store.latest_runs(ids)
    stats = await store.run_stats(now_ns - span_ns, now_ns)
    day = stats if span_ns == DAY_NS else await store.run_stats(now_ns - DAY_NS, now_ns)
    silenced_fn = await silence_check(control)
    strips = strips or Strips()
    rows = [
        _row(p, heads.get(p.id, []), strips.strip(p.id, heads.get(p.id, [])), latest.get(p.id), stats.get((p.id, 0), RunStats()),
             day.get((p.id, 0), RunStats()), silenced_fn(p), control.next_run(p.id), range_key, now_ns)
        for p in specs
    ]
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
