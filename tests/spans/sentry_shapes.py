"""Sentry API answers in the shapes real Sentry returns, each built from the getsentry/sentry file named.

The values are ours; the keys, types and formats follow Sentry's source:

- Trace view ``GET /api/0/organizations/{org}/trace/{trace_id}/``:
  ``src/sentry/snuba/trace.py`` — ``SerializedSpan`` (``_serialize_rpc_event``: ``start_timestamp`` =
  ``precise.start_ts``, a float) and ``SerializedIssue`` (``_serialize_rpc_issue``: ``description`` =
  the errors query's ``message`` column, ``level`` = ``tags[level]``, ``culprit`` from the issue,
  ``short_id`` = ``PROJECT-`` + base32, float ``start_timestamp``, no exception type);
  ``src/sentry/apidocs/examples/trace_examples.py`` ``TRACE_SPAN`` — the published example writes span
  timestamps as ISO-8601 strings (``"2026-04-15T18:22:31.000000Z"``).
- The ``message`` column is ``BaseEvent.search_message``
  (``src/sentry/services/eventstore/models.py``): log message, then metadata values (``value``,
  ``type``, ``filename``, ``function`` — ``src/sentry/eventtypes/error.py``), then the culprit, joined
  by spaces. Its order follows the metadata dict, so no position in it can be relied on.
- Event details ``GET /api/0/projects/{org}/{project}/events/{event_id}/``:
  ``src/sentry/apidocs/examples/event_examples.py`` ``GROUP_EVENT`` — ``metadata: {type, value}``,
  ``title``, ``culprit``, ``entries: [{"type": "exception", "data": {"values": [{type, value, …}]}}]``;
  its ``title`` need not be ``Type: value`` (``SIMPLE_EVENT``'s is a free sentence).
- Legacy ``GET /api/0/organizations/{org}/events-trace/{trace_id}/``:
  ``src/sentry/api/endpoints/organization_events_trace.py`` ``FullResponse`` / ``TraceError``
  (``title``, ``message``, ``level``, float ``timestamp``).
"""

from __future__ import annotations

from typing import Any

TRACE_ID = "9d2e4c1ab7f34c0e8a5b6c7d8e9f0a1b"
ROOT = "c0ffee00c0ffee00"
CHARGE = "0badcafe0badcafe"
LEDGER = "5ca1ab1e5ca1ab1e"
DECLINED = "6f1e2d3c4b5a69788796a5b4c3d2e1f0"
LEDGER_DOWN = "1a2b3c4d5e6f70819283a4b5c6d7e8f9"
ORPHAN = "e0d1c2b3a4958677685a4b3c2d1e0f9a"
START_ISO = "2026-04-15T18:22:31.000000Z"
END_ISO = "2026-04-15T18:22:31.250000Z"
START_S = 1776277351.0  # START_ISO in epoch seconds


def _issue(event_id: str, description: str, *, level: str, start_s: float, culprit: str, short: str) -> dict[str, Any]:
    """A ``SerializedIssue`` as ``_serialize_rpc_issue`` builds it for an error event."""
    return {
        "event_id": event_id, "project_id": 4505281256090153, "project_slug": "shop", "start_timestamp": start_s,
        "transaction": "/checkout", "description": description, "level": level, "issue_id": 6012345678,
        "event_type": "error", "culprit": culprit, "short_id": short, "issue_type": "error",
    }


def _span(span_id: str, parent: str | None, op: str, description: str, start: Any, end: Any, duration_ms: float,
          *, segment: bool = False, status: str | None = None) -> dict[str, Any]:
    """A ``SerializedSpan``."""
    return {
        "event_id": span_id, "event_type": "span", "transaction_id": "280027d94f30428c83a2de46f932612b",
        "project_id": 4505281256090153, "project_slug": "shop", "transaction": "/checkout",
        "description": description, "op": op, "name": op, "parent_span_id": parent, "profile_id": "",
        "profiler_id": "", "sdk_name": "sentry.python.aiohttp", "is_transaction": segment,
        "start_timestamp": start, "end_timestamp": end, "duration": duration_ms, "measurements": {},
        "children": [], "errors": [], "occurrences": [],
        "additional_attributes": {"span.status": status} if status else {},
    }


def trace_view() -> list[dict[str, Any]]:
    """A checkout trace: ISO timestamps on the segment (as published), floats below (as serialized)."""
    root = _span(ROOT, None, "http.server", "/checkout", START_ISO, END_ISO, 250.0, segment=True,
                 status="internal_error")
    charge = _span(CHARGE, ROOT, "http.client", "POST https://payments.internal/charge",
                   START_S + 0.05, START_S + 0.2, 150.0, status="internal_error")
    # Type first, as the issue that reported this wrote it; a dict in another order puts the value first.
    charge["errors"].append(_issue(DECLINED, "ValueError payment declined service.py charge /checkout",
                                   level="error", start_s=START_S + 0.19, culprit="/checkout", short="SHOP-3F"))
    ledger = _span(LEDGER, ROOT, "db", "INSERT INTO ledger", START_S + 0.21, START_S + 0.24, 30.0)
    ledger["errors"].append(_issue(LEDGER_DOWN, "ledger unavailable: retry later LedgerError ledger.py post /checkout",
                                   level="warning", start_s=START_S + 0.23, culprit="/checkout", short="SHOP-3G"))
    root["children"] = [charge, ledger]
    # An error whose span Sentry does not hold sits at the top level.
    orphan = _issue(ORPHAN, "KeyError 'sku' cart.py load cart.load", level="error", start_s=START_S + 0.01,
                    culprit="cart.load", short="SHOP-3H")
    return [root, orphan]


def event(event_id: str, typ: str | None, value: str, title: str, culprit: str,
          *, metadata: bool = True) -> dict[str, Any]:
    """Event details (``GROUP_EVENT``): the exception's type and value as the event's own fields."""
    exc = {"type": typ, "value": value, "mechanism": {"type": "aiohttp", "handled": False}, "module": None,
           "stacktrace": {"frames": [{"function": "charge", "filename": "service.py", "lineNo": 41, "inApp": True}]}}
    return {
        "id": event_id, "eventID": event_id, "groupID": "6012345678", "projectID": "4505281256090153",
        "type": "error", "platform": "python", "message": "", "title": title, "culprit": culprit,
        "location": "service.py", "dateCreated": "2026-04-15T18:22:31.190000Z",
        "metadata": {"type": typ, "value": value, "filename": "service.py", "function": "charge"} if metadata else {},
        "tags": [{"key": "level", "value": "error"}],
        "entries": [{"type": "exception", "data": {"values": [exc], "excOmitted": None, "hasSystemFrames": False}}],
    }


def events() -> dict[str, dict[str, Any]]:
    """The error events by id: one with metadata, one (older) with only its exception entry and a
    free-sentence title — neither title is parsed."""
    return {
        DECLINED: event(DECLINED, "ValueError", "payment declined", "ValueError: payment declined", "/checkout"),
        LEDGER_DOWN: event(LEDGER_DOWN, "LedgerError", "ledger unavailable: retry later",
                           "The ledger did not answer", "/checkout", metadata=False),
    }


def legacy_view() -> dict[str, Any]:
    """The legacy view of the same trace: ``FullResponse`` with a ``TraceError`` whose title is free text."""
    error = {"event_id": DECLINED, "issue_id": 6012345678, "span": CHARGE, "project_id": 4505281256090153,
             "project_slug": "shop", "title": "Card payment failed", "level": "error",
             "message": "ValueError payment declined service.py charge /checkout", "timestamp": START_S + 0.19,
             "event_type": "error", "generation": 0}
    txn = {"event_id": "280027d94f30428c83a2de46f932612b", "span_id": ROOT, "timestamp": START_S + 0.25,
           "start_timestamp": START_S, "transaction": "/checkout", "transaction.duration": 250,
           "transaction.op": "http.server", "transaction.status": "internal_error", "project_id": 4505281256090153,
           "project_slug": "shop", "parent_span_id": None, "parent_event_id": None, "profile_id": None,
           "generation": 0, "errors": [error], "performance_issues": [], "children": [], "measurements": {},
           "tags": []}
    return {"transactions": [txn], "orphan_errors": []}


def legacy_transaction_event() -> dict[str, Any]:
    """The transaction's event: its child spans in the ``spans`` entry (ISO timestamps, as stored)."""
    spans = [{"span_id": CHARGE, "parent_span_id": ROOT, "op": "http.client", "status": "internal_error",
              "description": "POST https://payments.internal/charge", "start_timestamp": "2026-04-15T18:22:31.050000Z",
              "timestamp": "2026-04-15T18:22:31.200000Z", "data": {}}]
    return {"id": "280027d94f30428c83a2de46f932612b", "eventID": "280027d94f30428c83a2de46f932612b",
            "type": "transaction", "title": "/checkout", "entries": [{"type": "spans", "data": spans}]}
