"""``expect.metrics``: did the system's own Prometheus metrics move — and its judgement.

Each check reads one source — ``scrape:`` (a text exposition endpoint) or ``query:`` (PromQL through
``integrations.prometheus.url``) — and states any of ``present`` (series exist), ``delta`` (a counter
moved by at least/at most so much between a read before the trigger and one after it) and ``value``
(a gauge, or a quantile over the increase of a histogram's buckets, within bounds). Several series
matching one selector are summed, as PromQL's ``sum`` (a quantile sums buckets by ``le``).

Timing (the watcher calls :func:`judge_metric` after every read): a check that holds is final at once
unless it has an upper bound on a delta — that can still be broken, so it is judged when the window
closes; an exceeded upper bound on a delta fails at once (counters only grow); anything else not yet
holding is judged at the window's end. Degraded thresholds sit beside the hard ones.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from pydantic import BaseModel, ConfigDict, Field, field_validator

from tracecanary.assertions.crossfield import cross_field_rule
from tracecanary.assertions.series import Sample, Selector, bucket_quantile, increases, le_bound
from tracecanary.assertions.units import Duration
from tracecanary.assertions.verdict import Finding, Verdict

_OPS = (("equals", "=="), ("gt", ">"), ("gte", ">="), ("lt", "<"), ("lte", "<="))


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Bounds(_Strict):
    """Numeric bounds; every stated one must hold."""

    equals: float | None = Field(None, description="Exactly this value.")
    gt: float | None = Field(None, description="More than this.")
    gte: float | None = Field(None, description="At least this.")
    lt: float | None = Field(None, description="Less than this.")
    lte: float | None = Field(None, description="At most this.")

    def stated(self) -> list[tuple[str, float]]:
        return [(sym, v) for op, sym in _OPS if (v := getattr(self, op)) is not None]

    def broken(self, value: float) -> str | None:
        """The first bound ``value`` breaks, written ``>= 1``; None when all hold."""
        for sym, bound in self.stated():
            ok = {"==": value == bound, ">": value > bound, ">=": value >= bound, "<": value < bound,
                  "<=": value <= bound}[sym]
            if not ok:
                return f"{sym} {bound:g}"
        return None

    def over_upper(self, value: float) -> bool:
        """``value`` is above an upper bound (``lt``, ``lte``, ``equals``)."""
        return any((sym == "<" and value >= b) or (sym in ("<=", "==") and value > b) for sym, b in self.stated())

    def has_upper(self) -> bool:
        return any(sym in ("<", "<=", "==") for sym, _ in self.stated())

    def text(self) -> str:
        return " and ".join(f"{sym} {v:g}" for sym, v in self.stated())


def _bounds_problem(fields: dict[str, object]) -> str | None:
    if not any(fields.get(op) is not None for op, _ in _OPS):
        return "state at least one bound: equals, gt, gte, lt, lte"
    return None


def _selector(value: str | None) -> str | None:
    if value is not None:
        Selector.parse(value)
    return value


class DeltaCheck(Bounds):
    """How much a counter moved between the read before the trigger and a read after it."""

    metric: str | None = Field(None, description="Series selector, e.g. 'http_requests_total{route=\"/webhook\"}' "
                                                 "(required with scrape; with query: default every series).")
    degraded: Bounds | None = Field(None, description="Soft bounds: outside them (hard ones holding) → degraded.")

    _bounds = cross_field_rule(lambda f: _bounds_problem(dict(f)))
    _metric = field_validator("metric")(classmethod(lambda cls, v: _selector(v)))


class ValueCheck(Bounds):
    """A gauge's value after the trigger, or ``quantile`` over the increase of a histogram's buckets."""

    metric: str | None = Field(None, description="Series selector (a histogram: its name or its _bucket series).")
    quantile: float | None = Field(None, ge=0, le=1, description="e.g. 0.95: the quantile of the observations "
                                                                  "made during the window (bucket increases).")
    degraded: Bounds | None = Field(None, description="Soft bounds: outside them (hard ones holding) → degraded.")

    _bounds = cross_field_rule(lambda f: _bounds_problem(dict(f)))
    _metric = field_validator("metric")(classmethod(lambda cls, v: _selector(v)))


def _check_problem(fields: dict[str, object]) -> str | None:
    if (fields.get("scrape") is None) == (fields.get("query") is None):
        return "a metrics check names exactly one source: scrape or query"
    if not fields.get("present") and fields.get("delta") is None and fields.get("value") is None:
        return "a metrics check states at least one of present, delta, value"
    if fields.get("scrape") is not None:
        for key in ("delta", "value"):
            part = fields.get(key)
            if isinstance(part, DeltaCheck | ValueCheck) and part.metric is None:
                return f"{key}.metric is required with scrape (which series of the exposition?)"
    return None


class MetricCheck(_Strict):
    """One check against the system's Prometheus metrics."""

    scrape: str | None = Field(None, description="Text exposition URL to read (templated), e.g. ${TARGET}/metrics.")
    query: str | None = Field(None, description="PromQL instant query sent to integrations.prometheus.url.")
    present: list[str] = Field(default_factory=list, description="Series selectors that must each match a series.")
    delta: DeltaCheck | None = Field(None, description="A counter's increase from before the trigger.")
    value: ValueCheck | None = Field(None, description="A gauge or histogram quantile within bounds.")
    within: Duration | None = Field(None, description="How long after the trigger it may take (default: the "
                                                      "probe's timeout).")

    _one = cross_field_rule(lambda f: _check_problem(dict(f)))

    @field_validator("present")
    @classmethod
    def _selectors(cls, value: list[str]) -> list[str]:
        for text in value:
            Selector.parse(text)
        return value

    @property
    def source(self) -> str:
        """``scrape URL`` or ``query PROMQL`` for messages."""
        return f"scrape {self.scrape}" if self.scrape is not None else f"query {self.query}"

    def metric_names(self) -> list[str] | None:
        """The metric names the check's selectors read; None when one selects by labels alone."""
        texts = [*self.present, *(p.metric for p in (self.delta, self.value) if p is not None)]
        if None in texts:
            return None
        names = [Selector.parse(t).name for t in texts if t is not None]
        return None if None in names else [n for n in names if n is not None]

    def needs_baseline(self) -> bool:
        """A read before the trigger is part of the check (a delta, a quantile over bucket increases)."""
        return self.delta is not None or (self.value is not None and self.value.quantile is not None)


@dataclass(frozen=True)
class MetricJudgement:
    """What one read concluded: ``final`` — stop reading (held for good, or broken at once)."""

    findings: list[Finding]
    final: bool


@dataclass
class _Part:
    findings: list[Finding]
    state: str  # "held" (final), "waiting" (holds, but judged at the window's end), "broken" (final), "pending"


def _finding(check: MetricCheck, path: str, message: str, expected: object, observed: object,
             severity: Verdict = Verdict.FAIL) -> Finding:
    return Finding(type="metrics", severity=severity, path=path, message=f"metrics {check.source}: {message}",
                   expected=expected, observed=observed)


def _everything(text: str | None) -> Selector | None:
    return None if text is None else Selector.parse(text)


def _pick(selector: Selector | None, samples: Sequence[Sample], suffixes: Sequence[str] = ("",)) -> list[Sample]:
    return list(samples) if selector is None else selector.select(samples, suffixes=suffixes)


def _seen(selector: Selector | None, samples: Sequence[Sample]) -> str:
    near = selector.same_name(samples) if selector is not None else []
    if not samples:
        return "the source returned no series"
    if not near:
        return f"{len(samples)} series read, none of that name"
    return f"{len(near)} series of that name: " + ", ".join(map(str, near[:5]))


def _present(check: MetricCheck, samples: Sequence[Sample], path: str) -> _Part:
    missing = [text for text in check.present if not Selector.parse(text).select(samples)]
    if not missing:
        return _Part([], "held")
    sel = Selector.parse(missing[0])
    return _Part([_finding(check, f"{path}.present", f"no series matches {', '.join(missing)} ({_seen(sel, samples)})",
                           {"present": missing}, [str(s) for s in sel.same_name(samples)[:10]])], "pending")


def _graded(check: MetricCheck, spec: DeltaCheck | ValueCheck, value: float, what: str, path: str,
            observed: object) -> list[Finding]:
    if spec.degraded is None or (soft := spec.degraded.broken(value)) is None:
        return []
    return [_finding(check, path, f"{what} = {value:g}, degraded: expected {soft}", spec.degraded.text(), observed,
                     severity=Verdict.DEGRADED)]


def _delta(check: MetricCheck, before: Sequence[Sample], after: Sequence[Sample], path: str, elapsed_s: float) -> _Part:
    spec = check.delta
    assert spec is not None
    sel = _everything(spec.metric)
    moved = increases(_pick(sel, before), _pick(sel, after))
    name = spec.metric or check.query or "?"
    observed = [{"series": str(s), "before": was, "after": s.value} for s, was, _ in moved]
    if not moved:
        return _Part([_finding(check, f"{path}.delta", f"{name}: no series matched before or {elapsed_s:.3g}s after "
                               f"the trigger ({_seen(sel, after)}); expected a delta {spec.text()}",
                               spec.text(), None)], "pending")
    total = sum(d for _, _, d in moved)
    detail = "; ".join(f"{s}: {'absent' if was is None else f'{was:g}'} → {s.value:g}" for s, was, _ in moved[:5])
    broken = spec.broken(total)
    if broken is None:
        found = _graded(check, spec, total, f"{name} moved by", f"{path}.delta", observed)
        return _Part(found, "waiting" if spec.has_upper() else "held")
    finding = _finding(check, f"{path}.delta", f"{name} moved by {total:g} within {elapsed_s:.3g}s, expected "
                       f"{broken} (scraped before → after: {detail})", spec.text(), observed)
    return _Part([finding], "broken" if spec.over_upper(total) else "pending")


def _buckets(sel: Selector | None, before: Sequence[Sample], after: Sequence[Sample]) -> tuple[dict[float, float], int]:
    """Bucket increases summed by ``le``, and how many bucket series took part."""
    picked_after = [s for s in _pick(sel, after, ("", "_bucket")) if le_bound(s.labels) is not None]
    picked_before = [s for s in _pick(sel, before, ("", "_bucket")) if le_bound(s.labels) is not None]
    sums: dict[float, float] = {}
    for s, _, inc in increases(picked_before, picked_after):
        le = le_bound(s.labels)
        assert le is not None
        sums[le] = sums.get(le, 0.0) + inc
    return sums, len(picked_after)


def _value(check: MetricCheck, before: Sequence[Sample], after: Sequence[Sample], path: str, elapsed_s: float) -> _Part:
    spec = check.value
    assert spec is not None
    sel = _everything(spec.metric)
    name = spec.metric or check.query or "?"
    if spec.quantile is not None:
        buckets, series = _buckets(sel, before, after)
        value = bucket_quantile(spec.quantile, buckets)
        what = f"p{spec.quantile * 100:g} of {name}"
        observed: object = {"quantile": spec.quantile, "value": value,
                            "bucket_increases": {("+Inf" if math.isinf(k) else f"{k:g}"): v for k, v in sorted(buckets.items())}}
        if value is None:
            why = (f"no histogram buckets matched ({_seen(sel, after)})" if not series
                   else f"no observations in {series} bucket series during the window")
            return _Part([_finding(check, f"{path}.value", f"{what}: {why} within {elapsed_s:.3g}s; expected "
                                   f"{spec.text()}", spec.text(), observed)], "pending")
    else:
        picked = _pick(sel, after)
        what = name
        observed = [{"series": str(s), "value": s.value} for s in picked[:10]]
        if not picked:
            return _Part([_finding(check, f"{path}.value", f"{name}: no series matched ({_seen(sel, after)}); "
                                   f"expected {spec.text()}", spec.text(), None)], "pending")
        value = sum(s.value for s in picked)
    broken = spec.broken(value)
    if broken is None:
        return _Part(_graded(check, spec, value, what, f"{path}.value", observed), "held")
    return _Part([_finding(check, f"{path}.value", f"{what} = {value:g} after {elapsed_s:.3g}s, expected {broken}",
                           spec.text(), observed)], "pending")


def judge_metric(check: MetricCheck, before: Sequence[Sample] | None, after: Sequence[Sample], *,
                 window_closed: bool, elapsed_s: float = 0.0, path: str = "metrics") -> MetricJudgement:
    """Judge one read after the trigger (``before``: the read before it, when the check needs one).

    ``final`` is True when the outcome cannot change any more: every part held for good, or a delta
    went over an upper bound; or ``window_closed``. Findings state the series and the values read."""
    parts: list[_Part] = []
    if check.present:
        parts.append(_present(check, after, path))
    if check.delta is not None:
        parts.append(_delta(check, before or [], after, path, elapsed_s))
    if check.value is not None:
        parts.append(_value(check, before or [], after, path, elapsed_s))
    findings = [f for p in parts for f in p.findings]
    if any(p.state == "broken" for p in parts):
        return MetricJudgement([f for p in parts if p.state == "broken" for f in p.findings], True)
    return MetricJudgement(findings, window_closed or all(p.state == "held" for p in parts))


def source_failed(check: MetricCheck, error: str, *, path: str = "metrics", when: str = "after the trigger") -> Finding:
    """The source could not be read (an error: the check could not be judged)."""
    return _finding(check, path, f"cannot read the metrics {when}: {error}", check.source, error,
                    severity=Verdict.ERROR)
