"""Explanations for a miss: which expected node was not found, the closest spans, what each broke.

Pure functions over the matcher's index and solver (``tree.py``). The wording follows one rule:
state what was expected and what was observed, naming spans as ``span "name" (svc x)``. Where the
real cause is known it comes first: only tracecanary's own spans arrived; the correlated trace never
arrived; the expected span exists, under another parent; how long the run waited. ``ordered`` misses
show the observed start order; a ``forbid`` hit quotes the span's status message and exception.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from tracecanary.assertions.spans import Span, StatusCode, is_probe_span
from tracecanary.assertions.tree import CNode, Solver, SpanIndex, bipartite, describe, max_bipartite
from tracecanary.assertions.units import format_duration
from tracecanary.assertions.verdict import Finding

MAX_CLOSEST = 3
MAX_SCAN = 20_000


def _all_broken(node: CNode, span: Span, solver: Solver) -> list[str]:
    broken = node.broken(span)
    if node.spec.within is not None and (why := solver.within_ok(node, span)) is not None:
        broken.append(why)
    return broken


def closest(node: CNode, scope: list[str], solver: Solver, limit: int = MAX_CLOSEST) -> list[dict[str, Any]]:
    """Spans of ``scope`` ranked by how many of ``node``'s own constraints they satisfy."""
    total = len(node.checks) + (1 if node.spec.within is not None else 0)
    ranked: list[tuple[int, int, str, list[str]]] = []
    for sid in scope[:MAX_SCAN]:
        span = solver.index.by_id[sid]
        broken = _all_broken(node, span, solver)
        name_ok = 0 if any(b.startswith("name ") for b in broken) else 1
        ranked.append((total - len(broken), name_ok, sid, broken))
    ranked.sort(key=lambda r: (-r[1], -r[0], solver.index.by_id[r[2]].start_ns))
    out = []
    for satisfied, _name_ok, sid, broken in ranked[:limit]:
        span = solver.index.by_id[sid]
        out.append({"span_id": sid, "label": span.label(), "satisfied": satisfied, "total": total,
                    "broken": broken})
    return out


MAX_QUOTE = 200
"""Characters of a status message or exception message a finding quotes."""


def _quote(text: object) -> str:
    value = str(text)
    return f'"{value[:MAX_QUOTE]}…"' if len(value) > MAX_QUOTE else f'"{value}"'


def error_detail(span: Span) -> str:
    """What a span says about its own failure: its status (and message) and its exception event(s),
    e.g. ``status ERROR "gex timeout"; exception TimeoutError "upstream took 5s"``; "" when it says nothing."""
    parts = []
    if span.status_code == StatusCode.ERROR or span.status_message:
        parts.append(f"status {span.status_code.name}" + (f" {_quote(span.status_message)}"
                                                          if span.status_message else ""))
    for ev in span.events:
        if ev.name != "exception":
            continue
        kind = ev.attributes.get("exception.type")
        message = ev.attributes.get("exception.message")
        text = " ".join(x for x in (str(kind) if kind else "", _quote(message) if message else "") if x)
        parts.append(f"exception {text}" if text else "an exception event")
        if len(parts) >= 3:
            break
    return "; ".join(parts)


def forbid_message(span: Span, rule: str) -> str:
    """The finding of a ``forbid`` hit: the span, the rule it matched, and what it says about itself."""
    detail = error_detail(span)
    return f"{span.label()} is forbidden: matches {rule}" + (f"; {detail}" if detail else "")


def ancestry(index: SpanIndex, sid: str, limit: int = 4) -> str:
    """Where a span hangs: ``under span "middleware" (svc a) ← span "POST /orders" (svc a)``, or why nowhere."""
    span = index.by_id[sid]
    chain: list[str] = []
    while span.parent_span_id and len(chain) < limit:
        parent = index.by_id.get(span.parent_span_id)
        if parent is None:
            chain.append(f"parent {span.parent_span_id}, which has not arrived")
            break
        chain.append(parent.label())
        span = parent
    if not chain:
        return "as a root span (no parent)"
    more = " ← …" if span.parent_span_id and len(chain) >= limit and span.parent_span_id in index.by_id else ""
    return "under " + " ← ".join(chain) + more


_EMPTY_SCOPE = {"tree": "no spans arrived", "children": "it has no child spans",
                "descendants": "it has no descendant spans", "linked": "no span links to it"}


_NO_OTHER = {"tree": "no other span arrived", "children": "it has no other child spans",
             "descendants": "it has no other descendant spans", "linked": "no other span links to it"}


def _closest_text(items: list[dict[str, Any]], relation: str, *, other: bool = False) -> str:
    if not items:
        return (_NO_OTHER if other else _EMPTY_SCOPE).get(relation, "no span in scope")
    parts = []
    for it in items:
        broken = "; ".join(it["broken"]) or "its own constraints hold, its subtree does not"
        parts.append(f"{it['label']}: {broken}")
    return "closest: " + " | ".join(parts)


class Explainer:
    """Walks the expected tree from the failing anchors down to the deepest missing node.

    ``waited_s``: how long the run waited for spans (the deadline's distance from the trigger; None
    offline). ``correlate``: the attribute and value (None: any) of the correlated trace, if any.
    """

    def __init__(self, solver: Solver, in_scope: Callable[[str], bool], *, waited_s: float | None = None,
                 correlate: tuple[str, str | None] | None = None) -> None:
        self.solver = solver
        self.index: SpanIndex = solver.index
        self.in_scope = in_scope
        self.waited_s = waited_s
        self.correlate = correlate
        self.findings: list[Finding] = []
        self.missing: list[dict[str, Any]] = []
        self._scores: dict[tuple[int, str], int] = {}

    def _scope(self, node: CNode, under: str | None) -> list[str]:
        ids = self.index.scope(node.relation, under)
        return [x for x in ids if self.in_scope(x)] if under is None else ids

    def _score(self, node: CNode, sid: str) -> int:
        """How much of ``node``'s subtree can be satisfied below ``sid`` (to pick the best partial)."""
        key = (node.idx, sid)
        if key in self._scores:
            return self._scores[key]
        self._scores[key] = 0  # guards cycles through span links
        if self.solver.full(node, sid) is not None:
            score = node.size()
        else:
            score = 0
            for c in node.groups():
                local = [x for x in self._scope(c, sid) if x in self.index.local[c.idx]]
                score += max((self._score(c, x) for x in local[:50]), default=0)
        self._scores[key] = score
        return score

    def node(self, node: CNode, under: str | None, found: list[str], taken: frozenset[str] = frozenset()) -> None:
        """Explain why ``node`` (below span ``under``; None = top level) got fewer spans than needed."""
        under_txt = f" under {self.index.by_id[under].label()}" if under else ""
        need = node.lo
        if node.hi is not None and len(found) > node.hi:
            labels = ", ".join(self.index.by_id[x].label() for x in found[:5])
            self._add("trace.count", node, f"expected at most {node.hi} × {describe(node.spec)}{under_txt}, "
                      f"observed {len(found)}: {labels}", node.hi, len(found), under)
            return
        if len(found) >= need:
            return
        scope = self._scope(node, under)
        got = set(found)
        # Spans that satisfy the node itself but not its subtree; spans a sibling needs are skipped.
        local = self.index.local[node.idx]
        partial = [x for x in scope if x in local and x not in got and x not in taken]
        for sid in partial:
            span = self.index.by_id[sid]
            if node.spec.within is not None and (why := self.solver.within_ok(node, span)) is not None:
                self._add("trace.within", node, f"{span.label()}: {why}", node.spec.within, why, under)
                return
        if partial:
            best = max(partial, key=lambda x: self._score(node, x))
            self.structure(node, best)
            return
        have = f"found {len(found)} of {need}" if found else "not found"
        count = f"{need} × " if need > 1 else ""
        waited = f" after waiting {format_duration(self.waited_s)}" if self.waited_s is not None else ""
        head = f"expected {count}{describe(node.spec)}{under_txt}, {have}{waited}"
        if under is None and scope and all(is_probe_span(self.index.by_id[x]) for x in scope):
            own = ", ".join(sorted({self.index.by_id[x].label() for x in scope})[:2])
            msg = f"{head}; no spans from the system under test arrived, only tracecanary's own ({own})"
            self._add("trace.missing", node, msg, describe(node.spec), [], under)
            return
        causes = [c for c in (self._correlate_missing() if under is None else None,
                              self._elsewhere(node, under, scope, found)) if c]
        others = [x for x in scope if x not in got] if got else scope
        items = closest(node, others, self.solver)
        closest_txt = _closest_text(items, node.relation, other=bool(got))
        msg = "; ".join(x for x in (head, *causes, closest_txt) if x)
        self._add("trace.missing", node, msg, describe(node.spec), [i["label"] for i in items], under,
                  closest=items)

    def _correlate_missing(self) -> str | None:
        """The correlated trace's cause: no span carrying the correlation attribute (and value) arrived."""
        if self.correlate is None:
            return None
        attr, value = self.correlate
        for span in self.index.by_id.values():
            if attr in span.attributes and (value is None or str(span.attributes[attr]) == value):
                return None
        return f"no span with {attr}={value if value is not None else '…'} arrived (the trace `correlate` names)"

    def _elsewhere(self, node: CNode, under: str | None, scope: list[str], found: list[str]) -> str | None:
        """The expected span exists, but not where the node looks (another parent, another trace branch)."""
        if under is None:
            return None
        here = set(scope) | set(found) | {under}
        away = [x for x in self.index.local[node.idx] if x not in here and self.in_scope(x)]
        if not away:
            return None
        total = len(away)
        # Spans that match the whole subtree first; only the earliest few are solved (bounded work).
        away = sorted(away, key=lambda x: (self.index.by_id[x].start_ns, x))[:MAX_CLOSEST * 10]
        away.sort(key=lambda x: self.solver.full(node, x) is None)
        where = [f"{self.index.by_id[x].label()} arrived {ancestry(self.index, x)}" for x in away[:2]]
        more = f" (and {total - 2} more)" if total > 2 else ""
        return f"it exists elsewhere: {' | '.join(where)}{more}"

    def structure(self, node: CNode, sid: str) -> None:
        """``sid`` satisfies ``node`` itself; explain which part of its subtree is missing."""
        cands = {c.idx: self.solver.candidates(c, sid) for c in node.groups()}
        if self.group(list(node.groups()), cands, sid):
            return
        span = self.index.by_id[sid]
        if node.spec.ordered and node.children:
            unordered = bipartite([cands[c.idx] for c in node.children for _ in range(c.lo)])
            if unordered is not None:
                self._out_of_order(node, span, unordered)
                return
        self.distinct(list(node.groups()), cands, sid)

    def _out_of_order(self, node: CNode, span: Span, taken: list[str]) -> None:
        """Every ordered child has its span, not in the listed order: show the order they started in."""
        by_id = self.index.by_id
        started = sorted(taken, key=lambda x: (by_id[x].start_ns, x))
        expected = [describe(c.spec) for c in node.children]
        observed = [f'"{by_id[x].name}" (+{format_duration(max(0, by_id[x].start_ns - span.start_ns) / 1e9)})'
                    for x in started]
        self._add("trace.order", node, f"children of {span.label()} out of order: expected "
                  f"{' → '.join(expected)}; observed start order {' → '.join(observed)}",
                  expected, [by_id[x].name for x in started], span.span_id)

    def group(self, nodes: list[CNode], cands: dict[int, list[str]], under: str | None) -> bool:
        """Explain the sibling nodes whose counts are not met; False when every count is met."""
        slot_nodes = [c for c in nodes for _ in range(c.lo)]
        owners = {sid: c.idx for c, sid in zip(slot_nodes, max_bipartite([cands[c.idx] for c in slot_nodes]),
                                               strict=True) if sid is not None}
        short = False
        for c in nodes:
            got = cands[c.idx]
            if len(got) < c.lo or (c.hi is not None and len(got) > c.hi):
                short = True
                self.node(c, under, got, frozenset(x for x, o in owners.items() if o != c.idx))
        return short

    def distinct(self, nodes: list[CNode], cands: dict[int, list[str]], under: str | None) -> None:
        """Each node has enough candidates alone, not together: name the nodes left without a span."""
        slot_nodes = [c for c in nodes for _ in range(c.lo)]
        got = max_bipartite([cands[c.idx] for c in slot_nodes])
        where = f" under {self.index.by_id[under].label()}" if under else ""
        reported: set[int] = set()
        for c, sid in zip(slot_nodes, got, strict=True):
            if sid is not None or c.idx in reported:
                continue
            reported.add(c.idx)
            taken = {x for x in got if x is not None}
            partial = [x for x in self._scope(c, under) if x in self.index.local[c.idx]
                       and x not in taken and self.solver.full(c, x) is None]
            if partial:  # a span that is almost this node: say what its subtree lacks
                self.structure(c, max(partial, key=lambda x: self._score(c, x)))
                continue
            rivals = sorted({o.path for o in nodes if o is not c and set(cands[o.idx]) & set(cands[c.idx])})
            labels = ", ".join(self.index.by_id[x].label() for x in cands[c.idx][:3])
            self._add("trace.distinct", c, f"expected {describe(c.spec)}{where}: its candidate(s) {labels} "
                      f"are all taken by sibling node(s) {', '.join(rivals)} (siblings need distinct spans)",
                      describe(c.spec), cands[c.idx], under)

    def _add(self, ftype: str, node: CNode, msg: str, expected: Any, observed: Any, under: str | None,
             closest: list[dict[str, Any]] | None = None) -> None:
        self.findings.append(Finding(type=ftype, path=node.path, message=msg, expected=expected,
                                     observed=observed, details={"under": under, "closest": closest or []}))
        self.missing.append({"path": node.path, "expected": describe(node.spec), "under": under,
                             "reason": ftype, "message": msg, "closest": closest or []})


def render_text(report: dict[str, Any]) -> str:
    """The person-readable rendering of a judge report (``TraceJudge.report()``)."""
    lines = [f"verdict: {report.get('verdict') or 'pending'}"]
    for f in report.get("findings", []):
        sev = f.get("severity", "fail")
        where = f"{f['path']}: " if f.get("path") else ""
        lines.append(f"  [{sev}] {where}{f['message']}")
    nodes = report.get("nodes", {})
    if nodes:
        lines.append("expected nodes:")
        labels = report.get("labels", {})
        for path, sid in nodes.items():
            lines.append(f"  {path} → {f'{labels.get(sid, sid)} [{sid}]' if sid else 'not found'}")
    unexpected = report.get("unexpected_count", 0)
    if unexpected:
        ids = ", ".join(report.get("unexpected", [])[:5])
        lines.append(f"unexpected spans: {unexpected} matched no expected node ({ids}{', …' if unexpected > 5 else ''})")
    summary = f"spans: {report.get('span_count', 0)} in {len(report.get('traces', []))} trace(s)"
    first, last = report.get("first_span_start_ns"), report.get("last_span_end_ns")
    if first and last:
        summary += f", the last ended {format_duration(max(0, last - first) / 1e9)} after the first began"
    if report.get("last_arrival_unix_ns"):
        at = datetime.fromtimestamp(report["last_arrival_unix_ns"] / 1e9, tz=UTC)
        summary += f"; last arrival {at.isoformat(timespec='milliseconds')}"
    lines.append(summary)
    return "\n".join(lines)
