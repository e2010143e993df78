"""The span model every part of tracecanary shares: Span, Trace.

Ids are lowercase hex strings (32 chars for trace ids, 16 for span ids) so they print, index and
compare without conversion. Spans are immutable and slotted: the receiver builds many of them.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from enum import IntEnum
from types import MappingProxyType
from typing import Any

AttrValue = str | bool | int | float | bytes | tuple[Any, ...] | Mapping[str, Any] | None
Attributes = Mapping[str, AttrValue]

EMPTY_ATTRS: Attributes = MappingProxyType({})


class SpanKind(IntEnum):
    """OTLP span kind numbers."""

    UNSPECIFIED = 0
    INTERNAL = 1
    SERVER = 2
    CLIENT = 3
    PRODUCER = 4
    CONSUMER = 5


class StatusCode(IntEnum):
    """OTLP status code numbers."""

    UNSET = 0
    OK = 1
    ERROR = 2


@dataclass(frozen=True, slots=True)
class SpanEvent:
    """A timestamped event on a span (exceptions are events named ``exception``)."""

    name: str
    time_ns: int
    attributes: Attributes = field(default_factory=lambda: EMPTY_ATTRS)


@dataclass(frozen=True, slots=True)
class SpanLink:
    """A link from a span to another span, possibly in another trace."""

    trace_id: str
    span_id: str
    attributes: Attributes = field(default_factory=lambda: EMPTY_ATTRS)


@dataclass(frozen=True, slots=True)
class Span:
    """One span, decoded from OTLP, Kafka, Sentry or a file."""

    trace_id: str
    span_id: str
    parent_span_id: str | None
    name: str
    kind: SpanKind = SpanKind.UNSPECIFIED
    start_ns: int = 0
    end_ns: int = 0
    service: str = ""
    attributes: Attributes = field(default_factory=lambda: EMPTY_ATTRS)
    resource: Attributes = field(default_factory=lambda: EMPTY_ATTRS)
    events: tuple[SpanEvent, ...] = ()
    links: tuple[SpanLink, ...] = ()
    status_code: StatusCode = StatusCode.UNSET
    status_message: str = ""
    scope: str = ""

    @property
    def duration_ns(self) -> int:
        return max(0, self.end_ns - self.start_ns)

    @property
    def duration_s(self) -> float:
        return self.duration_ns / 1e9

    def label(self) -> str:
        """How findings name a span: ``span "fetch-gex-data" (svc enrich)``."""
        svc = f" (svc {self.service})" if self.service else ""
        return f'span "{self.name}"{svc}'


PROBE_SERVICE = "tracecanary"
"""service.name of the spans the probe itself emits (its root span and client spans), by default."""

PROBE_SCOPE = "tracecanary.runner"
"""The instrumentation scope of the probe's own spans, whatever ``daemon.telemetry.service_name`` says."""


def is_probe_span(span: Span) -> bool:
    """Whether tracecanary itself emitted ``span`` (the run's root ``tracecanary probe …`` or a client span),
    as opposed to the system under test."""
    return span.scope == PROBE_SCOPE or span.service == PROBE_SERVICE or "tracecanary.probe_id" in span.attributes


@dataclass(frozen=True, slots=True)
class Trace:
    """The spans of one trace, indexed for the matcher.

    ``orphans`` are spans whose parent id names a span absent from the trace: the mark of broken
    context propagation (or of spans that have not arrived yet).
    """

    trace_id: str
    spans: tuple[Span, ...]
    by_id: Mapping[str, Span] = field(repr=False)
    children_of: Mapping[str, tuple[Span, ...]] = field(repr=False)
    roots: tuple[Span, ...] = field(repr=False)
    orphans: tuple[Span, ...] = field(repr=False)

    @classmethod
    def build(cls, trace_id: str, spans: Iterable[Span]) -> Trace:
        ordered = tuple(sorted(spans, key=lambda s: (s.start_ns, s.span_id)))
        by_id = {s.span_id: s for s in ordered}
        children: dict[str, list[Span]] = {}
        roots: list[Span] = []
        orphans: list[Span] = []
        for s in ordered:
            if s.parent_span_id is None:
                roots.append(s)
            elif s.parent_span_id in by_id:
                children.setdefault(s.parent_span_id, []).append(s)
            else:
                orphans.append(s)
        return cls(
            trace_id=trace_id,
            spans=ordered,
            by_id=by_id,
            children_of={k: tuple(v) for k, v in children.items()},
            roots=tuple(roots),
            orphans=tuple(orphans),
        )

    def __len__(self) -> int:
        return len(self.spans)

    def __iter__(self) -> Iterator[Span]:
        return iter(self.spans)

    def children(self, span: Span) -> tuple[Span, ...]:
        return self.children_of.get(span.span_id, ())

    def descendants(self, span: Span) -> Iterator[Span]:
        stack = list(reversed(self.children(span)))
        while stack:
            s = stack.pop()
            yield s
            stack.extend(reversed(self.children(s)))

    def depth(self) -> int:
        """Longest root-to-leaf chain, counting orphans as roots."""
        best = 0
        stack = [(s, 1) for s in (*self.roots, *self.orphans)]
        while stack:
            s, d = stack.pop()
            best = max(best, d)
            stack.extend((c, d + 1) for c in self.children(s))
        return best

    @property
    def start_ns(self) -> int:
        return min((s.start_ns for s in self.spans), default=0)

    @property
    def end_ns(self) -> int:
        return max((s.end_ns for s in self.spans), default=0)


def group_traces(spans: Iterable[Span]) -> dict[str, Trace]:
    """Split spans by trace id into built traces."""
    groups: dict[str, list[Span]] = {}
    for s in spans:
        groups.setdefault(s.trace_id, []).append(s)
    return {tid: Trace.build(tid, ss) for tid, ss in groups.items()}


def _jsonable(value: Any) -> Any:
    if isinstance(value, bytes):
        return {"bytes": value.hex()}
    if isinstance(value, tuple | list):
        return [_jsonable(v) for v in value]
    if isinstance(value, Mapping):
        return {k: _jsonable(v) for k, v in value.items()}
    return value


def _from_jsonable(value: Any) -> AttrValue:
    if isinstance(value, dict):
        if set(value) == {"bytes"}:
            return bytes.fromhex(value["bytes"])
        return MappingProxyType({k: _from_jsonable(v) for k, v in value.items()})
    if isinstance(value, list):
        return tuple(_from_jsonable(v) for v in value)
    return value  # type: ignore[no-any-return]


def span_to_dict(span: Span) -> dict[str, Any]:
    """A compact JSON-able dict of a span (store snapshots, API, dashboard)."""
    return {
        "trace_id": span.trace_id,
        "span_id": span.span_id,
        "parent_span_id": span.parent_span_id,
        "name": span.name,
        "kind": int(span.kind),
        "start_ns": span.start_ns,
        "end_ns": span.end_ns,
        "service": span.service,
        "attributes": _jsonable(span.attributes),
        "resource": _jsonable(span.resource),
        "events": [
            {"name": e.name, "time_ns": e.time_ns, "attributes": _jsonable(e.attributes)} for e in span.events
        ],
        "links": [
            {"trace_id": ln.trace_id, "span_id": ln.span_id, "attributes": _jsonable(ln.attributes)}
            for ln in span.links
        ],
        "status_code": int(span.status_code),
        "status_message": span.status_message,
        "scope": span.scope,
    }


def span_from_dict(d: Mapping[str, Any]) -> Span:
    """Inverse of :func:`span_to_dict`."""

    def attrs(x: Any) -> Attributes:
        return MappingProxyType({k: _from_jsonable(v) for k, v in (x or {}).items()})

    return Span(
        trace_id=d["trace_id"],
        span_id=d["span_id"],
        parent_span_id=d.get("parent_span_id"),
        name=d["name"],
        kind=SpanKind(d.get("kind", 0)),
        start_ns=int(d.get("start_ns", 0)),
        end_ns=int(d.get("end_ns", 0)),
        service=d.get("service", ""),
        attributes=attrs(d.get("attributes")),
        resource=attrs(d.get("resource")),
        events=tuple(SpanEvent(e["name"], int(e["time_ns"]), attrs(e.get("attributes"))) for e in d.get("events", ())),
        links=tuple(SpanLink(x["trace_id"], x["span_id"], attrs(x.get("attributes"))) for x in d.get("links", ())),
        status_code=StatusCode(d.get("status_code", 0)),
        status_message=d.get("status_message", ""),
        scope=d.get("scope", ""),
    )
