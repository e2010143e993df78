"""Expected-tree matching: a span index over compiled nodes, and the memoised structural solver.

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

from collections.abc import Callable, Iterable, Iterator
from functools import partial

from tracecanary.assertions.bipartite import bipartite as bipartite
from tracecanary.assertions.bipartite import max_bipartite as max_bipartite
from tracecanary.assertions.match import Matcher, name_matches
from tracecanary.assertions.spans import Span
from tracecanary.assertions.tree_nodes import Check as Check
from tracecanary.assertions.tree_nodes import CNode as CNode
from tracecanary.assertions.tree_nodes import compile_checks as compile_checks
from tracecanary.assertions.tree_nodes import compile_name_check as compile_name_check
from tracecanary.assertions.tree_nodes import compile_tree as compile_tree
from tracecanary.assertions.tree_nodes import compiled_glob
from tracecanary.assertions.tree_nodes import describe as describe
from tracecanary.assertions.tree_nodes import name_predicate as name_predicate

Assign = dict[int, list[str]]
"""A full match's witness: child node index → the span ids given to it."""

NO_GROUPS: Assign = {}
"""The witness of a node without children, descendants or linked nodes (shared: witnesses are never changed)."""


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
            patterned.append((n, compiled_glob(name)))
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
