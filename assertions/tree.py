"""Expected-tree matching: compiled nodes, a span index, and the memoised structural solver.

A node *locally* matches a span when the node's own constraints hold (name, service, kind,
status, attributes, resource, events, durations). It *fully* matches when, besides, its
``children`` / ``descendants`` / ``linked`` nodes can be given pairwise-distinct spans with
their counts met. Giving siblings distinct spans is a bipartite matching problem (each node
needs ``count.min`` copies); it is solved with augmenting paths, so a span that two siblings
could both take goes to whichever sibling has no alternative — a greedy first-fit would not.

The index is incremental: ``add(span)`` updates the per-node candidate sets and forgets the
memoised results of exactly the spans whose answer may change (the new span's ancestors, and
through span links the ancestors of the spans it links to).
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from tracecanary.assertions.bipartite import bipartite as bipartite
from tracecanary.assertions.bipartite import max_bipartite as max_bipartite
from tracecanary.assertions.expect import NamePattern, SpanConstraint, SpanNode
from tracecanary.assertions.match import Matcher, check, name_matches
from tracecanary.assertions.spans import Span, SpanKind, StatusCode
from tracecanary.assertions.units import format_duration

Check = Callable[[Span], str | None]
"""A compiled constraint: ``None`` when the span satisfies it, else what broke (observed vs expected)."""

Assign = dict[int, list[str]]
"""A full match's witness: child node index → the span ids given to it."""

NO_GROUPS: Assign = {}
"""The witness of a node without children, descendants or linked nodes (shared: witnesses are never changed)."""

_KINDS = {k.name.lower(): k for k in SpanKind}
_STATUSES = {s.name.lower(): s for s in StatusCode}


def _pattern_text(p: NamePattern) -> str:
    return p.describe() if isinstance(p, Matcher) else f'"{p}"'


def describe(spec: SpanConstraint) -> str:
    """How a finding names an expected node: ``span "fetch-gex-data" (svc enrich, kind client)``."""
    head = f"span {_pattern_text(spec.span)}" if spec.span is not None else "any span"
    bits = []
    if spec.service is not None:
        bits.append(f"svc {_pattern_text(spec.service).strip(chr(34))}")
    if spec.kind is not None:
        bits.append(f"kind {spec.kind}")
    if spec.status is not None:
        bits.append(f"status {spec.status}")
    if spec.attributes:
        bits.extend(f"{k}={v!r}" for k, v in list(spec.attributes.items())[:3])
    return head + (f" ({', '.join(bits)})" if bits else "")


def _attr_checks(prefix: str, attrs: dict[str, Any], get: Callable[[Span], Any]) -> list[Check]:
    out: list[Check] = []
    for key, raw in attrs.items():
        def chk(span: Span, key: str = key, raw: Any = raw) -> str | None:
            values = get(span)
            why = check(raw, values.get(key), present=key in values)
            return None if why is None else f"{prefix} {key}: {why}"
        out.append(chk)
    return out


def _event_check(ev: Any) -> Check:
    label = f'event {_pattern_text(ev.name)}' if ev.name is not None else "an event"

    def chk(span: Span) -> str | None:
        for e in span.events:
            if ev.name is not None and not name_matches(ev.name, e.name):
                continue
            if all(check(m, e.attributes.get(k), present=k in e.attributes) is None
                   for k, m in ev.attributes.items()):
                return None
        return f"no {label}" + (f" with {ev.attributes}" if ev.attributes else "")
    return chk


def name_predicate(pattern: NamePattern) -> Callable[[str], bool]:
    """``name_matches`` with the pattern's form decided once: an exact name is a string comparison."""
    if isinstance(pattern, str) and not any(c in pattern for c in "*?["):
        return pattern.__eq__
    if isinstance(pattern, str):
        return _compiled_glob(pattern)
    return partial(name_matches, pattern)


def compile_name_check(spec: SpanConstraint) -> Check | None:
    if (name := spec.span) is None:
        return None
    ok = name_predicate(name)
    return lambda s: None if ok(s.name) else f'name "{s.name}", expected {_pattern_text(name)}'


def compile_checks(spec: SpanConstraint, *, with_name: bool = True) -> list[Check]:
    """The node's own constraints, each reporting what it observed when it breaks."""
    checks: list[Check] = []
    if with_name and (name_check := compile_name_check(spec)) is not None:
        checks.append(name_check)
    if (svc := spec.service) is not None:
        svc_ok = name_predicate(svc)
        checks.append(lambda s: None if svc_ok(s.service)
                      else f'service "{s.service}", expected {_pattern_text(svc)}')
    if spec.kind is not None:
        kind = _KINDS[spec.kind]
        checks.append(lambda s: None if s.kind == kind else f"kind {s.kind.name}, expected {kind.name}")
    if spec.status is not None:
        status = _STATUSES[spec.status]
        checks.append(lambda s: None if s.status_code == status
                      else f"status {s.status_code.name}, expected {status.name}"
                      + (f" ({s.status_message})" if s.status_message else ""))
    checks.extend(_attr_checks("attribute", spec.attributes, lambda s: s.attributes))
    checks.extend(_attr_checks("resource", spec.resource, lambda s: s.resource))
    checks.extend(_event_check(ev) for ev in spec.events)
    if (lo := spec.min_duration) is not None:
        checks.append(lambda s: None if s.duration_s >= lo
                      else f"{format_duration(s.duration_s)} < min {format_duration(lo)}")
    if (hi := spec.max_duration) is not None:
        checks.append(lambda s: None if s.duration_s <= hi
                      else f"{format_duration(s.duration_s)} > max {format_duration(hi)}")
    return checks


@dataclass(eq=False)
class CNode:
    """A compiled expected node."""

    idx: int
    path: str
    spec: SpanNode
    checks: list[Check]
    lo: int
    hi: int | None
    relation: str  # "tree" | "children" | "descendants" | "linked"
    parent: CNode | None = None
    children: list[CNode] = field(default_factory=list)
    descendants: list[CNode] = field(default_factory=list)
    linked: list[CNode] = field(default_factory=list)

    def groups(self) -> Iterator[CNode]:
        yield from self.children
        yield from self.descendants
        yield from self.linked

    rest: list[Check] = field(default_factory=list)

    def __post_init__(self) -> None:
        # The name is checked once per distinct span name by the index; the rest per span.
        self.rest = self.checks[1:] if self.spec.span is not None else list(self.checks)

    def local_ok(self, span: Span) -> bool:
        """The node's own constraints hold, its name aside (checked by the index's name cache)."""
        for c in self.rest:
            if c(span) is not None:
                return False
        return True

    def broken(self, span: Span) -> list[str]:
        return [why for c in self.checks if (why := c(span)) is not None]

    def size(self) -> int:
        return 1 + sum(c.size() for c in self.groups())


def compile_tree(anchors: Iterable[SpanNode], base: str = "expect.trace") -> list[CNode]:
    """Flatten the expected tree into indexed nodes (anchors first, in order)."""
    nodes: list[CNode] = []

    def build(spec: SpanNode, path: str, relation: str, parent: CNode | None) -> CNode:
        lo, hi = spec.count_bounds()
        node = CNode(len(nodes), path, spec, compile_checks(spec), lo, hi, relation, parent)
        nodes.append(node)
        for rel in ("children", "descendants", "linked"):
            subs = [build(c, f"{path}.{rel}[{i}]", rel, node) for i, c in enumerate(getattr(spec, rel))]
            getattr(node, rel).extend(subs)
        return node

    for i, spec in enumerate(anchors):
        build(spec, f"{base}.tree[{i}]", "tree", None)
    return nodes


def _compiled_glob(pattern: str) -> Callable[[str], bool]:
    rx = re.compile(fnmatch.translate(pattern))
    return lambda name: rx.match(name) is not None


def _name_ok(pattern: Matcher | None, name: str) -> bool:
    return pattern is None or name_matches(pattern, name)


_NameTables = tuple[dict[str, list["CNode"]], dict[str, list["CNode"]], list[tuple["CNode", Callable[[str], bool]]]]
_NAME_TABLES: dict[int, tuple[list[CNode], _NameTables]] = {}
_NAME_TABLES_MAX = 4096
_BY_NAME_MAX = 10_000


def _name_tables(nodes: list[CNode]) -> _NameTables:
    """Exact names → nodes, patterned nodes, and the per-name memo, once per compiled node list."""
    hit = _NAME_TABLES.get(id(nodes))
    if hit is not None and hit[0] is nodes:
        by_name = hit[1][0]
        if len(by_name) > _BY_NAME_MAX:  # names with ids in them: the memo must not grow forever
            by_name.clear()
        return hit[1]
    exact: dict[str, list[CNode]] = {}
    patterned: list[tuple[CNode, Callable[[str], bool]]] = []
    for n in nodes:
        name = n.spec.span
        if isinstance(name, str) and not any(c in name for c in "*?["):
            exact.setdefault(name, []).append(n)
        elif isinstance(name, str):
            patterned.append((n, _compiled_glob(name)))
        else:
            patterned.append((n, partial(_name_ok, name)))
    tables: _NameTables = ({}, exact, patterned)
    if len(_NAME_TABLES) >= _NAME_TABLES_MAX:
        _NAME_TABLES.pop(next(iter(_NAME_TABLES)))
    _NAME_TABLES[id(nodes)] = (nodes, tables)
    return tables


class SpanIndex:
    """Spans by id, parentage, incoming span links, and per-node local candidates."""

    def __init__(self, nodes: list[CNode]) -> None:
        self.nodes = nodes
        self.by_id: dict[str, Span] = {}
        self.children: dict[str, list[str]] = {}
        self.fresh: list[list[str]] = []
        """Lists of ``children`` and ``linkers`` created since ``containers`` last handed them out."""
        self.linkers: dict[str, list[str]] = {}
        self.local: list[set[str]] = [set() for _ in nodes]
        # Span names repeat: which nodes' name patterns accept a name is computed once per name, and
        # shared by every index over the same compiled nodes (one judge per trace in passive judging).
        self._by_name, self._exact, self._patterned = _name_tables(nodes)

    def add(self, span: Span) -> bool:
        """Index one span; False when its id was already known (duplicates are ignored)."""
        sid = span.span_id
        if sid in self.by_id:
            return False
        self.by_id[sid] = span
        if parent := span.parent_span_id:
            kids = self.children.get(parent)
            if kids is None:
                kids = self.children[parent] = []
                self.fresh.append(kids)
            kids.append(sid)
        for link in span.links:
            linkers = self.linkers.get(link.span_id)
            if linkers is None:
                linkers = self.linkers[link.span_id] = []
                self.fresh.append(linkers)
            linkers.append(sid)
        nodes = self._by_name.get(span.name)
        if nodes is None:
            nodes = self._by_name[span.name] = self._exact.get(span.name, []) + [
                n for n, ok in self._patterned if ok(span.name)]
        for n in nodes:
            if n.local_ok(span):
                self.local[n.idx].add(sid)
        return True

    def containers(self) -> Iterator[object]:
        """The index's containers that grow with the spans (see ``TraceJudge.containers``); the lists of
        children and linkers once each, the first time after they are created."""
        yield self.by_id
        yield self.children
        yield self.linkers
        yield from self.local
        fresh, self.fresh = self.fresh, []
        yield from fresh

    def is_below(self, sid: str, ancestor: str) -> bool:
        """True when ``ancestor`` is a proper ancestor of ``sid`` (parentage only, no links)."""
        seen = 0
        span = self.by_id.get(sid)
        while span is not None and span.parent_span_id and seen < 10_000:
            if span.parent_span_id == ancestor:
                return True
            span = self.by_id.get(span.parent_span_id)
            seen += 1
        return False

    def affected(self, spans: Iterable[Span]) -> set[str]:
        """Span ids whose full-match answer may change now that ``spans`` arrived: each span and its
        ancestors, and through span links the ancestors of the spans it links to. Walks share the
        visited set, so a batch costs its size plus its distinct ancestors."""
        out: set[str] = set()
        stack = [s.span_id for s in spans]
        while stack:
            sid = stack.pop()
            while sid and sid not in out:
                out.add(sid)
                s = self.by_id.get(sid)
                if s is None:
                    break
                stack.extend(link.span_id for link in s.links if link.span_id in self.by_id)
                sid = s.parent_span_id or ""
        return out

    def scope(self, relation: str, sid: str | None) -> list[str]:
        """Spans a node with ``relation`` may take below ``sid`` (all spans at the top level)."""
        if sid is None:
            return list(self.by_id)
        if relation == "children":
            return list(self.children.get(sid, ()))
        if relation == "linked":
            return list(self.linkers.get(sid, ()))
        out: list[str] = []
        stack = list(self.children.get(sid, ()))
        while stack:
            x = stack.pop()
            out.append(x)
            stack.extend(self.children.get(x, ()))
        return out


class Solver:
    """Memoised full matching of nodes against spans, invalidated span by span."""

    def __init__(self, index: SpanIndex, within_ok: Callable[[CNode, Span], str | None]) -> None:
        self.index = index
        self.within_ok = within_ok
        self.memo: dict[str, dict[int, Assign | tuple[()] | None]] = {}
        """Span id → node index → full-match witness; ``()`` stands for ``NO_GROUPS``: a dict of plain values
        stays out of the cyclic GC's lists, one holding a dict does not."""

    def forget(self, sids: Iterable[str]) -> None:
        for sid in sids:
            self.memo.pop(sid, None)

    def full(self, node: CNode, sid: str) -> Assign | None:
        per = self.memo.get(sid)
        if per is not None and node.idx in per:
            got = per[node.idx]
            return NO_GROUPS if isinstance(got, tuple) else got
        res = self._solve(node, sid)
        self.memo.setdefault(sid, {})[node.idx] = () if res is NO_GROUPS else res
        return res

    def solve_steps(self, nodes: Iterable[CNode], todo: Callable[[CNode], Iterable[str]]) -> Iterator[None]:
        """Memoise ``full(node, sid)`` for each node, in the order given, and each span ``todo(node)`` names;
        yields after each answer that had to be solved."""
        for node in nodes:
            for sid in todo(node):
                per = self.memo.get(sid)
                if per is None or node.idx not in per:
                    self.full(node, sid)
                    yield

    def candidates(self, node: CNode, sid: str) -> list[str]:
        """Spans in ``node``'s scope below ``sid`` that fully match it, by start time."""
        ix = self.index
        local = ix.local[node.idx]
        if node.relation == "children":
            kids = ix.children.get(sid, ())
            pool: Iterable[str] = (
                [x for x in local if ix.by_id[x].parent_span_id == sid] if len(local) < len(kids)
                else [x for x in kids if x in local])
        elif node.relation == "linked":
            pool = [x for x in ix.linkers.get(sid, ()) if x in local]
        else:
            pool = [x for x in local if ix.is_below(x, sid)]
        got = [x for x in pool if self.full(node, x) is not None]
        got.sort(key=lambda x: (ix.by_id[x].start_ns, x))
        return got

    def _solve(self, node: CNode, sid: str) -> Assign | None:
        if sid not in self.index.local[node.idx]:
            return None
        if node.spec.within is not None and self.within_ok(node, self.index.by_id[sid]) is not None:
            return None
        if not node.children and not node.descendants and not node.linked:
            return NO_GROUPS
        cands: dict[int, list[str]] = {}
        for c in node.groups():
            got = self.candidates(c, sid)
            if len(got) < c.lo or (c.hi is not None and len(got) > c.hi):
                return None
            cands[c.idx] = got
        return assign_groups(node, cands, self.index)


def assign_groups(node: CNode, cands: dict[int, list[str]], index: SpanIndex) -> Assign | None:
    """Distinct spans for every group node's minimum count; ``ordered`` children by start time."""
    out: Assign = {c.idx: [] for c in node.groups()}
    taken: set[str] = set()
    if node.spec.ordered and node.children:
        # Greedy earliest-first is optimal for an ordered sequence: each node takes the earliest
        # candidates that start after everything the previous node took.
        last = -1
        for c in node.children:
            for sid in cands[c.idx]:
                if len(out[c.idx]) >= c.lo:
                    break
                start = index.by_id[sid].start_ns
                if start >= last and sid not in taken:
                    out[c.idx].append(sid)
                    taken.add(sid)
            if len(out[c.idx]) < c.lo:
                return None
            if out[c.idx]:
                last = max(index.by_id[x].start_ns for x in out[c.idx])
        rest = [*node.descendants, *node.linked]
    else:
        rest = list(node.groups())
    slot_nodes = [c for c in rest for _ in range(c.lo)]
    free = {c.idx: [x for x in cands[c.idx] if x not in taken] if taken else cands[c.idx] for c in rest}
    got = bipartite([free[c.idx] for c in slot_nodes])  # a node's slots share its list (bipartite.py)
    if got is None:
        return None
    for c, sid in zip(slot_nodes, got, strict=True):
        out[c.idx].append(sid)
    return out
