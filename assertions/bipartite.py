"""Distinct spans for sibling nodes: maximum bipartite matching of slots to candidate spans.

A node that needs ``count.min`` spans takes that many consecutive *slots*, all with the same candidate
list. Up to ``EXACT_SLOTS`` slots, each slot in turn searches an augmenting path (Kuhn's algorithm, with
an explicit stack: no recursion), scanning its candidates in order. With more slots that search is cubic
in a node's count (``count: 2000`` on a 10k-span trace took seconds, then overflowed the recursion limit),
so the slots of one node are served as one group, and the matching becomes a flow problem on a small
graph: group → *span class* (the spans wanted by exactly the same groups) → sink, each class holding as
many units as it has spans. Groups are filled in order, each as far as it goes (greedily from free
classes, then along augmenting paths of the residual graph, breadth first), which is the order the slot
search fills them in: every node gets as many spans as with the slot search, the same slots stay
unfilled, and the cost grows with the number of classes and groups, not with the counts. Within a node,
its spans are listed latest candidate first — the slot search's order whenever no sibling competes.
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
    for i in range(len(slots)):
        _augment_slot(slots, owner, i)
    got: list[str | None] = [None] * len(slots)
    for sid, i in owner.items():
        got[i] = sid
    return got


def _augment_slot(slots: list[list[str]], owner: dict[str, int], start: int) -> bool:
    """Kuhn's depth-first search for slot ``start``, iterative: a frame per slot on the path, each with
    the position its scan reached; ``trying[k]`` is the span frame ``k`` asks frame ``k + 1``'s slot to give up."""
    seen: set[str] = set()
    frames: list[list[int]] = [[start, 0]]
    trying: list[str] = []
    while frames:
        frame = frames[-1]
        i, p = frame
        cands = slots[i]
        nxt: int | None = None
        while p < len(cands):
            sid = cands[p]
            p += 1
            if sid in seen:
                continue
            seen.add(sid)
            j = owner.get(sid)
            if j is None:  # a free span: every frame on the path takes the span it asked for
                owner[sid] = i
                for k in range(len(trying) - 1, -1, -1):
                    owner[trying[k]] = frames[k][0]
                return True
            trying.append(sid)
            nxt = j
            break
        frame[1] = p
        if nxt is not None:
            frames.append([nxt, 0])
            continue
        frames.pop()
        if trying:
            trying.pop()
    return False


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


class _Flow:
    """Groups (a node's slots) → span classes → sink, filled group by group (see the module docstring)."""

    def __init__(self, cands: list[list[str]]) -> None:
        wanted_by: dict[str, list[int]] = {}
        for group, ids in enumerate(cands):
            for sid in ids:
                wanting = wanted_by.setdefault(sid, [])
                if not wanting or wanting[-1] != group:
                    wanting.append(group)
        classes: dict[tuple[int, ...], list[str]] = {}
        for sid, wanting in wanted_by.items():
            classes.setdefault(tuple(wanting), []).append(sid)
        self.members = list(classes.values())
        """Class → its spans (in the order the groups list them)."""
        self.free = [len(m) for m in self.members]
        """Class → units not given to any group yet."""
        self.of_group: list[list[int]] = [[] for _ in cands]
        for c, gs in enumerate(classes):
            for g in gs:
                self.of_group[g].append(c)
        self.flow: list[dict[int, int]] = [{} for _ in cands]
        """Group → class → units the group holds."""
        self.holders: list[dict[int, None]] = [{} for _ in self.members]
        """Class → the groups holding some of it (insertion-ordered set)."""

    def _give(self, g: int, c: int, units: int) -> None:
        left = self.flow[g].get(c, 0) + units
        if left:
            self.flow[g][c] = left
            self.holders[c][g] = None
        else:
            self.flow[g].pop(c, None)
            self.holders[c].pop(g, None)

    def fill(self, g: int, need: int) -> int:
        """Give group ``g`` up to ``need`` more units; returns how many it got."""
        got = 0
        for c in self.of_group[g]:  # free units first: no other group moves
            take = min(need - got, self.free[c])
            if take > 0:
                self.free[c] -= take
                self._give(g, c, take)
                got += take
                if got == need:
                    return got
        while got < need:
            pushed = self._augment(g, need - got)
            if not pushed:
                break
            got += pushed
        return got

    def _augment(self, g: int, budget: int) -> int:
        """Breadth-first search from ``g`` for classes with free units; along each path found, every group on it
        gives a class's units to the group before it and takes the next. Paths found after a push are checked
        again (a push can use up their units); a search that moves nothing proves no path is left.
        Returns the units moved."""
        moved = 0
        came: dict[int, tuple[int, int]] = {}  # class → (the group that reached it, the class that group gives up)
        reached = {g}
        queue = [(g, -1)]
        for h, gave in queue:
            for c in self.of_group[h]:
                if c in came:
                    continue
                came[c] = (h, gave)
                if self.free[c] > 0:
                    moved += self._push(c, came, budget - moved)
                    if moved == budget:
                        return moved
                for h2 in self.holders[c]:
                    if h2 not in reached:
                        reached.add(h2)
                        queue.append((h2, c))
        return moved

    def _push(self, end: int, came: dict[int, tuple[int, int]], budget: int) -> int:
        path: list[tuple[int, int, int]] = []  # (group, class it takes, class it gives up or -1)
        c = end
        while True:
            h, gave = came[c]
            path.append((h, c, gave))
            if gave < 0:
                break
            c = gave
        units = min(budget, self.free[end], *(self.flow[h].get(gave, 0) for h, _, gave in path if gave >= 0))
        if units <= 0:
            return 0
        self.free[end] -= units
        for h, took, gave in path:
            self._give(h, took, units)
            if gave >= 0:
                self._give(h, gave, -units)
        return units

    def spans(self) -> list[list[str]]:
        """Group → the spans of its units (a class's spans dealt out to its holders in group order)."""
        out: list[list[str]] = [[] for _ in self.flow]
        dealt = [0] * len(self.members)
        for g, per in enumerate(self.flow):
            for c, units in per.items():
                out[g].extend(self.members[c][dealt[c]:dealt[c] + units])
                dealt[c] += units
        return out


def _by_group(slots: list[list[str]]) -> list[str | None]:
    cands, counts = _grouped(slots)
    got: list[str | None] = []
    if len(set().union(*cands)) == sum(map(len, cands)):  # no span wanted by two nodes: nothing to search
        for c, k in zip(cands, counts, strict=True):
            got.extend(c[:k][::-1])
            got.extend([None] * (k - len(c[:k])))
        return got
    flow = _Flow(cands)
    for g, capacity in enumerate(counts):
        flow.fill(g, capacity)
    for g, (held, capacity) in enumerate(zip(flow.spans(), counts, strict=True)):
        pos = {sid: p for p, sid in enumerate(cands[g])}
        mine: list[str] = sorted(held, key=pos.__getitem__, reverse=True)
        got.extend(mine)
        got.extend([None] * (capacity - len(held)))
    return got
