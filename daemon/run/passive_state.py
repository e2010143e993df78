"""The passive judge's state per probe (``daemon/run/passive.py``): its sample, the traces it holds and
what its judged traces left — the window its next run takes, lifetime totals and kept non-passing results.
"""

from __future__ import annotations

import math
from collections import Counter, OrderedDict, deque
from collections.abc import Iterable
from dataclasses import dataclass, field

from tracecanary.assertions.expect import TraceExpectation
from tracecanary.assertions.judge import JudgeState, TraceJudge
from tracecanary.assertions.spans import Span
from tracecanary.assertions.tree import Check
from tracecanary.assertions.verdict import Verdict, rank
from tracecanary.probes.passive import PassiveCounts, PassiveProbe

JUDGED_MEMORY = 65_536
"""Ids of judged traces remembered per probe, so late spans never start a second judgement."""
MESSAGE_MAX = 300


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

    @classmethod
    def of(cls, entry: Span, judged: JudgeState, *, judged_ns: int, spans: int) -> PassiveResult:
        """The result of a trace whose judge ended in ``judged`` (no verdict: a fail)."""
        verdict = judged.verdict or Verdict.FAIL
        bad = [f for f in judged.findings if f.severity is verdict] if verdict is not Verdict.PASS else []
        return cls(trace_id=entry.trace_id, verdict=verdict, kinds=tuple(dict.fromkeys(f.type for f in bad)),
                   message=bad[0].message[:MESSAGE_MAX] if bad else "", entry=entry.label(),
                   started_ns=entry.start_ns, judged_ns=judged_ns, spans=spans)


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
class OpenTrace:
    """An entry trace being judged: spans ``fresh`` since its last check wait to be fed to its judge."""

    state: ProbeState
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
class ProbeState:
    """One passive probe: its traces waiting for their entry span (``pending``, oldest first), its open and
    recently judged traces, and its counts."""

    spec: PassiveProbe
    entry_checks: list[Check]
    bound: int
    """The sample: trace ids whose low 64 bits are below it (``PassiveProbe.sample_bound``)."""
    pending: OrderedDict[bytes, tuple[float, list[Span]]] = field(default_factory=OrderedDict)
    open: dict[bytes, OpenTrace] = field(default_factory=dict)
    judged: OrderedDict[bytes, None] = field(default_factory=OrderedDict)
    window: PassiveCounts = field(default_factory=PassiveCounts)
    totals: Counter[str] = field(default_factory=Counter)
    recent: deque[PassiveResult] = field(default_factory=deque)
    late_spans: int = 0

    @property
    def expectation(self) -> TraceExpectation:
        """The probe's ``expect.trace``."""
        trace = self.spec.expect.trace
        assert trace is not None, "a passive probe always has expect.trace (validated at load)"
        return trace

    def entry_of(self, spans: Iterable[Span]) -> Span | None:
        """The earliest of the spans that match the probe's ``entry``, if any."""
        checks = self.entry_checks
        found = [s for s in spans if all(c(s) is None for c in checks)]
        return min(found, key=lambda s: s.start_ns) if found else None

    def remember(self, key: bytes) -> None:
        """The trace is judged (or dropped): later spans of it are late."""
        self.judged[key] = None
        if len(self.judged) > JUDGED_MEMORY:
            self.judged.popitem(last=False)

    def dropped(self) -> None:
        """Count an entry trace dropped for the span budget."""
        self.window.dropped += 1
        self.totals["dropped"] += 1

    def count(self, result: PassiveResult) -> None:
        """Count a judged trace in the window and totals; keep it when it did not pass."""
        w = self.window
        w.judged += 1
        self.totals[result.verdict.value] += 1
        if result.verdict is Verdict.DEGRADED:
            w.degraded += 1
        elif not result.verdict.ok:
            w.failed += 1
            w.kinds.update(result.kinds)
            if len(w.worst) < PassiveCounts.WORST_IDS:
                w.worst.append(result.trace_id)
        if result.verdict is not Verdict.PASS:
            self.recent.append(result)
            if len(self.recent) > self.spec.recent:
                self.recent.popleft()

    def take(self) -> PassiveCounts:
        """The window's counts; a new window starts."""
        counts, self.window = self.window, PassiveCounts()
        return counts

    def snapshot(self) -> PassiveSnapshot:
        """The window, totals and kept results for the dashboard (``PassiveJudge.snapshot``)."""
        w = self.window
        window = PassiveCounts(w.judged, w.failed, w.degraded, Counter(w.kinds), w.dropped, list(w.worst))
        recent = sorted(self.recent, key=lambda r: (-rank(r.verdict), -r.judged_ns))
        return PassiveSnapshot(self.spec.id, window, dict(self.totals), recent, len(self.open), len(self.pending),
                               self.late_spans)
