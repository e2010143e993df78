"""Large judgements: the group matching for big counts, and a check solved in slices, give the same results."""

from __future__ import annotations

import random
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tracecanary.assertions import bipartite as bp
from tracecanary.assertions.expect import TraceExpectation
from tracecanary.assertions.judge import JudgeState, TraceJudge, judge_offline
from tracecanary.assertions.spans import Span, SpanKind
from tracecanary.assertions.verdict import Verdict

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
NAMES = ["db.query", "cache.get", "http.get", "render", "publish"]


def _groups(slots: list[list[str]]) -> list[tuple[int, int]]:
    out, i = [], 0
    while i < len(slots):
        j = i
        while j < len(slots) and slots[j] is slots[i]:
            j += 1
        out.append((i, j))
        i = j
    return out


@settings(max_examples=300, deadline=None, database=None)
@given(st.randoms(use_true_random=False))
def test_group_matching_fills_every_node_as_the_slot_search_does(rnd: random.Random) -> None:
    """The flow over span classes fills the same slots as the slot search (nodes in order, each as far as
    it goes) with a valid matching; which of the competing spans a node gets may differ."""
    universe = [f"s{i:03d}" for i in range(rnd.randint(1, 40))]
    slots: list[list[str]] = []
    for _ in range(rnd.randint(1, 5)):
        cands = rnd.sample(universe, rnd.randint(0, len(universe)))
        slots.extend([cands] * rnd.randint(1, 20))
    by_slot, by_group = bp._by_slot(slots), bp._by_group(slots)
    assert [x is None for x in by_slot] == [x is None for x in by_group]
    given_ = [x for x in by_group if x is not None]
    assert len(given_) == len(set(given_))
    for i, j in _groups(slots):
        assert all(x is None or x in slots[i] for x in by_group[i:j])
        others = {x for k, c in enumerate(slots) if not i <= k < j for x in c}
        if not set(slots[i]) & others:
            assert set(by_slot[i:j]) == set(by_group[i:j])  # no competition: the very same spans


def _kuhn_recursive(slots: list[list[str]]) -> list[str | None]:
    """The textbook recursive search, the reference for the iterative one."""
    owner: dict[str, int] = {}

    def augment(i: int, seen: set[str]) -> bool:
        for sid in slots[i]:
            if sid not in seen:
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


@settings(max_examples=300, deadline=None, database=None)
@given(st.randoms(use_true_random=False))
def test_the_slot_search_without_recursion_is_the_recursive_one(rnd: random.Random) -> None:
    universe = [f"s{i}" for i in range(rnd.randint(0, 12))]
    slots = [rnd.sample(universe, rnd.randint(0, len(universe))) for _ in range(rnd.randint(0, 12))]
    assert bp._by_slot(slots) == _kuhn_recursive(slots)


def test_competing_counts_of_thousands_are_a_flow_not_a_search() -> None:
    """Two nodes wanting thousands of the same spans (the slot search took seconds here, and a recursion
    error above ~1000): every unit found, none twice, the first node filled first."""
    import sys

    ids = [f"{i:016x}" for i in range(10_000)]
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(200)  # nothing here may recurse deeper than a few frames
    try:
        got = bp.max_bipartite([ids] * 6000 + [ids[::-1]] * 6000)
    finally:
        sys.setrecursionlimit(limit)
    assert got[:6000].count(None) == 0 and got[6000:].count(None) == 2000
    assert len({x for x in got if x is not None}) == 10_000


def test_a_count_over_thousands_of_spans_is_matched_like_a_small_one() -> None:
    cands = [f"{i:016x}" for i in range(9000)]
    for count in (3, bp.EXACT_SLOTS, bp.EXACT_SLOTS + 1, 5000):
        got = bp.max_bipartite([cands] * count)
        assert got == cands[:count][::-1]  # the first `count` candidates, latest first, as the slot search does
    assert bp.bipartite([cands[:10]] * 100) is None


def _flat_trace(n: int) -> list[Span]:
    t0 = 1_700_000_000_000_000_000
    root = Span(TRACE, "0" * 15 + "1", None, "POST /batch", SpanKind.SERVER, t0, t0 + 10**9, "batch")
    return [root] + [Span(TRACE, f"{i + 2:016x}", root.span_id, f"item {i % 3}", SpanKind.INTERNAL,
                          t0 + i, t0 + i + 1000, "batch") for i in range(n)]


def test_count_over_thousands_of_spans_holds_or_fails_with_its_count() -> None:
    spans = _flat_trace(6000)
    for count, verdict in ((4000, Verdict.PASS), (6001, Verdict.FAIL)):
        exp = TraceExpectation.model_validate({"tree": [
            {"span": "POST /batch", "children": [{"span": "item *", "count": {"gte": count}}]},
            {"span": "item *", "count": {"gte": count}},
        ]})
        state = judge_offline(exp, spans, trace_id=TRACE)
        assert state.verdict == verdict, [str(f) for f in state.findings]
        if verdict == Verdict.FAIL:
            assert [f.path for f in state.findings] == ["expect.trace.tree[0].children[0]", "expect.trace.tree[1]"]
            assert all("found 6000 of 6001" in f.message for f in state.findings)


def _tree(rnd: random.Random, depth: int = 0) -> dict[str, Any]:
    kids = [_tree(rnd, depth + 1) for _ in range(rnd.randint(0, 3 if depth < 3 else 0))]
    return {"name": rnd.choice(NAMES), "children": kids}


def _spans(tree: dict[str, Any], rnd: random.Random) -> list[Span]:
    out: list[Span] = []

    def walk(item: dict[str, Any], parent: str | None, start: int) -> None:
        sid = f"{len(out) + 1:016x}"
        end = start + rnd.randint(1, 50) * 1_000_000
        out.append(Span(TRACE, sid, parent, item["name"], SpanKind.INTERNAL, start, end, "svc",
                        {"n": rnd.randint(0, 3)}))
        for kid in item["children"]:
            walk(kid, sid, start + rnd.randint(0, 5) * 1_000_000)

    walk(tree, None, 1_700_000_000_000_000_000)
    return out


def _expectation(tree: dict[str, Any], rnd: random.Random) -> TraceExpectation:
    def node(item: dict[str, Any]) -> dict[str, Any]:
        doc: dict[str, Any] = {"span": item["name"] if rnd.random() < 0.8 else "*"}
        kids = [node(k) for k in item["children"] if rnd.random() < 0.7]
        if kids:
            doc["children" if rnd.random() < 0.6 else "descendants"] = kids
        if rnd.random() < 0.15:
            doc["count"] = {"gte": 1, "lte": rnd.randint(1, 3)}
        if rnd.random() < 0.1:
            doc["attributes"] = {"n": {"lt": 2}}
        return doc

    doc: dict[str, Any] = {"tree": [node(tree)]}
    if rnd.random() < 0.3:
        doc["tree"].append({"span": rnd.choice(NAMES), "count": {"gte": rnd.randint(1, 4)}})
    return TraceExpectation.model_validate(doc)


def _same(a: JudgeState, b: JudgeState) -> bool:
    return (a.done, a.verdict, [str(f) for f in a.findings], a.settle_remaining_s) == (
        b.done, b.verdict, [str(f) for f in b.findings], b.settle_remaining_s)


@settings(max_examples=80, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.randoms(use_true_random=False))
def test_solving_in_slices_before_each_check_changes_no_result(rnd: random.Random) -> None:
    tree = _tree(rnd)
    spans = _spans(tree, rnd)
    exp = _expectation(tree, rnd)
    if rnd.random() < 0.3:
        spans = [s for s in spans if rnd.random() < 0.8]
    rnd.shuffle(spans)
    plain = TraceJudge(exp, root_trace_id=TRACE, trigger_ns=None)
    sliced = TraceJudge(exp, root_trace_id=TRACE, trigger_ns=None)
    i = 0
    while i < len(spans):
        batch = spans[i:i + rnd.randint(1, 5)]
        i += len(batch)
        plain.feed(batch)
        sliced.feed(batch)
        for _ in sliced.solve_steps():
            pass
        quiet_s = rnd.choice([0.0, 10.0])
        assert _same(plain.check(quiet_s=quiet_s), sliced.check(quiet_s=quiet_s))
    for _ in sliced.solve_steps():
        pass
    assert _same(plain.finish(), sliced.finish())
    assert plain.report() == sliced.report() | {"last_arrival_unix_ns": plain.report()["last_arrival_unix_ns"]}


def test_containers_name_each_growing_container_and_each_child_list_once() -> None:
    spans = _flat_trace(100)
    exp = TraceExpectation.model_validate({"tree": [{"span": "POST /batch", "children": [{"span": "item 0"}]}]})
    judge = TraceJudge(exp, root_trace_id=TRACE, trigger_ns=None)
    judge.feed(spans)
    judge.check(quiet_s=0.0)
    first = list(judge.containers())
    ids = {id(c) for c in first}
    assert {id(judge.index.by_id), id(judge.solver.memo), id(judge.index.children[spans[0].span_id])} <= ids
    again = {id(c) for c in judge.containers()}
    assert id(judge.index.children[spans[0].span_id]) not in again and id(judge.index.by_id) in again
