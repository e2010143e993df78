"""Incremental solving for the trace judge: which spans can be each anchor, kept current as spans arrive.

An anchor is a top-level ``tree`` node. Spans fed since the last solve are batched in ``pending``;
a solve forgets only the memoised answers they can change and re-solves only the anchor candidates
they touched (``dirty``), or — when the memo had to be dropped (``dirty_all``) — every candidate.
The anchors' full candidate sets are kept with their start-ordered lists, and the top assignment
(distinct spans for every anchor's ``lo`` slots) is re-solved only when they changed.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterator

from tracecanary.assertions.spans import Span
from tracecanary.assertions.tree import Assign, CNode, Solver, SpanIndex, bipartite

SLICE = 256
"""Anchor candidates checked between two yields of ``solve_steps``."""


class AnchorSearch:
    """The anchors' candidate sets of one judge over the spans of its pool (``pool``, shared with the judge
    and grown in place; ``pool_all``: every fed trace)."""

    def __init__(self, nodes: list[CNode], index: SpanIndex, solver: Solver, pool: set[str],
                 pool_all: bool) -> None:
        self.index, self.solver, self.pool, self.pool_all = index, solver, pool, pool_all
        self.anchors = [n for n in nodes if n.relation == "tree"]
        self.full: list[set[str]] = [set() for _ in self.anchors]
        self.order: list[list[tuple[int, str]]] = [[] for _ in self.anchors]
        """``full`` as (start, span id), kept sorted as it changes (a ``count`` may hold thousands)."""
        self.pending: list[Span] = []
        """Spans fed since the last solve: invalidation is batched until then."""
        self.dirty: set[str] = set()
        self.dirty_all = False
        self.memo_cleared = False
        """The memo was cleared for the pending full re-solve (``dirty_all``): what is memoised since is valid."""
        self.version = 0
        """Bumped by every change of the spans or the pool: what ``solve_steps`` prepared is for this version only."""
        self.prepared: tuple[int, list[tuple[set[str], list[tuple[int, str]]]]] | None = None
        """The anchors' full candidate sets and orders a full re-solve needs, built by ``solve_steps``."""
        self.deep_first = sorted((n for n in nodes if n.relation == "tree" or any(n.groups())),
                                 key=_depth, reverse=True)
        """The nodes ``solve_steps`` solves: anchors and nodes with children, descendants or linked nodes."""
        self.top: tuple[Assign | None] | None = None

    def in_pool(self, sid: str) -> bool:
        """Whether the span belongs to a judged trace."""
        return self.pool_all or self.index.by_id[sid].trace_id in self.pool

    def restart(self) -> None:
        """Drop every memoised answer: all candidates are re-solved at the next solve."""
        self.solver.memo.clear()
        self.dirty_all = True

    def solve_steps(self) -> Iterator[None]:
        """Memoise what the spans fed since the last solve changed, in slices (``TraceJudge.solve_steps``)."""
        self._invalidate()
        yield from self.solver.solve_steps(self.deep_first, self._to_solve)
        if self.dirty_all:  # the anchors are re-solved from scratch: build their candidate sets here, in slices
            prepared = []
            for a in self.anchors:
                full = set(self._to_solve(a))
                for n, x in enumerate(list(full)):
                    if self.solver.full(a, x) is None:
                        full.discard(x)
                    if n % SLICE == SLICE - 1:
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

    def refresh(self) -> Assign | None:
        """Bring the candidate sets up to date; the top assignment, or None while the anchors cannot all match."""
        self._invalidate()
        if self.dirty_all:
            self._resolve_all()
        if self.dirty:
            self._resolve_dirty()
        if self.top is None:
            self.top = (self._solve_top(),)
        return self.top[0]

    def _resolve_all(self) -> None:
        by_id = self.index.by_id
        prepared = self.prepared[1] if self.prepared is not None and self.prepared[0] == self.version else None
        pool, pool_all, solve = self.pool, self.pool_all, self.solver.full
        for i, (a, full, order) in enumerate(zip(self.anchors, self.full, self.order, strict=True)):
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

    def _resolve_dirty(self) -> None:
        by_id = self.index.by_id
        for a, full, order in zip(self.anchors, self.full, self.order, strict=True):
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

    def by_start(self, ids: set[str]) -> list[str]:
        """Span ids by start, then id."""
        return sorted(ids, key=lambda x: (self.index.by_id[x].start_ns, x))

    def _solve_top(self) -> Assign | None:
        for a, full in zip(self.anchors, self.full, strict=True):
            if len(full) < a.lo or (a.hi is not None and len(full) > a.hi):
                return None
        slot_nodes = [a for a in self.anchors for _ in range(a.lo)]
        ordered = [[sid for _, sid in order] for order in self.order]
        got = bipartite([ordered[i] for i, a in enumerate(self.anchors) for _ in range(a.lo)])
        if got is None:
            return None
        out: Assign = {a.idx: [] for a in self.anchors}
        for a, sid in zip(slot_nodes, got, strict=True):
            out[a.idx].append(sid)
        return out


def _depth(node: CNode) -> int:
    depth = 0
    while node.parent is not None:
        node, depth = node.parent, depth + 1
    return depth
