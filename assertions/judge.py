"""The incremental trace judge: feed spans as they arrive, ask for a verdict as early as it is known.

``feed`` indexes spans and forgets only the memoised answers they can change; ``check`` re-solves
only the anchors whose candidates were touched. A ``forbid`` hit or an exceeded upper bound fails
at once; the run passes once every positive expectation is matched and — when a rule needs the
whole trace — ``settle`` seconds of quiet have passed. ``finish`` gives the verdict at the
deadline with full explanations. ``judge_offline`` is the same engine over a known whole trace.
"""

from __future__ import annotations

import bisect
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from tracecanary.assertions import rules
from tracecanary.assertions.expect import TraceExpectation
from tracecanary.assertions.explain import Explainer, forbid_message
from tracecanary.assertions.spans import PROBE_SERVICE as PROBE_SERVICE
from tracecanary.assertions.spans import Span, is_probe_span
from tracecanary.assertions.tree import (
    Assign,
    Check,
    CNode,
    Solver,
    SpanIndex,
    bipartite,
    compile_checks,
    compile_tree,
    describe,
)
from tracecanary.assertions.units import format_duration
from tracecanary.assertions.verdict import Finding, Verdict, verdict_of


@dataclass
class JudgeState:
    """What the judge knows now."""

    done: bool
    verdict: Verdict | None
    findings: list[Finding] = field(default_factory=list)
    settle_remaining_s: float | None = None


_COMPILED: dict[tuple[int, str], tuple[TraceExpectation, list[CNode], list[list[Check]], bool]] = {}
_COMPILED_MAX = 4096


def _compiled(expectation: TraceExpectation, base_path: str) -> tuple[list[CNode], list[list[Check]], bool]:
    """Compile an expectation once, not on every run (a probe's expectation lives as long as its config).

    Compiled nodes are immutable; the entry holds the expectation so its id cannot be reused.
    The flag: whether the expectation (its ``any_of`` alternatives aside) has whole-trace rules.
    """
    key = (id(expectation), base_path)
    hit = _COMPILED.get(key)
    if hit is not None and hit[0] is expectation:
        return hit[1], hit[2], hit[3]
    nodes = compile_tree(expectation.tree, base_path)
    forbid = [compile_checks(c) for c in expectation.forbid]
    whole_rules = expectation.model_copy(update={"any_of": []}).has_whole_trace_rules()
    if len(_COMPILED) >= _COMPILED_MAX:
        _COMPILED.pop(next(iter(_COMPILED)))
    _COMPILED[key] = (expectation, nodes, forbid, whole_rules)
    return nodes, forbid, whole_rules


class TraceJudge:
    """Judges one run's trace(s) against an expectation, span by span."""

    def __init__(self, expectation: TraceExpectation, *, root_trace_id: str | None, trigger_ns: int | None,
                 correlated_trace_ids: Iterable[str] = (), correlate_value: str | None = None,
                 base_path: str = "expect.trace") -> None:
        self.exp = expectation
        self.base = base_path
        self.trigger_ns = trigger_ns
        self.nodes, forbid, self.whole_rules = _compiled(expectation, base_path)
        self.anchors = [n for n in self.nodes if n.relation == "tree"]
        self.index = SpanIndex(self.nodes)
        self.solver = Solver(self.index, self._within)
        self.forbid = forbid
        self.pool_all = root_trace_id is None
        self.pool: set[str] = set(correlated_trace_ids) | ({root_trace_id} if root_trace_id else set())
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
        self.anchor_full: list[set[str]] = [set() for _ in self.anchors]
        self.anchor_order: list[list[tuple[int, str]]] = [[] for _ in self.anchors]
        """``anchor_full`` as (start, span id), kept sorted as it changes (a ``count`` may hold thousands)."""
        self.dirty: set[str] = set()
        self.dirty_all = False
        self.memo_cleared = False
        self.version = 0
        """Bumped by every ``feed`` and ``add_trace``: what ``solve_steps`` prepared is for this version only."""
        self.prepared: tuple[int, list[tuple[set[str], list[tuple[int, str]]]]] | None = None
        """The anchors' full candidate sets and orders a full re-solve needs, built by ``solve_steps``."""
        """The memo was cleared for the pending full re-solve (``dirty_all``): what is memoised since is valid."""
        self.deep_first = sorted((n for n in self.nodes if n.relation == "tree" or any(n.groups())),
                                 key=_depth, reverse=True)
        """The nodes ``solve_steps`` solves: anchors and nodes with children, descendants or linked nodes."""
        self.pending: list[Span] = []
        self.top: tuple[Assign | None] | None = None
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
        self.version += 1
        self._join_pool(trace_id)
        for alt in self.alts:
            alt.add_trace(trace_id)

    def feed(self, spans: Iterable[Span]) -> None:
        """Index spans of any relevant trace (probe, linking, correlated); duplicates are ignored."""
        spans = list(spans)
        self.version += 1
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
        self.pending.append(span)  # invalidation is batched until the next check

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
                self.dirty.add(sid)
                self._count(self.index.by_id[sid])
            stack.extend(self.trace_edges.get(tid, ()))

    def _count(self, span: Span) -> None:
        """Whole-trace bookkeeping for a span of the pool (forbid, size, duration, depth)."""
        self.pool_count += 1
        if self.first_start_ns is None or span.start_ns < self.first_start_ns:
            if self.trigger_ns is None and self.first_start_ns is not None and self.has_within:
                self.solver.memo.clear()  # `within` is measured from the earliest span offline
                self.dirty_all = True
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
        yield from self.anchor_full
        yield from self.anchor_order
        for alt in self.alts:
            yield from alt.containers()

    def in_pool(self, sid: str) -> bool:
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
        self._invalidate()
        yield from self.solver.solve_steps(self.deep_first, self._to_solve)
        if self.dirty_all:  # the anchors are re-solved from scratch: build their candidate sets here, in slices
            prepared = []
            for a in self.anchors:
                full = set(self._to_solve(a))
                for n, x in enumerate(list(full)):
                    if self.solver.full(a, x) is None:
                        full.discard(x)
                    if n % 256 == 255:
                        yield
                prepared.append((full, sorted((self.index.by_id[x].start_ns, x) for x in full)))
                yield
            self.prepared = (self.version, prepared)

    def _to_solve(self, node: CNode) -> list[str]:
        local = self.index.local[node.idx]
        sids = local if self.dirty_all else self.dirty & local
        return [x for x in sids if self.in_pool(x)] if node.relation == "tree" else list(sids)

    def _invalidate(self) -> None:
        """Forget the memoised answers the spans fed since the last solve may change."""
        if self.pending:
            if self.solver.memo:
                affected = self.index.affected(self.pending)
                self.solver.forget(affected)
                self.dirty |= affected
            else:  # nothing solved yet: every anchor candidate is solved from scratch anyway
                self.dirty_all = True
            self.pending.clear()
        if self.dirty_all and not self.memo_cleared:
            self.solver.memo.clear()
            self.memo_cleared = True

    def _refresh(self) -> Assign | None:
        self._invalidate()
        by_id = self.index.by_id
        if self.dirty_all:
            prepared = self.prepared[1] if self.prepared is not None and self.prepared[0] == self.version else None
            pool, pool_all, solve = self.pool, self.pool_all, self.solver.full
            for i, (a, full, order) in enumerate(zip(self.anchors, self.anchor_full, self.anchor_order, strict=True)):
                full.clear()
                if prepared is not None:  # what solve_steps built for this very state
                    full.update(prepared[i][0])
                    order[:] = prepared[i][1]
                    continue
                local = self.index.local[a.idx]
                if local:
                    full.update(x for x in local
                                if (pool_all or by_id[x].trace_id in pool) and solve(a, x) is not None)
                if full or order:
                    order[:] = sorted((by_id[x].start_ns, x) for x in full)
            self.dirty_all = self.memo_cleared = False
            self.prepared = None
            self.dirty.clear()
            self.top = None
        if self.dirty:
            for a, full, order in zip(self.anchors, self.anchor_full, self.anchor_order, strict=True):
                local = self.index.local[a.idx]
                touched = (self.dirty & local) if len(self.dirty) < len(local) else {
                    x for x in local if x in self.dirty}
                for sid in touched:
                    if self.in_pool(sid) and self.solver.full(a, sid) is not None:
                        if sid not in full:
                            full.add(sid)
                            bisect.insort(order, (by_id[sid].start_ns, sid))
                    elif sid in full:
                        full.discard(sid)
                        del order[bisect.bisect_left(order, (by_id[sid].start_ns, sid))]
            self.dirty.clear()
            self.top = None
        if self.top is None:
            self.top = (self._solve_top(),)
        return self.top[0]

    def _sorted(self, ids: set[str]) -> list[str]:
        return sorted(ids, key=lambda x: (self.index.by_id[x].start_ns, x))

    def _solve_top(self) -> Assign | None:
        for a, full in zip(self.anchors, self.anchor_full, strict=True):
            if len(full) < a.lo or (a.hi is not None and len(full) > a.hi):
                return None
        slot_nodes = [a for a in self.anchors for _ in range(a.lo)]
        ordered = [[sid for _, sid in order] for order in self.anchor_order]
        got = bipartite([ordered[i] for i, a in enumerate(self.anchors) for _ in range(a.lo)])
        if got is None:
            return None
        out: Assign = {a.idx: [] for a in self.anchors}
        for a, sid in zip(slot_nodes, got, strict=True):
            out[a.idx].append(sid)
        return out

    def _early_failures(self) -> list[Finding]:
        out = [Finding(type="trace.forbid", path=f"{self.base}.forbid[{i}]",
                       message=forbid_message(self.index.by_id[sid], describe(self.exp.forbid[i])),
                       expected="absent", observed=sid)
               for i, sid in self.forbid_hits]
        out.extend(rules.limit_findings(self.exp.limits, f"{self.base}.limits", spans=self.pool_count,
                                        duration_s=self._duration_s(), depth=self.max_depth_seen))
        for a, full in zip(self.anchors, self.anchor_full, strict=True):
            if a.hi is not None and len(full) > a.hi:
                labels = ", ".join(self.index.by_id[x].label() for x in self._sorted(full)[:5])
                out.append(Finding(type="trace.count", path=a.path, expected=a.hi, observed=len(full),
                                   message=f"expected at most {a.hi} × {describe(a.spec)}, "
                                   f"observed {len(full)}: {labels}"))
        return out

    def _duration_s(self) -> float:
        if self.first_start_ns is None:
            return 0.0
        return max(0, self.last_end_ns - self.first_start_ns) / 1e9


    # ---- verdicts -----------------------------------------------------------------------------

    def check(self, *, quiet_s: float) -> JudgeState:
        """Early verdict if one is known; else how long the whole-trace rules still wait."""
        early = self._early_failures()
        if early:
            return JudgeState(True, Verdict.FAIL, early)
        alt_states = [alt.check(quiet_s=quiet_s) for alt in self.alts]
        if alt_states and all(s.done and s.verdict == Verdict.FAIL for s in alt_states):
            return JudgeState(True, Verdict.FAIL, self._any_of_findings(final=False))
        if self._refresh() is None:
            return JudgeState(False, None, [])
        alt_findings: list[Finding] = []
        if alt_states:
            held = [s for s in alt_states if s.done and s.verdict is not None and s.verdict.ok]
            if not held:
                waits = [s.settle_remaining_s for s in alt_states if s.settle_remaining_s is not None]
                return JudgeState(False, None, [], min(waits) if waits else None)
            alt_findings = held[0].findings
        if not self.whole_rules:
            findings = self._degraded() + alt_findings
            return JudgeState(True, verdict_of(findings), findings)
        remaining = max(0.0, self.exp.settle - quiet_s)
        if remaining > 0:
            return JudgeState(False, None, [], remaining)
        findings = self._settled_findings() + self._degraded() + alt_findings
        if any(f.severity == Verdict.FAIL for f in findings):
            return JudgeState(False, None, [], 0.0)  # may still be repaired by late spans: the deadline decides
        return JudgeState(True, verdict_of(findings), findings)

    def finish(self, *, waited_s: float | None = None) -> JudgeState:
        """The final verdict (at the deadline, or over a whole known trace) with explanations; ``waited_s``:
        how long the run waited (its misses say so; kept for ``report``)."""
        if waited_s is not None:
            for judge in (self, *self.alts):
                judge.waited_s = waited_s
        findings = self._early_failures()
        top = self._refresh()
        if top is None:
            findings.extend(self._explain().findings)
        if self.alts and not any(f.type == "trace.any_of" for f in findings):
            findings.extend(self._any_of_findings(final=True))
        findings.extend(self._settled_findings())
        if not any(f.severity == Verdict.FAIL for f in findings) and top is not None:
            findings.extend(self._degraded())
        findings = _dedupe(findings)
        return JudgeState(True, verdict_of(findings), findings)

    def _explain(self) -> Explainer:
        correlate = (self.corr_attr, self.correlate_value) if self.corr_attr is not None else None
        ex = Explainer(self.solver, self.in_pool, waited_s=self.waited_s, correlate=correlate)
        cands = {a.idx: self._sorted(f) for a, f in zip(self.anchors, self.anchor_full, strict=True)}
        if not ex.group(self.anchors, cands, None) and self._refresh() is None:
            ex.distinct(self.anchors, cands, None)
        return ex

    def _any_of_findings(self, *, final: bool) -> list[Finding]:
        states = [(alt, alt.finish() if final else alt.check(quiet_s=float("inf"))) for alt in self.alts]
        held = [s for _, s in states if s.verdict is not None and s.verdict.ok]
        if held:
            return [f for f in held[0].findings if f.severity != Verdict.FAIL]
        alt, state = min(states, key=lambda p: (len([f for f in p[1].findings if f.severity == Verdict.FAIL]),
                                                -p[0].matched_nodes()))
        head = Finding(type="trace.any_of", path=f"{self.base}.any_of", expected=f"one of {len(self.alts)}",
                       observed="none holds",
                       message=f"none of the {len(self.alts)} alternatives holds; closest is {alt.base}")
        return [head, *state.findings]

    def matched_nodes(self) -> int:
        return sum(1 for v in self.report_nodes().values() if v)

    def _settled_findings(self) -> list[Finding]:
        exp = self.exp
        if not (exp.no_orphans or exp.checks or exp.specs or (exp.limits and exp.limits.max_depth)):
            return []
        spans = [s for s in self.index.by_id.values() if self.pool_all or s.trace_id in self.pool]
        return rules.settled_findings(exp, spans, self.base)

    def _degraded(self) -> list[Finding]:
        out: list[Finding] = []
        nodes = self.report_nodes() if any(n.spec.degraded is not None for n in self.nodes) else {}
        for n in self.nodes:
            deg = n.spec.degraded
            sid = nodes.get(n.path)
            if deg is None or deg.max_duration is None or sid is None:
                continue
            span = self.index.by_id[sid]
            if span.duration_s > deg.max_duration:
                out.append(Finding(type="trace.degraded", severity=Verdict.DEGRADED, path=f"{n.path}.degraded",
                                   expected=deg.max_duration, observed=span.duration_s,
                                   message=f"{span.label()}: {format_duration(span.duration_s)} > degraded "
                                   f"max {format_duration(deg.max_duration)}"))
        lim = self.exp.limits
        if lim is not None and lim.degraded is not None:
            out.extend(rules.degraded_limit_findings(lim.degraded, f"{self.base}.limits.degraded",
                                                     spans=self.pool_count, duration_s=self._duration_s()))
        return out

    # ---- reporting ----------------------------------------------------------------------------

    def report_nodes(self) -> dict[str, str | None]:
        """Expected node path → the span matched to it (a witness; for a miss, the best partial), or None."""
        out: dict[str, str | None] = {n.path: None for n in self.nodes}
        top = self._refresh()
        stack: list[tuple[CNode, str]] = []
        for a, full in zip(self.anchors, self.anchor_full, strict=True):
            ids = top[a.idx] if top is not None else self._sorted(full)
            if not ids:
                ids = self._sorted({x for x in self.index.local[a.idx] if self.in_pool(x)})
            stack.extend((a, sid) for sid in ids[:1])
        while stack:
            node, sid = stack.pop()
            out[node.path] = sid
            assign = self.solver.full(node, sid)
            for c in node.groups():
                if assign is not None:
                    ids = assign.get(c.idx, [])
                else:
                    ids = self.solver.candidates(c, sid) or [
                        x for x in self.index.scope(c.relation, sid) if x in self.index.local[c.idx]]
                if ids:
                    stack.append((c, ids[0]))
        return out

    def report(self) -> dict[str, Any]:
        """JSON for the store and dashboard."""
        state = self.finish()
        known = set().union(*self.index.local) if self.index.local else set()
        pool = [s for s in self.index.by_id.values() if self.pool_all or s.trace_id in self.pool]
        # The probe's own spans (its root and client spans) are never "unexpected".
        unexpected = [s.span_id for s in sorted(pool, key=lambda s: s.start_ns)
                      if s.span_id not in known and not is_probe_span(s)]
        ex = self._explain() if self._refresh() is None else None
        nodes = self.report_nodes()
        return {
            "verdict": state.verdict.value if state.verdict else None,
            "findings": [f.model_dump(mode="json") for f in state.findings],
            "nodes": nodes,
            "labels": {sid: self.index.by_id[sid].label() for sid in nodes.values() if sid},
            "missing": ex.missing if ex else [],
            "unexpected": unexpected[:200],
            "unexpected_count": len(unexpected),
            "span_count": len(pool),
            "spans_received": len(self.index.by_id),
            "traces": sorted({s.trace_id for s in pool}),
            "first_span_start_ns": self.first_start_ns,
            "last_span_end_ns": self.last_end_ns or None,
            "last_arrival_unix_ns": self.last_arrival_unix_ns,
            "alternatives": [{"path": a.base, "holds": a.finish().verdict in (Verdict.PASS, Verdict.DEGRADED)}
                             for a in self.alts],
        }


def _released(node: CNode, span: Span) -> str | None:
    raise RuntimeError("TraceJudge used after release()")


def _depth(node: CNode) -> int:
    depth = 0
    while node.parent is not None:
        node, depth = node.parent, depth + 1
    return depth


def _dedupe(findings: list[Finding]) -> list[Finding]:
    seen: set[tuple[str, str]] = set()
    out = []
    for f in findings:
        key = (f.path, f.message)
        if key not in seen:
            seen.add(key)
            out.append(f)
    return out


def judge_offline(expectation: TraceExpectation, spans: Sequence[Span], *,
                  trace_id: str | None = None, correlate_value: str | None = None) -> JudgeState:
    """Judge a whole known trace (a file): whole-trace rules are judged at once."""
    judge = TraceJudge(expectation, root_trace_id=trace_id, trigger_ns=None, correlate_value=correlate_value)
    judge.feed(spans)
    return judge.finish()
