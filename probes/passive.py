"""The passive probe: fires nothing; judges real traffic against ``expect.trace``.

Every trace whose entry span matches ``entry`` (``{span: "POST /webhook", service: ingest}``) and that
falls in the ``sample`` (by trace id, so every replica picks the same traces) is judged on its own by
the daemon's passive judge (``daemon/run/passive.py``) with the same incremental judge and the same
completion rule as a run's trace: its deadline is ``timeout`` after the entry span started. Each judged
trace leaves a lightweight result (verdict and the kinds of its findings). Every ``every`` the probe
records one run: ``fire`` collects the counts of the traces judged since the last run from
``ctx.resources.passive`` and judges their failure ratio against ``fail_if`` (fewer than
``min_traces`` → ``unknown``); the run goes through the usual alert policy.

``PassiveCounts`` adds up (``+``): in a cluster mode where each member judges the traces of its own
partitions, the probe's owner sums the members' counts for the window and judges the sum the same way.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Annotated, Any, ClassVar, Literal, Protocol

from pydantic import BeforeValidator, Field, StringConstraints, field_validator

from tracecanary.assertions.expect import SpanConstraint, SpanNode, TraceExpectation
from tracecanary.assertions.verdict import Finding, Verdict
from tracecanary.model import cross_field_rule
from tracecanary.probes.base import FireResult, ProbeContext, ProbeSpec, parse_fraction

FAIL_IF = re.compile(r"^\s*failure_ratio\s*(>=|>)\s*(\d+(?:\.\d+)?)\s*%\s*$")
TRACE_ID_SPACE = 1 << 64


def _parse_sample(value: Any) -> float:
    frac = parse_fraction(value, "sample")
    if not 0 < frac <= 1:
        raise ValueError(f"invalid sample {value!r}: must be above 0% and at most 100%")
    return frac


def parse_fail_if(text: str) -> tuple[str, float]:
    """``"failure_ratio > 1%"`` → (``">"``, 0.01); ValueError with the accepted form otherwise."""
    m = FAIL_IF.match(text)
    if m is None:
        raise ValueError(f"invalid fail_if {text!r}: expected \"failure_ratio > N%\" (or >=)")
    ratio = float(m.group(2)) / 100
    if ratio > 1:
        raise ValueError(f"invalid fail_if {text!r}: the percentage must be at most 100%")
    return m.group(1), ratio


class EntrySelector(SpanConstraint):
    """The span a judged trace enters by: every stated constraint must hold (``span`` is required)."""

    _named = cross_field_rule(lambda raw: None if raw.get("span") is not None
                              else "entry needs span (the entry span's name: exact, glob or {matches: regex})")


@dataclass
class PassiveCounts:
    """What a probe judged in one window; counts add up (one member's window + another's)."""

    judged: int = 0
    failed: int = 0
    degraded: int = 0
    kinds: Counter[str] = field(default_factory=Counter)
    """Finding kind (``trace.missing``, ``trace.forbid`` …) → how many failed traces carried it."""
    dropped: int = 0
    """Entry traces not judged: the passive judge was over its span budget (``daemon.buffer.max_spans``)."""
    worst: list[str] = field(default_factory=list)
    """Trace ids of some failed traces of the window (at most ``WORST_IDS``), most recent first."""

    WORST_IDS: ClassVar[int] = 10

    def __add__(self, other: PassiveCounts) -> PassiveCounts:
        return PassiveCounts(self.judged + other.judged, self.failed + other.failed, self.degraded + other.degraded,
                             self.kinds + other.kinds, self.dropped + other.dropped,
                             (self.worst + other.worst)[: self.WORST_IDS])

    @classmethod
    def total(cls, parts: Iterable[PassiveCounts]) -> PassiveCounts:
        """The sum of several members' counts for one window."""
        out = cls()
        for part in parts:
            out = out + part
        return out

    @property
    def failure_ratio(self) -> float | None:
        return self.failed / self.judged if self.judged else None

    def to_dict(self) -> dict[str, Any]:
        return {"judged": self.judged, "failed": self.failed, "degraded": self.degraded,
                "failure_ratio": self.failure_ratio, "kinds": dict(self.kinds.most_common()),
                "dropped": self.dropped, "worst": list(self.worst)}


class PassiveWindows(Protocol):
    """What a passive probe's run reads: the counts judged since its previous run (then reset)."""

    async def collect(self, probe_id: str) -> PassiveCounts:
        """The counts of the traces ``probe_id`` judged since the last ``collect``; starts a new window.
        One process: the passive judge's own window. Kafka mode: every member's counts, summed once
        (``daemon/cluster/kafka_passive.py``). Raises OSError when they cannot be read (nothing is lost)."""
        ...


_SampleInput = Annotated[str, StringConstraints(pattern=r"^\s*\d+(\.\d+)?\s*%\s*$")] | Annotated[float, Field(gt=0, le=1)]


def _linked_problem(nodes: Iterable[SpanNode]) -> bool:
    stack = list(nodes)
    while stack:
        node = stack.pop()
        if node.linked:
            return True
        stack.extend((*node.children, *node.descendants))
    return False


def _get(value: Any, name: str) -> Any:
    """A field of a validated model, or of the mapping as written (when another field failed)."""
    return value.get(name) if isinstance(value, dict) else getattr(value, name, None)


def _passive_rules(raw: Any) -> str | None:
    expect = raw.get("expect")
    trace = _get(expect, "trace")
    if expect is None or trace is None:
        return "kind passive needs expect.trace (what every entry trace must look like)"
    if _get(expect, "response") is not None or _get(expect, "side_effects"):
        return "kind passive fires nothing: expect.response and expect.side_effects do not apply"
    if _get(trace, "source") not in (None, "buffer"):
        return "kind passive judges pushed spans (OTLP, Kafka): expect.trace.source must be buffer"
    if _get(trace, "correlate") is not None or (isinstance(trace, TraceExpectation) and _linked_problem(trace.tree)):
        return "kind passive judges each entry trace alone: correlate and linked do not apply"
    if raw.get("cron") is not None or raw.get("every") is None:
        return "kind passive needs every (the window each run judges), not cron"
    if _get(raw.get("retries"), "count"):
        return "kind passive takes no retries: a run judges the traces of its window once"
    return None


class PassiveProbe(ProbeSpec):
    """Judge every sampled production trace entering by ``entry`` against ``expect.trace``; each run
    judges the failure ratio of the traces judged since the previous run."""

    kind: Literal["passive"]
    entry: EntrySelector = Field(description="The entry span of the traces to judge, e.g. {span: \"POST /webhook\", "
                                             "service: ingest}.")
    sample: Annotated[float, BeforeValidator(_parse_sample, json_schema_input_type=_SampleInput)] = Field(
        1.0, description="Share of entry traces judged, written 10%; chosen by trace id (replicas agree).")
    fail_if: str = Field("failure_ratio > 1%", description="The run fails when this holds for its window: "
                                                           "\"failure_ratio > N%\" or \">=\".")
    min_traces: int = Field(20, ge=1, description="Fewer traces judged in a window → the run is unknown.")
    recent: int = Field(50, ge=1, le=1000, description="Failed traces kept for the dashboard's worst-recent view.")

    judges_run: ClassVar[bool] = False

    _fail_if = field_validator("fail_if")(classmethod(lambda cls, v: (parse_fail_if(v), v)[1]))
    _rules = cross_field_rule(_passive_rules)

    def sample_bound(self) -> int:
        """Traces whose low 64 bits of id are below this are in the sample, as OpenTelemetry's
        TraceIdRatioBased sampler decides (so every replica, and a head sampler, picks the same)."""
        return round(self.sample * TRACE_ID_SPACE)

    def samples(self, trace_key: bytes) -> bool:
        """Whether the trace (raw 16-byte id) is in the sample."""
        return in_sample(trace_key, self.sample_bound())

    async def fire(self, ctx: ProbeContext) -> FireResult:
        """Take the window's counts and judge them; nothing is sent anywhere."""
        windows = ctx.resources.passive
        if windows is None:
            return FireResult(findings=[Finding(
                type="error", severity=Verdict.ERROR, message="no passive judge runs in this process")])
        try:
            counts = await windows.collect(self.id)
        except OSError as e:
            return FireResult(findings=[Finding(
                type="error", severity=Verdict.ERROR,
                message=f"cannot collect the window's counts (kept for the next run): {e}")])
        return FireResult(findings=window_findings(counts, self.fail_if, self.min_traces),
                          outputs={"passive": counts.to_dict()})


def in_sample(trace_key: bytes, bound: int) -> bool:
    """The sampling decision for a raw trace id given :meth:`PassiveProbe.sample_bound`."""
    return int.from_bytes(trace_key[8:16], "big") < bound


def window_findings(counts: PassiveCounts, fail_if: str, min_traces: int) -> list[Finding]:
    """A window's findings: ``unknown`` under ``min_traces``, ``fail`` when ``fail_if`` holds, else none."""
    op, limit = parse_fail_if(fail_if)
    ratio = counts.failure_ratio
    if counts.judged < min_traces or ratio is None:
        return [Finding(type="passive.too_few", severity=Verdict.UNKNOWN, path="min_traces", expected=min_traces,
                        observed=counts.judged,
                        message=f"{counts.judged} entry traces judged in the window, fewer than "
                                f"min_traces {min_traces}: the failure ratio is not judged")]
    if ratio > limit or (op == ">=" and ratio == limit):
        kinds = ", ".join(f"{k} ×{n}" for k, n in counts.kinds.most_common(5))
        return [Finding(type="passive.failure_ratio", path="fail_if", expected=fail_if.strip(),
                        observed=round(ratio, 6), details=counts.to_dict(),
                        message=f"{counts.failed} of {counts.judged} entry traces failed ({ratio:.2%}); "
                                f"fail_if {fail_if.strip()}" + (f"; findings: {kinds}" if kinds else ""))]
    return []
