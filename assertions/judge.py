"""The incremental trace judge: feed spans as they arrive, ask for a verdict as early as it is known.

``feed`` indexes spans and forgets only the memoised answers they can change; ``check`` re-solves
only the anchors whose candidates were touched. A ``forbid`` hit or an exceeded upper bound fails
at once; the run passes once every positive expectation is matched and — when a rule needs the
whole trace — ``settle`` seconds of quiet have passed. ``finish`` gives the verdict at the
deadline with full explanations. ``judge_offline`` is the same engine over a known whole trace.

The judge keeps the intake (the pool of judged traces and its whole-trace bookkeeping) and the verdicts;
the anchors' incremental solving is ``anchors.py``, the findings, explanations and report are
``reporting.py``, the compile cache ``compiled.py``.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from tracecanary.assertions import reporting
from tracecanary.assertions.anchors import AnchorSearch
from tracecanary.assertions.compiled import compiled
from tracecanary.assertions.expect import TraceExpectation
from tracecanary.assertions.spans import PROBE_SERVICE as PROBE_SERVICE
from tracecanary.assertions.spans import Span
from tracecanary.assertions.tree import CNode, Solver, SpanIndex
from tracecanary.assertions.units import format_duration
from tracecanary.assertions.verdict import Finding, Verdict, verdict_of


@dataclass
class JudgeState:
    """What the judge knows now."""

    done: bool
    verdict: Verdict | None
    findings: list[Finding] = field(default_factory=list)
    settle_remaining_s: float | None = None


class TraceJudge:
    """Judges one run's trace(s) against an expectation, span by span."""

    def __init__(self, expectation: TraceExpectation, *, root_trace_id: str | None, trigger_ns: int | None,
                 correlated_trace_ids: Iterable[str] = (), correlate_value: str | None = None,
                 base_path: str = "expect.trace") -> None:
        self.exp = expectation
        self.base = base_path
        self.trigger_ns = trigger_ns
        self.nodes, self.forbid, self.whole_rules = compiled(expectation, base_path)
        self.index = SpanIndex(self.nodes)
        self.solver = Solver(self.index, self._within)
        self.pool_all = root_trace_id is None
        self.pool: set[str] = set(correlated_trace_ids) | ({root_trace_id} if root_trace_id else set())
        self.search = AnchorSearch(self.nodes, self.index, self.solver, self.pool, self.pool_all)
        self.anchors = self.search.anchors
        # The correlated trace: the runner resolves the template and feeds that trace; without the
        # resolved value, any fed trace carrying the attribute is taken (a literal `equals` is used as is).
        corr = expectation.correlate
        if correlate_value is None and corr is not None and "{{" not in corr.equals:
            correlate_value = corr.equals
        self.correlate_value = correlate_value
        self.corr_attr = corr.attribute if corr is not None else None
        self.trace_spans: dict[str, list[str]] = {}
        """Span ids of fed traces outside the pool, for when they join it (few: most runs judge one trace)."""
        self.trace_edges: dict[str, set[str]] = {}
        self.forbid_hits: list[tuple[int, str]] = []
        self.pool_count = 0
        self.first_start_ns: int | None = None
        self.last_end_ns = 0
        self.max_depth_seen = 0
        self.depth: dict[str, int] = {}
        self.last_arrival_unix_ns: int | None = None
        self.waited_s: float | None = None
        """How long the run waited for spans when the deadline decided (``finish(waited_s=…)``); None offline."""
        self.has_within = any(n.spec.within is not None for n in self.nodes)
        self.alts = [TraceJudge(alt, root_trace_id=root_trace_id, trigger_ns=trigger_ns,
                                correlated_trace_ids=self.pool, correlate_value=correlate_value,
                                base_path=f"{base_path}.any_of[{i}]")
                     for i, alt in enumerate(expectation.any_of)]
        for alt_judge in self.alts:  # `correlate` on expect.trace also names the alternatives' trace
            if alt_judge.corr_attr is None:
                alt_judge.corr_attr, alt_judge.correlate_value = self.corr_attr, self.correlate_value

    # ---- intake -------------------------------------------------------------------------------

    def add_trace(self, trace_id: str) -> None:
        """Search anchors in one more trace (a correlated trace the runner found)."""
        self.search.version += 1
        self._join_pool(trace_id)
        for alt in self.alts:
            alt.add_trace(trace_id)

    def feed(self, spans: Iterable[Span]) -> None:
        """Index spans of any relevant trace (probe, linking, correlated); duplicates are ignored."""
        spans = list(spans)
        self.search.version += 1
        for span in spans:
            self._feed_one(span)
        if spans:
            self.last_arrival_unix_ns = time.time_ns()
        for alt in self.alts:
            alt.feed(spans)

    def _feed_one(self, span: Span) -> None:
        if not self.index.add(span):
            return
        tid = span.trace_id
        if self.pool_all or tid in self.pool:
            self._count(span)
        else:
            self.trace_spans.setdefault(tid, []).append(span.span_id)
        for link in span.links:
            if link.trace_id != tid:
                self.trace_edges.setdefault(tid, set()).add(link.trace_id)
                self.trace_edges.setdefault(link.trace_id, set()).add(tid)
                if tid in self.pool or link.trace_id in self.pool:
                    self._join_pool(tid)
                    self._join_pool(link.trace_id)
        corr = self.corr_attr
        if corr is not None and corr in span.attributes and (
                self.correlate_value is None or str(span.attributes[corr]) == self.correlate_value):
            self._join_pool(tid)
        self.search.pending.append(span)  # invalidation is batched until the next check

    def _join_pool(self, trace_id: str) -> None:
        if self.pool_all or trace_id in self.pool:
            return
        stack = [trace_id]
        while stack:
            tid = stack.pop()
            if tid in self.pool:
                continue
            self.pool.add(tid)
            for sid in self.trace_spans.pop(tid, ()):
                self.search.dirty.add(sid)
                self._count(self.index.by_id[sid])
            stack.extend(self.trace_edges.get(tid, ()))

    def _count(self, span: Span) -> None:
        """Whole-trace bookkeeping for a span of the pool (forbid, size, duration, depth)."""
        self.pool_count += 1
        if self.first_start_ns is None or span.start_ns < self.first_start_ns:
            if self.trigger_ns is None and self.first_start_ns is not None and self.has_within:
                self.search.restart()  # `within` is measured from the earliest span offline
            self.first_start_ns = span.start_ns
        if span.end_ns > self.last_end_ns:
            self.last_end_ns = span.end_ns
        if self.forbid:
            for i, checks in enumerate(self.forbid):
                if all(c(span) is None for c in checks):
                    self.forbid_hits.append((i, span.span_id))
        # Depth as known on arrival (a late parent is caught by the exact count at settle/finish).
        depth = self.depth.get(span.parent_span_id or "", 0) + 1
        self.depth[span.span_id] = depth
        if depth > self.max_depth_seen:
            self.max_depth_seen = depth

    def containers(self) -> Iterator[object]:
        """The containers that grow with the spans fed (index, candidate sets, memo), alternatives' included;
        the small per-span lists (a span's children, its linkers) only once, when new since the last call.

        They hold only spans, span ids and plain values, never the judge or anything that refers back to
        it: a host may take them out of the cyclic garbage collector's lists, so that a full collection
        does not visit every judged span (the daemon does, for large traces).
        """
        yield from self.index.containers()
        yield self.solver.memo
        yield from self.search.full
        yield from self.search.order
        for alt in self.alts:
            yield from alt.containers()

    def in_pool(self, sid: str) -> bool:
        """Whether the span belongs to a judged trace."""
        return self.pool_all or self.index.by_id[sid].trace_id in self.pool

    def release(self) -> None:
        """Break the judge's one reference cycle (its solver calls back ``_within``) once it is done, so
        refcounting frees it at once rather than the cyclic GC later (passive judging makes thousands a
        second). The judge must not be used afterwards."""
        self.solver.within_ok = _released
        for alt in self.alts:
            alt.release()

    def _within(self, node: CNode, span: Span) -> str | None:
        limit = node.spec.within
        origin = self.trigger_ns if self.trigger_ns is not None else self.first_start_ns
        if limit is None or origin is None:
            return None
        took = (span.end_ns - origin) / 1e9
        if took <= limit:
            return None
        return f"ended {format_duration(took)} after the trigger > within {format_duration(limit)}"

    def duration_s(self) -> float:
        """From the pool's earliest span start to its latest span end."""
        if self.first_start_ns is None:
            return 0.0
        return max(0, self.last_end_ns - self.first_start_ns) / 1e9

    # ---- solving ------------------------------------------------------------------------------

    def solve_steps(self) -> Iterator[None]:
        """Solve what the spans fed since the last check changed, in slices: yields after each node match
        that had to be solved, deepest expected nodes first.

        Only memoises answers (``check``, ``finish`` and ``report`` give the same results whether it ran or
        not, and then find them solved): a host drives it to spread a large trace's solving over several
        steps of an event loop.
        """
        for alt in self.alts:
            yield from alt.solve_steps()
        yield from self.search.solve_steps()

    # ---- verdicts -----------------------------------------------------------------------------

    def check(self, *, quiet_s: float) -> JudgeState:
        """Early verdict if one is known; else how long the whole-trace rules still wait."""
        early = reporting.early_failures(self)
        if early:
            return JudgeState(True, Verdict.FAIL, early)
        alt_states = [alt.check(quiet_s=quiet_s) for alt in self.alts]
        if alt_states and all(s.done and s.verdict == Verdict.FAIL for s in alt_states):
            return JudgeState(True, Verdict.FAIL, reporting.any_of_findings(self, final=False))
        if self.search.refresh() is None:
            return JudgeState(False, None, [])
        alt_findings: list[Finding] = []
        if alt_states:
            held = [s for s in alt_states if s.done and s.verdict is not None and s.verdict.ok]
            if not held:
                waits = [s.settle_remaining_s for s in alt_states if s.settle_remaining_s is not None]
                return JudgeState(False, None, [], min(waits) if waits else None)
            alt_findings = held[0].findings
        if not self.whole_rules:
            findings = reporting.degraded_findings(self) + alt_findings
            return JudgeState(True, verdict_of(findings), findings)
        remaining = max(0.0, self.exp.settle - quiet_s)
        if remaining > 0:
            return JudgeState(False, None, [], remaining)
        findings = reporting.settled_findings(self) + reporting.degraded_findings(self) + alt_findings
        if any(f.severity == Verdict.FAIL for f in findings):
            return JudgeState(False, None, [], 0.0)  # may still be repaired by late spans: the deadline decides
        return JudgeState(True, verdict_of(findings), findings)

    def finish(self, *, waited_s: float | None = None) -> JudgeState:
        """The final verdict (at the deadline, or over a whole known trace) with explanations; ``waited_s``:
        how long the run waited (its misses say so; kept for ``report``)."""
        if waited_s is not None:
            for judge in (self, *self.alts):
                judge.waited_s = waited_s
        findings = reporting.early_failures(self)
        top = self.search.refresh()
        if top is None:
            findings.extend(reporting.explain(self).findings)
        if self.alts and not any(f.type == "trace.any_of" for f in findings):
            findings.extend(reporting.any_of_findings(self, final=True))
        findings.extend(reporting.settled_findings(self))
        if not any(f.severity == Verdict.FAIL for f in findings) and top is not None:
            findings.extend(reporting.degraded_findings(self))
        findings = reporting.dedupe(findings)
        return JudgeState(True, verdict_of(findings), findings)

    # ---- reporting (assertions/reporting.py) ----------------------------------------------------

    def matched_nodes(self) -> int:
        """How many expected nodes have a span (``any_of`` picks the closest alternative by it)."""
        return sum(1 for v in self.report_nodes().values() if v)

    def report_nodes(self) -> dict[str, str | None]:
        """Expected node path → the span matched to it (a witness; for a miss, the best partial), or None."""
        return reporting.report_nodes(self)

    def report(self) -> dict[str, Any]:
        """JSON for the store and dashboard."""
        return reporting.report(self)


def _released(node: CNode, span: Span) -> str | None:
    raise RuntimeError("TraceJudge used after release()")


def judge_offline(expectation: TraceExpectation, spans: Sequence[Span], *,
                  trace_id: str | None = None, correlate_value: str | None = None) -> JudgeState:
    """Judge a whole known trace (a file): whole-trace rules are judged at once."""
    judge = TraceJudge(expectation, root_trace_id=trace_id, trigger_ns=None, correlate_value=correlate_value)
    judge.feed(spans)
    return judge.finish()
