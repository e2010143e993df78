"""Distinct spans for sibling nodes: maximum bipartite matching of slots to candidate spans.

A node that needs ``count.min`` spans takes that many consecutive *slots*, all with the same candidate
list. Up to ``EXACT_SLOTS`` slots, each slot in turn searches an augmenting path (Kuhn's algorithm),
scanning its candidates in order. With more slots that search is cubic in a node's count (``count: 500``
took seconds on a 10k-span trace, ``count: 2000`` overflowed the recursion limit), so the slots of one
node are then served as one group: the same search, over groups, each group's candidates scanned once
per search from the first one it does not hold yet. The group search gives every node the same set of
spans as the slot search (and leaves the same slots unfilled); within a node, its spans are listed latest
candidate first — the slot search's order whenever no sibling competes for them.
"""

from __future__ import annotations

EXACT_SLOTS = 64
"""Up to this many slots, the slot-by-slot search (its results, witnesses included, are the reference)."""


def max_bipartite(slots: list[list[str]]) -> list[str | None]:
    """A maximum matching of slots to distinct candidate spans (augmenting paths); None = unfilled.

    Consecutive slots of one node should share one candidate list object (that is how they are grouped).
    """
    if len(slots) <= EXACT_SLOTS:
        return _by_slot(slots)
    return _by_group(slots)


def bipartite(slots: list[list[str]]) -> list[str] | None:
    """Give each slot a distinct span from its candidates, or None if impossible."""
    got = max_bipartite(slots)
    return None if any(g is None for g in got) else [g for g in got if g is not None]


def _by_slot(slots: list[list[str]]) -> list[str | None]:
    owner: dict[str, int] = {}

    def augment(i: int, seen: set[str]) -> bool:
        for sid in slots[i]:
            if sid in seen:
                continue
            seen.add(sid)
            j = owner.get(sid)
            if j is None or augment(j, seen):
                owner[sid] = i
                return True
        return False

    for i in range(len(slots)):
        augment(i, set())
    got: list[str | None] = [None] * len(slots)
    for sid, i in owner.items():
        got[i] = sid
    return got


def _grouped(slots: list[list[str]]) -> tuple[list[list[str]], list[int]]:
    """Consecutive slots sharing one candidate list: (the lists, how many slots each)."""
    cands: list[list[str]] = []
    capacity: list[int] = []
    for c in slots:
        if cands and cands[-1] is c:
            capacity[-1] += 1
        else:
            cands.append(c)
            capacity.append(1)
    return cands, capacity


class _Groups:
    """Slots grouped by node: each group has a candidate list and a capacity (its count)."""

    def __init__(self, cands: list[list[str]], capacity: list[int]) -> None:
        self.cands, self.capacity = cands, capacity
        self.pos: list[dict[str, int]] = [{sid: p for p, sid in enumerate(c)} for c in self.cands]
        self.base = [0] * len(self.cands)
        """Per group: every candidate before this position is the group's own (skipped when it searches)."""
        self.owner: dict[str, int] = {}

    def augment(self, start: int) -> bool:
        """One more span for group ``start``, along an augmenting path (iterative depth-first search)."""
        owner, seen, scan = self.owner, set[str](), dict[int, int]()
        entered: dict[int, int] = {}  # group → its base when first entered: the own spans before it count as seen
        path: list[int] = [start]
        wanted: list[str] = []  # wanted[i]: the span path[i] takes from path[i + 1]
        while path:
            g = path[-1]
            cands = self.cands[g]
            p = scan.get(g)
            if p is None:
                p = entered[g] = self._skip_own(g)
            step: str | None = None
            while p < len(cands):
                sid = cands[p]
                p += 1
                if sid in seen:
                    continue
                seen.add(sid)
                h = owner.get(sid)
                if h is not None and h != g and h in entered and self.pos[h][sid] < entered[h]:
                    continue  # passed (seen) when group h began its scan
                if h != g:
                    step = sid
                    break
            scan[g] = p
            if step is None:  # nothing left for this group: back up
                path.pop()
                if wanted:
                    wanted.pop()
                continue
            h = owner.get(step)
            if h is None:
                self._take(g, step)
                while wanted:
                    path.pop()
                    self._take(path[-1], wanted.pop())
                return True
            path.append(h)
            wanted.append(step)
        return False

    def _skip_own(self, g: int) -> int:
        cands, base = self.cands[g], self.base[g]
        while base < len(cands) and self.owner.get(cands[base]) == g:
            base += 1
        self.base[g] = base
        return base

    def _take(self, g: int, sid: str) -> None:
        was = self.owner.get(sid)
        if was is not None:  # ``was`` gives the span up: its scan must look at that position again
            self.base[was] = min(self.base[was], self.pos[was][sid])
        self.owner[sid] = g


def _by_group(slots: list[list[str]]) -> list[str | None]:
    cands, counts = _grouped(slots)
    got: list[str | None] = []
    if len(set().union(*cands)) == sum(map(len, cands)):  # no span wanted by two nodes: nothing to search
        for c, k in zip(cands, counts, strict=True):
            got.extend(c[:k][::-1])
            got.extend([None] * (k - len(c[:k])))
        return got
    groups = _Groups(cands, counts)
    filled = [0] * len(groups.cands)
    for g, capacity in enumerate(groups.capacity):
        while filled[g] < capacity and groups.augment(g):
            filled[g] += 1  # a failed search stays failed for this group's remaining slots
    held: list[list[str]] = [[] for _ in groups.cands]
    for sid, g in groups.owner.items():
        held[g].append(sid)
    for g, capacity in enumerate(groups.capacity):
        pos = groups.pos[g]
        mine = sorted(held[g], key=pos.__getitem__, reverse=True)
        got.extend(mine)
        got.extend([None] * (capacity - len(mine)))
    return got
