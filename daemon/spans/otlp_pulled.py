"""OTLP-shaped traces as query APIs return them (Jaeger api_v3, Tempo) → the common span model.

These are not the receiver's OTLP/JSON. Each is the protobuf JSON mapping of some message holding
``ResourceSpans``, written by whichever marshaler that release used:

- Jaeger api_v3 today (``cmd/jaeger/internal/extension/jaegerquery/internal/apiv3/http_gateway.go``):
  ``{"result": <OTLP/JSON by the Collector's ptrace.JSONMarshaler>}`` — hex ids, integer enums; an error
  is ``{"error": {"httpCode", "message"}}``. Before v1.53 (grpc-gateway, ``cmd/query/app/apiv3``) the same
  envelope was streamed (one ``{"result": …}`` object per chunk) and written by protojson: base64 ids,
  enum names, and ``instrumentationLibrarySpans`` in the OTLP of 2021.
- Tempo (``pkg/tempopb/tempo.proto``, ``pkg/tempopb/trace_utils.go``): gogo jsonpb of ``tempopb.Trace`` —
  ``{"batches": [...]}`` from ``/api/traces/{id}``, ``{"trace": {"resourceSpans": [...]}, "status":
  "PARTIAL"?, "message"?}`` from ``/api/v2/traces/{id}``; base64 ids, enum names (``SPAN_KIND_SERVER``,
  ``STATUS_CODE_ERROR``), int64 as strings, ``instrumentationLibrarySpans`` before OTLP 0.15.

:func:`normalize` rewrites such a document in place into OTLP/JSON (hex ids, ``scopeSpans``), which
``otlp_json.decode_document`` then reads (it takes enum names and integers alike).
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
from collections.abc import Iterator, Mapping
from typing import Any

from tracecanary.assertions.spans import Span
from tracecanary.daemon.spans.model import OtlpDecodeError
from tracecanary.daemon.spans.otlp_json import decode_document

log = logging.getLogger("tracecanary.spans.pull")

_ID_KEYS = (("traceId", 16), ("spanId", 8), ("parentSpanId", 8))


def id_hex(value: Any, size: int) -> Any:
    """An id as lowercase hex: hex of the right length is kept, base64 (standard or URL-safe, padded or
    not) of ``size`` bytes is re-encoded; anything else is returned as is (the decoder rejects it)."""
    if not isinstance(value, str) or not value:
        return value
    if len(value) == 2 * size:
        try:
            bytes.fromhex(value)
            return value.lower()
        except ValueError:
            pass
    text = value + "=" * (-len(value) % 4)
    try:
        raw = base64.urlsafe_b64decode(text) if ("-" in text or "_" in text) else base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        return value
    return raw.hex() if len(raw) == size else value


def _fix_ids(obj: dict[str, Any]) -> None:
    for key, size in _ID_KEYS:
        snake = "".join(f"_{c.lower()}" if c.isupper() else c for c in key)
        for k in (key, snake):
            if k in obj:
                obj[k] = id_hex(obj[k], size)


def _resource_spans(doc: Mapping[str, Any]) -> list[Any]:
    for key in ("resourceSpans", "resource_spans", "batches"):
        value = doc.get(key)
        if isinstance(value, list):
            return value
    return []


def normalize(doc: Mapping[str, Any]) -> dict[str, Any]:
    """``{"resourceSpans": [...]}`` in OTLP/JSON form from a ``TracesData``/``tempopb.Trace`` document
    (``batches`` or ``resourceSpans``, ``instrumentationLibrarySpans`` or ``scopeSpans``, ids in hex or base64)."""
    batches = _resource_spans(doc)
    for rs in batches:
        if not isinstance(rs, dict):
            continue
        scopes = rs.get("scopeSpans") or rs.get("scope_spans")
        if not scopes:
            scopes = rs.get("instrumentationLibrarySpans") or rs.get("instrumentation_library_spans") or []
            for ss in scopes:
                if isinstance(ss, dict) and "scope" not in ss:
                    ss["scope"] = ss.get("instrumentationLibrary") or ss.get("instrumentation_library") or {}
            rs["scopeSpans"] = scopes
        for ss in scopes:
            for sp in (ss.get("spans") or []) if isinstance(ss, dict) else ():
                if not isinstance(sp, dict):
                    continue
                _fix_ids(sp)
                for link in sp.get("links") or ():
                    if isinstance(link, dict):
                        _fix_ids(link)
    return {"resourceSpans": batches}


def decode_pulled(doc: Mapping[str, Any], trace_id: str) -> list[Span]:
    """The spans of ``trace_id`` in one ``TracesData``-like document (spans of other traces are left out)."""
    batch = decode_document(normalize(doc))
    if batch.rejected and not batch.spans:
        raise OtlpDecodeError(f"every span was rejected: {batch.errors[:3]}")
    if batch.rejected:
        log.warning("pulled trace had unreadable spans trace_id=%s %s", trace_id, batch.error_message)
    return [s for s in batch.spans if s.trace_id == trace_id]


def json_objects(body: bytes) -> Iterator[Any]:
    """The JSON values in a body: one, or several written one after another (a streamed gateway response)."""
    text = body.decode("utf-8")
    decoder = json.JSONDecoder()
    pos, end = 0, len(text)
    while True:
        while pos < end and text[pos].isspace():
            pos += 1
        if pos >= end:
            return
        value, pos = decoder.raw_decode(text, pos)
        yield value


__all__ = ["decode_pulled", "id_hex", "json_objects", "normalize"]
