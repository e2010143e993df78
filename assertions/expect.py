"""The ``expect.trace`` document: expected trees, whole-trace rules, correlation, alternatives, checks.

Everything here is validated at load (regexes compile, durations parse, selectors and Tracetest
assertions parse) so a run never discovers a broken expectation. ``tree.py`` compiles these models
into matchers; ``judge.py`` runs them against arriving spans.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from tracecanary.assertions.crossfield import cross_field_rule
from tracecanary.assertions.filters import Filter, parse_filters
from tracecanary.assertions.match import Matcher, coerce_matcher
from tracecanary.assertions.selectors import parse_assertion, parse_selector
from tracecanary.assertions.units import Duration, parse_duration_s

NamePattern = str | Matcher
"""A span or service name: exact, glob with ``*``, or an operator map such as ``{matches: regex}``."""

SpanKindName = Literal["server", "client", "producer", "consumer", "internal", "unspecified"]
StatusName = Literal["ok", "error", "unset"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


def _validate_matchers(value: dict[str, Any]) -> dict[str, Any]:
    """Attribute maps take literals or operator maps; operator maps are validated here, at load."""
    for key, m in value.items():
        if isinstance(m, dict):
            try:
                coerce_matcher(m)
            except ValidationError as e:
                why = "; ".join(str(err["msg"]).removeprefix("Value error, ") for err in e.errors())
                raise ValueError(f"attribute {key!r}: {why}") from e
    return value


class EventSpec(_Strict):
    """An event the span must carry (exceptions are events named ``exception``)."""

    name: NamePattern | None = Field(None, description="Event name: exact, glob, or {matches: regex}.")
    attributes: dict[str, Any] = Field(
        default_factory=dict, description="Event attribute → literal or operator map."
    )

    _attrs = field_validator("attributes")(classmethod(lambda cls, v: _validate_matchers(v)))


def _count_bounds(fields: Mapping[str, Any]) -> tuple[int, int | None]:
    """(minimum, maximum or None) of a count range; a bound that is not an integer is left out."""
    def bound(name: str) -> int | None:
        value = fields.get(name)
        return value if isinstance(value, int) and not isinstance(value, bool) else None

    lo, hi = 0, None
    equals, gt, gte, lt = bound("equals"), bound("gt"), bound("gte"), bound("lt")
    if equals is not None:
        lo, hi = equals, equals
    if gt is not None:
        lo = max(lo, gt + 1)
    if gte is not None:
        lo = max(lo, gte)
    for cap in (None if lt is None else lt - 1, bound("lte")):
        if cap is not None:
            hi = cap if hi is None else min(hi, cap)
    return lo, hi


def _count_problem(fields: Mapping[str, Any]) -> str | None:
    if not fields:
        return "empty count: expected an integer or one of equals, gt, gte, lt, lte"
    lo, hi = _count_bounds(fields)
    return f"count range is empty: at least {lo}, at most {hi}" if hi is not None and lo > hi else None


class CountRange(_Strict):
    """How many distinct spans may satisfy a node: any of ``equals``, ``gt``, ``gte``, ``lt``, ``lte``."""

    equals: int | None = Field(None, ge=0, description="Exactly this many.")
    gt: int | None = Field(None, ge=0, description="More than this many.")
    gte: int | None = Field(None, ge=0, description="At least this many.")
    lt: int | None = Field(None, ge=1, description="Fewer than this many.")
    lte: int | None = Field(None, ge=0, description="At most this many.")

    _bounds = cross_field_rule(_count_problem)

    def bounds(self) -> tuple[int, int | None]:
        """(minimum, maximum or None) spans."""
        return _count_bounds({"equals": self.equals, "gt": self.gt, "gte": self.gte, "lt": self.lt, "lte": self.lte})


class NodeDegraded(_Strict):
    """Soft thresholds on a node: over them the run is ``degraded`` (still a pass)."""

    max_duration: Duration | None = Field(None, description="Matched span longer than this → degraded.")


def _seconds(value: Any) -> float | None:
    try:
        return parse_duration_s(value)
    except ValueError:
        return None  # absent, or a field error of its own


def _durations_problem(fields: Mapping[str, Any]) -> str | None:
    lo, hi = _seconds(fields.get("min_duration")), _seconds(fields.get("max_duration"))
    return f"min_duration {lo:g}s exceeds max_duration {hi:g}s" if lo is not None and hi is not None and lo > hi else None


class SpanConstraint(_Strict):
    """Constraints on one span; every stated constraint must hold (used by ``forbid`` as is)."""

    span: NamePattern | None = Field(None, description="Span name: exact, glob with *, or {matches: regex}.")
    service: NamePattern | None = Field(None, description="service.name of the span's resource (exact/glob/map).")
    kind: SpanKindName | None = Field(None, description="Span kind.")
    status: StatusName | None = Field(None, description="Span status code.")
    attributes: dict[str, Any] = Field(
        default_factory=dict,
        description="Span attribute → literal (equals) or operator map "
        "(equals|contains|matches|gt|gte|lt|lte|exists|one_of|not).",
    )
    resource: dict[str, Any] = Field(
        default_factory=dict, description="Resource attribute → literal or operator map."
    )
    events: list[EventSpec] = Field(default_factory=list, description="Events the span must carry.")
    min_duration: Duration | None = Field(None, description="The span lasts at least this long.")
    max_duration: Duration | None = Field(None, description="The span lasts at most this long.")

    _attrs = field_validator("attributes", "resource")(classmethod(lambda cls, v: _validate_matchers(v)))

    _durations = cross_field_rule(_durations_problem)


class SpanNode(SpanConstraint):
    """An expected span and what must hang below it (children, descendants, linked)."""

    count: int | CountRange | None = Field(
        None, description="How many distinct spans satisfy this node (with its subtree); default: at least one."
    )
    within: Duration | None = Field(
        None, description="The span must end within this long of the probe trigger (offline: earliest span)."
    )
    degraded: NodeDegraded | None = Field(None, description="Soft thresholds: over them → degraded.")
    ordered: bool = Field(False, description="Children must start in the listed order.")
    children: list[SpanNode] = Field(default_factory=list, description="Direct children.")
    descendants: list[SpanNode] = Field(default_factory=list, description="Spans anywhere below.")
    linked: list[SpanNode] = Field(
        default_factory=list, description="Spans, in any trace, carrying a span link to this span."
    )

    @field_validator("count")
    @classmethod
    def _count(cls, value: int | CountRange | None) -> int | CountRange | None:
        if isinstance(value, int) and value < 0:
            raise ValueError("count must not be negative")
        return value

    def count_bounds(self) -> tuple[int, int | None]:
        """(minimum, maximum or None) distinct spans; default at least one."""
        if self.count is None:
            return 1, None
        if isinstance(self.count, int):
            return self.count, self.count
        return self.count.bounds()


class LimitsDegraded(_Strict):
    """Soft whole-trace thresholds: over them the run is ``degraded``."""

    max_duration: Duration | None = Field(None, description="Trace longer than this → degraded.")
    max_spans: int | None = Field(None, ge=0, description="More spans than this → degraded.")


class Limits(_Strict):
    """Upper bounds on the whole trace (probe trace plus linked and correlated traces)."""

    max_spans: int | None = Field(None, ge=0, description="At most this many spans.")
    max_duration: Duration | None = Field(None, description="From the earliest start to the latest end.")
    max_depth: int | None = Field(None, ge=1, description="Longest parent→child chain, in spans.")
    degraded: LimitsDegraded | None = Field(None, description="Soft thresholds beside the hard ones.")


class Correlate(_Strict):
    """Find one more trace by an attribute value (when the system starts a trace we cannot propagate into)."""

    attribute: str = Field(min_length=1, description="Span attribute holding the correlation value.")
    equals: str = Field(description="The value; templated per run, e.g. \"{{ steps.create.json.id }}\".")


def _valid_selector(text: str) -> str:
    parse_selector(text)
    return text


def _valid_assertions(texts: list[str]) -> list[str]:
    for text in texts:
        parse_assertion(text)
    return texts


class Check(_Strict):
    """A Tracetest-style check: a selector and assertions that every selected span must satisfy."""

    name: str | None = Field(None, description="Label shown in findings.")
    select: str = Field("", description='Selector, e.g. span[name="x" service.name="y"] span[kind="client"].')
    assert_: list[str] = Field(
        alias="assert", min_length=1, description="Assertions: 'attr:http.status_code = 200', 'count >= 1'."
    )

    _select = field_validator("select")(classmethod(lambda cls, v: _valid_selector(v)))
    _assert = field_validator("assert_")(classmethod(lambda cls, v: _valid_assertions(v)))


class TracetestSpec(_Strict):
    """Tracetest's own spec form (``specs: [{selector, assertions}]``), accepted unchanged."""

    name: str | None = Field(None, description="Label shown in findings.")
    selector: str = Field("", description="Tracetest selector; empty selects every span.")
    assertions: list[str] = Field(min_length=1, description="Tracetest assertions.")

    _selector = field_validator("selector")(classmethod(lambda cls, v: _valid_selector(v)))
    _assertions = field_validator("assertions")(classmethod(lambda cls, v: _valid_assertions(v)))


class TraceOutput(_Strict):
    """A value kept from the judged trace (Tracetest's ``outputs``): the attribute ``value`` names, read from
    the first span (by start time) the selector picks that carries it. Recorded on the run as
    ``outputs.trace.NAME`` and usable as ``{{ outputs.NAME }}`` in what is rendered after the trace is
    judged (teardown)."""

    name: str = Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$", description="Output name, as in {{ outputs.NAME }}.")
    selector: str = Field("", description="Tracetest selector; empty selects every span.")
    value: str = Field(pattern=r"^attr:[A-Za-z_][\w.\-]*(\s*\|.*)?$",
                       description="The attribute to keep: attr:KEY, optionally through Tracetest filters "
                                   "(attr:http.response.body | json_path '$.id').")

    _selector = field_validator("selector")(classmethod(lambda cls, v: _valid_selector(v)))

    @field_validator("value")
    @classmethod
    def _filters(cls, value: str) -> str:
        rest = parse_filters(value[len("attr:") + len(_output_key(value)):])[1]
        if rest.strip():
            raise ValueError(f"unexpected {rest.strip()!r} after the filters")
        return value

    @property
    def key(self) -> str:
        return _output_key(self.value)

    @property
    def filters(self) -> tuple[Filter, ...]:
        return parse_filters(self.value[len("attr:") + len(self.key):])[0]


def _output_key(value: str) -> str:
    m = re.match(r"attr:([A-Za-z_][\w.\-]*)", value)
    return m.group(1) if m else ""


class TraceExpectation(BaseModel):
    """Expected trace shape; the same document ``tracecanary assert --expect`` takes."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    source: Literal["buffer", "sentry", "jaeger", "tempo"] = Field(
        "buffer", description="Where the spans come from: buffer (OTLP and Kafka intake), or pulled from sentry, "
        "jaeger or tempo (integrations.<name>).")
    settle: Duration = Field(2.0, description="Quiet time after the last span before whole-trace rules pass.")
    tree: list[SpanNode] = Field(
        default_factory=list, description="Expected anchors; each matches a distinct span anywhere in the trace."
    )
    forbid: list[SpanConstraint] = Field(default_factory=list, description="No span may satisfy any of these.")
    limits: Limits | None = Field(None, description="Upper bounds on the whole trace.")
    no_orphans: bool = Field(False, description="Every span's parent must be in the trace.")
    correlate: Correlate | None = Field(None, description="One more trace, found by an attribute value.")
    any_of: list[TraceExpectation] = Field(
        default_factory=list, description="Alternatives (each an expectation document); at least one must hold."
    )
    checks: list[Check] = Field(default_factory=list, description="Tracetest-style selector checks.")
    specs: list[TracetestSpec] = Field(default_factory=list, description="Tracetest's specs, unchanged.")
    outputs: list[TraceOutput] = Field(
        default_factory=list, description="Span attributes kept from the judged trace (Tracetest's outputs).")

    def has_whole_trace_rules(self) -> bool:
        """Rules that need the whole trace, so a pass waits for ``settle`` of quiet."""
        if self.forbid or self.limits is not None or self.no_orphans or self.checks or self.specs:
            return True
        stack = list(self.tree)
        while stack:
            node = stack.pop()
            if node.count_bounds()[1] is not None:
                return True
            stack.extend((*node.children, *node.descendants, *node.linked))
        return any(alt.has_whole_trace_rules() for alt in self.any_of)

    def max_within_s(self) -> float | None:
        """The largest ``within`` in the document (the runner checks it against ``timeout``)."""
        found: list[float] = []
        stack = list(self.tree)
        while stack:
            node = stack.pop()
            if node.within is not None:
                found.append(node.within)
            stack.extend((*node.children, *node.descendants, *node.linked))
        found.extend(w for alt in self.any_of if (w := alt.max_within_s()) is not None)
        return max(found, default=None)


SpanNode.model_rebuild()
TraceExpectation.model_rebuild()
