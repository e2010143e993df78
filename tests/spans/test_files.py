"""Trace files (JSON, protobuf, JSON Lines) and the waterfall rendering of `trace show`."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from tests.spans.sdk import expected, make_sdk_spans
from tracecanary.assertions.spans import Span, SpanKind, SpanLink, StatusCode
from tracecanary.daemon.spans.files import TraceFileError, load_spans, render_waterfall, write_jsonl
from tracecanary.daemon.spans.otlp import encode_request, spans_to_otlp_json


def _key(spans: list[Span]) -> list[Span]:
    return sorted(spans, key=lambda s: s.span_id)


@pytest.fixture
def spans() -> list[Span]:
    return [expected(s) for s in make_sdk_spans()]


def test_load_json_protobuf_and_jsonl(tmp_path: Path, spans: list[Span]) -> None:
    (tmp_path / "t.json").write_text(json.dumps(spans_to_otlp_json(spans), indent=2))
    (tmp_path / "t.pb").write_bytes(encode_request(spans).SerializeToString())
    lines = "\n".join(json.dumps(spans_to_otlp_json([s])) for s in spans) + "\n\n"
    (tmp_path / "t.jsonl").write_text(lines)
    for name in ("t.json", "t.pb", "t.jsonl"):
        assert _key(load_spans(tmp_path / name)) == _key(spans), name


def test_write_jsonl_appends_one_line_per_trace(tmp_path: Path, spans: list[Span]) -> None:
    path = tmp_path / "rec.jsonl"
    write_jsonl(path, spans)
    write_jsonl(path, spans[:1])
    lines = path.read_text().splitlines()
    assert len(lines) == len({s.trace_id for s in spans}) + 1
    assert len(load_spans(path)) == len(spans) + 1


def test_bad_files_name_the_file_and_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"resourceSpans": []}\n{"resourceSpans": [\n')
    with pytest.raises(TraceFileError, match=r"bad.jsonl:2:"):
        load_spans(bad)
    junk = tmp_path / "junk.bin"
    junk.write_bytes(b"\x0a\xff\xff")
    with pytest.raises(TraceFileError, match=r"junk\.bin: neither"):
        load_spans(junk)
    with pytest.raises(TraceFileError, match="cannot read"):
        load_spans(tmp_path / "missing.json")


def test_waterfall_shows_tree_links_orphans_and_status() -> None:
    t, other = os.urandom(16).hex(), os.urandom(16).hex()
    root = Span(trace_id=t, span_id="a" * 16, parent_span_id=None, name="POST /orders", kind=SpanKind.SERVER,
                start_ns=0, end_ns=100_000_000, service="ingest", status_code=StatusCode.OK)
    child = Span(trace_id=t, span_id="b" * 16, parent_span_id="a" * 16, name="charge", kind=SpanKind.CLIENT,
                 start_ns=10_000_000, end_ns=60_000_000, service="pay", status_code=StatusCode.ERROR,
                 status_message="declined")
    orphan = Span(trace_id=t, span_id="c" * 16, parent_span_id="d" * 16, name="lost", start_ns=70_000_000,
                  end_ns=80_000_000, service="worker")
    consumer = Span(trace_id=other, span_id="e" * 16, parent_span_id=None, name="orders process",
                    kind=SpanKind.CONSUMER, start_ns=200_000_000, end_ns=250_000_000, service="worker",
                    links=(SpanLink(t, "a" * 16),))
    text = render_waterfall([consumer, orphan, child, root])
    lines = text.splitlines()
    assert lines[0] == f"trace {t} · 3 spans · 100ms · 1 orphan(s) · 1 error(s)"
    assert "POST /orders (ingest) server 100ms OK" in lines[1]
    assert "  charge (pay) client 50ms ERROR: declined" in lines[2]
    assert "lost (worker)" in lines[3] and f"orphan: parent {'d' * 16} not in trace" in lines[3]
    assert lines[5].startswith(f"trace {other}")
    assert 'orders process (worker) consumer 50ms - ⇢ link "POST /orders"' in lines[6]
    colored = render_waterfall([child, root], color=True)
    assert "\x1b[31mERROR: declined\x1b[0m" in colored
