"""The passive judge: every sampled entry trace of real traffic judged against a ``kind: passive`` probe.

A tap on the trace buffer (``spans/tap.py``) hands it the decoded spans of the traces some passive
probe samples (by trace id). Spans of a trace whose entry span has not arrived yet wait in ``pending``
(an OpenTelemetry SDK exports a server span after its children); once the entry span arrives, the
trace gets its own :class:`~tracecanary.assertions.judge.TraceJudge` — the same incremental judge and
the same completion rule as a probe's run (``daemon/run/judge.py``): it is decided as early as the
expectation allows, after ``settle`` of quiet when a whole-trace rule needs it, and at the latest at
its deadline, ``timeout`` after the entry span started. One task checks the traces spans arrived for
and those whose settle or deadline is due (a timer heap), never per trace. A trace is judged once:
its id is remembered, later spans of it are counted as late and ignored.

Each judged trace leaves a :class:`PassiveResult` (verdict, finding kinds): counted in the probe's
window (what its next run takes, ``probes/passive.py``), in ``tracecanary_passive_traces_total``,
and — when not a pass — kept in a bounded ring for the dashboard's worst-recent view.

Bounded: the spans it holds (pending and open traces) never exceed ``max_spans`` (the buffer's own
budget): over it the oldest pending traces go first, then new entry traces are counted ``dropped``
instead of judged. Pending traces older than the probe's ``timeout`` (plus ``settle``) are dropped:
their entry span, had it started, would be past its deadline (``passive_budget.py``). The per-probe
state, its window and kept results live in ``passive_state.py``.
"""

from __future__ import annotations

import heapq
import itertools
import math
import time
from collections.abc import Callable, Iterable, Mapping

import anyio
import anyio.abc
import anyio.lowlevel

from tracecanary.assertions.judge import JudgeState, TraceJudge
from tracecanary.assertions.spans import Span
from tracecanary.assertions.tree import compile_checks
from tracecanary.daemon.run.passive_budget import SpanBudget
from tracecanary.daemon.run.passive_state import OpenTrace, PassiveResult, PassiveSnapshot, ProbeState
from tracecanary.probes.base import ProbeSpec
from tracecanary.probes.passive import PassiveCounts, PassiveProbe, in_sample

__all__ = ["CHECK_SLICE", "PassiveJudge", "PassiveResult", "PassiveSnapshot"]

CHECK_SLICE = 256
"""Traces checked between two checkpoints of the judging task."""


class PassiveJudge:
    """Judges sampled entry traces for every ``kind: passive`` probe; a buffer tap and the probes'
    :class:`~tracecanary.probes.passive.PassiveWindows`."""

    def __init__(self, max_spans: int = 1_000_000, *, clock: Callable[[], float] = time.monotonic,
                 wall_ns: Callable[[], int] = time.time_ns,
                 on_judged: Callable[[str, str], None] | None = None) -> None:
        self._budget = SpanBudget(max_spans)
        self._clock, self._wall_ns = clock, wall_ns
        self._on_judged = on_judged
        self._probes: dict[str, ProbeState] = {}
        self._states: tuple[ProbeState, ...] = ()
        self._dirty: list[OpenTrace] = []
        self._timers: list[tuple[float, int, OpenTrace]] = []
        self._seq = itertools.count()
        self._wake: anyio.Event | None = None
        self._open_total = 0
        self._idle: anyio.Event | None = None

    # ---- configuration --------------------------------------------------------------------------

    def configure(self, probes: Iterable[ProbeSpec]) -> None:
        """Follow the passive probes of a (re)loaded config; an unchanged probe keeps its state."""
        states: dict[str, ProbeState] = {}
        for p in probes:
            if not isinstance(p, PassiveProbe) or p.pause:
                continue
            old = self._probes.get(p.id)
            states[p.id] = (old if old is not None and old.spec == p
                            else ProbeState(p, compile_checks(p.entry), p.sample_bound()))
        for pid, old in self._probes.items():
            if states.get(pid) is not old:
                self._forget(old)
        self._probes, self._states = states, tuple(states.values())

    def _forget(self, state: ProbeState) -> None:
        self._budget.forget(state)
        for op in state.open.values():
            op.closed = True
        self._open_total -= len(state.open)
        self._signal_idle()
        state.open.clear()
        state.pending.clear()

    @property
    def active(self) -> bool:
        return bool(self._states)

    @property
    def max_spans(self) -> int:
        """The span budget (the buffer's own)."""
        return self._budget.max_spans

    @property
    def held_spans(self) -> int:
        """Spans held now (pending and open traces)."""
        return self._budget.held

    @property
    def dropped_pending(self) -> int:
        """Pending traces (no entry span yet) dropped for the span budget."""
        return self._budget.dropped_pending

    # ---- the tap (called on ingest: route only) -------------------------------------------------

    def wants(self, key: bytes) -> bool:
        low = int.from_bytes(key[8:16], "big")
        return any(low < state.bound for state in self._states)

    def arrived(self, groups: Mapping[bytes, list[Span]]) -> None:
        now = self._clock()
        for state in self._states:
            bound = state.bound
            for key, group in groups.items():
                if in_sample(key, bound):
                    self._route(state, key, group, now)
        if self._dirty and self._wake is not None:
            self._wake.set()

    def _route(self, state: ProbeState, key: bytes, group: list[Span], now: float) -> None:
        op = state.open.get(key)
        if op is not None:
            op.fresh.extend(group)
            op.last_arrival_s = now
            self._budget.held += len(group)
            self._queue(op)
            return
        if key in state.judged:
            state.late_spans += len(group)
            return
        entry = state.entry_of(group)
        pend = state.pending.get(key)
        self._budget.held += len(group)
        if entry is None:
            if pend is None:
                state.pending[key] = (now, list(group))
            else:
                pend[1].extend(group)
            self._budget.make_room(self._states)
            return
        spans = [*pend[1], *group] if pend is not None else list(group)
        if pend is not None:
            del state.pending[key]
        if not self._budget.make_room(self._states):
            self._budget.drop_entry(state, key, len(spans))
            if self._on_judged is not None:
                self._on_judged(state.spec.id, "dropped")
            return
        self._open(state, key, entry, spans, now)

    def _open(self, state: ProbeState, key: bytes, entry: Span, spans: list[Span], now: float) -> None:
        start_ns = entry.start_ns
        judge = TraceJudge(state.expectation, root_trace_id=entry.trace_id, trigger_ns=start_ns)
        deadline_s = now + (start_ns + state.spec.timeout * 1e9 - self._wall_ns()) / 1e9
        op = OpenTrace(state, key, judge, entry, deadline_s, now, spans)
        state.open[key] = op
        self._open_total += 1
        self._queue(op)

    def _queue(self, op: OpenTrace) -> None:
        if not op.queued:
            op.queued = True
            self._dirty.append(op)

    async def settled(self) -> None:
        """Return once no entry trace is open (each is judged by its deadline at the latest): ``demo --once``
        takes a passive window only after the pass's traffic is judged."""
        while self._open_total:
            if self._idle is None:
                self._idle = anyio.Event()
            await self._idle.wait()

    def _signal_idle(self) -> None:
        if not self._open_total and self._idle is not None:
            self._idle.set()
            self._idle = None

    # ---- the windows (probes/passive.py) --------------------------------------------------------

    def take(self, probe_id: str) -> PassiveCounts:
        state = self._probes.get(probe_id)
        return state.take() if state is not None else PassiveCounts()

    async def collect(self, probe_id: str) -> PassiveCounts:
        """:meth:`take` (the ``PassiveWindows`` of one process)."""
        return self.take(probe_id)

    def give_back(self, probe_id: str, counts: PassiveCounts) -> None:
        """Put taken counts back into the probe's current window (they could not be stored)."""
        state = self._probes.get(probe_id)
        if state is not None:
            state.window = counts + state.window

    @property
    def probe_ids(self) -> list[str]:
        """The passive probes judged now."""
        return list(self._probes)

    def snapshot(self, probe_id: str) -> PassiveSnapshot | None:
        """The probe's current window, lifetime totals and kept non-passing results (None: not passive)."""
        state = self._probes.get(probe_id)
        return state.snapshot() if state is not None else None

    # ---- judging --------------------------------------------------------------------------------

    async def run(self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Check the traces spans arrived for and those due (settle, deadline), until cancelled."""
        self._wake = anyio.Event()
        task_status.started()
        while True:
            self._wake = anyio.Event()
            await self.process()
            now = self._clock()
            wait_s = self._timers[0][0] - now if self._timers else math.inf
            if any(s.pending for s in self._states):
                wait_s = min(wait_s, 1.0)  # the pending sweep
            if wait_s > 0:
                with anyio.move_on_after(wait_s):
                    await self._wake.wait()

    async def process(self) -> None:
        """One pass: feed and check every trace spans arrived for, then every trace due; sweep pending."""
        checked = 0
        while self._dirty:
            batch, self._dirty = self._dirty, []
            for op in batch:
                op.queued = False
                if not op.closed:
                    self._check(op, self._clock())
                    checked += 1
                    if checked % CHECK_SLICE == 0:
                        await anyio.lowlevel.checkpoint()
        now = self._clock()
        timers = self._timers
        while timers and timers[0][0] <= now:
            due_s, _, op = heapq.heappop(timers)
            if not op.closed and op.due_s == due_s:
                self._check(op, now)
        self._budget.sweep(self._states, now)

    def _check(self, op: OpenTrace, now: float) -> None:
        if op.fresh:
            op.judge.feed(op.fresh)
            op.spans += len(op.fresh)
            op.fresh = []
        if now >= op.deadline_s:
            started_ago_s = max(0.0, (self._wall_ns() - op.entry.start_ns) / 1e9)
            self._close(op, op.judge.finish(waited_s=started_ago_s))
            return
        state = op.judge.check(quiet_s=now - op.last_arrival_s)
        if state.done:
            self._close(op, state)
            return
        due_s = op.deadline_s
        if state.settle_remaining_s is not None:
            due_s = min(due_s, now + max(0.0, state.settle_remaining_s) + 0.001)
        if due_s != op.due_s:
            op.due_s = due_s
            heapq.heappush(self._timers, (due_s, next(self._seq), op))

    def _close(self, op: OpenTrace, judged: JudgeState) -> None:
        op.closed = True
        op.judge.release()
        state = op.state
        del state.open[op.key]
        self._open_total -= 1
        self._signal_idle()
        self._budget.held -= op.spans
        state.remember(op.key)
        self._count(state, PassiveResult.of(op.entry, judged, judged_ns=self._wall_ns(), spans=op.spans))

    def _count(self, state: ProbeState, result: PassiveResult) -> None:
        state.count(result)
        if self._on_judged is not None:
            self._on_judged(state.spec.id, result.verdict.value)
