"""The read APIs' JSON, shaped as real Sentry serves it (each shape names its source in getsentry/sentry).

- trace (new), ``GET /organizations/{org}/trace/{trace_id}/``: ``src/sentry/snuba/trace.py``
  ``SerializedSpan`` / ``SerializedIssue`` — a list of top-level spans with nested ``children``,
  ``errors``, ``occurrences``; an error's ``description`` is the event's search message (Discover's
  ``message`` column), with ``level``, ``culprit``, ``short_id`` and ``issue_type`` beside it and no
  exception type of its own; errors not attached to a span are top-level entries with
  ``event_type: "error"``. Span timestamps are float epoch seconds (``precise.start_ts``, as the
  endpoint's test ``tests/snuba/api/endpoints/test_organization_trace.py`` compares them) or, with
  ``timestamps="iso"``, ISO-8601 strings as the published example shows
  (``src/sentry/apidocs/examples/trace_examples.py``: ``"2026-04-15T18:22:31.000000Z"``).
- events-trace (legacy): ``src/sentry/api/endpoints/organization_events_trace.py`` ``FullResponse`` /
  ``TraceError`` (``title``, ``message``, ``level``, float ``timestamp``) —
  ``{"transactions": [...], "orphan_errors": [...]}`` where ``children`` are transactions.
- event details, ``GET /projects/{org}/{project}/events/{event_id}/``:
  ``src/sentry/apidocs/examples/event_examples.py`` ``GROUP_EVENT`` — ``metadata: {type, value, …}``,
  ``culprit``, ``title``, ``message``, ``entries: [{"type": "exception", "data": {"values": [...]}}, …]``.
- Discover, ``GET /organizations/{org}/events/``: one row per event with the requested fields;
  ``message`` is the search message, ``title`` the issue title.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, Literal

from tracecanary.demo.emulators import sentry_events
from tracecanary.demo.emulators.sentry_store import Ingested, SentryStore, epoch_s

Json = dict[str, Any]
TimestampFormat = Literal["float", "iso"]


def iso_z(epoch: float) -> str:
    """``2026-04-15T18:22:31.000000Z``: how Sentry's API writes a UTC time."""
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _project_id(ev: Ingested) -> int | str:
    return int(ev.project_id) if ev.project_id.isdigit() else ev.project_id


def _span_node(txn: Ingested, raw: Json, *, segment: bool, additional: list[str]) -> Json:
    start = epoch_s(raw.get("start_timestamp"))
    end = epoch_s(raw.get("timestamp"))
    op = str(raw.get("op") or "")
    description = str(txn.payload.get("transaction") or "") if segment else str(raw.get("description") or "")
    attrs: Json = {}
    if "span.status" in additional and raw.get("status"):
        attrs["span.status"] = raw.get("status")
    for key in additional:
        data = raw.get("data") or {}
        if key in data:
            attrs[key] = data[key]
    parent = raw.get("parent_span_id") or None
    return {
        "event_type": "span",
        "event_id": raw.get("span_id"),
        "transaction_id": txn.event_id,
        "project_id": _project_id(txn),
        "project_slug": txn.project_slug,
        "profile_id": "",
        "profiler_id": "",
        "parent_span_id": None if parent in (None, "0" * 16) else parent,
        "start_timestamp": start,
        "end_timestamp": end,
        "measurements": {},
        "duration": round((end - start) * 1000, 3),
        "transaction": txn.payload.get("transaction") or "",
        "is_transaction": segment,
        "description": description,
        "sdk_name": (txn.payload.get("sdk") or {}).get("name", ""),
        "op": op,
        "name": op,
        "children": [],
        "errors": [],
        "occurrences": [],
        "additional_attributes": attrs,
    }


def transaction_spans(txn: Ingested, additional: list[str] | None = None) -> list[Json]:
    """The transaction's segment span followed by its child spans, in the trace API's shape."""
    extra = additional or []
    segment = dict(txn.trace_ctx)
    segment["start_timestamp"] = txn.payload.get("start_timestamp")
    segment["timestamp"] = txn.payload.get("timestamp")
    nodes = [_span_node(txn, segment, segment=True, additional=extra)]
    nodes += [_span_node(txn, s, segment=False, additional=extra) for s in txn.payload.get("spans") or []]
    return nodes


def serialize_issue(err: Ingested) -> Json:
    """An error in the new trace API (``SerializedIssue`` from ``_serialize_rpc_issue``): the
    description is the search message; the exception's type and value are not in it on their own."""
    return {
        "event_type": "error",
        "event_id": err.event_id,
        "issue_id": err.issue_id,
        "project_id": _project_id(err),
        "project_slug": err.project_slug,
        "start_timestamp": epoch_s(err.payload.get("timestamp")),
        "transaction": err.payload.get("transaction") or "",
        "description": sentry_events.search_message(err.payload),
        "level": err.payload.get("level") or "error",
        "culprit": sentry_events.culprit(err.payload),
        "short_id": sentry_events.short_id(err.project_slug, err.issue_id),
        "issue_type": "error",
    }


def _iso_spans(nodes: list[Json]) -> None:
    for node in nodes:
        if node.get("event_type") == "span":
            node["start_timestamp"] = iso_z(node["start_timestamp"])
            node["end_timestamp"] = iso_z(node["end_timestamp"])
            _iso_spans(node["children"])


def trace_view(store: SentryStore, trace_id: str, additional: list[str],
               timestamps: TimestampFormat = "float") -> list[Json]:
    """``GET /organizations/{org}/trace/{trace_id}/``: top-level spans with nested children."""
    nodes: list[Json] = []
    for txn in store.visible("transaction", trace_id):
        nodes += transaction_spans(txn, additional)
    nodes.sort(key=lambda n: n["start_timestamp"])
    by_id = {n["event_id"]: n for n in nodes}
    result: list[Json] = []
    for node in nodes:
        parent = by_id.get(node["parent_span_id"])
        (parent["children"] if parent is not None else result).append(node)
    for err in store.visible("error", trace_id):
        target = by_id.get(err.trace_ctx.get("span_id"))
        (target["errors"] if target is not None else result).append(serialize_issue(err))
    if timestamps == "iso":
        _iso_spans(result)
    return result


def _trace_error(err: Ingested, generation: int | None) -> Json:
    return {
        "event_id": err.event_id,
        "issue_id": err.issue_id,
        "span": err.trace_ctx.get("span_id") or "",
        "project_id": _project_id(err),
        "project_slug": err.project_slug,
        "title": sentry_events.title(err.payload),
        "message": sentry_events.search_message(err.payload),
        "level": err.payload.get("level") or "error",
        "timestamp": epoch_s(err.payload.get("timestamp")),
        "event_type": "error",
        "generation": generation,
    }


def events_trace_view(store: SentryStore, trace_id: str) -> Json:
    """Legacy ``GET /organizations/{org}/events-trace/{trace_id}/``: nested transactions only."""
    txns = sorted(store.visible("transaction", trace_id), key=lambda t: epoch_s(t.payload.get("start_timestamp")))
    owner: dict[str, Ingested] = {}
    for t in txns:
        owner[str(t.trace_ctx.get("span_id"))] = t
        for s in t.payload.get("spans") or []:
            owner[str(s.get("span_id"))] = t
    full: dict[str, Json] = {}
    for t in txns:
        start, end = epoch_s(t.payload.get("start_timestamp")), epoch_s(t.payload.get("timestamp"))
        full[t.event_id] = {
            "event_id": t.event_id,
            "span_id": t.trace_ctx.get("span_id"),
            "timestamp": end,
            "start_timestamp": start,
            "transaction": t.payload.get("transaction") or "",
            "transaction.duration": round((end - start) * 1000),
            "transaction.op": t.trace_ctx.get("op") or "",
            "transaction.status": t.trace_ctx.get("status") or "unknown",
            "project_id": _project_id(t),
            "project_slug": t.project_slug,
            "parent_span_id": t.trace_ctx.get("parent_span_id") or None,
            "parent_event_id": None,
            "profile_id": None,
            "generation": 0,
            "errors": [],
            "performance_issues": [],
            "children": [],
            "measurements": {},
            "tags": [[k, v] for k, v in (t.payload.get("tags") or {}).items()],
        }
    roots: list[Json] = []
    for t in txns:
        node = full[t.event_id]
        parent_txn = owner.get(str(node["parent_span_id"]))
        if parent_txn is not None and parent_txn is not t:
            node["parent_event_id"] = parent_txn.event_id
            full[parent_txn.event_id]["children"].append(node)
        else:
            roots.append(node)
    _set_generations(roots, 0)
    orphans: list[Json] = []
    for err in store.visible("error", trace_id):
        holder = owner.get(str(err.trace_ctx.get("span_id")))
        if holder is not None:
            node = full[holder.event_id]
            node["errors"].append(_trace_error(err, node["generation"]))
        else:
            orphans.append(_trace_error(err, None))
    return {"transactions": roots, "orphan_errors": orphans}


def _set_generations(nodes: list[Json], generation: int) -> None:
    for n in nodes:
        n["generation"] = generation
        _set_generations(n["children"], generation + 1)


def _tags(ev: Ingested) -> list[Json]:
    raw = ev.payload.get("tags") or {}
    pairs = raw.items() if isinstance(raw, dict) else [tuple(p) for p in raw if isinstance(p, list | tuple) and len(p) == 2]
    tags = [{"key": str(k), "value": str(v)} for k, v in pairs]
    if ev.kind == "error":
        tags.append({"key": "level", "value": str(ev.payload.get("level") or "error")})
    return sorted(tags, key=lambda t: t["key"])


def event_details(ev: Ingested) -> Json:
    """``GET /projects/{org}/{project}/events/{event_id}/`` (the fields of ``GROUP_EVENT`` tracecanary reads)."""
    payload = ev.payload
    entries: list[Json] = []
    if ev.kind == "transaction":
        entries.append({"type": "spans", "data": list(payload.get("spans") or [])})
    if payload.get("exception"):
        entries.append({"type": "exception", "data": payload["exception"]})
    is_error = ev.kind == "error"
    details: Json = {
        "id": ev.event_id,
        "eventID": ev.event_id,
        "groupID": str(ev.issue_id) if is_error and ev.issue_id else None,
        "projectID": ev.project_id,
        "type": "error" if is_error else "transaction",
        "platform": payload.get("platform") or "other",
        "title": sentry_events.title(payload) if is_error else payload.get("transaction"),
        "message": sentry_events.log_message(payload) if is_error else "",
        "culprit": sentry_events.culprit(payload) if is_error else payload.get("transaction"),
        "metadata": sentry_events.metadata(payload) if is_error else {"title": payload.get("transaction")},
        "dateCreated": iso_z(epoch_s(payload.get("timestamp"))),
        "startTimestamp": epoch_s(payload.get("start_timestamp")) or None,
        "endTimestamp": epoch_s(payload.get("timestamp")),
        "contexts": payload.get("contexts") or {},
        "tags": _tags(ev),
        "sdk": payload.get("sdk"),
        "entries": entries,
    }
    if is_error:
        details["location"] = sentry_events.metadata(payload).get("filename")
    return details


DISCOVER_FIELDS = ("id", "title", "message", "level", "timestamp", "trace", "trace.span", "project", "event.type")


def _exception_values(ev: Ingested, key: str) -> list[str]:
    values = (ev.payload.get("exception") or {}).get("values") or []
    return [str(v.get(key) or "") for v in values if isinstance(v, dict)]


def discover_row(ev: Ingested, fields: list[str]) -> Json:
    """One row of ``GET /organizations/{org}/events/`` for the requested fields."""
    is_error = ev.kind == "error"
    values: Json = {
        "id": ev.event_id,
        "title": sentry_events.title(ev.payload) if is_error else ev.payload.get("transaction"),
        "message": sentry_events.search_message(ev.payload) if is_error else ev.payload.get("transaction"),
        "culprit": sentry_events.culprit(ev.payload) if is_error else ev.payload.get("transaction"),
        "error.type": _exception_values(ev, "type"),
        "error.value": _exception_values(ev, "value"),
        "level": ev.payload.get("level") or ("error" if is_error else "info"),
        "timestamp": datetime.fromtimestamp(epoch_s(ev.payload.get("timestamp")), UTC).isoformat(),
        "trace": ev.trace_id,
        "trace.span": ev.trace_ctx.get("span_id") or "",
        "project": ev.project_slug,
        "project.name": ev.project_slug,
        "event.type": "error" if is_error else "transaction",
        "issue.id": ev.issue_id or None,
    }
    return {f: values.get(f) for f in fields}
