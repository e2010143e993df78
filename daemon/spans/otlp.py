"""OTLP trace decoding and encoding: protobuf (here) and JSON (``otlp_json``), into the span model.

The receiver's hot path is :func:`scan_protobuf`: it validates the body with one full protobuf parse,
then reads every span's trace id, span id and parent id in bulk through a second, "merged" view of
the same bytes (a schema in which each repeated message field is declared singular, so protobuf's
merge rule concatenates the ids of every span into one list; no Python loop per span). Spans are
decoded into :class:`~tracecanary.assertions.spans.Span` only for traces someone waits on, or later,
when a trace is read from the buffer.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Collection, Container, Mapping
from dataclasses import dataclass, field
from typing import Any

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from google.protobuf.message import DecodeError
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.trace.v1.trace_pb2 import Span as _PbSpan

from tracecanary.assertions.spans import (
    AttrValue,
    Span,
)
from tracecanary.daemon.spans.model import (
    ZERO_SPAN_ID,
    ZERO_TRACE_ID,
    DecodedBatch,
    OtlpDecodeError,
    check_ids,
)
from tracecanary.daemon.spans.otlp_encode import encode_request, resource_of
from tracecanary.daemon.spans.otlp_fields import (
    LazyAttributes,
    any_value,
    decode_scanned,
    resource_from_pb,
    span_from_pb,
)
from tracecanary.daemon.spans.otlp_json import decode_json, spans_to_otlp_json

__all__ = [
    "DecodedBatch",
    "LazyAttributes",
    "OtlpDecodeError",
    "RawBatch",
    "decode_json",
    "decode_protobuf",
    "decode_request",
    "encode_request",
    "find_attribute_hits",
    "find_link_pairs",
    "resource_of",
    "scan_protobuf",
    "spans_to_otlp_json",
]

_Link = _PbSpan.Link

def _merged_request_class() -> Any:
    """ExportTraceServiceRequest seen with singular nesting: every span's ids land in one list."""
    t = descriptor_pb2.FieldDescriptorProto
    fdp = descriptor_pb2.FileDescriptorProto(name="tracecanary_merged.proto", package="tcmerged", syntax="proto3")

    def message(name: str, fields: list[tuple[str, int, int, int, str]]) -> None:
        m = fdp.message_type.add(name=name)
        for fname, number, ftype, label, type_name in fields:
            f = m.field.add(name=fname, number=number, type=ftype, label=label)  # type: ignore[arg-type]
            if type_name:
                f.type_name = type_name

    one, many, msg, raw = t.LABEL_OPTIONAL, t.LABEL_REPEATED, t.TYPE_MESSAGE, t.TYPE_BYTES
    message("Request", [("resource_spans", 1, msg, one, ".tcmerged.ResourceSpans")])
    message("ResourceSpans", [("scope_spans", 2, msg, one, ".tcmerged.ScopeSpans")])
    message("ScopeSpans", [("spans", 2, msg, one, ".tcmerged.Span")])
    message("Span", [
        ("trace_id", 1, raw, many, ""), ("span_id", 2, raw, many, ""),
        ("parent_span_id", 4, raw, many, ""), ("events", 11, raw, many, ""),
        ("links", 13, raw, many, ""), ("status", 15, raw, many, ""),
    ])
    pool = descriptor_pool.DescriptorPool()
    pool.Add(fdp)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("tcmerged.Request"))


_MergedRequest = _merged_request_class()


def parse_request(body: bytes) -> ExportTraceServiceRequest:
    """Parse a serialized ``ExportTraceServiceRequest`` (or ``TracesData``: same wire format)."""
    try:
        req: ExportTraceServiceRequest = ExportTraceServiceRequest.FromString(body)
    except (DecodeError, ValueError, RuntimeError) as e:
        raise OtlpDecodeError(f"undecodable protobuf ExportTraceServiceRequest: {e}") from e
    return req


# ---------------------------------------------------------------------------------------------
# decoding


def decode_request(req: ExportTraceServiceRequest, only: Container[bytes] | None = None, *,
                   lazy: bool = False, validated: bool = False) -> DecodedBatch:
    """Decode every span of a parsed request (or only those whose raw trace id is in ``only``).

    ``lazy``: span attributes are :class:`LazyAttributes`, decoded on first use. ``validated``: the
    ids were already checked (by :func:`scan_protobuf`).
    """
    out = DecodedBatch()
    for rs in req.resource_spans:
        resource: tuple[str, dict[str, AttrValue]] | None = None
        for ss in rs.scope_spans:
            scope = ss.scope.name
            for sp in ss.spans:
                if only is not None and sp.trace_id not in only:
                    continue
                problem = None if validated else check_ids(sp.trace_id, sp.span_id, sp.parent_span_id)
                if problem is not None:
                    out.reject(f"span {sp.name!r}: {problem}")
                    continue
                if resource is None:
                    resource = resource_from_pb(rs)
                out.spans.append(span_from_pb(sp, resource, scope, lazy))
    return out


def decode_protobuf(body: bytes) -> DecodedBatch:
    """Decode a protobuf ``ExportTraceServiceRequest`` (or ``TracesData``) body completely."""
    return decode_request(parse_request(body))


@dataclass(slots=True)
class RawBatch:
    """A validated protobuf batch whose spans are not decoded yet.

    ``trace_counts`` maps each raw 16-byte trace id to its number of spans. When some span had
    invalid ids, ``fallback`` holds the fully decoded valid spans (and the rejections) instead.
    """

    body: bytes
    message: ExportTraceServiceRequest
    span_count: int
    trace_counts: Mapping[bytes, int]
    links_raw: list[bytes]
    fallback: DecodedBatch | None = None
    trace_ids: list[bytes] = field(default_factory=list, repr=False)
    """Every span's raw trace id, in document order (read in bulk by :func:`scan_protobuf`)."""
    span_ids: list[bytes] = field(default_factory=list, repr=False)
    """Every span's raw span id, in document order."""
    bulk: Any = field(default=None, repr=False)
    """The merged view of the spans (bulk lists of ids, events, links and statuses)."""

    @property
    def has_links(self) -> bool:
        return bool(self.links_raw)

    @property
    def rejected(self) -> int:
        return self.fallback.rejected if self.fallback else 0

    @property
    def error_message(self) -> str:
        return self.fallback.error_message if self.fallback else ""

    def decode(self, only: Container[bytes] | None = None) -> list[Span]:
        """Decode the spans (of the traces in ``only``) into the span model."""
        if self.fallback is None and self.bulk is not None:
            return self._decode_scanned(only)[0]
        return decode_request(self.message, only, lazy=True, validated=self.fallback is None).spans

    def _decode_scanned(self, only: Container[bytes] | None) -> tuple[list[Span], list[bytes]]:
        return decode_scanned(self.message, self.bulk, self.trace_ids, self.span_ids, self.span_count,
                              bool(self.links_raw), only)

    def decode_by_trace(self, only: Container[bytes] | None = None) -> dict[bytes, list[Span]]:
        """:meth:`decode`, grouped by raw trace id (each group in document order)."""
        groups: dict[bytes, list[Span]] = {}
        if self.fallback is None and self.bulk is not None:
            spans, keys = self._decode_scanned(only)
        else:
            spans = self.decode(only)
            keys = [bytes.fromhex(s.trace_id) for s in spans]
        for key, span in zip(keys, spans, strict=True):
            group = groups.get(key)
            if group is None:
                group = groups[key] = []
            group.append(span)
        return groups

    def link_targets(self) -> set[bytes]:
        """Trace ids that spans of this batch link into (read in bulk, no per-span decoding)."""
        targets: set[bytes] = set()
        for raw in self.links_raw:
            if raw[:2] == b"\x0a\x10":  # trace_id first, as every encoder writes it
                tid = raw[2:18]
            else:
                tid = _Link.FromString(raw).trace_id
            if len(tid) == 16 and tid != ZERO_TRACE_ID:
                targets.add(tid)
        return targets


def find_link_pairs(message: ExportTraceServiceRequest, targets: Container[bytes] | None = None
                    ) -> set[tuple[bytes, bytes]]:
    """``(linking trace id, linked trace id)`` for span links (into ``targets`` when given)."""
    pairs: set[tuple[bytes, bytes]] = set()
    for rs in message.resource_spans:
        for ss in rs.scope_spans:
            for sp in ss.spans:
                if sp.links:
                    src = sp.trace_id
                    for ln in sp.links:
                        if len(ln.trace_id) == 16 and (targets is None or ln.trace_id in targets):
                            pairs.add((src, ln.trace_id))
    return pairs


def find_attribute_hits(message: ExportTraceServiceRequest, keys: Collection[str]
                        ) -> set[tuple[str, AttrValue, bytes]]:
    """``(key, value, trace id)`` for span or resource attributes named in ``keys``."""
    hits: set[tuple[str, AttrValue, bytes]] = set()
    for rs in message.resource_spans:
        res = [(kv.key, kv.value) for kv in rs.resource.attributes if kv.key in keys]
        for ss in rs.scope_spans:
            for sp in ss.spans:
                for key, value in res:
                    hits.add((key, _hashable(any_value(value)), sp.trace_id))
                for kv in sp.attributes:
                    if kv.key in keys:
                        hits.add((kv.key, _hashable(any_value(kv.value)), sp.trace_id))
    return hits


def _hashable(value: AttrValue) -> AttrValue:
    return repr(value) if isinstance(value, Mapping) else value


def scan_protobuf(body: bytes) -> RawBatch:
    """Validate a protobuf body and read its trace ids in bulk (the receiver's hot path)."""
    message = parse_request(body)
    span_count = sum(len(ss.spans) for rs in message.resource_spans for ss in rs.scope_spans)
    try:
        ids = _MergedRequest.FromString(body).resource_spans.scope_spans.spans
    except (DecodeError, ValueError, RuntimeError) as e:  # pragma: no cover - full parse passed
        raise OtlpDecodeError(f"undecodable protobuf ExportTraceServiceRequest: {e}") from e
    trace_ids, span_ids = list(ids.trace_id), list(ids.span_id)
    counts = Counter(trace_ids)
    valid = (
        len(trace_ids) == span_count
        and len(span_ids) == span_count
        and set(map(len, counts)) <= {16}
        and set(map(len, span_ids)) <= {8}
        and set(map(len, ids.parent_span_id)) <= {0, 8}
        and ZERO_TRACE_ID not in counts
        and span_ids.count(ZERO_SPAN_ID) == 0
    )
    batch = RawBatch(body, message, span_count, counts, list(ids.links) if ids.links else [],
                     trace_ids=trace_ids, span_ids=span_ids, bulk=ids)
    if not valid:
        batch.fallback = decode_request(message)
    return batch
