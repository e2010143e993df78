"""Sentry's trace shapes → the common span model (see ``daemon/spans/sentry.py`` for the mapping)."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

from tracecanary.assertions.spans import EMPTY_ATTRS, Span, SpanEvent, SpanKind, StatusCode

log = logging.getLogger("tracecanary.spans.sentry")

Json = dict[str, Any]
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_OK_STATUSES = {"ok", "unknown", "unset", ""}


def kind_from_op(op: str) -> SpanKind:
    """A span kind from Sentry's op (Sentry has no kinds; the op convention carries the same idea)."""
    op = op.lower()
    if op in ("http.server", "websocket.server", "rpc.server", "function.aws", "function.gcp") or op.endswith(".server"):
        return SpanKind.SERVER
    if op.startswith(("queue.publish", "queue.submit", "queue.send")) or op.endswith(".producer"):
        return SpanKind.PRODUCER
    if op.startswith(("queue.process", "queue.receive", "queue.task")) or op.endswith(".consumer"):
        return SpanKind.CONSUMER
    if op.startswith(("http.client", "db", "cache", "rpc.client", "grpc.client", "redis")) or op.endswith(".client"):
        return SpanKind.CLIENT
    return SpanKind.INTERNAL


def epoch_ns(value: Any) -> int | None:
    """A Sentry timestamp in epoch nanoseconds: float/int epoch seconds (the serializers) or an ISO-8601
    string (``2026-04-15T18:22:31.000000Z``, the published examples; no zone means UTC). None if absent."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        # A float epoch holds about 0.24 µs at today's dates and Sentry stores microseconds: round there
        # (``x * 1e9`` would turn 31.25 s into 31.249999872 s).
        return round(value * 1e6) * 1000
    if not isinstance(value, str) or not value.strip():
        return None
    text = value.strip()
    try:
        return round(float(text) * 1e6) * 1000
    except ValueError:
        pass
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        log.warning("sentry timestamp not understood value=%r", value[:64])
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    # Integer arithmetic keeps the microseconds exact (a float epoch loses them past 2**53 ns).
    return (moment - _EPOCH) // timedelta(microseconds=1) * 1000


def epoch_s(value: Any) -> float:
    """Like :func:`epoch_ns`, in seconds (0.0 when absent)."""
    ns = epoch_ns(value)
    return ns / 1e9 if ns is not None else 0.0


def exception_of(detail: Mapping[str, Any] | None) -> tuple[str | None, str | None]:
    """(type, value) of an error from its event (``GET /projects/{org}/{project}/events/{id}/``):
    ``metadata.type``/``metadata.value``, else the last value of its ``exception`` entry."""
    if not detail:
        return None, None
    meta = detail.get("metadata") or {}
    typ, value = meta.get("type"), meta.get("value")
    if typ is None:
        for entry in detail.get("entries") or []:
            if isinstance(entry, dict) and entry.get("type") == "exception":
                values = (entry.get("data") or {}).get("values") or []
                if values and isinstance(values[-1], dict):
                    typ, value = values[-1].get("type"), values[-1].get("value")
    return (str(typ) if typ else None), (str(value) if value is not None else None)


def _error_headline(err: Json, detail: Mapping[str, Any] | None) -> str:
    """What a person reads for an error: ``Type: value`` from the event, else Sentry's title."""
    typ, value = exception_of(detail)
    if typ:
        return f"{typ}: {value}" if value else typ
    return str((detail or {}).get("title") or err.get("title") or err.get("description") or "error")


def _exception_event(err: Json, default_time_ns: int, detail: Mapping[str, Any] | None) -> SpanEvent:
    typ, value = exception_of(detail)
    attrs: dict[str, Any] = {
        "sentry.event_id": str(err.get("event_id") or ""),
        "sentry.level": str(err.get("level") or "error"),
    }
    if typ:
        attrs["exception.type"] = typ
    # Without the event (not fetched yet) the message is what Sentry said about it: its title (legacy
    # view) or its search text (trace view), never a type cut out of that text.
    attrs["exception.message"] = value if typ else str(err.get("title") or err.get("description") or "")
    optional = {
        "sentry.title": (detail or {}).get("title") or err.get("title"),
        "sentry.description": err.get("description"),
        "sentry.culprit": err.get("culprit") or (detail or {}).get("culprit"),
        "sentry.issue_id": err.get("issue_id"),
        "sentry.short_id": err.get("short_id"),
        "sentry.project": err.get("project_slug"),
    }
    attrs.update({k: v for k, v in optional.items() if v not in (None, "")})
    time_ns = epoch_ns(err.get("start_timestamp", err.get("timestamp")))
    return SpanEvent(name="exception", time_ns=default_time_ns if time_ns is None else time_ns, attributes=attrs)


def _status(raw_status: Any, errors: list[Json], details: Mapping[str, Json]) -> tuple[StatusCode, str]:
    if errors:
        return StatusCode.ERROR, _error_headline(errors[0], details.get(str(errors[0].get("event_id"))))
    status = str(raw_status or "").lower()
    if status == "ok":
        return StatusCode.OK, ""
    if status in _OK_STATUSES:
        return StatusCode.UNSET, ""
    return StatusCode.ERROR, status


def _make_span(trace_id: str, *, span_id: str, parent: Any, name: str, op: str, start: Any, end: Any,
               service: str, raw_status: Any, errors: list[Json], details: Mapping[str, Json],
               attributes: dict[str, Any]) -> Span:
    start_ns = epoch_ns(start) or 0
    end_ns = epoch_ns(end) or start_ns
    code, message = _status(raw_status, errors, details)
    attrs = {"sentry.op": op, **{k: v for k, v in attributes.items() if v not in (None, "")}}
    if raw_status:
        attrs["sentry.status"] = str(raw_status)
    return Span(
        trace_id=trace_id,
        span_id=span_id,
        parent_span_id=str(parent) if parent and parent != "0" * 16 else None,
        name=name or op or "<unnamed>",
        kind=kind_from_op(op),
        start_ns=start_ns,
        end_ns=max(start_ns, end_ns),
        service=service,
        attributes=attrs,
        resource={"service.name": service} if service else EMPTY_ATTRS,
        events=tuple(_exception_event(e, end_ns, details.get(str(e.get("event_id")))) for e in errors),
        status_code=code,
        status_message=message,
        scope="sentry",
    )


def trace_errors(nodes: Iterable[Json]) -> list[Json]:
    """The error entries of the new trace view that hang on a span (top-level ones have no span to mark)."""
    found: list[Json] = []
    stack = list(nodes)
    while stack:
        node = stack.pop()
        if node.get("event_type") not in (None, "span"):
            continue
        found.extend(e for e in node.get("errors") or [] if isinstance(e, dict))
        stack.extend(node.get("children") or [])
    return found


def convert_trace(trace_id: str, nodes: Iterable[Json], details: Mapping[str, Json] | None = None) -> list[Span]:
    """Convert the new trace view (a list of nested span and error nodes) to spans; ``details`` maps
    an error's event id to its event (the exception's type and value come from there)."""
    details = details or {}
    spans: list[Span] = []
    stack = list(nodes)
    while stack:
        node = stack.pop()
        if node.get("event_type") not in (None, "span"):
            # A top-level error belongs to no span Sentry holds: nothing to hang it on.
            log.debug("sentry error without span trace_id=%s event_id=%s", trace_id, node.get("event_id"))
            continue
        stack.extend(node.get("children") or [])
        extra = dict(node.get("additional_attributes") or {})
        raw_status = extra.pop("span.status", None)
        is_txn = bool(node.get("is_transaction"))
        op = str(node.get("op") or "")
        description = str(node.get("description") or "")
        name = (str(node.get("transaction") or "") if is_txn else "") or description or op
        spans.append(_make_span(
            trace_id, span_id=str(node.get("event_id")), parent=node.get("parent_span_id"), name=name, op=op,
            start=node.get("start_timestamp"), end=node.get("end_timestamp"),
            service=str(node.get("project_slug") or ""), raw_status=raw_status,
            errors=list(node.get("errors") or []), details=details,
            attributes={
                **extra,
                "sentry.description": node.get("description"),
                "sentry.transaction": node.get("transaction"),
                "sentry.transaction_id": node.get("transaction_id"),
                "sentry.is_transaction": is_txn,
                "sentry.sdk_name": node.get("sdk_name"),
            },
        ))
    return spans


def walk_legacy(txns: Iterable[Json]) -> Iterable[Json]:
    stack = list(txns)
    while stack:
        txn = stack.pop()
        stack.extend(txn.get("children") or [])
        yield txn


def legacy_errors(txns: Iterable[Json], orphan_errors: Iterable[Json]) -> list[Json]:
    """Every error entry of the legacy view: on transactions and orphaned."""
    return [e for t in txns for e in t.get("errors") or []] + list(orphan_errors)


def convert_legacy(trace_id: str, txns: list[Json], details: Mapping[str, Json], orphan_errors: list[Json]) -> list[Span]:
    """Convert legacy transactions (+ their events' spans) to spans; errors hang on their span.
    ``details`` maps event ids (transactions' and errors') to their events."""
    errors_by_span: dict[str, list[Json]] = {}
    for txn in txns:
        for err in txn.get("errors") or []:
            errors_by_span.setdefault(str(err.get("span") or txn.get("span_id")), []).append(err)
    for err in orphan_errors:
        errors_by_span.setdefault(str(err.get("span")), []).append(err)
    spans: list[Span] = []
    for txn in txns:
        service = str(txn.get("project_slug") or "")
        op = str(txn.get("transaction.op") or "")
        span_id = str(txn.get("span_id"))
        spans.append(_make_span(
            trace_id, span_id=span_id, parent=txn.get("parent_span_id"), name=str(txn.get("transaction") or ""),
            op=op, start=txn.get("start_timestamp"), end=txn.get("timestamp"),
            service=service, raw_status=txn.get("transaction.status"), errors=errors_by_span.pop(span_id, []),
            details=details,
            attributes={"sentry.transaction": txn.get("transaction"), "sentry.transaction_id": txn.get("event_id"),
                        "sentry.is_transaction": True},
        ))
        entries = (details.get(str(txn.get("event_id"))) or {}).get("entries") or []
        for raw in next((e.get("data") or [] for e in entries if e.get("type") == "spans"), []):
            sid = str(raw.get("span_id"))
            child_op = str(raw.get("op") or "")
            spans.append(_make_span(
                trace_id, span_id=sid, parent=raw.get("parent_span_id"),
                name=str(raw.get("description") or child_op), op=child_op,
                start=raw.get("start_timestamp"), end=raw.get("timestamp"), service=service,
                raw_status=raw.get("status"), errors=errors_by_span.pop(sid, []), details=details,
                attributes={"sentry.description": raw.get("description"), "sentry.transaction": txn.get("transaction"),
                            "sentry.transaction_id": txn.get("event_id"), "sentry.is_transaction": False,
                            **{k: v for k, v in (raw.get("data") or {}).items() if isinstance(v, str | int | float | bool)}},
            ))
    return spans
