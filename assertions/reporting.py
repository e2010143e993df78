"""What a trace judge says beyond the match: the findings of its rules, its explanations and its report.

Findings of the whole-trace bookkeeping (``forbid``, ``limits``, a ``count`` upper bound exceeded), of the
rules judged once the trace settled, of ``degraded`` thresholds and of ``any_of``; the misses explained
(:class:`~tracecanary.assertions.explain.Explainer`); the span matched to every expected node; and the
report JSON the store and dashboard keep. Reads the judge, never changes what it knows.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from tracecanary.assertions import rules
from tracecanary.assertions.explain import Explainer, forbid_message
from tracecanary.assertions.spans import Span, is_probe_span
from tracecanary.assertions.tree import CNode, describe
from tracecanary.assertions.units import format_duration
from tracecanary.assertions.verdict import Finding, Verdict

if TYPE_CHECKING:
    from tracecanary.assertions.judge import TraceJudge


def early_failures(judge: TraceJudge) -> list[Finding]:
    """What fails the run at once: a ``forbid`` hit, an exceeded limit or ``count`` upper bound."""
    by_id = judge.index.by_id
    out = [Finding(type="trace.forbid", path=f"{judge.base}.forbid[{i}]",
                   message=forbid_message(by_id[sid], describe(judge.exp.forbid[i])),
                   expected="absent", observed=sid)
           for i, sid in judge.forbid_hits]
    out.extend(rules.limit_findings(judge.exp.limits, f"{judge.base}.limits", spans=judge.pool_count,
                                    duration_s=judge.duration_s(), depth=judge.max_depth_seen))
    for a, full in zip(judge.anchors, judge.search.full, strict=True):
        if a.hi is not None and len(full) > a.hi:
            labels = ", ".join(by_id[x].label() for x in judge.search.by_start(full)[:5])
            out.append(Finding(type="trace.count", path=a.path, expected=a.hi, observed=len(full),
                               message=f"expected at most {a.hi} × {describe(a.spec)}, "
                               f"observed {len(full)}: {labels}"))
    return out


def settled_findings(judge: TraceJudge) -> list[Finding]:
    """The whole-trace rules (``no_orphans``, ``checks``, ``specs``, ``max_depth``) over the pool's spans."""
    exp = judge.exp
    if not (exp.no_orphans or exp.checks or exp.specs or (exp.limits and exp.limits.max_depth)):
        return []
    return rules.settled_findings(exp, pool_spans(judge), judge.base)


def degraded_findings(judge: TraceJudge) -> list[Finding]:
    """Matched spans over their ``degraded.max_duration`` and the trace over ``limits.degraded``."""
    out: list[Finding] = []
    nodes = report_nodes(judge) if any(n.spec.degraded is not None for n in judge.nodes) else {}
    for n in judge.nodes:
        deg = n.spec.degraded
        sid = nodes.get(n.path)
        if deg is None or deg.max_duration is None or sid is None:
            continue
        span = judge.index.by_id[sid]
        if span.duration_s > deg.max_duration:
            out.append(Finding(type="trace.degraded", severity=Verdict.DEGRADED, path=f"{n.path}.degraded",
                               expected=deg.max_duration, observed=span.duration_s,
                               message=f"{span.label()}: {format_duration(span.duration_s)} > degraded "
                               f"max {format_duration(deg.max_duration)}"))
    lim = judge.exp.limits
    if lim is not None and lim.degraded is not None:
        out.extend(rules.degraded_limit_findings(lim.degraded, f"{judge.base}.limits.degraded",
                                                 spans=judge.pool_count, duration_s=judge.duration_s()))
    return out


def any_of_findings(judge: TraceJudge, *, final: bool) -> list[Finding]:
    """The findings of the first ``any_of`` alternative that holds; when none does, why, with the closest."""
    states = [(alt, alt.finish() if final else alt.check(quiet_s=float("inf"))) for alt in judge.alts]
    held = [s for _, s in states if s.verdict is not None and s.verdict.ok]
    if held:
        return [f for f in held[0].findings if f.severity != Verdict.FAIL]
    alt, state = min(states, key=lambda p: (len([f for f in p[1].findings if f.severity == Verdict.FAIL]),
                                            -p[0].matched_nodes()))
    head = Finding(type="trace.any_of", path=f"{judge.base}.any_of", expected=f"one of {len(judge.alts)}",
                   observed="none holds",
                   message=f"none of the {len(judge.alts)} alternatives holds; closest is {alt.base}")
    return [head, *state.findings]


def explain(judge: TraceJudge) -> Explainer:
    """The anchors' misses explained (expected and closest observed)."""
    correlate = (judge.corr_attr, judge.correlate_value) if judge.corr_attr is not None else None
    ex = Explainer(judge.solver, judge.in_pool, waited_s=judge.waited_s, correlate=correlate)
    cands = {a.idx: judge.search.by_start(f) for a, f in zip(judge.anchors, judge.search.full, strict=True)}
    if not ex.group(judge.anchors, cands, None) and judge.search.refresh() is None:
        ex.distinct(judge.anchors, cands, None)
    return ex


def report_nodes(judge: TraceJudge) -> dict[str, str | None]:
    """Expected node path → the span matched to it (a witness; for a miss, the best partial), or None."""
    out: dict[str, str | None] = {n.path: None for n in judge.nodes}
    search, solver, index = judge.search, judge.solver, judge.index
    top = search.refresh()
    stack: list[tuple[CNode, str]] = []
    for a, full in zip(judge.anchors, search.full, strict=True):
        ids = top[a.idx] if top is not None else search.by_start(full)
        if not ids:
            ids = search.by_start({x for x in index.local[a.idx] if judge.in_pool(x)})
        stack.extend((a, sid) for sid in ids[:1])
    while stack:
        node, sid = stack.pop()
        out[node.path] = sid
        assign = solver.full(node, sid)
        for c in node.groups():
            if assign is not None:
                ids = assign.get(c.idx, [])
            else:
                ids = solver.candidates(c, sid) or [
                    x for x in index.scope(c.relation, sid) if x in index.local[c.idx]]
            if ids:
                stack.append((c, ids[0]))
    return out


def report(judge: TraceJudge) -> dict[str, Any]:
    """JSON for the store and dashboard (``TraceJudge.report``)."""
    state = judge.finish()
    index = judge.index
    known = set().union(*index.local) if index.local else set()
    pool = pool_spans(judge)
    # The probe's own spans (its root and client spans) are never "unexpected".
    unexpected = [s.span_id for s in sorted(pool, key=lambda s: s.start_ns)
                  if s.span_id not in known and not is_probe_span(s)]
    ex = explain(judge) if judge.search.refresh() is None else None
    nodes = report_nodes(judge)
    return {
        "verdict": state.verdict.value if state.verdict else None,
        "findings": [f.model_dump(mode="json") for f in state.findings],
        "nodes": nodes,
        "labels": {sid: index.by_id[sid].label() for sid in nodes.values() if sid},
        "missing": ex.missing if ex else [],
        "unexpected": unexpected[:200],
        "unexpected_count": len(unexpected),
        "span_count": len(pool),
        "spans_received": len(index.by_id),
        "traces": sorted({s.trace_id for s in pool}),
        "first_span_start_ns": judge.first_start_ns,
        "last_span_end_ns": judge.last_end_ns or None,
        "last_arrival_unix_ns": judge.last_arrival_unix_ns,
        "alternatives": [{"path": a.base, "holds": a.finish().verdict in (Verdict.PASS, Verdict.DEGRADED)}
                         for a in judge.alts],
    }


def pool_spans(judge: TraceJudge) -> list[Span]:
    """The spans of the judged traces, in arrival order."""
    return [s for s in judge.index.by_id.values() if judge.pool_all or s.trace_id in judge.pool]


def dedupe(findings: list[Finding]) -> list[Finding]:
    """Findings without repeats of the same path and message, first kept."""
    seen: set[tuple[str, str]] = set()
    out = []
    for f in findings:
        key = (f.path, f.message)
        if key not in seen:
            seen.add(key)
            out.append(f)
    return out
