"""Wait on the trace buffer for a run's spans and judge them as they arrive (no polling loop).

The probe's own trace, the traces whose spans link into it (queues, schedulers) and the trace named
by ``correlate`` are watched; each arriving span is fed to the incremental judge, which decides as
early as the expectation allows (DESIGN "Semantics": forbid/upper bounds fail at once; whole-trace
rules wait for ``settle`` of quiet; otherwise the deadline decides).

Never blocked: arriving spans are fed to the judge in slices of ``FEED_SLICE`` with a checkpoint between
them; once a run judges ``LARGE_SPANS`` spans, each check first solves what changed in slices of
``SOLVE_SLICE_S`` (``TraceJudge.solve_steps``), and the final verdict and report, one-off steps of tens of
milliseconds for a 10k-span trace, run in a worker thread (one for the whole process: the judge is pure
Python, more threads would only fight over the GIL, and a thread busy for long makes every GIL
hand-back of the event loop wait). The judge is only touched by its run's task: results are the same.

At the end it gathers the telemetry evidence for ``unknown`` (``assertions/telemetry.py``): whether the
services the expectation names sent any span — in the judged trace, to the intake since the trigger
(the buffer's intake clock), and, with a pull source (Sentry, Jaeger, Tempo), whether it answered with the trace.
The runner decides with the other findings in hand.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from functools import partial
from typing import Any, TypeVar

import anyio
import anyio.lowlevel

from tracecanary.assertions.expect import NamePattern, TraceExpectation
from tracecanary.assertions.judge import JudgeState, TraceJudge
from tracecanary.assertions.outputs import trace_outputs
from tracecanary.assertions.spans import Span
from tracecanary.assertions.telemetry import Silence, matching, named_services, service_text
from tracecanary.assertions.verdict import Finding, Verdict
from tracecanary.daemon.spans.buffer import TraceBuffer
from tracecanary.daemon.spans.intake import IntakeClock
from tracecanary.daemon.spans.pull import PullSource
from tracecanary.daemon.spans.sources import NEEDS
from tracecanary.daemon.spans.untracked import untrack
from tracecanary.daemon.spans.watch import Watch
from tracecanary.probes.base import ProbeContext


@dataclass
class TraceOutcome:
    findings: list[Finding]
    report: dict[str, Any] | None
    spans: list[Span] = field(default_factory=list)
    time_to_verdict_s: float | None = None
    silence: Silence | None = None
    """Set when the services the expectation names sent nothing since the trigger (see ``telemetry``)."""
    outputs: dict[str, Any] = field(default_factory=dict)
    """``expect.trace.outputs`` found in the judged spans (NAME → value)."""


UNTRACK_JUDGE_SPANS = 512
"""From this many judged spans on, the judge's containers are kept out of the cyclic GC's lists."""
LARGE_SPANS = 2000
"""From this many judged spans on, checks solve in slices and the final verdict and report run in the
judging thread (checking a 10k-span trace against a 51-node tree and a ``count`` over thousands of spans
took 10-40 ms in one step)."""
FEED_SLICE = 1000
"""Spans fed to the judge between two checkpoints (~1-5 ms of indexing)."""
SOLVE_SLICE_S = 0.005
"""Solving time between two checkpoints while a large trace is checked."""
_T = TypeVar("_T")
_JUDGE_THREAD: anyio.lowlevel.RunVar[anyio.CapacityLimiter] = anyio.lowlevel.RunVar("tracecanary_judge_thread")


async def in_slices(steps: Iterator[None], slice_s: float, pause: Callable[[], None] | None = None) -> None:
    """Run ``steps`` to the end, with a checkpoint (after ``pause()``) each time ``slice_s`` is used up."""
    end_s = time.perf_counter() + slice_s
    for _ in steps:
        if time.perf_counter() >= end_s:
            if pause is not None:
                pause()
            await anyio.lowlevel.checkpoint()
            end_s = time.perf_counter() + slice_s


async def off_loop(fn: Callable[[], _T]) -> _T:
    """Run a pure judging step in the judging thread (one per event loop, shared by every run)."""
    try:
        limiter = _JUDGE_THREAD.get()
    except LookupError:
        limiter = anyio.CapacityLimiter(1)
        _JUDGE_THREAD.set(limiter)
    return await anyio.to_thread.run_sync(fn, limiter=limiter)


class _Tracked:
    """The set of traces a run judges, grown as links and correlations reveal more."""

    def __init__(self, buffer: TraceBuffer, watch: Watch, judge: TraceJudge) -> None:
        self.buffer, self.watch, self.judge = buffer, watch, judge
        self.traces: set[str] = set()
        self.seen: set[tuple[str, str]] = set()
        self.spans: list[Span] = []
        self.last_arrival_s: float | None = None
        untrack(self.seen)  # ids and spans only: a full collection need not visit each (spans/untracked.py)
        untrack(self.spans)

    def track(self, trace_id: str) -> None:
        if trace_id in self.traces:
            return
        self.traces.add(trace_id)
        self.watch.add_trace(trace_id)  # its buffered spans come with the watch's next wait
        self.watch.add_links_to(trace_id)
        for linking in self.buffer.linking_traces(trace_id):
            self.track(linking)

    def untrack_judge(self) -> None:
        """Take a large judge's containers out of the cyclic GC's lists (again: a dict re-enters them when it
        gains a span), so a full collection does not visit each judged span (spans/untracked.py)."""
        if len(self.spans) >= UNTRACK_JUDGE_SPANS:
            for container in self.judge.containers():
                untrack(container)

    @property
    def large(self) -> bool:
        return len(self.spans) >= LARGE_SPANS

    async def check(self, quiet_s: float) -> JudgeState:
        """The judge's state now; a large trace is solved in slices first, letting the event loop run."""
        if self.large:
            await in_slices(self.judge.solve_steps(), SOLVE_SLICE_S, self.untrack_judge)
        state = self.judge.check(quiet_s=quiet_s)
        self.untrack_judge()
        return state

    async def feed_slices(self, spans: list[Span], arrived_s: float | None) -> None:
        """:meth:`feed`, ``FEED_SLICE`` spans at a time, letting the event loop run in between."""
        for i in range(0, len(spans), FEED_SLICE):
            if i:
                await anyio.lowlevel.checkpoint()
            self.feed(spans[i:i + FEED_SLICE], arrived_s)
            self.untrack_judge()  # before other tasks run (and maybe a collection)

    def feed(self, spans: list[Span], arrived_s: float | None = None) -> None:
        """Judge the spans not seen yet; ``arrived_s`` is when they reached the buffer (default: now)."""
        seen = self.seen
        fresh = [s for s in spans if (s.trace_id, s.span_id) not in seen]
        if not fresh:
            return
        seen.update((s.trace_id, s.span_id) for s in fresh)
        self.spans.extend(fresh)
        self.judge.feed(fresh)
        self.last_arrival_s = anyio.current_time() if arrived_s is None else arrived_s
        for s in fresh:
            if s.trace_id not in self.traces:
                self.track(s.trace_id)  # a span that links into a tracked trace: follow its trace


async def watch_trace(
    expectation: TraceExpectation, ctx: ProbeContext, buffer: TraceBuffer, root: Span,
    *, sentry_source: PullSource | None = None, pull_sources: Mapping[str, PullSource] | None = None,
    on_correlation: Callable[[str, str, str], None] | None = None,
) -> TraceOutcome:
    """Judge the run's trace; returns at the verdict or at the run deadline.

    ``expect.trace.source`` other than ``buffer`` is pulled from ``pull_sources[source]`` (``sentry_source``
    serves ``sentry`` when given). ``on_correlation(trace id, attribute, value)`` hears the correlation value
    the run waits for (mode kafka announces it)."""
    correlate = expectation.correlate
    correlate_value = str(ctx.render(correlate.equals)) if correlate is not None else None
    judge = TraceJudge(expectation, root_trace_id=ctx.trace.trace_id, trigger_ns=ctx.trigger_ns,
                       correlate_value=correlate_value)
    if expectation.source != "buffer":
        sources = {**({"sentry": sentry_source} if sentry_source is not None else {}), **(pull_sources or {})}
        return await _from_pull(expectation, ctx, judge, root, sources.get(expectation.source), buffer.intake)
    judge.feed([root])
    with buffer.watch() as watch:
        tracked = _Tracked(buffer, watch, judge)
        tracked.seen.add((root.trace_id, root.span_id))
        tracked.spans.append(root)
        tracked.track(ctx.trace.trace_id)
        if correlate is not None and correlate_value is not None:
            watch.add_correlation(correlate.attribute, correlate_value)
            if on_correlation is not None:
                on_correlation(ctx.trace.trace_id, correlate.attribute, correlate_value)
            for tid in buffer.traces_with_attribute(correlate.attribute, correlate_value):
                tracked.track(tid)
                judge.add_trace(tid)
        state = await _loop(tracked, ctx)
    ttv = None if tracked.last_arrival_s is None else max(0.0, anyio.current_time() - tracked.last_arrival_s)
    report = await off_loop(judge.report) if tracked.large else judge.report()
    outcome = TraceOutcome(list(state.findings), report, tracked.spans, ttv,
                           outputs=trace_outputs(expectation.outputs, tracked.spans) if expectation.outputs else {})
    _telemetry(outcome, expectation, ctx, buffer.intake)
    return outcome


async def _loop(tracked: _Tracked, ctx: ProbeContext) -> JudgeState:
    judge = tracked.judge
    started_s = anyio.current_time()
    while True:
        now = anyio.current_time()
        quiet_s = now - (tracked.last_arrival_s if tracked.last_arrival_s is not None else started_s)
        state = await tracked.check(quiet_s)
        if state.done:
            return state
        now = anyio.current_time()
        remaining = ctx.deadline_s - now
        if remaining <= 0:
            finish = partial(judge.finish, waited_s=waited_s(ctx))
            return await off_loop(finish) if tracked.large else finish()
        wait_s = remaining
        if state.settle_remaining_s is not None:
            wait_s = min(wait_s, max(0.0, state.settle_remaining_s) + 0.001)
        new = await tracked.watch.wait(wait_s)
        if new:
            await tracked.feed_slices(new, tracked.watch.last_delivery_s)


def waited_s(ctx: ProbeContext) -> float:
    """How long the run has waited for its spans: since the trigger (what a miss at the deadline reports)."""
    return max(0.0, (time.time_ns() - ctx.trigger_ns) / 1e9)


async def _from_pull(
    expectation: TraceExpectation, ctx: ProbeContext, judge: TraceJudge, root: Span,
    source: PullSource | None, intake: IntakeClock,
) -> TraceOutcome:
    """Poll a pull source (Sentry, Jaeger, Tempo) until the tree matches (or a forbid rule fails) or the deadline.

    Backends ingest with delay and a span may change after it was first seen (a Sentry error arriving
    after its transaction, a late Jaeger/Tempo batch); so each poll judges the whole fetched trace afresh.
    """
    if source is None:
        name = expectation.source
        return TraceOutcome([Finding(
            type="error", severity=Verdict.ERROR, path="expect.trace.source",
            message=f"expect.trace.source is {name} but {NEEDS.get(name, 'its integration')} is not configured",
        )], None)
    latest: list[TraceJudge] = [judge]
    pull = _Pull()

    def fresh(spans: list[Span]) -> TraceJudge:
        j = TraceJudge(expectation, root_trace_id=ctx.trace.trace_id, trigger_ns=ctx.trigger_ns)
        j.feed([root, *spans])
        return j

    def until(spans: list[Span]) -> bool:
        pull.answered(spans)
        latest[0] = fresh(spans)
        return latest[0].check(quiet_s=float("inf")).done

    spans = await source.poll(ctx.trace.trace_id, until, ctx.deadline_s, on_error=pull.failed, since_ns=ctx.trigger_ns)
    final = fresh(spans)
    state = final.check(quiet_s=float("inf"))
    if not state.done:
        state = final.finish(waited_s=waited_s(ctx))
    outcome = TraceOutcome(list(state.findings), final.report(), [root, *spans],
                           outputs=trace_outputs(expectation.outputs, spans) if expectation.outputs else {})
    _telemetry(outcome, expectation, ctx, intake, pull, source.name)
    return outcome


_NAMED: dict[int, tuple[TraceExpectation, list[NamePattern]]] = {}
_NAMED_MAX = 4096


def _named(expectation: TraceExpectation) -> list[NamePattern]:
    """``named_services`` once per expectation (it lives as long as its config), not on every run."""
    hit = _NAMED.get(id(expectation))
    if hit is not None and hit[0] is expectation:
        return hit[1]
    if len(_NAMED) >= _NAMED_MAX:
        _NAMED.pop(next(iter(_NAMED)))
    patterns = named_services(expectation)
    _NAMED[id(expectation)] = (expectation, patterns)
    return patterns


class _Pull:
    """What a pull source answered during the run: the trace (with spans), nothing, or errors."""

    def __init__(self) -> None:
        self.fetches = 0
        self.returned = False
        self.last_error: Exception | None = None

    def answered(self, spans: list[Span]) -> None:
        self.fetches += 1
        self.returned = self.returned or bool(spans)

    def failed(self, error: Exception) -> None:
        self.last_error = error

    def describe(self, source: str) -> str:
        error = None if self.last_error is None else str(self.last_error) or type(self.last_error).__name__
        if error is not None and not self.fetches:
            return f"{source} failed: {error}"
        if self.fetches:
            return f"{source} never returned the trace" + (f" (last failure: {error})" if error else "")
        return f"{source} did not answer before the deadline"


def _telemetry(outcome: TraceOutcome, expectation: TraceExpectation, ctx: ProbeContext, intake: IntakeClock,
               pull: _Pull | None = None, source: str = "sentry") -> None:
    """Note in the report whether the named services sent spans; set ``outcome.silence`` when none did.

    Silent: the judged trace holds no span of theirs, the intake got none since the trigger, and a pull
    source (when used) failed or never returned the trace.
    """
    patterns = _named(expectation)
    if not patterns:
        return
    since_trigger_s = max(0.0, (time.time_ns() - ctx.trigger_ns) / 1e9)
    now_s = intake.now()
    recent = intake.seen_since(now_s - since_trigger_s)
    judged = matching(patterns, (s.service for s in outcome.spans))
    sent = None if recent is None else matching(patterns, recent)
    flowed = True if judged or sent else (None if sent is None else False)
    names = tuple(service_text(p) for p in patterns)
    if outcome.report is not None:
        outcome.report["telemetry"] = {
            "services": list(names), "flowed": flowed, "judged": sorted(judged),
            "intake_since_trigger": None if sent is None else sorted(sent),
            "pulled": None if pull is None else pull.returned,
        }
    if flowed is not False or (pull is not None and pull.returned):
        return
    last = intake.last_seen()
    outcome.silence = Silence(
        services=names, since_trigger_s=since_trigger_s,
        last_seen_ago_s={s: max(0.0, now_s - last[s]) for s in matching(patterns, last)},
        pull=None if pull is None else pull.describe(source),
    )
