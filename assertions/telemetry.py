"""``unknown``: when the telemetry pipeline, not the system under test, is suspect.

A run whose trace expectation misses spans is ``unknown`` instead of ``fail`` only when all hold:

- every response and side-effect expectation held, and no ``forbid`` or limit was hit (an upper
  bound of ``limits`` or of a ``count``): :func:`no_telemetry` checks the run's findings;
- the judged trace (pulled spans included) holds no span from any service the expectation names
  (``service:`` anywhere in ``tree``, and in the trees of ``any_of`` alternatives);
- the span intake received no span at all from those services since the trigger — and, with a pull
  source (Sentry), the backend failed or never returned the trace.

The last two are the driver's to establish (``daemon/run/judge.py`` asks the intake clock and the pull
source); :class:`Silence` carries that evidence here. An expectation that names no service never
yields ``unknown``; when the named services sent spans for other traces, a missing span stays a
``fail`` (broken propagation or a span really missing).
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from tracecanary.assertions.expect import NamePattern, SpanNode, TraceExpectation
from tracecanary.assertions.match import Matcher, name_matches
from tracecanary.assertions.units import format_duration
from tracecanary.assertions.verdict import Finding, Verdict

FINDING_TYPE = "trace.no_telemetry"
BLOCKING_TRACE_TYPES = frozenset({"trace.forbid", "trace.limit", "trace.count"})
"""Trace findings that a silent pipeline cannot explain: a forbidden span seen, a limit or an upper
bound exceeded (``trace.count`` is only ever an upper bound: too few is ``trace.missing``)."""


def named_services(expectation: TraceExpectation) -> list[NamePattern]:
    """The ``service:`` patterns of every expected node (children, descendants, linked, ``any_of``).

    ``forbid`` is not searched: a forbidden service is not one the expectation waits for.
    """
    found: dict[str, NamePattern] = {}
    docs = [expectation]
    while docs:
        doc = docs.pop()
        stack: list[SpanNode] = list(doc.tree)
        while stack:
            node = stack.pop()
            if node.service is not None:
                found.setdefault(service_text(node.service), node.service)
            stack.extend((*node.children, *node.descendants, *node.linked))
        docs.extend(doc.any_of)
    return sorted(found.values(), key=service_text)


def service_text(pattern: NamePattern) -> str:
    """How a finding names a service pattern: ``ingest``, ``shop-*``, ``matches 'shop-.*'``."""
    return pattern.describe() if isinstance(pattern, Matcher) else pattern


def matching(patterns: Sequence[NamePattern], services: Iterable[str]) -> set[str]:
    """The service names among ``services`` that some pattern matches."""
    names = services if isinstance(services, set | frozenset | dict) else set(services)
    exact = {p for p in patterns if isinstance(p, str) and not any(ch in p for ch in "*?[")}
    found = {s for s in exact if s in names}  # the common case: plain names, no scan
    rest = [p for p in patterns if not (isinstance(p, str) and p in exact)]
    if rest:
        found.update(s for s in names if any(name_matches(p, s) for p in rest))
    return found


@dataclass(frozen=True)
class Silence:
    """Evidence that the services an expectation names sent nothing since the trigger.

    ``last_seen_ago_s``: per concrete service name the intake ever saw that matches a pattern, how
    long before the judgement its last span arrived. ``pull``: with a pull source, what it answered
    (``"sentry: GET …: 503"`` or ``"sentry never returned the trace"``); None for the buffer.
    """

    services: tuple[str, ...]
    since_trigger_s: float
    last_seen_ago_s: Mapping[str, float] = field(default_factory=dict)
    pull: str | None = None

    def finding(self, path: str = "expect.trace") -> Finding:
        """The ``unknown`` finding: what was missing and since when."""
        names = ", ".join(self.services)
        message = f"no spans from {names} since the trigger {format_duration(self.since_trigger_s)} ago"
        extra = []
        if self.last_seen_ago_s:
            extra.append("last seen: " + ", ".join(
                f"{s} {format_duration(ago)} ago" for s, ago in sorted(self.last_seen_ago_s.items())))
        else:
            extra.append("never seen by the intake")
        if self.pull:
            extra.append(self.pull)
        message += f" ({'; '.join(extra)}): the telemetry pipeline may be down"
        details: dict[str, Any] = {"services": list(self.services), "since_trigger_s": self.since_trigger_s,
                                   "last_seen_ago_s": dict(self.last_seen_ago_s)}
        if self.pull:
            details["pull"] = self.pull
        return Finding(type=FINDING_TYPE, severity=Verdict.UNKNOWN, path=path, message=message,
                       expected=f"spans from {names}", observed="none since the trigger", details=details)


def silent(patterns: Sequence[NamePattern], judged_services: Collection[str],
           intake_services: Collection[str] | None) -> bool:
    """Whether the trace side of the rule holds: services are named, the judged trace holds none of
    theirs and the intake saw none of them since the trigger (``None``: the intake cannot tell)."""
    if not patterns or intake_services is None:
        return False
    return not matching(patterns, judged_services) and not matching(patterns, intake_services)


def excusable(finding: Finding) -> bool:
    """A failed trace finding that missing telemetry explains (not a forbid hit or a bound exceeded)."""
    return finding.type.startswith("trace.") and finding.type not in BLOCKING_TRACE_TYPES


def no_telemetry(findings: Sequence[Finding], silence: Silence | None) -> list[Finding]:
    """The run's findings with ``unknown`` applied when the rule holds; else unchanged.

    Applied: the silence finding leads, and the trace misses it explains keep their explanation with
    severity ``unknown``. Not applied when nothing failed, when any finding is an ``error``, or when a
    failure is not an excusable trace miss (a response or side-effect expectation, a forbid, a limit).
    """
    failed = [f for f in findings if f.severity in (Verdict.FAIL, Verdict.ERROR)]
    if silence is None or not failed:
        return list(findings)
    if any(f.severity is Verdict.ERROR or not excusable(f) for f in failed):
        return list(findings)
    excused = [f.model_copy(update={"severity": Verdict.UNKNOWN}) if f.severity is Verdict.FAIL else f
               for f in findings]
    return [silence.finding(), *excused]


def telemetry_flowed(report: Mapping[str, Any] | None) -> bool | None:
    """From a run's trace report: True when a service the expectation names sent spans during the run,
    False when none did, None when the run says nothing about telemetry (no trace judged, or the
    expectation names no service)."""
    if not report:
        return None
    telemetry = report.get("telemetry")
    if not isinstance(telemetry, Mapping):
        return None
    flowed = telemetry.get("flowed")
    return flowed if isinstance(flowed, bool) else None
