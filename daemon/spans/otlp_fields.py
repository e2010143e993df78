"""Protobuf span fields into the span model: the per-span decoding shared by the OTLP decoders.

:func:`decode_scanned` is the watched-trace hot path: it decodes spans of a batch already scanned by
``otlp.scan_protobuf``, using the ids and flags read there in bulk instead of per-span field reads.
"""

from __future__ import annotations

import sys
from collections.abc import Container, Iterable, Iterator, Mapping
from typing import Any

from opentelemetry.proto.trace.v1.trace_pb2 import Status as _PbStatus

from tracecanary.assertions.spans import (
    EMPTY_ATTRS,
    AttrValue,
    Span,
    SpanEvent,
    SpanKind,
    SpanLink,
    StatusCode,
)
from tracecanary.daemon.spans.model import ZERO_SPAN_ID, ZERO_TRACE_ID, new_span, span_from_fields

__all__ = ["LazyAttributes", "any_value", "decode_scanned", "resource_from_pb", "span_from_pb"]

_KINDS = {int(k): k for k in SpanKind}
_STATUS = {int(c): c for c in StatusCode}

def any_value(v: Any) -> AttrValue:
    kind = v.WhichOneof("value")
    if kind is None:
        return None
    if kind == "array_value":
        return tuple(any_value(x) for x in v.array_value.values)
    if kind == "kvlist_value":
        return {kv.key: any_value(kv.value) for kv in v.kvlist_value.values}
    value: AttrValue = getattr(v, kind)
    return value


def _attrs(kvs: Iterable[Any]) -> dict[str, AttrValue]:
    return {kv.key: any_value(kv.value) for kv in kvs}


class LazyAttributes(Mapping[str, AttrValue]):
    """Span attributes decoded from protobuf on first use (most spans' attributes are never read).

    Keeps the parsed batch alive until then. Compares equal to a dict with the same items.
    """

    __slots__ = ("_src",)

    def __init__(self, kvs: Any) -> None:
        self._src: Any = kvs  # the protobuf key-values, then the decoded dict

    def _items(self) -> dict[str, AttrValue]:
        src = self._src
        if type(src) is not dict:
            src = self._src = _attrs(src)
        return src  # type: ignore[no-any-return]

    def __getitem__(self, key: str) -> AttrValue:
        return self._items()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._items())

    def __len__(self) -> int:
        return len(self._items())

    def __contains__(self, key: object) -> bool:
        return key in self._items()

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Mapping):
            return self._items() == dict(other.items())
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return repr(self._items())


# ``LazyAttributes(kvs)`` without an ``__init__`` call, for the decoder's per-span loop
_new_lazy_attributes = LazyAttributes.__new__
_set_lazy_source = LazyAttributes.__dict__["_src"].__set__


def _links(links: Iterable[Any]) -> tuple[SpanLink, ...]:
    out = []
    for link in links:
        tid, sid = link.trace_id, link.span_id
        if len(tid) == 16 and len(sid) == 8 and tid != ZERO_TRACE_ID and sid != ZERO_SPAN_ID:
            out.append(SpanLink(tid.hex(), sid.hex(), _attrs(link.attributes)))
    return tuple(out)


def span_from_pb(sp: Any, resource: tuple[str, dict[str, AttrValue]], scope: str, lazy: bool) -> Span:
    parent = sp.parent_span_id
    status = sp.status
    attrs, events, links = sp.attributes, sp.events, sp.links  # each access builds a wrapper: once
    return new_span(
        trace_id=sp.trace_id.hex(),
        span_id=sp.span_id.hex(),
        parent_span_id=parent.hex() if parent else None,
        name=sp.name,
        kind=_KINDS.get(sp.kind, SpanKind.UNSPECIFIED),
        start_ns=sp.start_time_unix_nano,
        end_ns=sp.end_time_unix_nano,
        service=resource[0],
        attributes=(LazyAttributes(attrs) if attrs else EMPTY_ATTRS) if lazy else _attrs(attrs),
        resource=resource[1],
        events=tuple(SpanEvent(e.name, e.time_unix_nano, _attrs(e.attributes)) for e in events) if events else (),
        links=_links(links) if links else (),
        status_code=_STATUS.get(status.code, StatusCode.UNSET),
        status_message=status.message,
        scope=scope,
    )


def resource_from_pb(rs: Any) -> tuple[str, dict[str, AttrValue]]:
    attrs = _attrs(rs.resource.attributes)
    service = attrs.get("service.name")
    return (sys.intern(service) if isinstance(service, str) else "", attrs)  # one string per service



def _uniform_status(raw: list[bytes], span_count: int) -> tuple[StatusCode, str] | None:
    """The status every span of a batch has, read from the bulk view; None when they differ.

    No status field at all means every span is UNSET. (A span repeating its status field while
    another omits it would fool the count: no exporter writes that.)
    """
    if not raw:
        return StatusCode.UNSET, ""
    if len(raw) != span_count or raw.count(raw[0]) != span_count:
        return None
    status = _PbStatus.FromString(raw[0])
    return _STATUS.get(status.code, StatusCode.UNSET), status.message


def decode_scanned(message: Any, bulk: Any, trace_ids: list[bytes], span_ids: list[bytes], span_count: int,
                   has_links: bool, only: Container[bytes] | None) -> tuple[list[Span], list[bytes]]:
    """Decode the spans of a validated batch (of the traces in ``only``): the watched-trace hot path.

    ``message`` is the parsed request; ``bulk`` its merged view (``scan_protobuf``), with every span's
    trace and span id (``trace_ids``, ``span_ids``). Uses what was read in bulk instead of per-span protobuf field reads: trace and
    span ids (each trace id turned into hex once per batch), whether any span has events or links,
    and the status when all spans share one. Attributes stay lazy (:class:`LazyAttributes`).
    Returns the spans in document order and, for each, its raw trace id.
    """
    status = _uniform_status(list(bulk.status), span_count)
    has_events = len(bulk.events) > 0
    hexes: dict[bytes, str] = {}
    make, kinds, unspecified = span_from_fields, _KINDS, SpanKind.UNSPECIFIED
    new_lazy, set_source = _new_lazy_attributes, _set_lazy_source
    out: list[Span] = []
    keys: list[bytes] = []
    base = 0
    for rs in message.resource_spans:
        service, resource = "", EMPTY_ATTRS
        resource_read = False
        for ss in rs.scope_spans:
            pb_spans = ss.spans
            n = len(pb_spans)
            tids = trace_ids[base:base + n]
            picked = range(n) if only is None else [j for j, t in enumerate(tids) if t in only]
            base += n
            if not picked:
                continue
            if not resource_read:
                service, resource = resource_from_pb(rs)
                resource_read = True
            scope = ss.scope.name
            for j in picked:
                sp = pb_spans[j]
                tid = tids[j]
                thex = hexes.get(tid)
                if thex is None:
                    thex = hexes[tid] = tid.hex()
                parent, kvs = sp.parent_span_id, sp.attributes  # kept: unlike ``sp``, not GC-tracked
                attrs: Mapping[str, AttrValue]
                if kvs:
                    attrs = new_lazy(LazyAttributes)
                    set_source(attrs, kvs)
                else:
                    attrs = EMPTY_ATTRS
                if status is None:
                    st = sp.status
                    code, message = _STATUS.get(st.code, StatusCode.UNSET), st.message
                else:
                    code, message = status
                out.append(make(
                    thex, span_ids[base - n + j].hex(), parent.hex() if parent else None, sp.name,
                    kinds.get(sp.kind, unspecified), sp.start_time_unix_nano, sp.end_time_unix_nano, service,
                    attrs, resource, _events(sp.events) if has_events else (),
                    _links(sp.links) if has_links else (), code, message, scope,
                ))
                keys.append(tid)
    return out, keys


def _events(events: Any) -> tuple[SpanEvent, ...]:
    return tuple(SpanEvent(e.name, e.time_unix_nano, _attrs(e.attributes)) for e in events) if events else ()
