"""Sentry's trace shapes → the common span model (see ``daemon/spans/sentry.py`` for the mapping)."""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable
from typing import Any

from tracecanary.assertions.spans import EMPTY_ATTRS, Span, SpanEvent, SpanKind, StatusCode

log = logging.getLogger("tracecanary.spans.sentry")

Json = dict[str, Any]
_TITLE_RE = re.compile(r"^([A-Za-z_][\w.]*): (.*)$", re.S)
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


def split_title(title: str) -> tuple[str, str]:
    """``"ValueError: payment declined"`` → (type, message); a plain message keeps type ``Error``."""
    found = _TITLE_RE.match(title or "")
    return (found.group(1), found.group(2)) if found else ("Error", title or "")


def _exception_event(err: Json, default_time_ns: int) -> SpanEvent:
    title = str(err.get("title") or err.get("description") or "")
    typ, message = split_title(title)
    ts = err.get("start_timestamp", err.get("timestamp"))
    attrs: dict[str, Any] = {
        "exception.type": typ,
        "exception.message": message,
        "sentry.event_id": str(err.get("event_id") or ""),
        "sentry.level": str(err.get("level") or "error"),
    }
    if err.get("issue_id") is not None:
        attrs["sentry.issue_id"] = err["issue_id"]
    if err.get("short_id"):
        attrs["sentry.short_id"] = str(err["short_id"])
    time_ns = round(float(ts) * 1e9) if isinstance(ts, int | float) else default_time_ns
    return SpanEvent(name="exception", time_ns=time_ns, attributes=attrs)


def _status(raw_status: Any, errors: list[Json]) -> tuple[StatusCode, str]:
    if errors:
        return StatusCode.ERROR, str(errors[0].get("title") or errors[0].get("description") or "error")
    status = str(raw_status or "").lower()
    if status == "ok":
        return StatusCode.OK, ""
    if status in _OK_STATUSES:
        return StatusCode.UNSET, ""
    return StatusCode.ERROR, status


def _make_span(trace_id: str, *, span_id: str, parent: Any, name: str, op: str, start_s: float, end_s: float,
               service: str, raw_status: Any, errors: list[Json], attributes: dict[str, Any]) -> Span:
    start_ns, end_ns = round(start_s * 1e9), round(end_s * 1e9)
    code, message = _status(raw_status, errors)
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
        events=tuple(_exception_event(e, end_ns) for e in errors),
        status_code=code,
        status_message=message,
        scope="sentry",
    )


def convert_trace(trace_id: str, nodes: Iterable[Json]) -> list[Span]:
    """Convert the new trace view (a list of nested span and error nodes) to spans."""
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
            start_s=float(node.get("start_timestamp") or 0), end_s=float(node.get("end_timestamp") or 0),
            service=str(node.get("project_slug") or ""), raw_status=raw_status,
            errors=list(node.get("errors") or []),
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


def convert_legacy(trace_id: str, txns: list[Json], details: dict[str, Json], orphan_errors: list[Json]) -> list[Span]:
    """Convert legacy transactions (+ their events' spans) to spans; errors hang on their span."""
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
            op=op, start_s=float(txn.get("start_timestamp") or 0), end_s=float(txn.get("timestamp") or 0),
            service=service, raw_status=txn.get("transaction.status"), errors=errors_by_span.pop(span_id, []),
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
                start_s=epoch_s(raw.get("start_timestamp")), end_s=epoch_s(raw.get("timestamp")), service=service,
                raw_status=raw.get("status"), errors=errors_by_span.pop(sid, []),
                attributes={"sentry.description": raw.get("description"), "sentry.transaction": txn.get("transaction"),
                            "sentry.transaction_id": txn.get("event_id"), "sentry.is_transaction": False,
                            **{k: v for k, v in (raw.get("data") or {}).items() if isinstance(v, str | int | float | bool)}},
            ))
    return spans


def epoch_s(value: Any) -> float:
    """Sentry payload timestamps are epoch floats or RFC 3339 strings; both become epoch seconds."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, str):
        from datetime import datetime

        try:
            return float(value)
        except ValueError:
            return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    return 0.0
