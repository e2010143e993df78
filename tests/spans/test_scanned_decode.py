"""The watched-trace hot path: decoding a scanned batch from its bulk views equals a full decode."""

from __future__ import annotations

import os
from dataclasses import replace

import pytest

from tests.spans.sdk import expected, make_sdk_spans
from tracecanary.assertions.spans import Span, SpanEvent, SpanKind, SpanLink, StatusCode
from tracecanary.daemon.spans.otlp import (
    LazyAttributes,
    RawBatch,
    decode_protobuf,
    decode_request,
    encode_request,
    scan_protobuf,
)


def _span(trace_id: str, name: str, **kw: object) -> Span:
    return Span(trace_id=trace_id, span_id=os.urandom(8).hex(), parent_span_id=kw.pop("parent", None),  # type: ignore[arg-type]
                name=name, start_ns=10, end_ns=20, service=str(kw.pop("service", "svc")), **kw)  # type: ignore[arg-type]


def _scan(spans: list[Span]) -> tuple[bytes, RawBatch]:
    body = encode_request(spans).SerializeToString()
    batch = scan_protobuf(body)
    assert batch.fallback is None and batch.bulk is not None
    return body, batch


def _mixed() -> list[Span]:
    """Two resources, two scopes, statuses that differ, events and links on some spans only."""
    a, b = os.urandom(16).hex(), os.urandom(16).hex()
    root = _span(a, "root", kind=SpanKind.SERVER, attributes={"http.route": "/x", "n": 3},
                 status_code=StatusCode.OK, scope="web")
    return [
        root,
        _span(a, "child", parent=root.span_id, status_code=StatusCode.ERROR, status_message="boom", scope="web",
              events=(SpanEvent("exception", 15, {"exception.type": "ValueError"}),)),
        _span(a, "no attrs", parent=root.span_id, scope="db"),
        _span(b, "consumer", service="worker", kind=SpanKind.CONSUMER,
              links=(SpanLink(a, root.span_id, {"kind": "follows"}),), resource={"host.name": "n1"}),
        _span(b, "step", service="worker", attributes={"tags": ("x", "y")}, resource={"host.name": "n1"}),
    ]


@pytest.mark.parametrize("spans", [
    pytest.param(lambda: [expected(s) for s in make_sdk_spans()], id="sdk"),
    pytest.param(_mixed, id="mixed"),
    pytest.param(lambda: [_span(os.urandom(16).hex(), f"s{i}", status_code=StatusCode.OK) for i in range(5)],
                 id="uniform-status"),
    pytest.param(lambda: [_span(os.urandom(16).hex(), f"s{i}", status_code=StatusCode.ERROR, status_message="e")
                          for i in range(3)], id="uniform-error"),
])
def test_scanned_decode_equals_full_decode(spans: object) -> None:
    made: list[Span] = spans()  # type: ignore[operator]
    body, batch = _scan(made)
    fast = batch.decode()
    assert fast == decode_protobuf(body).spans
    assert sorted(fast, key=lambda s: s.span_id) == sorted(
        (replace(s, resource={**s.resource, "service.name": s.service}) for s in made), key=lambda s: s.span_id)
    assert all(type(s) is Span for s in fast)


def test_scanned_decode_of_chosen_traces_only() -> None:
    made = _mixed()
    _, batch = _scan(made)
    wanted = {bytes.fromhex(made[3].trace_id)}
    fast = batch.decode(only=wanted)
    assert [s.name for s in fast] == ["consumer", "step"]
    assert fast == decode_request(batch.message, wanted).spans
    assert batch.decode(only=set()) == []


def test_scanned_decode_shares_trace_id_strings_and_keeps_attributes_lazy() -> None:
    t = os.urandom(16).hex()
    _, batch = _scan([_span(t, "a", attributes={"k": 1}), _span(t, "b")])
    a, b = batch.decode()
    assert a.trace_id is b.trace_id  # one string per trace, not per span
    assert isinstance(a.attributes, LazyAttributes) and dict(a.attributes) == {"k": 1}
    assert not b.attributes and b.events == () and b.links == ()


def test_status_read_per_span_when_a_span_repeats_none() -> None:
    """Statuses present on some spans only: each span keeps its own (UNSET where absent)."""
    t = os.urandom(16).hex()
    req = encode_request([_span(t, "ok", status_code=StatusCode.OK), _span(t, "unset")])
    req.resource_spans[0].scope_spans[0].spans[1].ClearField("status")
    batch = scan_protobuf(req.SerializeToString())
    assert [(s.name, s.status_code) for s in batch.decode()] == [("ok", StatusCode.OK), ("unset", StatusCode.UNSET)]


def test_decode_by_trace_groups_in_document_order() -> None:
    made = _mixed()
    _, batch = _scan(made)
    groups = batch.decode_by_trace()
    assert {k.hex(): [s.name for s in v] for k, v in groups.items()} == {
        made[0].trace_id: ["root", "child", "no attrs"], made[3].trace_id: ["consumer", "step"]}
    bad = encode_request([made[0], made[1]])
    bad.resource_spans[0].scope_spans[0].spans[1].span_id = b"\x00" * 8  # rejected: the fallback decodes
    fallback = scan_protobuf(bad.SerializeToString())
    assert fallback.fallback is not None and fallback.rejected == 1
    assert {k.hex(): [s.name for s in v] for k, v in fallback.decode_by_trace().items()} == {made[0].trace_id: ["root"]}
