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
their entry span, had it started, would be past its deadline.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import math
import time
from collections import Counter, OrderedDict, deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

import anyio
import anyio.abc
import anyio.lowlevel

from tracecanary.assertions.expect import TraceExpectation
from tracecanary.assertions.judge import JudgeState, TraceJudge
from tracecanary.assertions.spans import Span
from tracecanary.assertions.tree import Check, compile_checks
from tracecanary.assertions.verdict import Verdict, rank
from tracecanary.probes.base import ProbeSpec
from tracecanary.probes.passive import PassiveCounts, PassiveProbe, in_sample

log = logging.getLogger("tracecanary.passive")

CHECK_SLICE = 256
"""Traces checked between two checkpoints of the judging task."""
JUDGED_MEMORY = 65_536
"""Ids of judged traces remembered per probe, so late spans never start a second judgement."""
MESSAGE_MAX = 300
LOG_EVERY = 1000
"""Drops for the span budget are logged on the first and then every this many (the metric counts each)."""


@dataclass(frozen=True, slots=True)
class PassiveResult:
    """One judged entry trace: what the worst-recent view shows (not a run record)."""

    trace_id: str
    verdict: Verdict
    kinds: tuple[str, ...]
    """The finding types that made the verdict (``trace.missing``, ``trace.forbid`` …)."""
    message: str
    """The first such finding's sentence (shortened)."""
    entry: str
    started_ns: int
    """When the entry span started (wall clock)."""
    judged_ns: int
    spans: int


@dataclass
class PassiveSnapshot:
    """A probe's passive state for the dashboard."""

    probe_id: str
    window: PassiveCounts
    totals: dict[str, int]
    recent: list[PassiveResult]
    """Kept non-passing results, worst first, then most recent first."""
    open_traces: int
    pending_traces: int
    late_spans: int


@dataclass(eq=False, slots=True)
class _Open:
    state: _Probe
    key: bytes
    judge: TraceJudge
    entry: Span
    deadline_s: float
    last_arrival_s: float
    fresh: list[Span]
    spans: int = 0
    due_s: float = math.inf
    queued: bool = False
    closed: bool = False


@dataclass(eq=False)
class _Probe:
    spec: PassiveProbe
    entry_checks: list[Check]
    bound: int
    """The sample: trace ids whose low 64 bits are below it (``PassiveProbe.sample_bound``)."""
    pending: OrderedDict[bytes, tuple[float, list[Span]]] = field(default_factory=OrderedDict)
    open: dict[bytes, _Open] = field(default_factory=dict)
    judged: OrderedDict[bytes, None] = field(default_factory=OrderedDict)
    window: PassiveCounts = field(default_factory=PassiveCounts)
    totals: Counter[str] = field(default_factory=Counter)
    recent: deque[PassiveResult] = field(default_factory=deque)
    late_spans: int = 0

    def entry_of(self, spans: Iterable[Span]) -> Span | None:
        checks = self.entry_checks
        found = [s for s in spans if all(c(s) is None for c in checks)]
        return min(found, key=lambda s: s.start_ns) if found else None


class PassiveJudge:
    """Judges sampled entry traces for every ``kind: passive`` probe; a buffer tap and the probes'
    :class:`~tracecanary.probes.passive.PassiveWindows`."""

    def __init__(self, max_spans: int = 1_000_000, *, clock: Callable[[], float] = time.monotonic,
                 wall_ns: Callable[[], int] = time.time_ns,
                 on_judged: Callable[[str, str], None] | None = None) -> None:
        self.max_spans = max_spans
        self._clock, self._wall_ns = clock, wall_ns
        self._on_judged = on_judged
        self._probes: dict[str, _Probe] = {}
        self._states: tuple[_Probe, ...] = ()
        self._held = 0
        self._dirty: list[_Open] = []
        self._timers: list[tuple[float, int, _Open]] = []
        self._seq = itertools.count()
        self._wake: anyio.Event | None = None
        self._open_total = 0
        self._idle: anyio.Event | None = None
        self.dropped_pending = 0
        """Pending traces (no entry span yet) dropped for the span budget."""

    # ---- configuration --------------------------------------------------------------------------

    def configure(self, probes: Iterable[ProbeSpec]) -> None:
        """Follow the passive probes of a (re)loaded config; an unchanged probe keeps its state."""
        states: dict[str, _Probe] = {}
        for p in probes:
            if not isinstance(p, PassiveProbe) or p.pause:
                continue
            old = self._probes.get(p.id)
            states[p.id] = old if old is not None and old.spec == p else _Probe(p, compile_checks(p.entry), p.sample_bound())
        for pid, old in self._probes.items():
            if states.get(pid) is not old:
                self._forget(old)
        self._probes, self._states = states, tuple(states.values())

    def _forget(self, state: _Probe) -> None:
        for op in state.open.values():
            op.closed = True
            self._held -= op.spans + len(op.fresh)
        self._open_total -= len(state.open)
        self._signal_idle()
        self._held -= sum(len(spans) for _, spans in state.pending.values())
        state.open.clear()
        state.pending.clear()

    @property
    def active(self) -> bool:
        return bool(self._states)

    @property
    def held_spans(self) -> int:
        """Spans held now (pending and open traces)."""
        return self._held

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

    def _route(self, state: _Probe, key: bytes, group: list[Span], now: float) -> None:
        op = state.open.get(key)
        if op is not None:
            op.fresh.extend(group)
            op.last_arrival_s = now
            self._held += len(group)
            self._queue(op)
            return
        if key in state.judged:
            state.late_spans += len(group)
            return
        entry = state.entry_of(group)
        pend = state.pending.get(key)
        self._held += len(group)
        if entry is None:
            if pend is None:
                state.pending[key] = (now, list(group))
            else:
                pend[1].extend(group)
            self._make_room()
            return
        spans = [*pend[1], *group] if pend is not None else list(group)
        if pend is not None:
            del state.pending[key]
        if not self._make_room():
            self._held -= len(spans)
            self._remember(state, key)
            state.window.dropped += 1
            state.totals["dropped"] += 1
            if state.totals["dropped"] % LOG_EVERY == 1:
                log.warning("passive judge over its span budget: entry trace dropped probe=%s held_spans=%d "
                            "max_spans=%d dropped_total=%d", state.spec.id, self._held, self.max_spans,
                            state.totals["dropped"])
            if self._on_judged is not None:
                self._on_judged(state.spec.id, "dropped")
            return
        start_ns = entry.start_ns
        judge = TraceJudge(_expectation(state.spec), root_trace_id=entry.trace_id, trigger_ns=start_ns)
        deadline_s = now + (start_ns + state.spec.timeout * 1e9 - self._wall_ns()) / 1e9
        op = _Open(state, key, judge, entry, deadline_s, now, spans)
        state.open[key] = op
        self._open_total += 1
        self._queue(op)

    def _queue(self, op: _Open) -> None:
        if not op.queued:
            op.queued = True
            self._dirty.append(op)

    def _make_room(self) -> bool:
        """Drop the oldest pending traces while over the span budget; False when still over it."""
        while self._held > self.max_spans:
            oldest = min((s for s in self._states if s.pending),
                         key=lambda s: next(iter(s.pending.values()))[0], default=None)
            if oldest is None:
                return False
            _, (_, spans) = oldest.pending.popitem(last=False)
            self._held -= len(spans)
            self.dropped_pending += 1
            if self.dropped_pending % LOG_EVERY == 1:
                log.warning("passive judge over its span budget: oldest traces still waiting for their entry span "
                            "dropped held_spans=%d max_spans=%d dropped_total=%d", self._held, self.max_spans,
                            self.dropped_pending)
        return True

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
        if state is None:
            return PassiveCounts()
        counts, state.window = state.window, PassiveCounts()
        return counts

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
        if state is None:
            return None
        w = state.window
        window = PassiveCounts(w.judged, w.failed, w.degraded, Counter(w.kinds), w.dropped, list(w.worst))
        recent = sorted(state.recent, key=lambda r: (-rank(r.verdict), -r.judged_ns))
        return PassiveSnapshot(probe_id, window, dict(state.totals), recent, len(state.open), len(state.pending),
                               state.late_spans)

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
        self._sweep(now)

    def _check(self, op: _Open, now: float) -> None:
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

    def _close(self, op: _Open, judged: JudgeState) -> None:
        op.closed = True
        op.judge.release()
        state = op.state
        del state.open[op.key]
        self._open_total -= 1
        self._signal_idle()
        self._held -= op.spans
        self._remember(state, op.key)
        verdict = judged.verdict or Verdict.FAIL
        bad = [f for f in judged.findings if f.severity is verdict] if verdict is not Verdict.PASS else []
        result = PassiveResult(
            trace_id=op.entry.trace_id, verdict=verdict, kinds=tuple(dict.fromkeys(f.type for f in bad)),
            message=bad[0].message[:MESSAGE_MAX] if bad else "", entry=op.entry.label(),
            started_ns=op.entry.start_ns, judged_ns=self._wall_ns(), spans=op.spans,
        )
        self._count(state, result)

    def _count(self, state: _Probe, result: PassiveResult) -> None:
        w = state.window
        w.judged += 1
        state.totals[result.verdict.value] += 1
        if result.verdict is Verdict.DEGRADED:
            w.degraded += 1
        elif not result.verdict.ok:
            w.failed += 1
            w.kinds.update(result.kinds)
            if len(w.worst) < PassiveCounts.WORST_IDS:
                w.worst.append(result.trace_id)
        if result.verdict is not Verdict.PASS:
            state.recent.append(result)
            if len(state.recent) > state.spec.recent:
                state.recent.popleft()
        if self._on_judged is not None:
            self._on_judged(state.spec.id, result.verdict.value)

    def _remember(self, state: _Probe, key: bytes) -> None:
        state.judged[key] = None
        if len(state.judged) > JUDGED_MEMORY:
            state.judged.popitem(last=False)

    def _sweep(self, now: float) -> None:
        """Drop pending traces whose entry span, had it started, would be past its deadline."""
        for state in self._states:
            horizon = now - state.spec.timeout - _expectation(state.spec).settle
            pending = state.pending
            while pending:
                first_s, spans = next(iter(pending.values()))
                if first_s >= horizon:
                    break
                pending.popitem(last=False)
                self._held -= len(spans)


def _expectation(spec: PassiveProbe) -> TraceExpectation:
    trace = spec.expect.trace
    assert trace is not None, "a passive probe always has expect.trace (validated at load)"
    return trace
