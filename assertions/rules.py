"""Whole-trace rules: limits, orphans, depth, Tracetest checks — each finding with expected vs observed."""

from __future__ import annotations

from collections.abc import Sequence

from tracecanary.assertions.expect import Limits, LimitsDegraded, TraceExpectation
from tracecanary.assertions.selectors import run_check
from tracecanary.assertions.spans import Span, group_traces
from tracecanary.assertions.units import format_duration
from tracecanary.assertions.verdict import Finding, Verdict


def limit_findings(lim: Limits | None, path: str, *, spans: int, duration_s: float, depth: int) -> list[Finding]:
    """Hard upper bounds (they fail at once: more spans can only make them worse)."""
    out: list[Finding] = []
    if lim is None:
        return out
    if lim.max_spans is not None and spans > lim.max_spans:
        out.append(Finding(type="trace.limit", path=f"{path}.max_spans", expected=lim.max_spans, observed=spans,
                           message=f"{spans} spans > max_spans {lim.max_spans}"))
    if lim.max_duration is not None and duration_s > lim.max_duration:
        out.append(Finding(type="trace.limit", path=f"{path}.max_duration", expected=lim.max_duration,
                           observed=duration_s, message=f"trace lasted {format_duration(duration_s)} > "
                           f"max_duration {format_duration(lim.max_duration)}"))
    if lim.max_depth is not None and depth > lim.max_depth:
        out.append(Finding(type="trace.limit", path=f"{path}.max_depth", expected=lim.max_depth, observed=depth,
                           message=f"trace depth {depth} > max_depth {lim.max_depth}"))
    return out


def degraded_limit_findings(d: LimitsDegraded, path: str, *, spans: int, duration_s: float) -> list[Finding]:
    """Soft whole-trace thresholds: over them the run is ``degraded``."""
    out: list[Finding] = []
    if d.max_duration is not None and duration_s > d.max_duration:
        out.append(Finding(type="trace.degraded", severity=Verdict.DEGRADED, path=f"{path}.max_duration",
                           expected=d.max_duration, observed=duration_s,
                           message=f"trace lasted {format_duration(duration_s)} > degraded "
                           f"max {format_duration(d.max_duration)}"))
    if d.max_spans is not None and spans > d.max_spans:
        out.append(Finding(type="trace.degraded", severity=Verdict.DEGRADED, path=f"{path}.max_spans",
                           expected=d.max_spans, observed=spans,
                           message=f"{spans} spans > degraded max_spans {d.max_spans}"))
    return out


def settled_findings(exp: TraceExpectation, spans: Sequence[Span], base: str) -> list[Finding]:
    """Rules judged over the whole (settled) trace: orphans, exact depth, Tracetest checks."""
    out: list[Finding] = []
    if exp.no_orphans:
        present = {s.span_id for s in spans}
        for s in spans:
            if s.parent_span_id and s.parent_span_id not in present:
                out.append(Finding(type="trace.orphan", path=f"{base}.no_orphans", expected="parent present",
                                   observed=s.parent_span_id, message=f"{s.label()} is an orphan: its parent "
                                   f"{s.parent_span_id} is not in the trace (broken context propagation?)"))
    lim = exp.limits
    if lim is not None and lim.max_depth is not None:
        depth = max((t.depth() for t in group_traces(spans).values()), default=0)
        if depth > lim.max_depth:
            out.append(Finding(type="trace.limit", path=f"{base}.limits.max_depth", expected=lim.max_depth,
                               observed=depth, message=f"trace depth {depth} > max_depth {lim.max_depth}"))
    checks = [(f"checks[{i}]", c.name, c.select, c.assert_) for i, c in enumerate(exp.checks)]
    checks += [(f"specs[{i}]", c.name, c.selector, c.assertions) for i, c in enumerate(exp.specs)]
    for where, name, selector, assertions in checks:
        for msg in run_check(selector, assertions, spans):
            label = f"{name}: " if name else ""
            out.append(Finding(type="trace.check", path=f"{base}.{where}", expected=selector or "all spans",
                               observed=msg, message=f"{label}{msg}"))
    return out
