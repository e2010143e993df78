"""Trace-assertion figures: full evaluation of a 50-node expectation against a 10k-span trace
(goal ≤ 50 ms), the incremental cost per arriving span (goal ≤ 20 µs median), and ``count: {gte: 1000}``
over a 10k-span trace (goal ≤ 50 ms; it took 2.1 s at 900 and raised RecursionError at 1000).

    python benchmarks/assertions.py [--quick]

Spans arrive in export order (children end, and are exported, before their parents) in batches
of 64; "feed" is indexing one span, "feed+check" adds one ``check()`` per batch, amortised.
"""

from __future__ import annotations

import argparse
import random
import statistics
import time
from typing import Any

from tracecanary.assertions.expect import TraceExpectation
from tracecanary.assertions.judge import TraceJudge, judge_offline
from tracecanary.assertions.spans import Span, SpanKind, StatusCode

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"


def build_trace(n_spans: int, n_services: int = 20, seed: int = 7) -> list[Span]:
    """A checkout trace: a root, one handler per service, each with a deep random subtree."""
    rnd = random.Random(seed)
    spans: list[Span] = []
    counter = 0

    def sid() -> str:
        nonlocal counter
        counter += 1
        return f"{counter:016x}"

    t0 = 1_700_000_000_000_000_000
    root = Span(TRACE_ID, sid(), None, "POST /checkout", SpanKind.SERVER, t0, t0 + 900_000_000, "gateway",
                {"http.status_code": 200}, status_code=StatusCode.OK)
    spans.append(root)
    per_service = (n_spans - 1) // n_services
    for i in range(n_services):
        svc = f"svc-{i}"
        handler = Span(TRACE_ID, sid(), root.span_id, f"{svc} handle", SpanKind.SERVER,
                       t0 + i * 1_000_000, t0 + 800_000_000, svc, {"http.route": f"/{svc}"})
        spans.append(handler)
        frontier = [handler]
        depth = {handler.span_id: 2}
        for j in range(per_service - 1):
            # Realistic shape: fan-out under recent spans, depth capped at 12.
            parent = handler if j < 3 else rnd.choice(frontier[-40:])
            start = parent.start_ns + rnd.randint(1, 1000) * 1000
            span = Span(TRACE_ID, sid(), parent.span_id, f"{svc} op-{j % 25}", SpanKind.INTERNAL, start,
                        start + rnd.randint(1, 5000) * 1000, svc, {"db.system": "postgres", "n": j})
            spans.append(span)
            depth[span.span_id] = depth[parent.span_id] + 1
            if depth[span.span_id] < 12:
                frontier.append(span)
    return spans


def build_expectation(n_services: int = 10) -> TraceExpectation:
    """51 nodes: the root, and per service a handler with 3 children and a descendant."""
    children: list[dict[str, Any]] = []
    for i in range(n_services):
        svc = f"svc-{i}"
        children.append({
            "span": f"{svc} handle", "service": svc, "attributes": {"http.route": {"matches": f"^/{svc}$"}},
            "children": [{"span": f"{svc} op-0"}, {"span": f"{svc} op-1"}, {"span": f"{svc} op-*"}],
            "descendants": [{"span": f"{svc} op-2*", "attributes": {"db.system": "postgres"}}],
        })
    doc = {"tree": [{"span": "POST /checkout", "kind": "server", "status": "ok", "children": children}]}
    exp = TraceExpectation.model_validate(doc)
    return exp


def export_order(spans: list[Span], batch: int = 64) -> list[list[Span]]:
    ordered = sorted(spans, key=lambda s: s.end_ns)
    return [ordered[i:i + batch] for i in range(0, len(ordered), batch)]


def bench_full(exp: TraceExpectation, spans: list[Span], reps: int) -> tuple[list[float], list[float]]:
    """(whole judge_offline, the solve + verdict part alone) per repetition."""
    times, solve = [], []
    for _ in range(reps):
        t = time.perf_counter()
        state = judge_offline(exp, spans, trace_id=TRACE_ID)
        times.append(time.perf_counter() - t)
        assert state.verdict is not None and state.verdict.value == "pass", [str(f) for f in state.findings]
        judge = TraceJudge(exp, root_trace_id=TRACE_ID, trigger_ns=None)
        judge.feed(spans)
        t = time.perf_counter()
        judge.finish()
        solve.append(time.perf_counter() - t)
    return times, solve


def bench_incremental(exp: TraceExpectation, spans: list[Span]) -> tuple[list[float], list[float], float]:
    feed_us: list[float] = []
    per_span_us: list[float] = []
    judge = TraceJudge(exp, root_trace_id=TRACE_ID, trigger_ns=None)
    verdict_at: float | None = None
    for batch in export_order(spans):
        t_batch = time.perf_counter()
        for s in batch:
            t = time.perf_counter()
            judge.feed((s,))
            feed_us.append((time.perf_counter() - t) * 1e6)
        state = judge.check(quiet_s=0.0)
        per_span_us.append((time.perf_counter() - t_batch) * 1e6 / len(batch))
        if state.done and verdict_at is None:
            verdict_at = time.perf_counter()
    t = time.perf_counter()
    judge.check(quiet_s=0.0)
    last_check_ms = (time.perf_counter() - t) * 1e3
    return feed_us, per_span_us, last_check_ms


def bench_miss(spans: list[Span], reps: int) -> tuple[list[float], str]:
    """finish() on a miss: every missing node explained with its closest spans."""
    doc = build_expectation().model_dump(mode="json", by_alias=True, exclude_defaults=True)
    doc["tree"][0]["children"][3]["children"].append({"span": "svc-3 op-99", "max_duration": "1ms"})
    doc["tree"][0]["children"][7]["descendants"][0]["attributes"] = {"db.system": "mysql"}
    exp = TraceExpectation.model_validate(doc)
    times, first = [], ""
    for _ in range(reps):
        judge = TraceJudge(exp, root_trace_id=TRACE_ID, trigger_ns=None)
        judge.feed(spans)
        t = time.perf_counter()
        state = judge.finish()
        times.append(time.perf_counter() - t)
        assert state.verdict is not None and state.verdict.value == "fail"
        first = str(state.findings[0])
    return times, first


def bench_check_every_span(exp: TraceExpectation, spans: list[Span]) -> list[float]:
    """The worst case: one feed and one check per arriving span."""
    judge = TraceJudge(exp, root_trace_id=TRACE_ID, trigger_ns=None)
    out = []
    for batch in export_order(spans):
        for s in batch:
            t = time.perf_counter()
            judge.feed((s,))
            judge.check(quiet_s=0.0)
            out.append((time.perf_counter() - t) * 1e6)
    return out


def build_batch(n_spans: int) -> list[Span]:
    """A batch job's trace: one root and ``n_spans - 1`` children named ``item 0`` … ``item 2``."""
    t0 = 1_700_000_000_000_000_000
    root = Span(TRACE_ID, f"{1:016x}", None, "POST /batch", SpanKind.SERVER, t0, t0 + 10**9, "batch")
    return [root] + [Span(TRACE_ID, f"{i + 2:016x}", root.span_id, f"item {i % 3}", SpanKind.INTERNAL,
                          t0 + i * 1000, t0 + i * 1000 + 500, "batch") for i in range(n_spans - 1)]


COUNT_CASES: dict[str, tuple[str, dict[str, Any]]] = {
    "children": ("batch", {"tree": [{"span": "POST /batch", "children": [
        {"span": "item *", "count": {"gte": 1000}}]}]}),
    "anchor": ("batch", {"tree": [{"span": "item *", "count": {"gte": 1000}}]}),
    "descendants": ("checkout", {"tree": [{"span": "POST /checkout", "descendants": [
        {"span": "svc-* op-*", "count": {"gte": 1000}}]}]}),
    "competing siblings": ("batch", {"tree": [{"span": "POST /batch", "children": [
        {"span": "item *", "count": {"gte": 4000}}, {"span": "item [01]", "count": {"gte": 4000}}]}]}),
}
"""``count`` over 10k spans: each case's trace and expectation (all pass)."""


def bench_count(reps: int) -> None:
    """``count: {gte: 1000}`` (and two siblings wanting 4000 of the same spans) over 10k-span traces."""
    traces = {"batch": build_batch(10_000), "checkout": build_trace(10_000)}
    figures = []
    for label, (trace, doc) in COUNT_CASES.items():
        exp = TraceExpectation.model_validate(doc)
        times = []
        for _ in range(reps):
            t = time.perf_counter()
            state = judge_offline(exp, traces[trace], trace_id=TRACE_ID)
            times.append(time.perf_counter() - t)
            assert state.verdict is not None and state.verdict.value == "pass", [str(f) for f in state.findings]
        figures.append(f"{label} {statistics.median(times) * 1e3:.1f} ms")
    print(f"count over 10k spans, judged offline (median): {'; '.join(figures)} (goal <= 50 ms)")
    exp = TraceExpectation.model_validate(COUNT_CASES["competing siblings"][1])
    judge = TraceJudge(exp, root_trace_id=TRACE_ID, trigger_ns=None)
    checks = []
    batch_spans = traces["batch"]  # the root first: every batch of children re-solves it (the worst order)
    for i in range(0, len(batch_spans), 64):
        judge.feed(batch_spans[i:i + 64])
        t = time.perf_counter()
        state = judge.check(quiet_s=0.0)
        checks.append(time.perf_counter() - t)
    assert state.verdict is not None and state.verdict.value == "pass"
    print(f"  competing siblings, a check per 64-span batch: median {statistics.median(checks) * 1e3:.2f} ms, "
          f"max {max(checks) * 1e3:.1f} ms, {sum(checks) * 1e3:.0f} ms in all")
    miss = TraceExpectation.model_validate({"tree": [{"span": "POST /batch", "children": [
        {"span": "item *", "count": {"gte": 10_000}}]}]})
    t = time.perf_counter()
    state = judge_offline(miss, traces["batch"], trace_id=TRACE_ID)
    took_ms = (time.perf_counter() - t) * 1e3
    assert state.verdict is not None and state.verdict.value == "fail"
    print(f"  a count above what arrived (10000 of 9999), judged and explained: {took_ms:.1f} ms")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repetitions (CI)")
    args = parser.parse_args()
    reps = 3 if args.quick else 15
    spans = build_trace(10_000)
    exp = build_expectation()
    n_nodes = sum(1 for _ in _walk(exp.tree))
    full, solve = bench_full(exp, spans, reps)
    feed_us, per_span_us, check_ms = bench_incremental(exp, spans)
    q = statistics.quantiles(feed_us, n=100)
    print(f"expectation nodes: {n_nodes}; trace spans: {len(spans)}")
    print(f"full evaluation (index + solve + verdict): median {statistics.median(full) * 1e3:.1f} ms, "
          f"best {min(full) * 1e3:.1f} ms (goal <= 50 ms); of which solve + verdict: median "
          f"{statistics.median(solve) * 1e3:.1f} ms")
    print(f"incremental feed per span: median {statistics.median(feed_us):.1f} us, p99 {q[98]:.1f} us "
          f"(goal <= 20 us median)")
    print(f"incremental feed+check per span (check once per 64-span batch): median "
          f"{statistics.median(per_span_us):.1f} us, p99 {statistics.quantiles(per_span_us, n=100)[98]:.1f} us")
    every = bench_check_every_span(exp, spans)
    print(f"incremental feed+check on every span: median {statistics.median(every):.1f} us, "
          f"p99 {statistics.quantiles(every, n=100)[98]:.1f} us")
    print(f"check() after the last span: {check_ms:.2f} ms")
    miss, example = bench_miss(spans, reps)
    print(f"finish() on a miss (2 nodes explained): median {statistics.median(miss) * 1e3:.1f} ms")
    print(f"  e.g. {example[:200]}")
    bench_count(reps)


def _walk(nodes: Any) -> Any:
    for n in nodes:
        yield n
        yield from _walk([*n.children, *n.descendants, *n.linked])


if __name__ == "__main__":
    main()
